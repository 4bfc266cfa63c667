"""Shape inference for the pipeline: ONNX's own (C++) inference, given no more than it needs.

A run infers at most twice (docs/architecture.md): once on the loaded proto, without the weights'
data, for the passes that need shapes; once at the end for the tensors the passes left untyped, on
only the nodes that write them where that is safe. Serializing 20,000 nodes into inference and
reading its answer back costs more than the inference itself (docs/performance.md). Data propagation
runs only where the graph computes shapes (`computes_shapes`).
"""
from __future__ import annotations

import math

import onnx
import onnx_graphsurgeon as gs

from surgeon.graphinfo import subgraphs
from surgeon.graphio import TensorTypes, export_model
from surgeon.rewrite import any_subgraphs

# Initializers up to this many elements keep their values for shape inference (Reshape shapes, Slice
# bounds, Resize scales...); larger ones are weights, of which inference needs only dtype and dims.
SHAPE_RELEVANT_ELEMENTS = 1024


def infer_without_weights(model: onnx.ModelProto, data_prop: bool = True) -> onnx.ModelProto | None:
    """ONNX shape inference over the model without its weights' data; None where inference fails. With
    data propagation where `data_prop` asks for it and the model `computes_shapes`.

    Inferring on the loaded proto costs a fraction of exporting the graph later for the first pass
    that needs shapes (docs/performance.md); leaving the weights out keeps a second copy of them out
    of memory and out of the serialization inference does.
    """
    skeleton = without_weights(model)
    try:
        return onnx.shape_inference.infer_shapes(skeleton, strict_mode=False,
                                                 data_prop=data_prop and computes_shapes(skeleton))
    except Exception:  # custom ops without schemas, unusual graphs: passes infer later if they need to
        return None


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """What shape inference needs of the model: its weights as dtype and dims only, but for the
    initializers of up to SHAPE_RELEVANT_ELEMENTS elements, which keep their values."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                               functions=model.functions)
    graph = skeleton.graph
    source = model.graph
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    graph.sparse_initializer.extend(source.sparse_initializer)
    for tensor in source.initializer:
        if math.prod(tensor.dims) <= SHAPE_RELEVANT_ELEMENTS:
            graph.initializer.append(tensor)
        else:
            graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    return skeleton


def infer_graph_shapes(graph: gs.Graph) -> gs.Graph:
    """Annotate the graph's tensors, in place, with the dtypes and shapes ONNX shape inference finds,
    with data propagation where the graph `computes_shapes`.

    Best effort: a graph that cannot be exported or inferred (custom ops without schemas, attributes
    graphsurgeon cannot export) is returned as it was. Tensors inference says nothing about keep
    what they had. Annotating in place costs a fraction of re-importing the inferred model.
    """
    try:
        model = export_model(graph, do_type_check=False)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=computes_shapes(model))
    except Exception:
        return graph
    return annotate_shapes(graph, model)


def computes_shapes(model: onnx.ModelProto) -> bool:
    """Whether the model has a Shape or Size node, in its graph, bodies or functions: the sources of the
    values data propagation carries that inference cannot read without it. Without them it carries only
    integer arithmetic on constants, which fold-constants folds, and 1-D tensors' lengths, which
    inference reads from their types anyway (Reshape's rank from its shape input's length), and it only
    costs: since onnx 1.18 it holds L unknown dims for every 1-D tensor of length L that an op it goes
    through (Add, Cast, Concat, Gather, ...) reads or writes, until inference ends. 20,000 chained Adds on
    a [1000] tensor took 2.1 s and 1.4 GB (docs/performance.md)."""
    return any(node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx")
               for top in (model.graph, *model.functions) for graph in _graphs(top) for node in graph.node)


# Only these standard ops hold graphs (If/Loop/Scan bodies); any custom op may.
_BODY_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def _graphs(graph):
    """`graph` (or function) and the graphs its nodes hold, nested ones too. Unlike graphinfo.all_nodes
    it reads the attributes of only the nodes that may hold a graph: this runs before every inference."""
    yield graph
    for node in graph.node:
        if node.op_type in _BODY_OPS or node.domain not in ("", "ai.onnx"):
            for _, sub in subgraphs(node):
                yield from _graphs(sub)


def annotate_shapes(graph: gs.Graph, model: onnx.ModelProto) -> gs.Graph:
    """Set dtype and shape of the graph's tensors from the (inferred) model's value infos, inputs and
    outputs; tensors the model says nothing about keep what they had."""
    variables = {t.name: t for t in graph.inputs if isinstance(t, gs.Variable)}
    variables.update((t.name, t) for node in graph.nodes for t in node.outputs if isinstance(t, gs.Variable))
    types = TensorTypes()
    for info in (*model.graph.value_info, *model.graph.output, *model.graph.input):
        tensor = variables.get(info.name)
        if tensor is not None and info.type.HasField("tensor_type"):
            # Straight into the instance dict: Tensor.__setattr__ special-cases inputs/outputs only,
            # and going through it took half of this function on 20,000 tensors.
            fields = tensor.__dict__
            fields["dtype"], fields["shape"] = types.read(info)
    return graph


def infer_where_untyped(graph: gs.Graph) -> bool:
    """Infer shapes for only the nodes that write a tensor without a dtype or a complete shape; return
    whether every tensor a node writes is typed now (True at once where all were already).

    The nodes are inferred on their own, given what inference reads of the rest of the graph: the
    types of the tensors they take in and the values of constants and `Constant` nodes. False asks the
    caller for whole-model inference: where that cannot be promised to find the same (subgraphs read
    outer tensors without naming them; local functions), where inference fails, and where it gives
    a dim a made-up name (`unk__3`), which could be one the rest of the graph already uses.
    """
    region = []
    for node in graph.nodes:
        for tensor in node.outputs:
            if _untyped(tensor):
                region.append(node)
                break
    if not region:
        return True
    if len(region) > len(graph.nodes) // 2 or graph.functions or any_subgraphs(region):
        return False  # most of the graph: one whole inference on the export costs less than a second export
    written = {id(tensor) for node in region for tensor in node.outputs}
    constant_nodes, inputs, seen = [], [], set()
    for node in region:
        for tensor in node.inputs:
            if id(tensor) in written or id(tensor) in seen or not tensor.name or isinstance(tensor, gs.Constant):
                continue
            seen.add(id(tensor))
            producer = tensor.inputs[0] if tensor.inputs else None
            if producer is not None and producer.op == "Constant" and not producer.inputs:
                constant_nodes.append(producer)  # its value is inference's to read (Reshape shapes...)
            else:
                inputs.append(tensor)
    part = gs.Graph(nodes=constant_nodes + region, inputs=inputs, opset=graph.opset, ir_version=graph.ir_version,
                    import_domains=list(graph.import_domains) if graph.import_domains else None)
    try:
        model = onnx.shape_inference.infer_shapes(export_model(part, do_type_check=False), strict_mode=False)
    except Exception:
        return False
    named_dims = {dim for tensor in inputs if tensor.shape for dim in tensor.shape if isinstance(dim, str)}
    written_by_name = {t.name: t for node in region for t in node.outputs if isinstance(t, gs.Variable) and t.name}
    named_dims.update(dim for tensor in written_by_name.values() if tensor.shape
                      for dim in tensor.shape if isinstance(dim, str))
    types = TensorTypes()
    for info in model.graph.value_info:
        tensor = written_by_name.get(info.name)
        if tensor is None or not info.type.HasField("tensor_type"):
            continue
        dtype, shape = types.read(info)
        if shape is not None and any(isinstance(dim, str) and dim not in named_dims for dim in shape):
            continue  # a made-up name: leave the tensor to whole-model inference
        fields = tensor.__dict__
        fields["dtype"], fields["shape"] = dtype, shape
    return not any(_untyped(tensor) for tensor in written_by_name.values())


def _untyped(tensor: gs.Tensor) -> bool:
    if not isinstance(tensor, gs.Variable) or not tensor.name:
        return False
    shape = tensor.shape
    return tensor.dtype is None or shape is None or None in shape

"""Shape inference for the pipeline: ONNX's own (C++) inference, given no more than it needs.

A run infers at most twice (docs/architecture.md): once on the loaded proto, without the weights'
data, for the passes that need shapes; once at the end for the tensors the passes left untyped, on
only the nodes that write them where that is safe. Serializing 20,000 nodes into inference and
reading its answer back costs more than the inference itself (docs/performance.md).
"""
from __future__ import annotations

import math

import onnx
import onnx_graphsurgeon as gs

from surgeon.graphio import TensorTypes, export_model
from surgeon.rewrite import any_subgraphs

# Initializers up to this many elements keep their values for shape inference (Reshape shapes, Slice
# bounds, Resize scales...); larger ones are weights, of which inference needs only dtype and dims.
SHAPE_RELEVANT_ELEMENTS = 1024


def infer_without_weights(model: onnx.ModelProto, data_prop: bool = True) -> onnx.ModelProto | None:
    """ONNX shape inference over the model without its weights' data; None where inference fails.

    Inferring on the loaded proto costs a fraction of exporting the graph later for the first pass
    that needs shapes (docs/performance.md); leaving the weights out keeps a second copy of them out
    of memory and out of the serialization inference does.
    """
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
    try:
        return onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=data_prop)
    except Exception:  # custom ops without schemas, unusual graphs: passes infer later if they need to
        return None


def infer_graph_shapes(graph: gs.Graph) -> gs.Graph:
    """Annotate the graph's tensors, in place, with the dtypes and shapes ONNX shape inference finds.

    Best effort: a graph that cannot be exported or inferred (custom ops without schemas, attributes
    graphsurgeon cannot export) is returned as it was. Tensors inference says nothing about keep
    what they had. Annotating in place costs a fraction of re-importing the inferred model.
    """
    try:
        model = export_model(graph, do_type_check=False)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        return graph
    return annotate_shapes(graph, model)


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

"""Describing graphs: op labels (with the ATen operator), op histograms and their differences."""
from __future__ import annotations

import math
from collections import Counter
from operator import attrgetter

import onnx


def op_label(node) -> str:
    """`Conv`, `mmcv::MMCVMultiScaleDeformableAttention`, `ATen:grid_sampler` (NodeProto or gs.Node)."""
    op = node.op if hasattr(node, "op") else node.op_type
    domain = node.domain or ""
    if op == "ATen":
        operator = _attr(node, "operator")
        if operator:
            return f"ATen:{operator}"
    return _label(op, domain)


def _label(op: str, domain: str) -> str:
    return f"{domain}::{op}" if domain and domain != "ai.onnx" else op


def _attr(node, key):
    if hasattr(node, "attrs"):
        value = node.attrs.get(key)
    else:
        value = next((a.s for a in node.attribute if a.name == key), None)
    return value.decode() if isinstance(value, bytes) else value


def subgraphs(node: onnx.NodeProto):
    """(attribute name, graph) for each graph a node holds: `then_branch`, `body`, `graphs[1]` ..."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from ((f"{attr.name}[{i}]", g) for i, g in enumerate(attr.graphs))


def all_nodes(graph: onnx.GraphProto):
    """The nodes of `graph` and, after each node holding subgraphs (If/Loop/Scan bodies), the nodes of those,
    recursively."""
    for node in graph.node:
        yield node
        for _, sub in subgraphs(node):
            yield from all_nodes(sub)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The tensor names a node reads, with the outer-scope names its subgraphs (If/Loop/Scan bodies,
    nested ones too) read, each once, in order of first read. A name any body defines (input,
    initializer or node output) is that body's own, as in ONNX scoping, wherever in the body it is
    defined."""
    names = [name for name in node.input if name]
    for _, sub in subgraphs(node):
        local = {v.name for v in sub.input} | {t.name for t in sub.initializer}
        local.update(name for inner in sub.node for name in inner.output)
        for inner in sub.node:
            names.extend(name for name in node_reads(inner) if name not in local)
    return list(dict.fromkeys(names))


def op_histogram(nodes) -> dict[str, int]:
    """Counts of op labels, sorted by label (deterministic)."""
    nodes = list(nodes)
    if not nodes:
        return {}
    op = attrgetter("op" if hasattr(nodes[0], "op") else "op_type")
    # Counted by (op, domain) at C speed, then labelled once per kind: the pipeline takes a histogram
    # after every step that changed something, and a label per node cost 15 ms per 20,000 nodes.
    kinds = Counter(zip(map(op, nodes), map(attrgetter("domain"), nodes)))
    counts: Counter[str] = Counter()
    for (op_name, domain), count in kinds.items():
        if op_name == "ATen":  # labelled by each node's `operator` attribute
            counts.update(op_label(n) for n in nodes if op(n) == "ATen" and n.domain == domain)
        else:
            counts[_label(op_name, domain or "")] += count
    return dict(sorted(counts.items()))


def unused_initializers(model: onnx.ModelProto) -> list[str]:
    """Initializers no node (subgraphs included) and no graph output reads."""
    read: set[str] = {o.name for o in model.graph.output}
    for node in model.graph.node:
        read.update(node.input)
    unread = [t.name for t in model.graph.initializer if t.name not in read]
    if not unread:
        return []  # the usual case, known without looking into every node's attributes for subgraphs
    stack = [model.graph]
    while stack:
        for node in stack.pop().node:
            for _, subgraph in subgraphs(node):  # If/Loop/Scan bodies read the outer graph's tensors too
                for inner in subgraph.node:
                    read.update(inner.input)
                stack.append(subgraph)
    return [name for name in unread if name not in read]


def tensor_names(graph) -> set[str]:
    """Names of the tensors a graphsurgeon graph uses: the keys of `graph.tensors()`, without building
    its map (which checks every tensor for name clashes; a fifth of a rename on 20,000 nodes)."""
    names = {t.name for node in graph.nodes for t in node.inputs}
    names.update(t.name for node in graph.nodes for t in node.outputs)
    names.update(t.name for t in graph.inputs)
    names.update(t.name for t in graph.outputs)
    names.discard("")
    return names


def histogram_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """`{label: after - before}` for labels whose count changed."""
    keys = sorted(set(before) | set(after))
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


#: Bits per element in raw data of the types onnx packs below a byte; the others take their NumPy itemsize.
_PACKED_BITS = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.FLOAT4E2M1: 4,
                onnx.TensorProto.INT2: 2, onnx.TensorProto.UINT2: 2,
                onnx.TensorProto.FLOAT6E2M3: 6, onnx.TensorProto.FLOAT6E3M2: 6}


def _element_bits() -> dict[int, int]:
    bits = {}
    for data_type in onnx.TensorProto.DataType.values():
        if data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
            continue
        bits[data_type] = _PACKED_BITS.get(data_type) or onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8
    return bits


#: Bits per element in raw data of each ONNX data type but strings (which have no fixed size).
ELEMENT_BITS = _element_bits()


def raw_bytes(data_type: int, count: int) -> int | None:
    """Bytes of raw data that `count` elements of `data_type` take; None for strings (no fixed size) and
    numbers that are no ONNX data type."""
    bits = ELEMENT_BITS.get(data_type)
    return None if bits is None else -(-count * bits // 8)


def typed_entries(data_type: int, count: int) -> int:
    """How many entries `count` elements of `data_type` take in the typed field onnx keeps them in without
    raw data (`onnx.helper.tensor_dtype_to_field`): two per complex number, 4-bit types two to an entry,
    2-bit types four, the others one."""
    if data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        return 2 * count
    per_entry = {4: 2, 2: 4}.get(_PACKED_BITS.get(data_type), 1)
    return -(-count // per_entry)


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, from its dims and type (external data: the recorded length).

    `modelio.read_model` refuses a tensor whose stored bytes disagree with its dims, so for a model read
    this is what it holds, known without reading `raw_data` (which protobuf copies: 0.5 s per GB)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        return int(info.get("length", 0))
    return raw_bytes(tensor.data_type, math.prod(tensor.dims)) or 0


def declared_dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """A tensor's declared dimensions, None for a dynamic one (a name, or none); None for an unknown rank.

    A declared 0 is a static empty dimension, as ONNX Runtime reads it: feeding anything else fails."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tensor_type.shape.dim]

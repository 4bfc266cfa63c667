"""Fast, exact conversion between onnx.ModelProto and onnx-graphsurgeon graphs.

onnx-graphsurgeon stays the IR: `import_graph` returns the same `gs.Graph`, `gs.Node`, `gs.Variable`
and `gs.Constant` objects that `gs.import_onnx` builds, and `export_model` returns a model whose
serialization is byte-identical to `gs.export_onnx`'s. Only the cost differs. On the 21,000-node
graphs of bench/pipeline_overhead.py, `gs.import_onnx` takes ~0.5 s and `gs.export_onnx` 0.2-0.3 s
with the garbage collector paused as the pipeline runs (about twice that with it running) — as much
as a typical recipe's passes together — and spends it in graphsurgeon's constructors, not in ONNX:

- every `Node`/`Tensor` attribute assignment goes through an overridden `__setattr__`;
- every link is added through `SynchronizedList.append`, which appends to the other side too;
- every tensor and node import builds closures and formats log messages nobody reads;
- export goes through `onnx.helper.make_*` per object and then copies the whole graph twice
  (`make_graph` extends, `make_model` copies), initializers included.

Here the objects are made with `object.__new__` and their `__dict__` filled directly (in the field
order graphsurgeon's constructors use), both sides of every link are filled with plain `list`
methods, and export writes NodeProto/ValueInfoProto straight into the model's graph.

    graph = import_graph(model)                        # == gs.import_onnx(model), ~2.7x faster
    model = export_model(graph, do_type_check=False)   # == gs.export_onnx(graph, ...), ~2.2x faster

Whatever the fast paths do not cover goes to graphsurgeon itself, so the result is the same by
construction: whole models with local functions, sparse initializers or attribute kinds gs skips;
subgraphs (If/Loop bodies, imported and exported by gs inside an otherwise fast graph); single
attribute values that are not plain Python numbers/strings/lists or not-yet-loaded tensors, and
value infos that are not plain tensor types; whole exports with duplicate names (gs warns about
them), a failing type check or `make_model` keyword arguments. tests/test_graphio.py holds the
equivalence proofs; bench/graph_io.py the figures. What is left of the import's cost is mostly
reading the protos' fields and creating ~8 Python objects per node; export's is the protobuf calls.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import AttributeProto, ModelProto
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx, update_import_domains
from onnx_graphsurgeon.importers.onnx_importer import (
    OnnxImporter, get_itemsize, get_onnx_tensor_dtype)
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues
from onnx_graphsurgeon.util.misc import SynchronizedList

_new = object.__new__
_new_list = list.__new__
_append = list.append


class _Unsupported(Exception):
    """Raised inside a fast path on anything it does not reproduce; the caller falls back to gs."""


# ----------------------------------------------------------------------------------------- import

def import_graph(model: ModelProto) -> gs.Graph:
    """`gs.import_onnx(model)`, built without graphsurgeon's per-object overhead."""
    return import_graph_noting(model)[0]


@dataclass(frozen=True)
class ImportNotes:
    """What the import of a graph without bodies or local functions noticed on the way, for a few field reads
    per node (6-10 ms on 20,000 nodes) where walks of their own would cost the pipeline 40-90 ms."""

    in_order: bool  #: the nodes are topologically sorted (`rewrite.is_sorted`)
    node_text: bool  #: some node has a doc string, metadata or an attribute doc string (graphsurgeon drops all three)


def import_graph_noting(model: ModelProto) -> tuple[gs.Graph, ImportNotes | None]:
    """`import_graph`, and what it noticed on the way; None where that is not known: graphs with bodies,
    and graphsurgeon's own import, which models with local functions get. So notes also say the graph
    holds no bodies and no functions."""
    if model.functions or model.graph.sparse_initializer:
        return gs.import_onnx(model), None
    importer = _Importer(model)
    try:
        graph = importer.graph()
    except _Unsupported:
        return gs.import_onnx(model), None
    if importer.has_subgraphs:
        return graph, None
    return graph, ImportNotes(in_order=not importer.read_before_written, node_text=importer.node_text)


def _links(owner, field_name: str) -> SynchronizedList:
    """An empty SynchronizedList bound to `owner`, as `SynchronizedList(owner, field_name, [])`."""
    links = _new_list(SynchronizedList)
    links.parent_obj = owner
    links.field_name = field_name
    return links


def _variable(name: str, dtype=None, shape=None, type: str = "tensor_type") -> gs.Variable:
    tensor = _new(gs.Variable)
    fields = tensor.__dict__
    fields["name"] = name
    fields["inputs"] = _links(tensor, "outputs")
    fields["outputs"] = _links(tensor, "inputs")
    fields["dtype"] = dtype
    fields["shape"] = shape
    fields["type"] = type
    return tensor


def tensor_dtype_and_shape(info: onnx.ValueInfoProto, dtypes: dict) -> tuple:
    """(dtype, shape) of a tensor-typed ValueInfoProto, as graphsurgeon reads them; `dtypes` caches
    graphsurgeon's dtype lookups by element type."""
    tensor_type = info.type.tensor_type
    elem_type = tensor_type.elem_type
    dtype = dtypes.get(elem_type)
    if dtype is None:
        dtype = dtypes[elem_type] = get_onnx_tensor_dtype(info)
    shape = None
    if tensor_type.HasField("shape"):
        shape = [dim.dim_value if dim.HasField("dim_value") else  # a oneof: the order only saves time
                 dim.dim_param if dim.HasField("dim_param") else None
                 for dim in tensor_type.shape.dim]
    return dtype, shape


class TensorTypes:
    """`tensor_dtype_and_shape` remembered by the serialized type: a graph's tensors share a few types,
    and looking one up costs a quarter of reading its dims from the proto (20,000 tensors: 34 -> 9 ms).
    Each call returns its own shape list, so annotated tensors never share one."""

    def __init__(self, dtypes: dict | None = None):
        self.dtypes = {} if dtypes is None else dtypes
        self.known: dict[bytes, tuple] = {}

    def read(self, info: onnx.ValueInfoProto) -> tuple:
        key = info.type.SerializeToString()
        known = self.known.get(key)
        if known is None:
            dtype, shape = tensor_dtype_and_shape(info, self.dtypes)
            known = self.known[key] = (dtype, None if shape is None else tuple(shape))
        dtype, shape = known
        return dtype, None if shape is None else list(shape)


class _Importer:
    """`OnnxImporter.import_graph` for a model's main graph."""

    def __init__(self, model: ModelProto):
        self.model = model
        self.opset = OnnxImporter.get_opset(model)
        self.import_domains = OnnxImporter.get_import_domains(model)
        self.dtypes: dict[int, object] = {}  # TensorProto data_type -> what gs stores as dtype
        self.itemsizes: dict[int, int] = {}
        self.types = TensorTypes(self.dtypes)
        self.tensors: dict[str, gs.Tensor] = {}
        self.has_subgraphs = False
        self.read_before_written = False  # some node reads a tensor a later node writes: not sorted
        self.node_text = False  # some node has free text graphsurgeon drops (ImportNotes)

    def graph(self) -> gs.Graph:
        model = self.model
        onnx_graph = model.graph
        tensors = self.tensors
        for initializer in onnx_graph.initializer:
            if initializer.name not in tensors:
                tensors[initializer.name] = self.constant(initializer)
        for info in onnx_graph.value_info:
            self.value_info(info)
        initializer_names = {t.name for t in onnx_graph.initializer}
        inputs = [self.io_tensor(i) for i in onnx_graph.input if i.name not in initializer_names]
        outputs = [self.io_tensor(o) for o in onnx_graph.output]
        nodes = [self.node(n) for n in onnx_graph.node]
        graph = _graph(nodes, inputs, outputs, onnx_graph, model, self.opset, self.import_domains)
        if self.has_subgraphs:
            graph._merge_subgraph_functions()  # as gs.Graph() does: subgraphs share the model's functions
        return graph

    def constant(self, proto: onnx.TensorProto) -> gs.Constant:
        """`OnnxImporter.import_tensor` of a TensorProto: a Constant over LazyValues."""
        data_type = proto.data_type
        itemsize = self.itemsizes.get(data_type)
        if itemsize is None:
            values = LazyValues(proto)  # first of its type: gs's own code (and its one-time warnings)
            self.dtypes[data_type] = values.dtype
            self.itemsizes[data_type] = get_itemsize(values.dtype)
        else:
            values = _new(LazyValues)
            fields = values.__dict__
            fields["tensor"] = proto
            fields["shape"] = shape = proto.dims
            fields["dtype"] = self.dtypes[data_type]
            fields["nbytes"] = math.prod(shape) * itemsize
        tensor = _new(gs.Constant)
        fields = tensor.__dict__
        fields["name"] = proto.name
        fields["inputs"] = _links(tensor, "outputs")
        fields["outputs"] = _links(tensor, "inputs")
        fields["_values"] = values
        fields["data_location"] = int(proto.data_location) if proto.HasField("data_location") else None
        fields["_export_dtype"] = None
        return tensor

    def variable_from(self, info: onnx.ValueInfoProto) -> gs.Variable:
        """`OnnxImporter.import_tensor` of a ValueInfoProto."""
        onnx_type = info.type
        if onnx_type.ByteSize() == 0:
            return _variable(info.name)
        if not onnx_type.HasField("tensor_type"):
            return OnnxImporter.import_tensor(info)
        return _variable(info.name, *self.types.read(info))

    def value_info(self, info: onnx.ValueInfoProto) -> None:
        # As gs: a repeated value_info fills in what the first one left unknown, nothing else.
        known = self.tensors.get(info.name)
        if known is None:
            self.tensors[info.name] = self.variable_from(info)
            return
        update = self.variable_from(info)
        if isinstance(known, gs.Variable):
            known.dtype = known.dtype or update.dtype
            known.shape = known.shape or update.shape

    def io_tensor(self, info: onnx.ValueInfoProto) -> gs.Tensor:
        tensor = self.tensors.get(info.name)
        if tensor is None:
            tensor = self.tensors[info.name] = self.variable_from(info)
        return tensor

    def node_tensor(self, name: str) -> gs.Tensor:
        tensor = self.tensors.get(name)
        if tensor is None:
            if not name:
                return _variable("")  # an omitted optional input/output: a fresh empty tensor each time
            tensor = self.tensors[name] = _variable(name)
        return tensor

    def node(self, proto: onnx.NodeProto) -> gs.Node:
        # Attributes first, as gs: a subgraph sees the tensors known before its node, and its nodes
        # come before their parent in the outer tensors' consumer lists.
        attribute = proto.attribute
        attrs = self.attributes(attribute) if attribute else OrderedDict()
        node = _new(gs.Node)
        inputs = _links(node, "outputs")
        outputs = _links(node, "inputs")
        known = self.tensors.get
        for name in proto.input:
            tensor = known(name) or self.node_tensor(name)
            _append(inputs, tensor)
            _append(tensor.outputs, node)
        for name in proto.output:
            tensor = known(name) or self.node_tensor(name)
            if tensor.outputs and not tensor.inputs and any(reader is not node for reader in tensor.outputs):
                self.read_before_written = True
            _append(outputs, tensor)
            _append(tensor.inputs, node)
        if not self.node_text and (proto.doc_string or proto.metadata_props):
            self.node_text = True
        fields = node.__dict__
        fields["op"] = proto.op_type
        fields["name"] = proto.name
        fields["attrs"] = attrs
        fields["inputs"] = inputs
        fields["outputs"] = outputs
        fields["domain"] = proto.domain if proto.HasField("domain") else None
        return node

    def attributes(self, protos) -> OrderedDict:
        """`OnnxImporter.import_attributes`; subgraphs are imported by gs itself."""
        attrs = OrderedDict()
        for attr in protos:
            kind = attr.type
            if attr.ref_attr_name:
                raise _Unsupported  # only meaningful inside functions
            if attr.doc_string:
                self.node_text = True
            if kind == AttributeProto.INTS:
                attrs[attr.name] = list(attr.ints)
            elif kind == AttributeProto.INT:
                attrs[attr.name] = attr.i
            elif kind == AttributeProto.FLOAT:
                attrs[attr.name] = attr.f
            elif kind == AttributeProto.STRING:
                attrs[attr.name] = attr.s.decode()
            elif kind == AttributeProto.FLOATS:
                attrs[attr.name] = list(attr.floats)
            elif kind == AttributeProto.TENSOR:
                attrs[attr.name] = self.constant(attr.t)
            elif kind == AttributeProto.STRINGS:
                attrs[attr.name] = [s.decode() for s in attr.strings]
            elif kind == AttributeProto.GRAPH:
                self.has_subgraphs = True
                attrs[attr.name] = OnnxImporter.import_graph(attr.g, OrderedDict(self.tensors), opset=self.opset,
                                                             import_domains=self.import_domains)
            else:  # kinds gs skips with a warning
                raise _Unsupported
        return attrs


def _graph(nodes, inputs, outputs, onnx_graph: onnx.GraphProto, model: ModelProto, opset, import_domains) -> gs.Graph:
    """`gs.Graph(...)` as `OnnxImporter.import_graph` calls it, less its walk over every node's
    attributes looking for subgraphs (done by the caller where there are some)."""
    graph = _new(gs.Graph)
    fields = graph.__dict__
    fields["nodes"] = nodes
    fields["inputs"] = inputs
    fields["outputs"] = outputs
    fields["name"] = onnx_graph.name
    fields["__name__"] = onnx_graph.name
    fields["doc_string"] = onnx_graph.doc_string
    fields["opset"] = gs.Graph.DEFAULT_OPSET if opset is None else opset
    fields["producer_name"] = model.producer_name
    fields["producer_version"] = model.producer_version
    fields["import_domains"] = import_domains
    fields["ir_version"] = model.ir_version
    fields["name_idx"] = 0
    fields["_functions"] = []
    return graph


# ----------------------------------------------------------------------------------------- export

def export_model(graph: gs.Graph, do_type_check: bool = True, **kwargs) -> ModelProto:
    """`gs.export_onnx(graph, do_type_check, **kwargs)`, byte for byte, built directly."""
    if kwargs or graph.functions:
        return gs.export_onnx(graph, do_type_check=do_type_check, **kwargs)
    try:
        return _Exporter(graph, do_type_check).model()
    except _Unsupported:
        return gs.export_onnx(graph, do_type_check=do_type_check)


class _Exporter:
    """`OnnxExporter.export_graph` plus `export_onnx`'s model around it."""

    def __init__(self, graph: gs.Graph, do_type_check: bool):
        self.graph = graph
        self.do_type_check = do_type_check
        self.onnx_dtypes: dict[object, int] = {}
        self.type_protos: dict[tuple, onnx.TypeProto] = {}
        self.has_subgraphs = False
        self.tensor_map: dict[str, gs.Tensor] = {}  # as `graph.tensors()` orders it

    def model(self) -> ModelProto:
        graph = self.graph
        model = ModelProto()
        model.ir_version = onnx.IR_VERSION  # as onnx.helper.make_model, overridden below like gs does
        onnx_graph = model.graph
        for tensor in graph.inputs:
            self.track(tensor)
        self.nodes(onnx_graph.node)
        for tensor in graph.outputs:
            self.track(tensor)
        for tensor in graph.inputs:
            self.value_info(onnx_graph.input, tensor)
        for tensor in graph.outputs:
            self.value_info(onnx_graph.output, tensor)
        self.initializers(onnx_graph.initializer)
        io_names = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
        for name, tensor in self.tensor_map.items():
            if (name not in io_names and isinstance(tensor, gs.Variable)
                    and (tensor.dtype is not None or tensor.shape is not None)):
                self.value_info(onnx_graph.value_info, tensor)
        onnx_graph.name = graph.name
        if graph.doc_string:
            onnx_graph.doc_string = graph.doc_string
        model.opset_import.extend(update_import_domains(graph) if self.has_subgraphs else
                                  _update_import_domains(graph))
        model.producer_name = graph.producer_name
        model.producer_version = graph.producer_version
        if graph.ir_version is not None:
            model.ir_version = graph.ir_version
        return model

    def track(self, tensor: gs.Tensor) -> None:
        """`graph.tensors()`'s walk; distinct tensors sharing a name go to gs (it warns about them)."""
        name = tensor.name
        if name == "":
            return
        known = self.tensor_map.setdefault(name, tensor)
        if known is not tensor:
            raise _Unsupported

    def nodes(self, repeated) -> None:
        named = set()
        track = self.track
        for node in self.graph.nodes:
            if type(node.op) is not str:
                raise _Unsupported  # onnx.helper.make_node raises its own error
            name = node.name
            if name:
                if name in named:
                    raise _Unsupported  # gs warns about duplicate node names
                named.add(name)
            for tensor in node.inputs:
                track(tensor)
            for tensor in node.outputs:
                track(tensor)
            proto = repeated.add(op_type=node.op, input=[t.name for t in node.inputs],
                                 output=[t.name for t in node.outputs])
            if name:
                proto.name = name
            if node.domain is not None:
                proto.domain = node.domain
            if node.attrs:
                self.attributes(proto.attribute, node.attrs)

    def attributes(self, repeated, attrs: dict) -> None:
        """`OnnxExporter.export_attributes`, with the plain Python kinds the importer makes done here."""
        for key, value in attrs.items():
            kind = type(value)
            if kind is int:
                repeated.add(name=key, i=value, type=AttributeProto.INT)
            elif kind is list and value and all(type(v) is int for v in value):
                repeated.add(name=key, ints=value, type=AttributeProto.INTS)
            elif kind is float:
                repeated.add(name=key, f=value, type=AttributeProto.FLOAT)
            elif kind is str:
                repeated.add(name=key, s=value.encode("utf-8"), type=AttributeProto.STRING)
            elif kind is list and value and all(type(v) is float for v in value):
                repeated.add(name=key, floats=value, type=AttributeProto.FLOATS)
            elif kind is gs.Constant and type(value._values) is LazyValues:
                repeated.add(name=key, t=_lazy_tensor_proto(value), type=AttributeProto.TENSOR)
            else:  # subgraphs, NumPy values, dtype classes, AttributeRefs, what onnx.helper refuses...
                self.has_subgraphs = self.has_subgraphs or isinstance(value, gs.Graph)
                repeated.extend(OnnxExporter.export_attributes({key: value}))

    def initializers(self, repeated) -> None:
        for tensor in self.tensor_map.values():
            if not isinstance(tensor, gs.Constant):
                continue
            values = tensor._values
            if type(values) is LazyValues:
                repeated.append(_lazy_tensor_proto(tensor))
            elif isinstance(values, SparseValues):
                raise _Unsupported
            elif type(values) is np.ndarray and tensor._export_dtype is None and self.whole_bytes(values.dtype):
                # `constant_to_onnx_tensor` without onnx.helper.make_tensor's checks and its dtype lookups
                # (a folded graph has thousands of small NumPy constants): the same fields, the same bytes.
                proto = repeated.add(name=tensor.name, data_type=self.onnx_dtypes[values.dtype],
                                     dims=values.shape, raw_data=values.tobytes())
                if tensor.data_location is not None:
                    proto.data_location = tensor.data_location
            else:
                repeated.append(OnnxExporter.export_tensor_proto(tensor))

    def whole_bytes(self, dtype: np.dtype) -> bool:
        """Whether raw data of `dtype` is its NumPy bytes as they are (no 2/4/6-bit packing, no strings)."""
        elem_type = self.onnx_dtypes.get(dtype)
        if elem_type is None:
            try:
                elem_type = self.onnx_dtypes[dtype] = dtype_to_onnx(dtype)
            except Exception:
                return False
        return elem_type in _WHOLE_BYTE_TYPES

    def value_info(self, repeated, tensor: gs.Tensor) -> None:
        """`OnnxExporter.export_value_info_proto`."""
        dtype = tensor.dtype
        if dtype is None:
            if self.do_type_check:
                raise _Unsupported  # gs.export_onnx raises its own error
            repeated.add(name=tensor.name)
            return
        type_proto = None
        if isinstance(tensor, gs.Constant) or tensor.type == "tensor_type":
            type_proto = self.tensor_type(dtype, tensor.shape)
        if type_proto is None:
            repeated.append(OnnxExporter.export_value_info_proto(tensor, do_type_check=False))
        else:
            repeated.add(name=tensor.name).type.CopyFrom(type_proto)

    def tensor_type(self, dtype, shape) -> onnx.TypeProto | None:
        """The tensor TypeProto gs would make, shared between equal types; None where that needs gs."""
        try:
            elem_type = self.onnx_dtypes.get(dtype)
        except TypeError:  # unhashable: let gs deal with it
            return None
        if elem_type is None:
            elem_type = self.onnx_dtypes[dtype] = dtype_to_onnx(dtype)
        if shape is None:
            key = (elem_type, None)
        else:
            # onnx.helper accepts exactly int, str and None as dimensions (not NumPy ints, not bool)
            for dim in shape:
                if dim is not None and type(dim) is not int and type(dim) is not str:
                    return None
            key = (elem_type, tuple(shape))
        type_proto = self.type_protos.get(key)
        if type_proto is None:
            type_proto = self.type_protos[key] = onnx.helper.make_tensor_type_proto(elem_type, shape)
        return type_proto


_WHOLE_BYTE_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BOOL,
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
})


def _lazy_tensor_proto(tensor: gs.Constant) -> onnx.TensorProto:
    """The original TensorProto of a not-yet-loaded constant, renamed in place as gs does."""
    proto = tensor._values.tensor
    proto.name = tensor.name
    return proto


def _update_import_domains(graph: gs.Graph):
    """`update_import_domains` (including its update of `graph.import_domains`) for a graph without
    subgraphs, less its walk over every node's attributes looking for them."""
    if graph.import_domains is None:
        graph.import_domains = [onnx.helper.make_opsetid("", graph.opset)]
    used_domains = {node.domain for node in graph.nodes}
    used_domains.discard(None)
    current_domains = {opsetid.domain for opsetid in graph.import_domains}
    for domain in used_domains:
        if domain not in current_domains:
            graph.import_domains.append(onnx.helper.make_opsetid(domain, 1))
            current_domains.add(domain)
    return graph.import_domains

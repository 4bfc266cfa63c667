"""What the rules look at, computed once per model and only when a rule asks: the loaded proto, the
target, what each node reads (and what it reads too early), a topologically sorted copy, strict shape
inference and the dtypes and shapes inference found (in local function bodies too, from their calls),
the opset in force for each domain, and which ops the installed ONNX Runtime's CPU build has kernels for."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from surgeon.check.config import Settings
from surgeon.graphinfo import all_nodes, node_reads, subgraphs
from surgeon.modelio import data_file_inside
from surgeon.targets import Target

STANDARD_DOMAINS = ("", "ai.onnx")
# ValueError: strict inference's "Invalid tensor data type 0." for a Cast to UNDEFINED, which the checker passes
INFERENCE_ERRORS = (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError)
_ONNX_DTYPE_NAMES = {"float": "float32", "double": "float64"}


@lru_cache(maxsize=None)
def dtype_name(elem_type: int) -> str:
    """ONNX element type as the profiles spell it: float32, float16, bfloat16, int64, bool, float8e4m3fn."""
    name = TensorProto.DataType.Name(elem_type).lower()
    return _ONNX_DTYPE_NAMES.get(name, name)


def type_str_dtype(type_str: str) -> str | None:
    """A schema's or kernel's type string as the profiles spell it (`tensor(float)` -> float32); None for
    what is not a tensor (`seq(tensor(float))`)."""
    if not type_str.startswith("tensor("):
        return None
    name = type_str[len("tensor("):-1]
    return _ONNX_DTYPE_NAMES.get(name, name)


@lru_cache(maxsize=None)
def ort_cpu_kernels() -> tuple:
    """The installed ONNX Runtime's CPU kernel registrations (`get_all_opkernel_def()`: domain, op_name,
    version_range, type_constraints), read once per process, when first asked."""
    from onnxruntime.capi.onnxruntime_pybind11_state import get_all_opkernel_def

    return tuple(k for k in get_all_opkernel_def() if k.provider == "CPUExecutionProvider")


@lru_cache(maxsize=None)
def ort_cpu_runs(domain: str, op_type: str) -> bool:
    """Whether the installed ONNX Runtime's CPU build has a kernel for `domain::op_type`."""
    return any(k.domain == domain and k.op_name == op_type for k in ort_cpu_kernels())


@dataclass(frozen=True)
class ExternalData:
    """Where an external tensor's data lies, as its `external_data` entries say: `file` is the data file beside
    the model (None where `location` is absolute or leaves the model's folder); `offset` and `length` are None
    where not given (`modelio.read_model` refuses those that are not byte counts)."""

    location: str
    file: Path | None
    offset: int | None
    length: int | None

    @classmethod
    def of(cls, tensor: TensorProto, model_path: Path) -> ExternalData:
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        offset, length = (int(entries[key]) if key in entries else None for key in ("offset", "length"))
        return cls(location, data_file_inside(model_path.resolve().parent, location), offset, length)


@dataclass
class ModelFacts:
    """One model as the rules see it (read without its external data)."""

    path: Path
    model: onnx.ModelProto
    target: Target
    settings: Settings = field(default_factory=Settings)

    @property
    def file(self) -> str:
        return str(self.path)

    @property
    def nodes(self):
        return self.model.graph.node

    @cached_property
    def target_key(self) -> str:
        """The whole profile as text (but `raw`), for caches that outlive one model: a TensorRT profile's repr
        is some 13,000 characters, made once per model rather than per node."""
        return repr(self.target)

    @property
    def node_paths(self) -> dict[int, str]:
        """id(node) -> how findings name it, for the nodes of the graph and of every subgraph (If/Loop/Scan
        bodies, recursively): `/Conv_3`, `#4` when unnamed, `If_0/then_branch/gs` or `/If/else_branch/else/ATen`
        inside a body."""
        return self._paths[0]

    @cached_property
    def _paths(self) -> tuple[dict[int, str], dict[int, tuple[str, onnx.NodeProto]]]:
        """(`node_paths`, id(node) -> (the path of the innermost If/Loop/Scan body holding it, `If_0/then_branch`,
        and the node holding that body), for the nodes in a body only)."""
        paths, bodies = {}, {}

        def walk(graph, prefix: str, holder) -> None:
            for index, node in enumerate(graph.node):
                name = node.name or f"#{index}"
                path = f"{prefix}{'' if name.startswith('/') else '/'}{name}" if prefix else name
                paths[id(node)] = path
                if holder is not None:
                    bodies[id(node)] = prefix, holder
                for attr, sub in subgraphs(node):
                    walk(sub, f"{path}/{attr}", node)

        walk(self.model.graph, "", None)
        for key, function in self.local_functions.items():
            walk(function, _function_label(key), None)
        return paths, bodies

    def body_holder(self, node) -> onnx.NodeProto | None:
        """The If/Loop/Scan node whose body holds `node` directly; None outside bodies."""
        found = self._paths[1].get(id(node))
        return found[1] if found else None

    def body_after_inlining(self, node, _callers: frozenset = frozenset()) -> str | None:
        """The path of the If/Loop/Scan body `node` runs in once the inline-functions pass has put each local
        function's body where its calls are; None where it then lies in the main graph, the only graph the
        passes that rewrite single nodes walk. A node of a function called only inside bodies lies in the
        body of its first call."""
        body = self._paths[1].get(id(node), (None,))[0]
        key = self._function_holding.get(id(node))
        if body is not None or key is None or key in _callers:  # a function calling itself is invalid ONNX
            return body
        bodies = [self.body_after_inlining(call, _callers | {key}) for call in self._calls.get(key, [])]
        return None if None in bodies or not bodies else bodies[0]

    @cached_property
    def _calls(self) -> dict[tuple[str, str, str], list[onnx.NodeProto]]:
        """The key of each local function -> the nodes calling it, in the graph, bodies and functions."""
        found: dict[tuple, list] = {}
        for node in self.all_nodes:
            if self.calls_local_function(node):
                found.setdefault(_call_key(node), []).append(node)
        return found

    @cached_property
    def graph_nodes(self) -> list:
        """The nodes of the graph and, after each node holding subgraphs, the nodes of those (recursively)."""
        return list(all_nodes(self.model.graph))

    @cached_property
    def all_nodes(self) -> list:
        """`graph_nodes`, then the nodes of each local function's body (its subgraphs' too): the rules that
        judge single nodes (ops, dtypes, plugins, references) look at all of them, as every runtime that
        takes a call runs its body's nodes."""
        return self.graph_nodes + [node for function in self.local_functions.values() for node in all_nodes(function)]

    @cached_property
    def local_functions(self) -> dict[tuple[str, str, str], onnx.FunctionProto]:
        """(domain, name, overload) -> the model-local function a node of that domain, op type and overload calls."""
        return {(f.domain, f.name, f.overload): f for f in self.model.functions}

    def calls_local_function(self, node) -> bool:
        return _call_key(node) in self.local_functions

    def called_function(self, node) -> onnx.FunctionProto | None:
        """The model-local function `node` calls, if it calls one."""
        return self.local_functions.get(_call_key(node))

    @cached_property
    def graphs(self) -> list:
        """The main graph and every subgraph (of local function bodies too), recursively."""
        found = [self.model.graph]
        found += [sub for node in self.all_nodes for _, sub in subgraphs(node)]
        return found

    def node_path(self, node) -> str:
        return self.node_paths.get(id(node)) or node.name or "?"

    @cached_property
    def opsets(self) -> dict[str, int]:
        return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in self.model.opset_import}

    @cached_property
    def tensors(self) -> list[tuple[str, onnx.TensorProto]]:
        """(what, tensor) for every tensor stored in the model: initializers (of subgraphs too) and the
        tensors of node attributes (Constant values, ...), `what` naming it for a finding."""
        found = []
        for graph in self.graphs:
            found += [(f"initializer '{t.name}'", t) for t in graph.initializer]
        for node in self.all_nodes:
            for attr in node.attribute:
                where = f"the '{attr.name}' tensor of node {self.node_path(node)}"
                if attr.type == onnx.AttributeProto.TENSOR:
                    found.append((where, attr.t))
                elif attr.type == onnx.AttributeProto.TENSORS:
                    found += [(where, t) for t in attr.tensors]
                elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    found += [(where, attr.sparse_tensor.values), (where, attr.sparse_tensor.indices)]
        return found

    @cached_property
    def external_tensors(self) -> list[tuple[str, ExternalData]]:
        """(what, where its data lies) for every tensor of `tensors` stored in external data."""
        return [(what, ExternalData.of(tensor, self.path)) for what, tensor in self.tensors
                if tensor.data_location == TensorProto.EXTERNAL]

    @property
    def has_external_data(self) -> bool:
        return bool(self.external_tensors)

    @cached_property
    def producers(self) -> dict[str, onnx.NodeProto]:
        """Tensor name -> the node of the main graph making it."""
        return {out: node for node in self.nodes for out in node.output if out}

    @cached_property
    def readers(self) -> dict[str, list[onnx.NodeProto]]:
        """Tensor name -> the nodes of the main graph reading it (an If/Loop reading it in a body included)."""
        found: dict[str, list] = {}
        for node, names in zip(self.nodes, self.reads):
            for name in dict.fromkeys(names):
                found.setdefault(name, []).append(node)
        return found

    def in_main_graph(self, node) -> bool:
        """Whether `node` is in the main graph, not an If/Loop/Scan body (passes rewrite the main graph)."""
        return id(node) in self._main_node_ids

    @cached_property
    def _main_node_ids(self) -> set[int]:
        return {id(node) for node in self.nodes}

    @cached_property
    def _initializers(self) -> dict[str, TensorProto]:
        return {t.name: t for t in self.model.graph.initializer}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a main-graph initializer or Constant output stored in the file, else None."""
        tensor = self._initializers.get(name)
        made_by = self.producers.get(name)
        if tensor is None and made_by is not None and made_by.op_type == "Constant":
            tensor = next((a.t for a in made_by.attribute if a.name == "value" and a.HasField("t")), None)
        if tensor is None or tensor.data_location == TensorProto.EXTERNAL:
            return None  # models are read without their external data
        return numpy_helper.to_array(tensor)

    @cached_property
    def reads(self) -> list[list[str]]:
        """Per node, the tensor names it reads (with those its subgraphs take from outside)."""
        return [node_reads(node) for node in self.nodes]

    @cached_property
    def late_reads(self) -> list[tuple[onnx.NodeProto, str, onnx.NodeProto]]:
        """(reader, tensor name, producer) for each tensor read before the node producing it, in the graph
        and inside If/Loop/Scan bodies (onnx.checker requires each body in order too; what a body reads
        from outside counts as read by the node holding it)."""
        late = []
        for graph in self.graphs:
            reads = self.reads if graph is self.model.graph else [node_reads(node) for node in graph.node]
            producer = {}
            for index, node in enumerate(graph.node):
                for name in node.output:
                    producer.setdefault(name, index)
            late += [(graph.node[index], name, graph.node[producer[name]]) for index, names in enumerate(reads)
                     for name in dict.fromkeys(names) if producer.get(name, -1) > index]
        return late

    @property
    def is_sorted(self) -> bool:
        return not self.late_reads

    @cached_property
    def sorted_model(self) -> onnx.ModelProto:
        """The model with nodes in topological order (the model itself when it already is, or cannot be)."""
        if self.is_sorted:
            return self.model
        from surgeon.graphio import export_model, import_graph
        from surgeon.rewrite import stable_toposort

        try:
            graph = import_graph(self.model)
            stable_toposort(graph)
            exported = export_model(graph)
        except Exception:  # noqa: BLE001  gs cannot import every broken graph; the checker then sees the original
            return self.model
        exported.ir_version = self.model.ir_version
        return exported

    @cached_property
    def inference(self) -> tuple[onnx.ModelProto | None, str | None]:
        """(shape-inferred model, None) or (None, the strict-mode error message)."""
        try:
            return _infer_shapes(self.sorted_model, strict=True), None
        except INFERENCE_ERRORS as exc:
            return None, str(exc).strip()

    @cached_property
    def typed_model(self) -> onnx.ModelProto:
        """The model with the types and shapes inference found: strict inference's result, else lenient
        inference's, which types every tensor but those a failing node (a bool Max, say) makes and what
        depends on them, else the model as the file declares it."""
        inferred, _ = self.inference
        if inferred is not None:
            return inferred
        try:
            return _infer_shapes(self.sorted_model, strict=False)
        except INFERENCE_ERRORS:
            return self.model

    @cached_property
    def tensor_types(self) -> dict[str, onnx.TypeProto.Tensor | TensorProto]:
        """Tensor name -> what says its dtype and shape, in the graph and its subgraphs: its inferred type
        where inference typed it (`typed_model`), the tensor itself for initializers and Constant values."""
        known = {}
        _collect_tensor_types(self.typed_model.graph, known)
        return known

    @cached_property
    def dtypes(self) -> dict[str, str]:
        """Tensor name -> dtype name (float32, int64, bool, ...) where known."""
        return _dtype_names_of(self.tensor_types)

    def shape(self, name: str) -> list[int | None] | None:
        """The dims of a tensor (None for a dim not known as a number), None where its rank is unknown."""
        found = self.tensor_types.get(name)
        if isinstance(found, TensorProto):
            return list(found.dims)
        if found is None or not found.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in found.shape.dim]

    def typed_input_dtype(self, node) -> str | None:
        """The dtype of the input the target's dtype rule for the node's op describes (`dtype_input`: the
        first input, or Where's data rather than its condition); None where that input is absent or unknown."""
        index = self.target.dtype_input(node.op_type) if node.domain in STANDARD_DOMAINS else 0
        function = self._function_holding.get(id(node))
        dtypes = self.dtypes if function is None else self.function_dtypes.get(function, {})
        return dtypes.get(node.input[index]) if len(node.input) > index and node.input[index] else None

    @cached_property
    def _function_holding(self) -> dict[int, tuple[str, str, str]]:
        """id(node) -> the key of the local function whose body (or a subgraph of it) holds the node."""
        return {id(node): key for key, function in self.local_functions.items() for node in all_nodes(function)}

    @cached_property
    def function_dtypes(self) -> dict[tuple[str, str, str], dict[str, str]]:
        """Per local function, the dtypes of its body's tensors (names are the body's own), inferred from the
        dtypes its calls pass in (calls inside other functions' bodies included); a tensor whose dtype differs
        between calls (a function called on float32 and on int64) is left out, and so is every tensor of a
        function nothing calls."""
        bodies: dict[tuple, list[dict[str, str]]] = {}
        seen: set[tuple] = set()

        def visit(nodes, dtypes: dict[str, str], callers: frozenset) -> None:
            for node in nodes:
                key = _call_key(node)
                function = self.local_functions.get(key)
                signature = (key, tuple(dtypes.get(name) for name in node.input))
                if function is None or key in callers or signature in seen:
                    continue  # a function calling itself is invalid ONNX: not followed
                seen.add(signature)
                body = _function_body_dtypes(self.model, function, signature[1])
                bodies.setdefault(key, []).append(body)
                visit(all_nodes(function), body, callers | {key})

        visit(self.graph_nodes, self.dtypes, frozenset())
        return {key: {name: dtype for name, dtype in found[0].items() if all(b.get(name) == dtype for b in found)}
                for key, found in bodies.items()}

    def op_version(self, node) -> int | None:
        """The ONNX version of a standard node's op at the model's opset (e.g. Split at opset 18 -> 18)."""
        try:
            return onnx.defs.get_schema(node.op_type, self.opsets.get("", 1), "").since_version
        except onnx.defs.SchemaError:
            return None

    @property
    def static_shapes_required(self) -> bool:
        if self.settings.static_shapes is not None:
            return self.settings.static_shapes
        return self.target.static_shapes


def _collect_tensor_types(graph: onnx.GraphProto, known: dict) -> None:
    """Tensor name -> what says its dtype and shape (its ValueInfo's tensor type, an initializer, a Constant's
    value) for `graph` and its subgraphs, into `known`."""
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            known[value.name] = value.type.tensor_type
    for tensor in graph.initializer:
        known[tensor.name] = tensor
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and node.output:
                known[node.output[0]] = value
        for _, sub in subgraphs(node):
            _collect_tensor_types(sub, known)


def _dtype_names_of(tensor_types: dict) -> dict[str, str]:
    return {name: dtype_name(t.data_type if isinstance(t, TensorProto) else t.elem_type)
            for name, t in tensor_types.items()}


def _call_key(node) -> tuple[str, str, str]:
    return node.domain, node.op_type, node.overload


def _function_label(key: tuple[str, str, str]) -> str:
    domain, name, overload = key
    return f"{domain}::{name}" + (f":{overload}" if overload else "")


def _function_body_dtypes(model: onnx.ModelProto, function: onnx.FunctionProto, inputs: tuple) -> dict[str, str]:
    """The dtypes of a function body's tensors for one call, given the dtypes the call passes in (None: unknown),
    by lenient inference on the body as a graph of its own; {} where inference fails."""
    def value(name, dtype):
        return (onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)
                if dtype else onnx.helper.make_empty_tensor_value_info(name))

    typed = [value(name, dtype) for name, dtype in zip(function.input, inputs)]
    graph = onnx.helper.make_graph(list(function.node), function.name, typed,
                                   [onnx.helper.make_empty_tensor_value_info(name) for name in function.output])
    body = onnx.helper.make_model(graph, opset_imports=list(function.opset_import), functions=list(model.functions),
                                  ir_version=model.ir_version)
    try:
        inferred = _infer_shapes(body, strict=False)
    except INFERENCE_ERRORS:
        return {}
    known: dict = {}
    _collect_tensor_types(inferred.graph, known)
    return _dtype_names_of(known)


def _infer_shapes(model: onnx.ModelProto, strict: bool) -> onnx.ModelProto:
    from surgeon.inference import computes_shapes
    from surgeon.modelio import stdout_to_stderr

    with stdout_to_stderr():  # data propagation only where it can find something, as in a run
        return onnx.shape_inference.infer_shapes(model, check_type=strict, strict_mode=strict,
                                                 data_prop=computes_shapes(model))


def is_standard_op(node) -> bool:
    """A node of the default domain whose op type ONNX defines."""
    return node.domain in STANDARD_DOMAINS and _onnx_defines(node.op_type)


@lru_cache(maxsize=None)
def _onnx_defines(op_type: str) -> bool:
    return onnx.defs.has(op_type, "")

"""What the rules look at, computed once per model and only when a rule asks: the loaded proto, the
target, what each node reads (and what it reads too early), a topologically sorted copy, strict shape
inference and the dtypes it found, and the opset in force for each domain."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import onnx
from onnx import TensorProto

from surgeon.check.config import Settings
from surgeon.graphinfo import all_nodes, node_reads, subgraphs
from surgeon.targets import Target

STANDARD_DOMAINS = ("", "ai.onnx")
_ONNX_DTYPE_NAMES = {"float": "float32", "double": "float64"}


@lru_cache(maxsize=None)
def dtype_name(elem_type: int) -> str:
    """ONNX element type as the profiles spell it: float32, float16, bfloat16, int64, bool, float8e4m3fn."""
    name = TensorProto.DataType.Name(elem_type).lower()
    return _ONNX_DTYPE_NAMES.get(name, name)


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
    def node_paths(self) -> dict[int, str]:
        """id(node) -> how findings name it, for the nodes of the graph and of every subgraph (If/Loop/Scan
        bodies, recursively): `/Conv_3`, `#4` when unnamed, `If_0/then_branch/gs` or `/If/else_branch/else/ATen`
        inside a body."""
        paths = {}

        def walk(graph, prefix: str) -> None:
            for index, node in enumerate(graph.node):
                name = node.name or f"#{index}"
                path = f"{prefix}{'' if name.startswith('/') else '/'}{name}" if prefix else name
                paths[id(node)] = path
                for attr, sub in subgraphs(node):
                    walk(sub, f"{path}/{attr}")

        walk(self.model.graph, "")
        return paths

    @cached_property
    def all_nodes(self) -> list:
        """The nodes of the graph and, after each node holding subgraphs, the nodes of those (recursively):
        the rules that judge single nodes (ops, dtypes, plugins, references) look at all of them."""
        return list(all_nodes(self.model.graph))

    @cached_property
    def graphs(self) -> list:
        """The main graph and every subgraph, recursively."""
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
    def has_external_data(self) -> bool:
        return any(t.data_location == TensorProto.EXTERNAL for _, t in self.tensors)

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
        from surgeon.modelio import stdout_to_stderr

        try:
            with stdout_to_stderr():
                inferred = onnx.shape_inference.infer_shapes(self.sorted_model, check_type=True, strict_mode=True,
                                                             data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError) as exc:
            return None, str(exc).strip()
        return inferred, None

    @cached_property
    def dtypes(self) -> dict[str, str]:
        """Tensor name -> dtype name, from shape inference where it worked, else from what the file declares."""
        known = {}

        def collect(graph) -> None:
            for value in list(graph.input) + list(graph.output) + list(graph.value_info):
                if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                    known[value.name] = dtype_name(value.type.tensor_type.elem_type)
            for tensor in graph.initializer:
                known[tensor.name] = dtype_name(tensor.data_type)
            for node in graph.node:
                if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
                    value = next((a.t for a in node.attribute if a.name == "value"), None)
                    if value is not None and node.output:
                        known[node.output[0]] = dtype_name(value.data_type)
                for _, sub in subgraphs(node):
                    collect(sub)

        collect((self.inference[0] or self.model).graph)
        return known

    def typed_input_dtype(self, node) -> str | None:
        """The dtype of the input the target's dtype rule for the node's op describes (`dtype_input`: the
        first input, or Where's data rather than its condition); None where that input is absent or unknown."""
        index = self.target.dtype_input(node.op_type) if node.domain in STANDARD_DOMAINS else 0
        return self.dtypes.get(node.input[index]) if len(node.input) > index and node.input[index] else None

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


def is_standard_op(node) -> bool:
    """A node of the default domain whose op type ONNX defines."""
    return node.domain in STANDARD_DOMAINS and _onnx_defines(node.op_type)


@lru_cache(maxsize=None)
def _onnx_defines(op_type: str) -> bool:
    return onnx.defs.has(op_type, "")

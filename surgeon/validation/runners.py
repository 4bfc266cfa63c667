"""Polygraphy runners for validation: ONNX Runtime where it can load the model, else our reference runner.

The reference runner runs graphs ONNX Runtime refuses (ATen fallback nodes, mmcv/mmdeploy custom
ops, TensorRT-plugin op types). It splits the graph into maximal runs of standard nodes, each run by
one ONNX Runtime session, and executes the other nodes one by one with their registered CPU
references (`surgeon.reference.find_reference`), standard op types with non-standard attributes
(libspconv's `Reshape(dims=)`) included::

    x ─► [ORT: Conv, Relu, … 300 nodes] ─► ATen(grid_sampler) ─► [ORT: Add, MatMul, …] ─► y
             one session                    NumPy reference        one session

Standard nodes are scheduled ahead of special ones whenever their inputs allow, so a graph with k
special nodes needs at most k + 1 sessions. A standard segment ONNX Runtime cannot load (a kernel it
lacks for some dtype, for instance) falls back to `onnx.reference.ReferenceEvaluator`.
"""
from __future__ import annotations

import contextlib
import heapq
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata

from surgeon.errors import ModelError, SurgeonError, first_line
from surgeon.graphinfo import declared_dims, node_reads, op_label
from surgeon.modelio import inlined_header, model_header, serialize_model, take_header, write_with_external_data
from surgeon.plugins.specs import plugin_specs
from surgeon.reference import call_reference, find_reference
from surgeon.validation import polygraphy_log  # noqa: F401  (Polygraphy's messages to stderr, not stdout)

RUNNER_KINDS = ("auto", "onnxruntime", "reference")
#: Domains ONNX Runtime implements itself.
ORT_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
#: ONNX Runtime 1.31 reads IR versions up to 13 (DESIGN.md); models and segments it runs are written at
#: 10, the version this project builds graphs with, which every ONNX Runtime since 1.16 reads.
ORT_MAX_IR_VERSION = 10


def is_special(node: onnx.NodeProto, opset: int | None = None) -> bool:
    """True for a node ONNX Runtime cannot run: ATen, a custom domain, an op type unknown to ONNX (at
    `opset`), or a standard op with attributes its schema lacks (libspconv's `Reshape(dims=)`)."""
    domain = node.domain or ""
    if node.op_type == "ATen" or domain not in ORT_DOMAINS:
        return True
    if domain not in ("", "ai.onnx"):
        return False
    try:
        schema = onnx.defs.get_schema(node.op_type, opset or onnx.defs.onnx_opset_version())
    except onnx.defs.SchemaError:
        return True
    return any(a.name not in schema.attributes for a in node.attribute)


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def make_runner(model: onnx.ModelProto, kind: str = "auto", name: str = "model", session=None,
                what: str | None = None) -> BaseRunner:
    """A Polygraphy runner for `model`: `onnxruntime`, `reference`, or `auto` (ORT when it loads the model).

    `session`: the ONNX Runtime session `check_runnable` built for `model` (runner 'onnxruntime'), run
    instead of building a second one. `what` names the model in errors (default "the NAME model")."""
    if kind not in RUNNER_KINDS:
        raise SurgeonError(f"unknown runner '{kind}'; choose one of {', '.join(RUNNER_KINDS)}")
    if session is not None:
        return OnnxrtRunner(session, name=name)
    what = what or f"the {name} model"
    if kind == "reference":  # one inlined copy, checked and kept by the runner
        inlined = with_functions_inlined(model)
        check_runnable(inlined, what=what)
        return ReferenceRunner(inlined, name=name)
    with functions_inlined(model):
        check_runnable(model, what=what)
        opset = default_opset(model)
        if not (kind == "auto" and any(is_special(n, opset) for n in model.graph.node)):
            try:
                return OnnxrtRunner(ort_session(model), name=name)
            except Exception as exc:  # ORT raises its own exception types for unloadable graphs
                if kind == "onnxruntime":
                    raise _ort_refuses(exc, what) from None
    return ReferenceRunner(with_functions_inlined(model), name=name)


@contextlib.contextmanager
def functions_inlined(model: onnx.ModelProto):
    """`model` itself with its local functions' calls replaced by their bodies while the block runs (so
    that the nodes inside them are checked and run like any other), as it was again after.

    In place, to hold no second copy of the weights: ONNX Runtime copies them into its session anyway."""
    if not model.functions:
        yield model
        return
    inlined, before = inlined_header(model), model_header(model)
    take_header(model, inlined)
    try:
        yield model
    finally:
        take_header(model, before)


def with_functions_inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with its local functions' calls replaced by their bodies, so that the nodes inside
    them are run like any other (ATen and custom nodes in a body by their CPU references); `model` if it
    has none."""
    if not model.functions:
        return model
    inlined = inlined_header(model)
    inlined.graph.initializer.extend(model.graph.initializer)
    return inlined


def _ort_refuses(exc: Exception, what: str, file=None) -> SurgeonError:
    return SurgeonError(f"ONNX Runtime cannot load {'the model' if file is not None else what}: {first_line(exc)} "
                        "(use --runner reference / 'runner: reference')", file=file)


def check_runnable(model: onnx.ModelProto, file=None, what: str = "the model", runner: str | None = None):
    """Refuse a graph no runner can run because a node it needs reads a tensor nothing provides (no
    node, graph input or initializer): onnx.checker's "input 'x' of node ... is not output of any
    previous nodes". ModelError naming `file` (else `what`), the node and the tensor.

    With `runner` ('auto' or 'reference'), also a node ONNX Runtime cannot run that has no CPU
    reference; with 'onnxruntime', a graph ONNX Runtime cannot load: found before anything runs (or
    is written), not when the runner starts. To find that out it builds the model's session, which it
    returns for `make_runner` (None for the other runners). An error without a file of its own (from
    inlining the local functions, or a node without a CPU reference) names `file`."""
    try:
        with functions_inlined(model):
            return _check_runnable(model, file, what, runner)
    except SurgeonError as exc:
        exc.file = exc.file or (str(file) if file is not None else None)
        raise


def _check_runnable(model: onnx.ModelProto, file, what: str, runner: str | None):
    if runner in ("auto", "reference"):
        opset = default_opset(model)
        for node in _live_nodes(model):
            if is_special(node, opset):
                _reference_for(node, model)
    graph = model.graph
    prefix = "" if file is not None else f"{what}: "
    _check_interface(model, prefix, file)
    provided = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    provided |= {t.values.name for t in graph.sparse_initializer}
    provided |= {out for node in graph.node for out in node.output if out}
    hint = f"'surgeon check {file}' lists what onnx.checker finds" if file is not None else None
    for node in _live_nodes(model):
        for name in node_reads(node):
            if name not in provided:
                raise ModelError(f"{prefix}node '{node.name}' ({op_label(node)}) reads '{name}', which no node, "
                                 "graph input or initializer provides, so the model cannot run", file=file, hint=hint)
    for output in graph.output:
        if output.name not in provided:
            raise ModelError(f"{prefix}graph output '{output.name}' is made by no node, graph input or initializer, "
                             "so the model cannot run", file=file, hint=hint)
        kind = _not_comparable(output.type)
        if kind:  # found here, before anything runs or is written; surgeon.validation.spill refuses the values too
            raise ModelError(f"{prefix}graph output '{output.name}' is {kind}: validation compares numeric and bool "
                             "tensor outputs only", file=file)
    if runner != "onnxruntime":
        return None
    try:
        return ort_session(model)
    except Exception as exc:  # ORT raises its own exception types for unloadable graphs
        raise _ort_refuses(exc, what, file) from None


def _not_comparable(value_type: onnx.TypeProto) -> str | None:
    """What a declared output type is where validation cannot judge its values, else None."""
    kind = value_type.WhichOneof("value")
    if kind in ("sequence_type", "map_type", "optional_type"):
        return {"sequence_type": "a sequence", "map_type": "a map", "optional_type": "an optional"}[kind]
    if kind == "tensor_type" and value_type.tensor_type.elem_type == onnx.TensorProto.STRING:
        return "a string tensor"
    return None


def _check_interface(model: onnx.ModelProto, prefix: str, file) -> None:
    """Refuse what no runner can be fed or asked for: a graph input that is not a tensor of a known
    element type and rank (Polygraphy checks every feed against the declared shape, and ONNX Runtime
    reports an unknown rank as a scalar), or a graph without outputs."""
    for value in graph_inputs(model):
        kind, hint = value.type.WhichOneof("value"), None
        if kind != "tensor_type":
            why = f"is a {kind.removesuffix('_type') if kind else 'value without a type'}, not a tensor"
        elif declared_dtype(value) is None:
            why = f"has element type {value.type.tensor_type.elem_type}, which no runner can be fed"
        elif declared_dims(value) is None:
            why = "declares no shape (unknown rank), which Polygraphy's runners cannot feed"
            hint = "declare its rank; its dimensions may be dynamic"
        else:
            continue
        raise ModelError(f"{prefix}graph input '{value.name}' {why}, so the model cannot be validated", file=file,
                         hint=hint)
    if not model.graph.output:
        raise ModelError(f"{prefix}the graph has no outputs, so there is nothing to compare", file=file)


def runner_kind(runner: BaseRunner) -> str:
    return "reference" if isinstance(runner, ReferenceRunner) else "onnxruntime"


def ort_session(model: onnx.ModelProto, spinning: bool = True):
    """A CPU session; `spinning=False` for sessions that run by turns (the reference runner's segments),
    whose idle thread pools would otherwise spin and steal the CPU from the one running."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures reach the user as SurgeonErrors naming the nodes instead
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    with _ir_version_at_most(model, ORT_MAX_IR_VERSION):
        serialized = serialize_model(model)
    if serialized is not None:
        return ort.InferenceSession(serialized, options, providers=providers)
    # Past protobuf's 2 GB limit the model has no bytes: ONNX Runtime reads it from a file with external
    # data instead, copying the weights while it builds the session, so the folder can go right after.
    with tempfile.TemporaryDirectory(prefix="surgeon-ort-") as folder:
        path = Path(folder) / "model.onnx"
        write_with_external_data(model, path, "weights.bin", size_threshold=0,
                                 ir_version=min(model.ir_version or ORT_MAX_IR_VERSION, ORT_MAX_IR_VERSION))
        return ort.InferenceSession(str(path), options, providers=providers)


@contextlib.contextmanager
def _ir_version_at_most(model: onnx.ModelProto, version: int):
    """`model` declaring at most IR `version` while the block runs (set in place: a copy would double
    the memory a model of gigabytes takes)."""
    declared = model.ir_version
    model.ir_version = min(declared, version)
    try:
        yield
    finally:
        model.ir_version = declared


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The model's real inputs (older exporters also list initializers as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def input_metadata(model: onnx.ModelProto) -> TensorMetadata:
    """Names, dtypes and shapes (None for dynamic dimensions) of the model's inputs."""
    meta = TensorMetadata()
    for value in graph_inputs(model):
        meta.add(value.name, declared_dtype(value), declared_dims(value))
    return meta


def declared_dtype(value: onnx.ValueInfoProto) -> np.dtype | None:
    """The NumPy dtype of a tensor's declared element type; None when it has none (0, UNDEFINED), or one
    onnx does not know (a newer version's, or a damaged file's)."""
    elem_type = value.type.tensor_type.elem_type
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else None
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class _Segment:
    """A run of standard nodes (one ORT session) or a single special node (its CPU reference)."""

    nodes: list[onnx.NodeProto]
    special: bool
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    reference: object = None
    session: object = None
    evaluator: object = None
    ort_error: str = ""


class ReferenceRunner(BaseRunner):
    """Runs a model with ONNX Runtime segments and CPU references for the nodes ORT cannot run."""

    def __init__(self, model: onnx.ModelProto, name: str | None = None):
        super().__init__(name=name, prefix="surgeon-reference-runner")
        self.model = model

    def activate_impl(self):
        self.initializers = {t.name: numpy_helper.to_array(t) for t in self.model.graph.initializer}
        self.segments = _plan(self.model, set(self.initializers))
        for segment in self.segments:
            if segment.special:
                segment.reference = _reference_for(segment.nodes[0], self.model)

    def get_input_metadata_impl(self):
        return input_metadata(self.model)

    def infer_impl(self, feed_dict):
        started = time.perf_counter()
        values = dict(feed_dict)
        for segment in self.segments:
            inputs = [values[name] for name in segment.inputs]
            if segment.special:
                produced = self._run_special(segment, values)
            else:
                produced = self._run_standard(segment, inputs)
            values.update(zip(segment.outputs, produced))
        outputs = OrderedDict((o.name, _lookup(values, self.initializers, o.name)) for o in self.model.graph.output)
        self.inference_time = time.perf_counter() - started
        return outputs

    def deactivate_impl(self):
        del self.initializers
        del self.segments

    def _run_special(self, segment: _Segment, values: dict) -> list[np.ndarray]:
        node = segment.nodes[0]
        args = [None if not name else _lookup(values, self.initializers, name) for name in node.input]
        attrs = {a.name: _attribute_value(a) for a in node.attribute}
        try:
            produced = call_reference(segment.reference, args, attrs, node, self.model)
        except Exception as exc:
            raise SurgeonError(f"the CPU reference of node '{node.name}' ({op_label(node)}) failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        named = dict(zip(node.output, produced))
        if len(produced) < len([o for o in node.output if o]):
            raise SurgeonError(f"the CPU reference of node '{node.name}' ({op_label(node)}) returned "
                               f"{len(produced)} output(s), the node has {len(node.output)}")
        return [named[name] for name in segment.outputs]

    def _run_standard(self, segment: _Segment, inputs: list[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(segment.inputs, inputs))
        if segment.session is None and segment.evaluator is None:
            model = _segment_model(self.model, segment, feeds)
            try:
                segment.session = ort_session(model, spinning=False)
            except Exception as exc:  # e.g. libspconv's Reshape(dims=): ONNX's own evaluator is more lenient
                from onnx.reference import ReferenceEvaluator

                segment.ort_error = first_line(exc)
                try:
                    segment.evaluator = ReferenceEvaluator(model)
                except Exception as refused:  # e.g. a com.microsoft op ONNX Runtime has no CPU kernel for
                    raise _cannot_run(segment, refused) from refused
        try:
            if segment.session is not None:
                return segment.session.run(segment.outputs, feeds)
            return segment.evaluator.run(segment.outputs, feeds)
        except Exception as exc:  # either runtime's own exception types
            raise _cannot_run(segment, exc) from exc


def _cannot_run(segment: _Segment, exc: Exception) -> SurgeonError:
    first, last = segment.nodes[0], segment.nodes[-1]
    cause = f"ONNX Runtime: {segment.ort_error}; onnx.reference: " if segment.ort_error else ""
    return SurgeonError(f"cannot run the {len(segment.nodes)} node(s) from '{first.name}' to "
                        f"'{last.name}': {cause}{first_line(exc)}")


def _lookup(values: dict, initializers: dict, name: str) -> np.ndarray:
    return values[name] if name in values else initializers[name]


def _attribute_value(attribute: onnx.AttributeProto):
    value = helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return value


def _reference_for(node: onnx.NodeProto, model: onnx.ModelProto):
    operator = None
    if node.op_type == "ATen":
        operator = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "operator"), b"")
        operator = operator.decode() if isinstance(operator, bytes) else operator
    fn = find_reference(node.op_type, node.domain, operator)
    if fn is not None:
        return fn
    spec = plugin_specs().get(node.op_type)
    if spec is not None:  # a plugin's reference answers in the domains its spec names only
        domain = f"domain '{node.domain}'" if node.domain else "the default domain"
        raise SurgeonError(f"node '{node.name}' ({op_label(node)}) has no CPU reference in {domain} "
                           f"(plugin spec {spec.name} answers in {spec.domains}: add it to plugin_spec(domains=...)), "
                           "so the graph cannot be validated")
    why = "has no CPU reference"
    if (node.domain or "") in ("", "ai.onnx") and onnx.defs.has(node.op_type):
        why = (f"is not a standard {node.op_type} at opset {default_opset(model)} (attributes: "
               f"{', '.join(a.name for a in node.attribute) or 'none'}) and has no CPU reference")
    raise SurgeonError(f"node '{node.name}' ({op_label(node)}) {why}, so the graph cannot be validated: "
                       "register one with @reference_op (see docs/validation.md)")


def _plan(model: onnx.ModelProto, initializers: set[str]) -> list[_Segment]:
    """Split the graph into segments, scheduling ready standard nodes before any special node."""
    nodes = _live_nodes(model)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    reads = [node_reads(node) for node in nodes]
    waiting_on = [{producer[n] for n in names if n in producer} for names in reads]
    users: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    for i, deps in enumerate(waiting_on):
        for dep in deps:
            users[dep].append(i)
    opset = default_opset(model)
    special = [is_special(n, opset) for n in nodes]
    ready = {True: [], False: []}
    for i, deps in enumerate(waiting_on):
        if not deps:
            heapq.heappush(ready[special[i]], i)
    segments: list[_Segment] = []
    current: list[int] = []

    def done(i: int) -> None:
        for user in users[i]:
            waiting_on[user].discard(i)
            if not waiting_on[user]:
                heapq.heappush(ready[special[user]], user)

    while ready[False] or ready[True]:
        if ready[False]:
            i = heapq.heappop(ready[False])
            current.append(i)
            done(i)
            continue
        if current:
            segments.append(_Segment([nodes[j] for j in current], special=False))
            current = []
        i = heapq.heappop(ready[True])
        segments.append(_Segment([nodes[i]], special=True))
        done(i)
    if current:
        segments.append(_Segment([nodes[j] for j in current], special=False))
    if sum(len(s.nodes) for s in segments) != len(nodes):
        raise SurgeonError("the graph has a cycle or reads a tensor nothing produces; run 'toposort' first")
    _wire(segments, model, initializers)
    return segments


def _live_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes the graph outputs depend on, in graph order; dead ones may not even be runnable."""
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    live: set[int] = set()
    pending = [o.name for o in model.graph.output]
    while pending:
        index = producer.get(pending.pop())
        if index is not None and index not in live:
            live.add(index)
            pending.extend(node_reads(nodes[index]))
    return [node for i, node in enumerate(nodes) if i in live]


def _wire(segments: list[_Segment], model: onnx.ModelProto, initializers: set[str]) -> None:
    """Give each segment the tensors it reads from outside and those it must hand on."""
    needed_later = {o.name for o in model.graph.output}
    for segment in reversed(segments):
        produced = {out for node in segment.nodes for out in node.output if out}
        read = [name for node in segment.nodes for name in node_reads(node)]
        segment.outputs = [out for node in segment.nodes for out in node.output if out and out in needed_later]
        if segment.special:
            # A reference returns every output; keep them all (unused ones are simply dropped).
            segment.outputs = [out for out in segment.nodes[0].output if out]
        segment.inputs = list(dict.fromkeys(n for n in read if n not in produced and n not in initializers))
        needed_later.update(segment.inputs)
    for segment in segments:
        if segment.special:
            segment.inputs = []  # references read their inputs by name, initializers included


def _segment_model(model: onnx.ModelProto, segment: _Segment, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    read = {name for node in segment.nodes for name in node_reads(node)}
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(feeds[name].dtype), None)
              for name in segment.inputs]
    outputs = [helper.make_empty_tensor_value_info(name) for name in segment.outputs]
    inits = [t for t in model.graph.initializer if t.name in read]
    graph = helper.make_graph(segment.nodes, f"{model.graph.name}_segment", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=list(model.opset_import),
                             ir_version=min(model.ir_version or ORT_MAX_IR_VERSION, ORT_MAX_IR_VERSION))

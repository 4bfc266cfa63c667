"""The model rules of `surgeon check`: each reads `ModelFacts` and yields findings.

A rule is a function registered with `@model_rule(id, name, severity, summary, fix)`; its id never
changes meaning. The fix names the pass (and mode) that removes the finding, so a finding reads

    SG001 error node /ATen_12 (ATen:grid_sampler) not runnable on tensorrt-8.6 — fix: pass grid-sample (native GridSample), or mode=plugin or mode=decompose

Where no pass removes it, a finding carries `advice` instead (list your plugin in a profile, run grid-sample
with `fma_emulation: none`), printed `— fix: <advice>`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections import Counter

import numpy as np
import onnx

from surgeon.check.facts import STANDARD_DOMAINS, ModelFacts, is_standard_op, ort_cpu_runs, type_str_dtype
from surgeon.check.findings import Finding, model_rule
from surgeon.registry import get_pass, passes_handling
from surgeon.graphinfo import op_label, subgraphs
from surgeon.modelio import stdout_to_stderr
from surgeon.reference import find_reference

CLIP_INTEGER_OPSET = 12  # Clip-12 added integer types
INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _finding(facts: ModelFacts, rule: str, severity: str, message: str, node=None, fix: str | None = None,
             advice: str | None = None):
    return Finding(rule=rule, severity=severity, message=message, file=facts.file,
                   node=facts.node_path(node) if node is not None else None,
                   op=op_label(node) if node is not None else None, fix=fix, advice=advice)


def fix_for(node, target) -> str | None:
    """The pass (and mode) that rewrites `node` into something `target` runs, if one exists.

    Passes declare the op labels they rewrite (`Pass.handles`), so this table is never kept by hand.
    """
    fixes = [cls.fix_hint(target) for cls in passes_handling(op_label(node))]
    return " or ".join(fixes) if fixes else None


def fix_reaching(facts: ModelFacts, node, fix: str | None) -> tuple[str | None, str]:
    """(the fix for `node` as it can be applied, why there is none, for the message). The passes that rewrite
    single nodes walk the main graph only, not If/Loop/Scan bodies (tests/test_check_rules.py runs them on a
    node in an If branch): a node of a local function's body gets `inline-functions` first, which puts it in
    the main graph, and a node in a branch of a main-graph If whose condition is a constant gets `simplify`
    first, which folds the If into the branch taken (or drops the node with the other); any other node in a
    body gets no fix."""
    if fix is None or facts.in_main_graph(node):
        return fix, ""
    holder = facts.body_holder(node)
    if holder is not None and holder.op_type == "If" and facts.in_main_graph(holder) and holder.input and \
            facts.constant(holder.input[0]) is not None:
        return f"simplify, then {fix}", ""
    body = facts.body_after_inlining(node)
    if body is None:
        return f"inline-functions, then {fix}", ""
    return None, (f"; it runs inside the If/Loop/Scan body {body}, which no pass rewrites (in the main graph the "
                  f"fix would be: {fix}): rewrite the body by hand, or export with the op outside control flow "
                  "(simplify folds an If into its branch only where the condition is a constant)")


def _aten_operator(node) -> str | None:
    value = next((a.s for a in node.attribute if a.name == "operator"), None)
    return value.decode() if value is not None else None


# ---------------------------------------------------------------- validity

@model_rule("SG014", "onnx-checker", "error", "onnx.checker rejects the model (structure, attributes, IR rules)")
def onnx_checker(facts: ModelFacts):
    # Together with SG015 this is onnx.checker's full_check. It runs on the topologically sorted model so an
    # ordering problem (SG008) does not hide the next one. Given a proto, not a path, the checker resolves
    # external-data locations against the working directory: it runs from the model's folder then.
    if not facts.target.onnx_checker:
        return
    folder = facts.path.resolve().parent if facts.has_external_data else None
    try:
        with stdout_to_stderr(), _working_directory(folder):
            onnx.checker.check_model(facts.sorted_model, full_check=False)
    except onnx.checker.ValidationError as exc:
        message = _first_line(exc)
        # Where the graph could not be sorted (gs cannot import it), ordering errors are SG008's; on the sorted
        # copy "must be topologically sorted" means a tensor nothing produces (a dangling input): reported.
        if facts.is_sorted or facts.sorted_model is not facts.model or "topologically sorted" not in message:
            yield _finding(facts, "SG014", "error", f"onnx.checker: {message}")


@contextlib.contextmanager
def _working_directory(folder):
    if folder is None:
        yield
        return
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@model_rule("SG015", "shape-inference", "error", "strict ONNX shape inference fails (type or shape conflict)",
            fix="pass pool-rank")
def shape_inference(facts: ModelFacts):
    error = facts.inference[1]
    if error is None:
        return
    untyped = {name for node in facts.nodes if not is_standard_op(node) for name in node.output}
    problems = list(_inference_problems(facts, _first_line(error)))
    if not problems:
        yield _finding(facts, "SG015", "error", f"shape inference (strict): {_first_line(error)}")
    for node, problem in problems:
        if node is not None:
            untyped.update(node.output)
        if problem.endswith(NESTED_ERRORS):  # an If/Loop/Scan or a call: the problems that follow are its body's
            continue
        # A node reading an untyped output (of an ATen/custom node, or of a node that failed already) only
        # echoes the cause, which SG001/SG002 or an earlier SG015 finding reports.
        if node is not None and "instead is null" in problem and any(i in untyped for i in node.input):
            continue
        fix, why_no_pass = fix_reaching(facts, node, _shape_fix(node, problem))
        yield _finding(facts, "SG015", "error", f"shape inference (strict): {problem}{why_no_pass}", node, fix=fix)


def _inference_problems(facts: ModelFacts, error: str):
    """(node or None, problem) for each node strict inference names in `error`. A failing If/Loop/Scan body or
    local function body is one problem of the node holding or calling it, `Inference error(s):`, followed by
    its own nodes' problems, which are looked up there first (names repeat across graphs), then outward."""
    scopes = [list(facts.nodes)]
    for op_type, name, problem in INFERENCE_PROBLEM.findall(error):
        node = None
        for depth in range(len(scopes) - 1, -1, -1) if name else ():  # an unnamed node cannot be told apart
            node = next((n for n in scopes[depth] if n.name == name and n.op_type == op_type), None)
            if node is not None:
                del scopes[depth + 1:]
                break
        problem = problem.strip()
        if node is not None and problem.endswith(NESTED_ERRORS):
            function = facts.called_function(node)
            scopes.append(list(function.node) if function is not None else
                          [inner for _, body in subgraphs(node) for inner in body.node])
        yield node, problem


NESTED_ERRORS = "Inference error(s):"
POOLS = ("MaxPool", "AveragePool", "LpPool")


def _shape_fix(node, problem: str) -> str | None:
    """A pass for the shape errors one exists for: a pool whose kernel rank does not fit its input (the
    2-D pool torch writes for F.max_pool2d on a 3-D tensor)."""
    if node is not None and node.op_type in POOLS and "incorrect size" in problem:
        return "pool-rank"
    return None


# Strict shape inference joins its errors: "(op_type:MaxPool, node name: /MaxPool_1): [ShapeInferenceError] ..."
INFERENCE_PROBLEM = re.compile(r"\(op_type:([^,]*), node name: (.*?)\): (.*?)(?= \(op_type:|$)")


def _first_line(error) -> str:
    return " ".join(str(error).split())


@model_rule("SG016", "ir-version", "error", "IR version newer than the target runtime reads")
def ir_version(facts: ModelFacts):
    limit = facts.target.max_ir_version
    if limit is not None and facts.model.ir_version > limit:
        yield _finding(facts, "SG016", "error", f"IR version {facts.model.ir_version} is newer than "
                       f"{facts.target.name} reads (at most {limit}); re-save the model with ir_version={limit}")


@model_rule("SG018", "opset-too-new", "error",
            "ai.onnx opset newer than the target runtime loads (profile `max_opset`)", fix="pass set-opset")
def opset_too_new(facts: ModelFacts):
    limit, opset = facts.target.max_opset, facts.opsets.get("")
    if limit is not None and opset is not None and opset > limit:
        yield _finding(facts, "SG018", "error", f"ai.onnx opset {opset} is newer than {facts.target.name} loads "
                       f"(at most {limit})", fix=f"set-opset opset={limit}, as the first step (prepend_steps when "
                       "extending a target recipe: later passes may emit ops the converter cannot lower)")


# ---------------------------------------------------------------- ops on the target

@model_rule("SG001", "custom-op-unsupported", "error",
            "ATen, custom-domain or unknown op the target has no kernel or plugin for",
            fix="per node: pass grid-sample, atan2, linspace, inplace-and, nan-to-num, any-all, maximum-minimum, "
                "inverse or inline-functions")
def custom_op_unsupported(facts: ModelFacts):
    for node in facts.all_nodes:
        if is_standard_op(node) or facts.target.supports(node.op_type, node.domain):
            continue
        if facts.calls_local_function(node):  # its body's nodes are judged on their own
            if not facts.target.local_functions:
                yield _finding(facts, "SG001", "error", f"calls a model-local function, which {facts.target.name} "
                               "does not run (profile `local_functions: false`)", node,
                               fix="inline-functions")
            continue
        if _own_plugin(node.op_type):
            yield _finding(facts, "SG001", "error", f"not runnable on {facts.target.name}: your plugin {node.op_type} "
                           "is not in its profile", node, advice="list it under `plugins:` in a target profile "
                           "(docs/plugins.md#your-own-plugins)")
            continue
        fix, why_no_pass = fix_reaching(facts, node, fix_for(node, facts.target))
        yield _finding(facts, "SG001", "error", f"not runnable on {facts.target.name}{why_no_pass}", node, fix=fix)


def _own_plugin(op_type: str) -> bool:
    """Whether a plugin file declares a plugin spec for `op_type`: no pass removes such a node, and the spec
    cannot tell which runtimes the user's library serves, so only a profile that lists it runs it."""
    from surgeon.plugins.specs import plugin_specs

    spec = plugin_specs().get(op_type)
    return spec is not None and not spec.shipped


@model_rule("SG017", "plugin-library-external", "warning",
            "plugin node the target runs only with a plugin library surgeon does not ship for it (TensorRT 8.x: "
            "surgeon's plugins are TensorRT 10 IPluginV3)")
def plugin_library_external(facts: ModelFacts):
    for node in facts.all_nodes:
        plugin = facts.target.plugins.get(node.op_type)
        if is_standard_op(node) or not plugin or plugin.get("library") != "external":
            continue
        version, namespace = plugin.get("plugin_version", "1"), plugin.get("namespace", "")
        yield _finding(facts, "SG017", "warning",
                       f"needs a plugin library for {facts.target.name} registering {node.op_type} version {version}"
                       f"{f' in namespace {namespace}' if namespace else ''} (surgeon's library is TensorRT 10 only; "
                       "give yours in build.plugins)", node)


@model_rule("SG002", "no-reference", "warning",
            "ATen or custom op with no CPU reference, or contrib op (com.microsoft, ...) the installed ONNX Runtime's "
            "CPU build has no kernel for: validation (`surgeon run`, `compare`, `bisect`) cannot run the graph")
def no_reference(facts: ModelFacts):
    if not facts.target.cpu_references:
        return
    from surgeon.validation.runners import is_special

    opset = facts.opsets.get("")
    for node in facts.all_nodes:
        if is_standard_op(node) or facts.calls_local_function(node):
            continue  # SG003 judges standard ops; validation inlines local functions, whose nodes are judged
        if not is_special(node, opset):  # a contrib op (com.microsoft, ai.onnx.ml): validation runs it in ONNX Runtime
            if not ort_cpu_runs(node.domain, node.op_type):
                fix, why_no_pass = fix_reaching(facts, node, fix_for(node, facts.target))
                yield _finding(facts, "SG002", "warning", f"has no kernel in the CPU build of ONNX Runtime "
                               f"{_ort_version()}, which runs {node.domain} ops for validation: validation cannot "
                               f"run the graph{why_no_pass}", node, fix=fix)
            continue
        if find_reference(node.op_type, node.domain, _aten_operator(node)) is None:
            fix, why_no_pass = fix_reaching(facts, node, fix_for(node, facts.target))
            yield _finding(facts, "SG002", "warning", "has no CPU reference (register one with "
                           f"@surgeon.reference.reference_op to validate this graph){why_no_pass}", node, fix=fix)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


@model_rule("SG003", "op-unsupported", "error", "standard op (or op version) outside the target profile",
            fix="per node: pass grid-sample (GridSample), chunk (Split-18) or set-opset")
def op_unsupported(facts: ModelFacts):
    target = facts.target
    if not target.ops:
        return
    for node in facts.all_nodes:
        if not is_standard_op(node) or node.op_type in target.plugins:
            continue
        rule = target.ops.get(node.op_type)
        version = facts.op_version(node)
        if rule is None:
            problem = f"is not supported by {target.name}"
        elif version is not None and rule.get("since") and version < int(rule["since"]):
            problem = f"version {version} predates what {target.name} supports (from {rule['since']})"
        elif version is not None and rule.get("until") and version > int(rule["until"]):
            problem = (f"version {version} (opset {facts.opsets.get('', '?')}) is newer than {target.name} "
                       f"supports (up to version {rule['until']})")
            if _above_max_opset(facts):
                if not _converter_lacks_adapter(node.op_type, facts.opsets[""], facts.target.max_opset):
                    continue  # SG018's set-opset lowers it: one finding for the model, not one per node
                problem, fix = _lower_opset_fix(facts, node, version, problem)
                yield _finding(facts, "SG003", "error", problem, node, fix=fix)
                continue
        else:
            continue
        fix, why_no_pass = fix_reaching(facts, node, fix_for(node, facts.target))
        yield _finding(facts, "SG003", "error", problem + why_no_pass, node, fix=fix)


def _above_max_opset(facts: ModelFacts) -> bool:
    limit, opset = facts.target.max_opset, facts.opsets.get("")
    return limit is not None and opset is not None and opset > limit


def _lower_opset_fix(facts: ModelFacts, node, version: int, problem: str) -> tuple[str, None]:
    """(problem, no fix) for an op version the target lacks in a model above the target's `max_opset` that
    set-opset cannot lower either: a pass rewriting the node (chunk for Split-18) leaves it at the model's
    opset, and onnx's version converter has no adapter taking it down."""
    limit, opset = facts.target.max_opset, facts.opsets[""]
    return (f"{problem}; at opset {opset} no pass helps: {facts.target.name} parses opset <= {limit}, and "
            f"set-opset cannot lower {node.op_type}-{version} (onnx's version converter has no adapter for it): "
            f"export the model at opset {limit} or lower"), None


@functools.lru_cache(maxsize=None)
def _converter_lacks_adapter(op_type: str, opset: int, wanted: int) -> bool:
    """Whether onnx's version converter (what set-opset runs) has no adapter taking `op_type` from `opset` down
    to `wanted`, probed on a one-node model (the adapter lookup looks at the op alone)."""
    tensor = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in ("x", "y")]
    graph = onnx.helper.make_graph([onnx.helper.make_node(op_type, ["x"], ["y"])], "probe", tensor[:1], tensor[1:])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=10)
    try:
        onnx.version_converter.convert_version(model, wanted)
    except Exception as exc:  # the converter raises RuntimeError or its own ConvertError
        return "No Adapter" in str(exc)
    return False


@model_rule("SG004", "dtype-unsupported", "error", "op input dtype outside the target profile's types (or, where "
            "the profile lists none, the ONNX schema's)")
def dtype_unsupported(facts: ModelFacts):
    for node, dtype, problem in _dtype_problems(facts):
        fix, why_no_pass = _dtype_fix(facts, node, dtype)
        yield _finding(facts, "SG004", "error", f"{problem}{why_no_pass}", node, fix=fix)


def _dtype_problems(facts: ModelFacts):
    """(node, dtype, problem) for each standard node whose typed input's dtype the target does not take."""
    for node in facts.all_nodes:
        if not is_standard_op(node) or _is_integer_clip(facts, node):  # SG005 reports integer Clip
            continue
        dtype = facts.typed_input_dtype(node)
        if dtype is None:
            continue
        version = facts.op_version(node)
        allowed = facts.target.dtypes_for(node.op_type, version)
        if allowed is None:  # the profile takes every type the ONNX schema allows
            schema_dtypes = _schema_dtypes(node.op_type, facts.opsets.get("", 1), facts.target.dtype_input(node.op_type))
            if schema_dtypes and dtype not in schema_dtypes:
                yield node, dtype, (f"on {dtype}: ONNX's {node.op_type}-{version} has no {dtype} type, so no runtime "
                                    "runs it")
            continue
        if dtype not in allowed and facts.target.computes_in(dtype) not in allowed:
            yield node, dtype, f"on {dtype} is not supported by {facts.target.name} (supported: {', '.join(allowed)})"


@functools.lru_cache(maxsize=None)
def _schema_dtypes(op_type: str, opset: int, index: int) -> frozenset[str] | None:
    """The types ONNX's schema of `op_type` at `opset` allows for its input `index`; None where it has none."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:  # not defined yet at that opset: SG003's
        return None
    if index >= len(schema.inputs):
        return None
    type_str = schema.inputs[index].type_str
    allowed = next((c.allowed_type_strs for c in schema.type_constraints if c.type_param_str == type_str), [type_str])
    return frozenset(filter(None, map(type_str_dtype, allowed)))


def _dtype_fix(facts: ModelFacts, node, dtype: str) -> tuple[str | None, str]:
    """(the pass that rewrites `node` into a dtype the target runs, or None; where none does, why, for the
    message). Two passes' `handles` do not say it: any-all declares ReduceSum but rewrites only torch's any/all
    and bool mask counts, and maximum-minimum declares no standard op but rewrites bool and integer Max/Min."""
    if node.op_type == "ReduceSum":
        why_not = _why_any_all_leaves(facts, node, dtype)
        return ("any-all", "") if why_not is None else (None, f"; {why_not}")
    if node.op_type in ("Max", "Min") and (dtype == "bool" or dtype in INTEGER_DTYPES):
        refused = _maximum_minimum_leaves(facts, node.op_type, dtype)
        if not refused:
            return fix_reaching(facts, node, "maximum-minimum")
        return None, (f"; maximum-minimum's rewrite ({', '.join(refused)}) does not run on {facts.target.name} "
                      "either: cast its inputs to a supported type in the model")
    return fix_reaching(facts, node, fix_for(node, facts.target))

_REWRITES_REFUSED: dict[tuple, tuple[str, ...]] = {}


def _maximum_minimum_leaves(facts: ModelFacts, op_type: str, dtype: str) -> tuple[str, ...]:
    """What of maximum-minimum's rewrite of `op_type` on `dtype` the target still refuses (`Greater on uint8`),
    found by running the pass on a one-node model and judging its result as SG003/SG004 do: its forms (Where,
    compute in int32, wrap-around arithmetic for uint64) depend on the target and opset, and a hint read off
    them by hand drifts from the pass."""
    opset = facts.opsets.get("", 1)
    key = (op_type, dtype, opset, facts.target_key)
    if key not in _REWRITES_REFUSED:
        probe = ModelFacts(facts.path, _rewritten_probe(op_type, dtype, opset, facts.target), facts.target)
        refused = [f"{node.op_type} on {problem_dtype}" for node, problem_dtype, _ in _dtype_problems(probe)]
        refused += [f"{finding.op} ({finding.message})" for finding in op_unsupported(probe)]
        _REWRITES_REFUSED[key] = tuple(dict.fromkeys(refused))
    return _REWRITES_REFUSED[key]


def _rewritten_probe(op_type: str, dtype: str, opset: int, target) -> onnx.ModelProto:
    from surgeon.graphio import export_model, import_graph
    from surgeon.inference import infer_graph_shapes
    from surgeon.pass_api import Context
    from surgeon.testing import make_model

    operands = [("a", dtype, [2]), ("b", dtype, [2])]
    model = make_model([onnx.helper.make_node(op_type, ["a", "b"], ["y"], name="probe")], operands,
                       [("y", dtype, [2])], opset=opset)
    graph = infer_graph_shapes(import_graph(model))
    context = Context(target=target, opset=opset)
    context.begin(graph, "maximum-minimum")
    get_pass("maximum-minimum")().run(graph, context)
    graph.cleanup().toposort()
    return export_model(graph)


def _why_any_all_leaves(facts: ModelFacts, reduce_sum, dtype: str) -> str | None:
    """None where the any-all pass rewrites this ReduceSum, else why it does not. It rewrites two forms
    (passes/any_all.py): torch's any/all, Greater(ReduceSum(Cast(x)), 0) with x bool (or made by Not), and a
    count of true values, ReduceSum(Cast(x: bool)) to an integer, over a reduced extent known below 2**24."""
    if not facts.in_main_graph(reduce_sum):  # the patterns below are read off the main graph
        return "any-all rewrites the main graph only, not If/Loop bodies or local functions"
    cast = facts.producers.get(reduce_sum.input[0])
    source = cast.input[0] if cast is not None and cast.op_type == "Cast" and cast.input else None
    negation = facts.producers.get(source) if source else None
    counts_bools = source is not None and (facts.dtypes.get(source) == "bool" or getattr(negation, "op_type", "") == "Not")
    if dtype not in INTEGER_DTYPES or not counts_bools:
        return ("no pass rewrites it (any-all rewrites only torch's any/all and counts of a bool mask): cast its "
                "input to a supported type in the model")
    axes_known = len(reduce_sum.input) < 2 or not reduce_sum.input[1] or facts.constant(reduce_sum.input[1]) is not None
    if axes_known and _read_as_truth_only(facts, reduce_sum.output[0]):
        return None
    extent = _reduced_extent(facts, reduce_sum) if facts.dtypes.get(source) == "bool" else None
    exact_below = sys.modules[get_pass("any-all").__module__].FLOAT_EXACT_COUNT  # the pass's own bound
    if extent is not None and extent < exact_below:
        return None
    return (f"any-all sums a bool mask in float32 only where the reduced extent is known below 2**24 "
            f"(here: {'unknown' if extent is None else extent})")


def _read_as_truth_only(facts: ModelFacts, count: str) -> bool:
    """Whether every reader of `count` is Greater(count, 0): torch's any/all, whose count then goes away."""
    readers = facts.readers.get(count, [])
    if not readers or count in {v.name for v in facts.model.graph.output}:
        return False
    for reader in readers:
        zero = facts.constant(reader.input[1]) if reader.op_type == "Greater" and len(reader.input) == 2 else None
        if reader.input[0] != count or zero is None or zero.size != 1 or zero.item() != 0:
            return False
    return True


def _reduced_extent(facts: ModelFacts, reduce_sum) -> int | None:
    """How many values each output of the ReduceSum adds up, where the shapes and axes say."""
    shape = facts.shape(reduce_sum.input[0])
    if len(reduce_sum.input) > 1 and reduce_sum.input[1]:
        axes = facts.constant(reduce_sum.input[1])
        if axes is None:
            return None
        axes = np.atleast_1d(axes).tolist()
    else:
        axes = next((list(a.ints) for a in reduce_sum.attribute if a.name == "axes"), [])
    if shape is None:
        return None
    if not axes:
        noop = next((a.i for a in reduce_sum.attribute if a.name == "noop_with_empty_axes"), 0)
        axes = [] if noop else list(range(len(shape)))
    if not all(-len(shape) <= int(axis) < len(shape) for axis in axes):
        return None
    dims = [shape[int(axis)] for axis in axes]
    return None if None in dims else int(np.prod(dims, dtype=np.int64))


def _is_integer_clip(facts: ModelFacts, node) -> bool:
    return node.op_type == "Clip" and node.domain in STANDARD_DOMAINS and facts.typed_input_dtype(node) in INTEGER_DTYPES


@model_rule("SG005", "clip-int", "warning",
            "Clip on an integer tensor: not portable (TensorRT, opset-11 runtimes); an error where the target "
            "or the model's opset rejects it; integer Clip/Max/Min computed through float32 (exact to 2**24)",
            fix="pass clip-int or maximum-minimum")
def clip_on_integers(facts: ModelFacts):
    clip = facts.target.ops.get("Clip") or {}
    for node in facts.all_nodes:
        if not _is_integer_clip(facts, node):
            continue
        dtype = facts.typed_input_dtype(node)
        clip_dtypes = facts.target.dtypes_for("Clip", facts.op_version(node))
        fix, why_no_pass = fix_reaching(facts, node, "clip-int")
        if facts.opsets.get("", 1) < CLIP_INTEGER_OPSET:
            severity, problem = "error", (f"on {dtype}: Clip takes floats only before opset 12 (the model is at "
                                          f"opset {facts.opsets['']})")
        elif clip.get("until") and int(clip["until"]) < CLIP_INTEGER_OPSET:
            severity, problem = "error", (f"on {dtype}: {facts.target.name} has Clip up to version {clip['until']}, "
                                          "which takes floats only")
        elif clip_dtypes and dtype not in clip_dtypes:
            severity, problem = "error", (f"on {dtype} is not supported by {facts.target.name} (Clip types: "
                                          f"{', '.join(clip_dtypes)})")
        else:
            severity, problem = "warning", (f"on {dtype} runs on {facts.target.name}, but TensorRT and opset-11 "
                                            "runtimes reject integer Clip")
        yield _finding(facts, "SG005", severity, problem + why_no_pass, node, fix=fix)
    yield from _float_rounded_integer_ops(facts)


FLOAT_ROUNDED_FIX = {"Clip": "clip-int", "Max": "maximum-minimum", "Min": "maximum-minimum"}


def _float_rounded_integer_ops(facts: ModelFacts):
    """torch's opset-11 export of an integer clamp, maximum or minimum: Cast(int -> float) -> Clip/Max/Min
    -> Cast(back), read only by the Cast back. It runs everywhere and is wrong past the float's integer
    precision (2**24 for float32), silently."""
    for node in facts.nodes:
        if node.op_type not in FLOAT_ROUNDED_FIX or node.domain not in STANDARD_DOMAINS or not node.input:
            continue
        cast_in = facts.producers.get(node.input[0])
        after = facts.readers.get(node.output[0], [])
        if cast_in is None or cast_in.op_type != "Cast" or len(after) != 1 or after[0].op_type != "Cast":
            continue
        integer = facts.dtypes.get(cast_in.input[0])
        floated = facts.dtypes.get(node.input[0])
        if integer in INTEGER_DTYPES and floated in ("float32", "float16") and \
                facts.dtypes.get(after[0].output[0]) == integer:
            yield _finding(facts, "SG005", "warning", f"computes {integer} through {floated} (torch's opset-11 export "
                           f"of an integer {'clamp' if node.op_type == 'Clip' else node.op_type.lower()}): exact "
                           f"only up to 2**{np.finfo(floated).nmant + 1}", node, fix=FLOAT_ROUNDED_FIX[node.op_type])


# ---------------------------------------------------------------- tensors and shapes

@model_rule("SG006", "dynamic-shape", "error",
            "graph input with a dynamic dim where static shapes are required (target profile or `static-shapes`)")
def dynamic_shape(facts: ModelFacts):
    if not facts.static_shapes_required:
        return
    initializers = {t.name for t in facts.model.graph.initializer}
    for value in facts.model.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            yield _finding(facts, "SG006", "error", f"input '{value.name}' has no shape; {facts.target.name} "
                           "needs static shapes")
            continue
        dims = [d.dim_param or "?" for d in tensor.shape.dim if not d.HasField("dim_value")]
        if dims:
            yield _finding(facts, "SG006", "error", f"input '{value.name}' has dynamic dims {', '.join(dims)}; "
                           f"{facts.target.name} needs static shapes (re-export with fixed sizes)")


@model_rule("SG007", "float64", "warning",
            "float64 tensors: TensorRT casts them down to float32, and a runtime without float64 kernels rejects "
            "them; those of grid-sample's and msda-decompose's `fma_emulation` are reported once per rewrite, with "
            "how to avoid them")
def float64_tensors(facts: ModelFacts):
    doubles = sorted({name for name, dtype in facts.dtypes.items() if dtype == "float64"})
    if not doubles:
        return
    emulations = _fma_emulations(facts)
    emulated = {name for _, names in emulations.values() for name in names}
    producer = {out: node for node in facts.graph_nodes for out in node.output}  # function bodies name their own
    initializers = {t.name for g in facts.graphs for t in g.initializer}
    for name in doubles:
        if name in emulated:
            continue
        node = producer.get(name)
        what = "initializer" if name in initializers else "tensor"
        yield _finding(facts, "SG007", "warning", f"{what} '{name}' is float64", node)
    for (made_by, replaced), (widening, names) in emulations.items():
        shown = ", ".join(f"'{name}'" for name in sorted(names)[:FMA_NAMES_SHOWN])
        more = ", ..." if len(names) > FMA_NAMES_SHOWN else ""
        yield _finding(facts, "SG007", "warning", f"starts {made_by}'s fma_emulation in its rewrite of "
                       f"{f'node {replaced}' if replaced else 'an unnamed node'}: {len(names)} float64 tensors "
                       f"({shown}{more}) that round torch's fused multiply-adds once, as torch does "
                       "(`fma_emulation: auto` picks float64 where the recipe's target profile runs float64 Cast, "
                       "Mul and Sub)", widening,
                       advice=f"where the runtime has no float64, run {made_by} with `fma_emulation: none` "
                       f"(extending a target recipe: `set: {{{made_by}.fma_emulation: none}}`): float32 only, at the "
                       "cost of rounding the coordinates twice, up to 1 ulp off torch's "
                       "(docs/passes/grid-sample.md#modes)")


#: Passes whose fma_emulation widens float32 coordinates to float64 (passes/grid_sample.py; msda-decompose
#: computes its coordinates with grid-sample's helpers).
FMA_PASSES = ("grid-sample", "msda-decompose")
FMA_NAMES_SHOWN = 3


def _fma_emulations(facts: ModelFacts) -> dict[tuple[str, str], tuple[onnx.NodeProto, set[str]]]:
    """By (the pass, the node each of its rewrites replaced: its `surgeon.replaces` provenance, "" if unnamed), for
    the FMA_PASSES: the
    first Cast widening a float32 coordinate to float64, and the float64 tensors of the emulation, which such
    Casts start: what the rewrite's nodes compute from them in float64 and the float64 constants they read. A
    float64 grid's rewrite computes in float64 throughout without widening anything, so it is not counted."""
    constants = {t.name for t in facts.model.graph.initializer}
    constants.update(out for node in facts.nodes if node.op_type == "Constant" for out in node.output)
    found: dict[tuple[str, str], tuple[onnx.NodeProto, set[str]]] = {}
    for cast in facts.nodes:
        made_by = _made_by(cast)
        widens = cast.op_type == "Cast" and cast.input and facts.dtypes.get(cast.input[0]) != "float64" and \
            any(a.name == "to" and a.i == onnx.TensorProto.DOUBLE for a in cast.attribute)
        if made_by[0] not in FMA_PASSES or not widens:
            continue
        names = found.setdefault(made_by, (cast, set()))[1]
        frontier = [cast.output[0]]
        while frontier:
            name = frontier.pop()
            if name in names:
                continue
            names.add(name)
            for reader in facts.readers.get(name, []):
                if _made_by(reader) == made_by:
                    frontier += [n for n in (*reader.input, *reader.output) if facts.dtypes.get(n) == "float64" and
                                 (n in constants or n in reader.output)]
    return found


def _made_by(node) -> tuple[str | None, str]:
    """(the pass that made `node`, the node it replaced) as the node's provenance (`metadata_props`) says."""
    tags = {entry.key: entry.value for entry in node.metadata_props}
    return tags.get("surgeon.pass"), tags.get("surgeon.replaces", "")


@model_rule("SG008", "not-toposorted", "error", "nodes not in topological order (onnx.checker requires it)",
            fix="pass toposort")
def not_toposorted(facts: ModelFacts):
    for node, name, late in facts.late_reads:
        yield _finding(facts, "SG008", "error", f"reads '{name}' before node {facts.node_path(late)} "
                       f"({op_label(late)}) produces it", node, fix="toposort")


@model_rule("SG009", "duplicate-node-name", "warning",
            "two nodes share a name (provenance, validation reports and TensorRT layer names need unique ones)")
def duplicate_node_names(facts: ModelFacts):
    counts = Counter(node.name for node in facts.nodes if node.name)
    for name, count in sorted(counts.items()):
        if count > 1:
            yield Finding("SG009", "warning", f"node name '{name}' is used by {count} nodes", facts.file, node=name)


@model_rule("SG010", "duplicate-tensor-name", "error",
            "a tensor name defined twice (graph input, initializer or node output): the graph is not SSA")
def duplicate_tensor_names(facts: ModelFacts):
    graph = facts.model.graph
    initializers = {t.name for t in graph.initializer}
    definitions = Counter(v.name for v in graph.input if v.name not in initializers)
    definitions.update(t.name for t in graph.initializer)
    definitions.update(name for node in graph.node for name in node.output if name)
    for name, count in sorted(definitions.items()):
        if count > 1:
            yield Finding("SG010", "error", f"tensor '{name}' is defined {count} times", facts.file)


@model_rule("SG011", "unused-initializer", "warning", "initializer no node reads", fix="pass cleanup")
def unused_initializers(facts: ModelFacts):
    read = {name for reads in facts.reads for name in reads}
    read.update(v.name for v in facts.model.graph.output)
    for tensor in facts.model.graph.initializer:
        if tensor.name not in read:
            yield Finding("SG011", "warning", f"initializer '{tensor.name}' is not used", facts.file, fix="cleanup")


@model_rule("SG012", "external-data-escapes", "error",
            "external-data location outside the model's folder (absolute or through ..)")
def external_data_escapes(facts: ModelFacts):
    folder = facts.path.resolve().parent
    for what, data in facts.external_tensors:  # initializers, of subgraphs too, and Constant (attribute) tensors
        if data.file is None:
            yield Finding("SG012", "error", f"{what} reads external data from "
                          f"'{data.location}', outside {folder.name}/; keep data files beside the model", facts.file)


@model_rule("SG019", "external-data-range", "error",
            "external data past the end of its data file (offset + length beyond the file's size)")
def external_data_range(facts: ModelFacts):
    # Loading the model compared each length with the tensor's dims and type, and a tensor without a length
    # (read to the end of the file) with the file's size; what is left is a given range the file cannot give.
    for what, data in facts.external_tensors:
        if data.length is None or data.file is None or not data.file.is_file():
            continue  # SG012 reports a file outside the folder, SG014 (onnx.checker) a missing one
        size, offset = data.file.stat().st_size, data.offset or 0
        if offset + data.length > size:
            yield Finding("SG019", "error", f"{what} reads bytes {offset} to {offset + data.length} of "
                          f"'{data.location}', which holds {size}", facts.file)


@model_rule("SG013", "large-initializer", "warning",
            "initializer or Constant (in subgraphs too) larger than `max-initializer-mb` (default 512)")
def large_initializers(facts: ModelFacts):
    from surgeon.graphinfo import tensor_bytes as _tensor_bytes

    limit = facts.settings.max_initializer_mb * 2**20
    for what, tensor in facts.tensors:
        size = _tensor_bytes(tensor)
        if size > limit:
            yield Finding("SG013", "warning", f"{what} holds {size / 2**20:.1f} MiB, over "
                          f"the {facts.settings.max_initializer_mb:g} MiB limit", facts.file)


# ---------------------------------------------------------------- graph structure the checker lets pass

@model_rule("SG020", "duplicate-opset-import", "error",
            "a domain imported twice (by the model or a local function) with different versions, so which applies "
            "is each tool's choice; a warning where the versions agree")
def duplicate_opset_imports(facts: ModelFacts):
    scopes = [("the model", facts.model.opset_import)]
    scopes += [(f"local function {f.domain}::{f.name}", f.opset_import) for f in facts.model.functions]
    for scope, imports in scopes:
        versions: dict[str, list[int]] = {}
        for entry in imports:
            versions.setdefault(entry.domain if entry.domain not in STANDARD_DOMAINS else "ai.onnx", []).append(
                entry.version)
        for domain, found in versions.items():
            if len(found) < 2:
                continue
            severity = "error" if len(set(found)) > 1 else "warning"
            yield Finding("SG020", severity, f"{scope} imports domain '{domain}' {len(found)} times (versions "
                          f"{', '.join(map(str, found))}); keep one opset_import entry per domain", facts.file)


@model_rule("SG021", "output-not-computed", "warning",
            "graph output that is an initializer, or a graph input (an error on TensorRT, which refuses a tensor "
            "that is both)")
def outputs_not_computed(facts: ModelFacts):
    graph = facts.model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = {v.name for v in graph.input}
    for name in dict.fromkeys(v.name for v in graph.output):
        if name in initializers:  # also where IR < 4 lists it among the inputs: it is a constant
            yield Finding("SG021", "warning", f"graph output '{name}' is an initializer, which no node computes "
                          "(TensorRT's parser holds initializers as weights, not tensors): make the output an "
                          "Identity of it", facts.file)
        elif name in inputs:
            severity = "error" if facts.target.is_tensorrt else "warning"
            yield Finding("SG021", severity, f"graph output '{name}' is also a graph input: TensorRT refuses it "
                          f"('Tensor {name} cannot be both input and output'); make the output an Identity of it",
                          facts.file)


@model_rule("SG022", "duplicate-graph-output", "warning",
            "a tensor listed twice among the graph outputs (TensorRT addresses outputs by name)")
def duplicate_graph_outputs(facts: ModelFacts):
    for name, count in Counter(v.name for v in facts.model.graph.output).items():
        if count > 1:
            yield Finding("SG022", "warning", f"graph output '{name}' is listed {count} times: TensorRT addresses "
                          "an engine's outputs by tensor name, so it cannot return two outputs of one name; list it "
                          "once, or add an Identity per copy", facts.file)


@model_rule("SG023", "undefined-element-type", "warning",
            "value_info whose element type is 0 (UNDEFINED); an error for an input or output of an If/Loop/Scan "
            "body, which ONNX Runtime refuses (the loader refuses one on the graph's own inputs and outputs: SG000)",
            fix="pass infer-shapes")
def undefined_element_types(facts: ModelFacts):
    declared = [("value_info", v, None) for v in facts.model.graph.value_info]
    for node in facts.all_nodes:
        for attribute, body in subgraphs(node):
            where = f"{facts.node_path(node)}/{attribute}"
            declared += [(kind, v, where) for kind, values in (("input", body.input), ("output", body.output),
                                                               ("value_info", body.value_info)) for v in values]
    for function in facts.model.functions:
        declared += [("value_info", v, f"local function {function.domain}::{function.name}")
                     for v in function.value_info]
    for kind, value, where in declared:
        if not value.type.HasField("tensor_type") or value.type.tensor_type.elem_type != onnx.TensorProto.UNDEFINED:
            continue
        what = f"{kind} '{value.name}'{f' of {where}' if where else ''} has element type 0 (UNDEFINED)"
        if kind == "value_info":  # says "unknown": ONNX Runtime runs the model, inference fills it in
            yield Finding("SG023", "warning", f"{what}: it declares no type", facts.file, fix="infer-shapes")
        else:
            yield Finding("SG023", "error", f"{what}: ONNX Runtime refuses the model ('Invalid tensor data type 0')",
                          facts.file, fix="infer-shapes")


# ---------------------------------------------------------------- values

INT32_RANGE = np.iinfo(np.int32)
# Slice-10's starts, ends and steps: clamped to the int32 limits, each slices as before on every dim below 2**31
SLICE_CLAMPED_ALIKE = (1, 2, 4)


@model_rule("SG024", "int64-beyond-int32", "warning",
            "int64 initializer or Constant value outside the int32 range on a target holding int64 in int32 "
            "(profile `int64: int32`: TensorRT before 10, whose parser clamps such values); Slice starts, ends "
            "and steps are left out: clamped to the int32 limits they slice the same on every dim below 2**31")
def int64_beyond_int32(facts: ModelFacts):
    target = facts.target
    if target.int64 != "int32":
        return
    slice_reads = _read_only_as_slice_inputs(facts)
    for what, name, values, node in _int64_constants(facts):
        if name in slice_reads:
            continue
        outside = (values > INT32_RANGE.max) | (values < INT32_RANGE.min)
        if not outside.any():
            continue
        first = int(np.flatnonzero(outside)[0])
        value = int(values[first])
        clamped = INT32_RANGE.max if value > 0 else INT32_RANGE.min
        yield _finding(facts, "SG024", "warning", f"{what}holds {int(outside.sum())} int64 value(s) outside the int32 "
                       f"range ({value} at flat index {first}); {target.name} holds int64 in int32 and clamps it to "
                       f"{clamped} (TensorRT 8's parser: 'One or more weights outside the range of INT32 was "
                       "clamped'), so results differ where the value matters: keep int64 constants within the int32 "
                       "range", node)


def _int64_constants(facts: ModelFacts):
    """(what, the name nodes read it by, values flattened, the Constant node or None) for each int64
    initializer (of bodies too) and Constant value stored in the file; external data is not read."""
    def stored(tensor):
        return tensor.data_type == onnx.TensorProto.INT64 and tensor.data_location != onnx.TensorProto.EXTERNAL

    for graph in facts.graphs:
        for tensor in graph.initializer:
            if stored(tensor):
                yield f"initializer '{tensor.name}' ", tensor.name, onnx.numpy_helper.to_array(tensor).ravel(), None
    for node in facts.all_nodes:
        if node.op_type != "Constant" or node.domain not in STANDARD_DOMAINS or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and stored(attr.t):
                values = onnx.numpy_helper.to_array(attr.t).ravel()
            elif attr.name in ("value_int", "value_ints"):
                values = np.array([attr.i] if attr.name == "value_int" else list(attr.ints), np.int64)
            else:
                continue
            yield "", node.output[0], values, node


def _read_only_as_slice_inputs(facts: ModelFacts) -> set[str]:
    """Names every node reading them (in any graph) reads as a Slice's starts, ends or steps. Slice clamps starts
    and ends to the dim; a step of magnitude 2**31 or more, clamped or not (clamping keeps its sign), is no
    smaller than such a dim, so it takes the start's element (or none) either way (tests/test_check_rules.py
    runs both)."""
    sliced, other = set(), set()
    for node in facts.all_nodes:
        is_slice = node.op_type == "Slice" and node.domain in STANDARD_DOMAINS
        for index, name in enumerate(node.input):
            (sliced if is_slice and index in SLICE_CLAMPED_ALIKE else other).add(name)
    other.update(value.name for value in facts.model.graph.output)
    return sliced - other


# ---------------------------------------------------------------- what libspconv's parser builds

LIBSPCONV = "libspconv"  # the profile `runtime` of NVIDIA's 3DSparseConvolution parser (surgeon/targets/libspconv.yaml)


@model_rule("SG025", "libspconv-misread", "error",
            "on a libspconv target, a graph its parser builds into something else: a SparseConvolution with "
            "transposed=1 (built as a strided down-sampling convolution) or a ScatterDense writing a batch other "
            "than 1 (libspconv runs batch 1 only)")
def libspconv_misread(facts: ModelFacts):
    # `surgeon export spconv --flavour libspconv` refuses both; graphs exported before that, or by other tools,
    # can still carry them. The parser walks graph.node by op type whatever the domain, so the rule does too.
    if facts.target.runtime != LIBSPCONV:
        return
    for node in facts.nodes:
        if node.op_type == "SparseConvolution":
            transposed = _attribute_value(node, "transposed", onnx.AttributeProto.INT)
            if transposed:
                yield _finding(facts, "SG025", "error", f"has transposed={transposed}, which libspconv's parser never "
                               "reads (nor output_padding / output_spatial_shape): it builds a strided down-sampling "
                               "convolution instead", node,
                               advice="re-export with SparseInverseConv3d for up-sampling, or in the standard flavour")
        elif node.op_type == "ScatterDense":
            shape = _attribute_value(node, "output_shape", onnx.AttributeProto.INTS)
            if shape and shape[0] != 1:
                yield _finding(facts, "SG025", "error", f"writes batch {shape[0]}; libspconv runs batch 1 only "
                               "(engine.hpp: the batch 'must be 1 now')", node, advice="re-export with batch size 1")


def _attribute_value(node, name: str, kind: int):
    """The value of `node`'s attribute `name` where it has the AttributeProto type `kind`, else None."""
    attribute = next((a for a in node.attribute if a.name == name and a.type == kind), None)
    return onnx.helper.get_attribute_value(attribute) if attribute is not None else None

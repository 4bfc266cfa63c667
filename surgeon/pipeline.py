"""Running a recipe: import once, run the steps, tidy once, check, write atomically, validate, build.

The graph is imported into onnx-graphsurgeon once and exported once. Cleanup, toposort and shape
inference run once at the end, or before a pass that declares it `needs` them and only when an
earlier pass changed the graph. Nothing is written until every step and the checker have passed.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import operator
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import onnx
import onnx_graphsurgeon as gs

from surgeon import __version__
from surgeon.cli_args import json_text
from surgeon.errors import CheckFailed, ModelError, SurgeonError, first_line
from surgeon.graphinfo import all_nodes, histogram_delta, op_histogram, op_label, subgraphs
from surgeon.graphio import import_graph_noting
from surgeon.inference import annotate_shapes, infer_graph_shapes, infer_where_untyped, infer_without_weights
from surgeon.modelio import (guard_outputs, model_inputs, read_model, save_model_atomic, serialize_model,
                             set_text_field, stdout_to_stderr, write_text_atomic)
from surgeon.pass_api import BUILTIN_PACKAGE, NEEDS, Context, PassResult
from surgeon.recipe import Recipe, Step, load_recipe
from surgeon.registry import distribution_of, get_pass
from surgeon.rewrite import (any_subgraphs, dismantle_graph, dismantle_replaced, export_graph, is_sorted, prune_graph,
                             stable_toposort)
from surgeon.targets import load_target


@dataclass
class StepRecord:
    """What one step did, for the progress display, the summary table and the sidecar report."""

    index: int
    pass_name: str
    label: str | None
    params: dict[str, Any]
    nodes_before: int
    nodes_after: int
    op_delta: dict[str, int]
    rewritten: list[str]
    notes: list[str]
    seconds: float
    pruned_before: int = 0  # unused nodes removed just before the step, which needed a tidy graph
    #: Where a pass not built into surgeon comes from (`_pass_origin`); None for a built-in one.
    origin: dict[str, str] | None = None

    @property
    def title(self) -> str:
        return self.label or self.pass_name

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every rewritten name (10,000 on a big fold, 50 ms).
        # A built-in step's record has no origin key, as before third-party passes were recorded.
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "origin" or self.origin}


@dataclass
class RunResult:
    recipe: Recipe
    model: onnx.ModelProto
    original: onnx.ModelProto
    model_path: Path
    steps: list[StepRecord]
    output: Path | None = None
    files: list[Path] = field(default_factory=list)
    report_path: Path | None = None
    validation: Any = None
    build: Any = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.validation is None or bool(getattr(self.validation, "passed", True))

    @property
    def pruned_at_end(self) -> int:
        """Unused nodes removed when the final graph was tidied, after the last step."""
        return max(0, self.steps[-1].nodes_after - len(self.model.graph.node)) if self.steps else 0

    def report(self) -> dict[str, Any]:
        return {
            "surgeon_version": __version__,
            "recipe": {"name": self.recipe.name, "path": str(self.recipe.path) if self.recipe.path else None,
                       "sha256": self.recipe.sha256, "target": load_target(self.recipe.target).name},
            "model": str(self.model_path),
            "output": str(self.output) if self.output else None,
            "nodes": {"before": len(self.original.graph.node), "after": len(self.model.graph.node),
                      "pruned_at_end": self.pruned_at_end},
            "steps": [s.to_dict() for s in self.steps],
            "notes": list(self.notes),
            "validation": self.validation.to_dict() if hasattr(self.validation, "to_dict") else None,
            "build": self.build.to_dict() if hasattr(self.build, "to_dict") else None,
            "seconds": round(self.seconds, 3),
        }


class Progress:
    """Receives progress events; the base class ignores them (the API default). The CLI prints them."""

    def run_started(self, recipe: Recipe, model_path: Path, steps: int) -> None: ...
    def step_started(self, index: int, total: int, step: Step) -> None: ...
    def step_finished(self, record: StepRecord, total: int) -> None: ...
    def message(self, text: str) -> None: ...


AfterStep = Callable[[StepRecord, gs.Graph], None]


def run_recipe(recipe, model=None, output=None, *, overrides=(), dry_run: bool = False, validate: bool = True,
               build: bool = True, progress: Progress | None = None, after_step: AfterStep | None = None,
               inputs=(), quiet: bool = False) -> RunResult:
    """Run `recipe` (a Recipe, a path or a dict) on `model` (default: the recipe's) and write `output`.

    Raises SurgeonError (exit 2) for bad input or a failing step, CheckFailed (exit 1) when the result
    fails onnx.checker; in both cases nothing is written. Validation failures are reported in the
    result (`result.ok`), after the output is written, so the report can point at it. A SurgeonError
    from the stages after the write (validation that cannot run, a failed engine build) leaves the
    written model, for debugging, and lists it in the exception's `written`. Before any step
    runs, `modelio.guard_outputs` checks every file the run will write (OUT, sidecars, reports, engine)
    against every file it reads (`run_files`; `inputs`: more (path, what) pairs, e.g. plugin files).
    """
    with _graphsurgeon_quiet(quiet):  # `run -q`: its warnings (node dumps) are no errors
        started = time.perf_counter()
        progress = progress or Progress()
        if not isinstance(recipe, Recipe):
            recipe = load_recipe(recipe, overrides=overrides, model=model)
        elif model is not None:
            recipe.model = Path(model)
        if recipe.model is None:
            raise SurgeonError(f"recipe '{recipe.name}' names no model: give MODEL on the command line or "
                               "'model:' in the recipe")
        model_path = Path(recipe.model)
        if not model_path.exists():
            missing_checks = [key for key in ("data", "expected") if validate and (recipe.validate or {}).get(key)
                              and not Path(recipe.validate[key]).exists()]
            also = (f"; its validation files ({', '.join(f'validate.{key}' for key in missing_checks)}) are missing "
                    "too: add --no-validate, or --set them") if missing_checks else ""
            raise ModelError("model file not found", file=model_path,
                             hint=f"recipe '{recipe.name}' reads it; give MODEL on the command line to use another{also}")
        original, files_read = read_model(model_path)
        if output is not None and not dry_run:  # before any step: no output may replace an input (or a device)
            guard_outputs(*run_files(recipe, output, files_read, validate, build, inputs),
                          discard="use --dry-run to run without writing")
        output = Path(output) if output is not None else None
        validating = bool(recipe.validate) and validate
        if validating:  # the validation inputs, read and checked now: bad ones stop the run before any step
            from surgeon.validation.validate import prepare_run_validation

            prepared = prepare_run_validation(recipe, original, model_path)
        progress.run_started(recipe, model_path, len(recipe.steps))
        with collector_paused():
            graph, records = run_steps(original, recipe, model_dir=model_path.parent, progress=progress,
                                       after_step=after_step, quiet=quiet)
            with stdout_to_stderr():
                result_model = finish_graph(graph, original, recipe, records)
            dismantle_graph(graph)
            del graph
            writing = output is not None and not dry_run
            serialized = serialize_model(result_model) if recipe.checker or writing else None
            if recipe.checker and serialized is not None:
                check_model(serialized, source=model_path)
            elif recipe.checker and not writing:  # past 2 GB: onnx.checker reads such a model from a file only
                with tempfile.TemporaryDirectory() as scratch:
                    save_model_atomic(result_model, Path(scratch) / "model.onnx",
                                      check=functools.partial(check_model_file, source=model_path))
        if validating:  # and against the rewritten model (its inputs, its outputs) before OUT is written
            prepared.check_candidate(result_model)

        result = RunResult(recipe=recipe, model=result_model, original=original, model_path=model_path, steps=records,
                           notes=_target_notes(result_model, recipe))
        for note in result.notes:
            progress.message(note)
        try:
            if writing:
                result.files = save_model_atomic(result_model, output, serialized=serialized,
                                                 check=functools.partial(check_model_file, source=model_path)
                                                 if recipe.checker and serialized is None else None)
                result.output = output
            if validating:
                from surgeon.validation import validate_run

                against = recipe.validate.get("against") or "original"
                progress.message("validating against " + {"original": "the original model",
                                                          "none": "the expected outputs"}.get(against, against))
                result.validation = validate_run(recipe, original, model_path, result_model,
                                                 None if dry_run else output, progress, prepared=prepared, steps=records)
            if recipe.build and build and not dry_run and output is not None:
                from surgeon.build import build_run

                progress.message("building the TensorRT engine")
                result.build = build_run(recipe, output, progress)
            result.seconds = time.perf_counter() - started
            if output is not None and not dry_run:
                result.report_path = report_path_for(output)
                write_text_atomic(result.report_path, json_text(result.report()))  # NaN, inf as "nan", "inf"
        except (KeyboardInterrupt, SurgeonError) as exc:  # the CLI says what was written before it (surgeon.cli)
            exc.written = [*result.files, *(result.validation.reports if result.validation is not None else ())]
            raise
        return result


@contextlib.contextmanager
def _graphsurgeon_quiet(quiet: bool):
    """Raise onnx-graphsurgeon's log severity to errors while the block runs, where `quiet`: its warnings (a
    dump of each pair of nodes sharing a name, a missing `colored` module) go to the terminal directly,
    past the tool output `Context.tool_output` holds back."""
    if not quiet:
        yield
        return
    from onnx_graphsurgeon.logger import G_LOGGER

    with G_LOGGER.suppress(G_LOGGER.ERROR):
        yield


def _target_notes(model: onnx.ModelProto, recipe: Recipe) -> list[str]:
    """What the recipe's target cannot take whatever the steps did: an opset above the one it parses."""
    target = load_target(recipe.target)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if target.max_opset is not None and opset is not None and opset > target.max_opset:
        return [f"the result's ai.onnx opset {opset} is above what {target.name} parses (at most "
                f"{target.max_opset}); see surgeon check (SG018)"]
    return []


@contextlib.contextmanager
def collector_paused():
    """Pause Python's cyclic garbage collector while graphs are built and rewritten.

    graphsurgeon graphs are reference cycles by design (tensor <-> node); building one of 20,000 nodes
    triggers full collections that free nothing and took 25-40 % of a run (docs/performance.md). The
    graphs the run drops are taken apart (`rewrite.dismantle_graph`), so reference counting frees them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def report_path_for(output: Path) -> Path:
    return output.with_name(output.stem + ".surgeon.json")


def run_files(recipe: Recipe, output, model_paths, validate: bool = True, build: bool = True, inputs=()):
    """(outputs, inputs, models) of a run writing `output`, as `modelio.guard_outputs` takes them
    (`model_paths`: the input model's files, from `read_model`).

    Outputs: OUT, OUT.data (models over 2 GB), the run report, the validation reports, the engine and its
    build report. Inputs: the model and its external data, every recipe of the extends chain, the target
    file, the validate section's data/expected/against files (and the against model's external data),
    the build section's caches, calibration data and plugin libraries."""
    out = Path(output)
    outputs = [(output, "the output model", "-o"), (report_path_for(out), "the run report", "-o"),
               (out.with_name(out.name + ".data"), "the output model's external data", "-o")]
    sources = [*model_inputs(model_paths), *((f, "the recipe") for f in recipe.files), *inputs]
    if Path(str(recipe.target)).suffix in (".yaml", ".yml"):
        sources.append((recipe.target, "the target file"))
    checks = recipe.validate if validate and recipe.validate else None
    if checks:
        from surgeon.validation.report import default_prefix, report_paths

        option = "validate.report" if checks.get("report") else "-o"
        for path in report_paths(Path(checks["report"]) if checks.get("report") else default_prefix(out)):
            outputs.append((path, "the validation report", option))
        for key in ("data", "expected"):
            if checks.get(key):
                sources.append((checks[key], f"the recipe's validate.{key}"))
    if build and recipe.build:
        from surgeon.build import build_files, default_engine_path

        engine = Path(recipe.build["engine"]) if recipe.build.get("engine") else default_engine_path(out)
        built, read = build_files(recipe.build, engine, "build.engine" if recipe.build.get("engine") else "-o")
        outputs += built
        sources += read
    against = checks.get("against") if checks else None
    models = [(against, "the recipe's validate.against model")] if against not in (None, "original", "none") else []
    return outputs, [(path, what) for path, what in sources if path], models


def run_steps(model: onnx.ModelProto, recipe: Recipe, model_dir=None, progress: Progress | None = None,
              after_step: AfterStep | None = None, quiet: bool = False) -> tuple[gs.Graph, list[StepRecord]]:
    """Import `model`, run the recipe's steps over it; return the (untidied) graph and the records. `quiet`
    (`run -q`): the tools the passes call print nothing (`Context.tool_output`)."""
    progress = progress or Progress()
    with stdout_to_stderr():  # graphsurgeon warns on stdout (bfloat16 tensors), where `run --json` prints
        graph, notes = import_graph_noting(model)
    _decode_free_text(graph, walk_nodes=notes is None)  # notes come only for graphs without bodies or functions
    ctx = Context(target=load_target(recipe.target), opset=graph.opset or 17, model_dir=model_dir, quiet=quiet)
    ctx.loaded_model = model
    state = _GraphState()
    sorted_on_import = notes.in_order if notes is not None else is_sorted(graph.nodes)
    if sorted_on_import:
        state.held.add("toposort")
    if _shapes_pay_off(model, recipe):
        inferred = infer_without_weights(model)
        if inferred is not None:
            annotate_shapes(graph, inferred)
            if sorted_on_import:  # inference on an unsorted graph is partial: leave it to _provide
                state.held.add("shapes")
    records = []
    total = len(recipe.steps)
    for index, step in enumerate(recipe.steps, start=1):
        progress.step_started(index, total, step)
        record, graph = _run_step(graph, step, index, ctx, state)
        records.append(record)
        progress.step_finished(record, total)
        if after_step is not None:
            after_step(record, graph)
    # What finish_graph needs besides the graph, kept with it (graphsurgeon graphs take attributes).
    graph.__dict__["_surgeon_provenance"] = ctx.provenance
    graph.__dict__["_surgeon_renamed_nodes"] = ctx.renamed_nodes
    graph.__dict__["_surgeon_state"] = state
    graph.__dict__["_surgeon_node_text"] = notes.node_text if notes is not None else None
    return graph, records


def _shapes_pay_off(model: onnx.ModelProto, recipe: Recipe) -> bool:
    """Whether inferring shapes before import is likely to save a later export: some step needs them,
    or the graph computes shapes at run time (`Shape` nodes, which fold-constants folds when known)."""
    if any("shapes" in get_pass(step.pass_name).needs for step in recipe.steps):
        return True
    return bool(recipe.steps) and any(node.op_type == "Shape" for node in model.graph.node)


class _GraphState:
    """Which of `needs` (toposort, cleanup, shapes) hold of the graph now, so each is provided only when stale."""

    def __init__(self):
        self.held: set[str] = set()
        self.touched = False  # some step changed the graph: the output must be tidied
        self.histogram: dict[str, int] | None = None  # op histogram after the last step

    def changed(self, keeps=()) -> None:
        self.held.intersection_update(keeps)
        self.touched = True


def _run_step(graph: gs.Graph, step: Step, index: int, ctx: Context, state: _GraphState):
    where = step.describe(index)
    cls = get_pass(step.pass_name)
    instance = cls(**step.params)
    untidy_nodes = len(graph.nodes)
    with stdout_to_stderr():  # shape inference exports and imports the graph: graphsurgeon's warnings
        graph = _provide(graph, cls.needs, state)
    ctx.begin(graph, step.pass_name)
    ctx.held = frozenset(state.held)
    before_nodes = len(graph.nodes)
    nodes_before_run = list(graph.nodes)  # the nodes themselves, so that no new node can take a freed one's id
    before_hist = state.histogram if state.histogram is not None else op_histogram(graph.nodes)
    started = time.perf_counter()
    try:
        with stdout_to_stderr():  # what a pass or the tools it calls print must not corrupt `run --json`
            result = instance.run(graph, ctx)
    except SurgeonError as exc:
        exc.message = f"{where}: {exc.message}"
        exc.args = (exc.message,)
        raise
    except SystemExit as exc:  # a pass must not end the run on its own, and never silently
        raise SurgeonError(f"{where}: pass '{step.pass_name}' called sys.exit({exc.code!r})") from exc
    except Exception as exc:  # a pass bug must still name its step, and keep the cause for SURGEON_DEBUG
        raise SurgeonError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - started
    if not isinstance(result, PassResult):
        raise SurgeonError(f"{where}: pass '{step.pass_name}' returned {type(result).__name__}, not a PassResult")
    ctx.settle_tags(*(g for g in (result.graph, graph) if g is not None))
    if result.graph is not None:
        dismantle_replaced(graph, result.graph)
        graph = result.graph
    unknown = set(result.keeps) - set(NEEDS)
    if unknown:
        raise SurgeonError(f"{where}: pass '{step.pass_name}' says it keeps {sorted(unknown)}; known: {list(NEEDS)}")
    unreported = result.graph is None and not result.changed and not _same_nodes(nodes_before_run, graph.nodes)
    if unreported:
        result.note("the pass changed the graph's nodes without reporting a rewrite (PassResult.rewrote); "
                    "surgeon tidies the graph as after any change")
    if result.graph is not None or unreported:  # what a pass keeps is trusted only of the changes it reports
        state.changed()
    elif result.changed:
        state.changed(keeps=(*cls.keeps, *result.keeps))
    state.held.update(cls.provides)
    if result.changed or result.graph is not None or unreported or state.histogram is None:
        state.histogram = op_histogram(graph.nodes)
    record = StepRecord(index=index, pass_name=step.pass_name, label=step.label, params=dict(step.params),
                        nodes_before=before_nodes, nodes_after=len(graph.nodes),
                        op_delta=histogram_delta(before_hist, state.histogram), rewritten=list(result.rewritten),
                        notes=[*result.notes, *_unvisited_sites(graph, cls, ctx.target)], seconds=round(seconds, 4),
                        pruned_before=untidy_nodes - before_nodes, origin=_pass_origin(cls))
    return record, graph


def _unvisited_sites(graph: gs.Graph, cls: type, target) -> list[str]:
    """A note for each node of an op the pass handles (`Pass.handles`) left inside an If/Loop/Scan body or a
    local function, which passes do not visit (they rewrite the main graph only), with what to run first as
    `surgeon check` phrases it (`fix_reaching`: simplify for an If on a constant condition, inline-functions for
    a function's node). Only a node `surgeon check` flags for the target is noted (the rules a pass's rewrite
    answers: SG001 custom op, SG003 op version, SG004 dtype): a plain Split or float32 GridSample in a body
    needs nothing. Asked of the exported graph only where a nested node of a handled op exists."""
    if not cls.handles or not (graph.functions or any_subgraphs(graph.nodes)):
        return []
    nested = [*graph.subgraphs(recursive=True), *graph.functions,
              *(sub for function in graph.functions for sub in function.subgraphs(recursive=True))]
    if not any(op_label(node) in cls.handles for body in nested for node in body.nodes):
        return []
    from surgeon.check.facts import ModelFacts
    from surgeon.check.rules import custom_op_unsupported, dtype_unsupported, fix_reaching, op_unsupported

    with stdout_to_stderr():  # graphsurgeon's export warnings (bfloat16)
        model = export_graph(graph)
    facts = ModelFacts(path=Path("model.onnx"), model=model, target=target)
    flagged = {finding.node for rule in (custom_op_unsupported, op_unsupported, dtype_unsupported)
               for finding in rule(facts)}
    notes = []
    for node in facts.all_nodes:
        label = op_label(node)
        if label not in cls.handles or facts.in_main_graph(node) or facts.node_path(node) not in flagged:
            continue
        fix, why_not = fix_reaching(facts, node, cls.fix_hint(target))
        where = "a local function" if facts.body_holder(node) is None else "an If/Loop/Scan body"
        advice = f", passes do not visit {where}: run {fix}" if fix is not None else why_not
        notes.append(f"{facts.node_path(node)} ({label}): left{advice}")
    return notes


def _pass_origin(cls: type) -> dict[str, str] | None:
    """Where a pass that is not built in comes from, for the run's records: its module, its file and the
    file's sha256 (the code that made the output, whatever the pass's name), and the installed package whose
    `surgeon.passes` entry point brought the module in, with its version (`registry.distribution_of`: known
    since the registry loaded the entry points, not looked up again per step). None for a built-in pass."""
    if cls.__module__.startswith(f"{BUILTIN_PACKAGE}."):
        return None
    origin = {"module": cls.__module__}
    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if file:
        origin["file"] = str(file)
        with contextlib.suppress(OSError):  # gone since it was imported: the record says where it was
            origin["sha256"] = hashlib.sha256(Path(file).read_bytes()).hexdigest()
    distribution = distribution_of(cls.__module__)
    if distribution is not None:
        origin["package"] = " ".join(distribution)
    return origin


def _same_nodes(before: list[gs.Node], after: list[gs.Node]) -> bool:
    """Whether `after` holds the very nodes of `before`, in the same order (O(n): no node is compared by value)."""
    return len(before) == len(after) and all(map(operator.is_, before, after))


def _provide(graph: gs.Graph, needs, state: _GraphState) -> gs.Graph:
    # Shape inference runs on a tidy, sorted graph, so "shapes" implies the other two first.
    wanted = set(needs) | ({"cleanup", "toposort"} if "shapes" in needs else set())
    if "cleanup" in wanted - state.held and prune_graph(graph):
        state.histogram = None  # nodes went: the cached histogram no longer holds
    if "toposort" in wanted - state.held:
        _toposort(graph)
    if "shapes" in wanted - state.held:
        graph = infer_graph_shapes(graph)
    state.held |= wanted
    return graph


def _toposort(graph: gs.Graph) -> None:
    try:
        stable_toposort(graph)
    except ValueError as exc:
        raise SurgeonError(str(exc)) from None


def finish_graph(graph: gs.Graph, original: onnx.ModelProto, recipe: Recipe,
                 records: list[StepRecord]) -> onnx.ModelProto:
    """Tidy once, export once, infer shapes, and write provenance into `metadata_props`."""
    provenance = graph.__dict__.get("_surgeon_provenance") or {}
    state = graph.__dict__.get("_surgeon_state")
    held = state.held if state else set()
    if (state is None or state.touched) and "cleanup" not in held:
        prune_graph(graph)
    if "toposort" not in held:  # also for an untouched graph: unsorted exports fail onnx.checker
        _toposort(graph)
    typed = infer_where_untyped(graph)
    model = export_graph(graph)
    if not typed:  # best effort, see infer_graph_shapes; without the weights, which it does not need
        inferred = infer_without_weights(model, data_prop=False)
        if inferred is not None:
            for field in ("node", "value_info", "output"):  # bodies of If/Loop nodes get value_info too
                del getattr(model.graph, field)[:]
                getattr(model.graph, field).extend(getattr(inferred.graph, field))
    origins = _tensor_origins(records)
    _restore_node_metadata(model, original, provenance, graph.__dict__.get("_surgeon_renamed_nodes") or {},
                           node_text=graph.__dict__.get("_surgeon_node_text"), origins=origins)
    _restore_graph_text(model.graph, original.graph, origins)
    _restore_function_text(model, original)
    _copy_model_fields(model, original)
    _stamp(model, recipe, records)
    return model


def _decode_free_text(graph: gs.Graph, walk_nodes: bool = True) -> None:
    """Free text that is not UTF-8 (protobuf hands it over as bytes), decoded with its invalid bytes escaped,
    so that graphsurgeon can export the graph: the graph's, its bodies' and its functions' doc strings and
    the producer. finish_graph writes the original bytes back. `walk_nodes=False`: the graph is known to
    hold no bodies, so its nodes need no walk looking for them (20,000 nodes: 2-10 ms)."""
    for holder in (graph, *graph.functions):
        _decode_own_text(holder, walk_nodes)


def _decode_own_text(holder: gs.Graph, walk_nodes: bool) -> None:
    """`_decode_free_text` for a graph, a body or a function and the bodies it holds, not the model's
    functions again: a body's `functions` are the model's, and a function may hold a body."""
    for field in ("doc_string", "producer_name", "producer_version"):
        text = vars(holder).get(field)  # not getattr: a gs.Graph looks unknown names up as functions, noisily
        if isinstance(text, bytes):
            setattr(holder, field, text.decode("utf-8", "backslashreplace"))
    for node in holder.nodes if walk_nodes else ():
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                _decode_own_text(value, walk_nodes=True)


def _restore_node_metadata(model: onnx.ModelProto, original: onnx.ModelProto, provenance: dict,
                           renamed: dict | None = None, node_text: bool | None = None,
                           origins: dict | None = None) -> None:
    """Metadata, doc strings and attribute doc strings of the original's nodes (`_restore_nodes_text`): graphsurgeon
    keeps none of them. Then the passes' `provenance`, by node path (Context.settle_tags); a renamed node's metadata
    travels in it too (passes/rename.py). `node_text=False`: the import found none of the original's nodes carrying
    text (`ImportNotes`), so they are not walked (30-90 ms on 20,000 nodes)."""
    before = _nodes_before(original.graph) if node_text is not False else {}
    if before or provenance:
        _restore_nodes_text(model.graph, before, provenance, renamed, origins)


def _nodes_before(graph) -> dict:
    """The nodes of `graph` (a graph or a function) and of its bodies that carry text or hold a body, by their key
    (`_nodes_by_path`); under a name that repeats within one graph, a list of all the nodes of that name, those
    without text included (`_same_node` tells them apart)."""
    nodes, described = {}, set()
    for _, key, node in _nodes_by_path(graph):
        known = nodes.setdefault(key, node)
        if known is not node:
            nodes[key] = [*known, node] if type(known) is list else [known, node]
        if node.doc_string or node.metadata_props or node.attribute and (
                _attribute_docs(node.attribute) or next(subgraphs(node), None)):
            described.add(key)
    return {key: nodes[key] for key in described}


def _same_node(candidates: list, node: onnx.NodeProto, origins: dict | None):
    """The one of `candidates`, nodes sharing a name in one graph of the input model, that `node` was, or None:
    by op type, domain and outputs, as unnamed nodes go, so that each keeps its own text."""
    outputs = [origins.get(o, o) for o in node.output] if origins else list(node.output)
    return next((n for n in candidates if n.op_type == node.op_type and n.domain == node.domain
                 and list(n.output) == outputs), None)


def _restore_nodes_text(graph, before: dict, provenance: dict, renamed: dict | None = None,
                        origins: dict | None = None) -> None:
    """The text of the nodes `before` (`_nodes_before`) onto those of `graph` (a graph or a function) they were, by
    key within the same graph (`_nodes_by_path`: a named node by its name, `renamed` mapping new names to original
    ones; an unnamed one by op and outputs, `origins` (`_tensor_origins`) mapping renamed outputs): doc strings,
    metadata, and an attribute's doc string only where the node kept its op type and the attribute its name and
    kind. The bodies' own text (`_restore_graph_text`) by their holder and attribute. Then `provenance`, by path."""
    for path, key, node in _nodes_by_path(graph, renamed, origins, keyed=bool(before)):
        node_before = before.get(key) if before else None
        if type(node_before) is list:
            node_before = _same_node(node_before, node, origins)
        kept = ()
        if node_before is not None:
            kept = node_before.metadata_props
            if not node.doc_string and node_before.doc_string:
                set_text_field(node, "doc_string", node_before.doc_string)
            if node_before.op_type == node.op_type and node_before.domain == node.domain:
                _restore_attribute_docs(node.attribute, _attribute_docs(node_before.attribute))
            for attribute, body in subgraphs(node) if node.attribute else ():
                body_before = next((g for name, g in subgraphs(node_before) if name == attribute), None)
                if body_before is not None:
                    _restore_graph_text(body, body_before, origins)
        if path in provenance:
            _write_metadata(node.metadata_props, kept, provenance[path])
        elif kept and not node.metadata_props:  # as it was, order and repeated keys included
            node.metadata_props.extend(kept)


def _attribute_docs(attributes) -> dict:
    """Attribute name -> (kind, doc string), for the attributes that have one."""
    return {attribute.name: (attribute.type, attribute.doc_string) for attribute in attributes if attribute.doc_string}


def _restore_attribute_docs(attributes, described: dict | None) -> None:
    """The doc strings `described` (`_attribute_docs`) onto the `attributes` of the same name and kind."""
    for attribute in attributes if described else ():
        kind, doc = described.get(attribute.name, (None, None))
        if kind == attribute.type and not attribute.doc_string:
            set_text_field(attribute, "doc_string", doc)


def _restore_graph_text(graph: onnx.GraphProto, before: onnx.GraphProto, origins: dict | None = None) -> None:
    """A graph's (the main graph's or a body's) own free text, from the graph it was: its doc string
    (graphsurgeon escapes one that is not UTF-8), its metadata, and the doc strings and metadata of its
    inputs, outputs and value infos by the tensor's name there (`origins`, `_tensor_origins`: the text follows
    a renamed tensor, not its name; graphsurgeon keeps none of these)."""
    if before.HasField("doc_string"):
        set_text_field(graph, "doc_string", before.doc_string)
    else:
        graph.ClearField("doc_string")
    if not graph.metadata_props:
        graph.metadata_props.extend(before.metadata_props)
    described = {info.name: info for info in (*before.input, *before.output, *before.value_info)
                 if info.doc_string or info.metadata_props}
    for info in (*graph.input, *graph.output, *graph.value_info) if described else ():
        before_info = described.get(origins.get(info.name, info.name) if origins else info.name)
        if before_info is not None:
            if not info.doc_string and before_info.doc_string:
                set_text_field(info, "doc_string", before_info.doc_string)
            if not info.metadata_props:
                info.metadata_props.extend(before_info.metadata_props)


def _restore_function_text(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Local functions' free text, by (domain, name, overload): the function's doc string (graphsurgeon
    escapes one that is not UTF-8) and metadata, its attributes' doc strings, and its nodes' text as the main
    graph's (`_restore_nodes_text`: a body a pass changed keeps the text of the nodes that survive). Its value
    infos, which graphsurgeon drops whole, only where its body is still the original's node for node (passes
    rarely touch function bodies): a changed body's tensors may be others."""
    originals = {(f.domain, f.name, f.overload): f for f in original.functions}
    for function in model.functions if originals else ():
        before = originals.get((function.domain, function.name, function.overload))
        if before is None:
            continue
        if before.doc_string:
            set_text_field(function, "doc_string", before.doc_string)
        if not function.metadata_props:
            function.metadata_props.extend(before.metadata_props)
        _restore_attribute_docs(function.attribute_proto, _attribute_docs(before.attribute_proto))
        _restore_nodes_text(function, _nodes_before(before), {})
        if not function.value_info and _body_outline(function.node) == _body_outline(before.node):
            function.value_info.extend(before.value_info)


def _body_outline(nodes) -> list[tuple]:
    """What says two lists of nodes are the same nodes: each node's op, name, inputs, outputs and attribute
    names and kinds (a changed attribute value leaves its node, and the node's text, in place)."""
    return [(node.op_type, node.domain, node.name, list(node.input), list(node.output),
             [(attribute.name, attribute.type) for attribute in node.attribute]) for node in nodes]


def _write_metadata(field, entries, updates: dict) -> None:
    """Replace metadata `field` with `entries` updated by `updates` (key -> value), sorted by key, the last
    of a repeated key winning; keys and values that are not UTF-8 (bytes from protobuf) kept as they are
    (passes/rename.py moves a node's in `updates`). `entries` may be `field`'s own."""
    merged = {_text_key(entry.key): (entry.key, entry.value) for entry in entries}
    merged.update({_text_key(key): (key, value) for key, value in updates.items()})
    del field[:]
    for text_key in sorted(merged):
        key, value = merged[text_key]
        if type(key) is str and type(value) is str:
            field.add(key=key, value=value)
        else:
            entry = field.add()
            set_text_field(entry, "key", key)
            set_text_field(entry, "value", value)


def _text_key(key: str | bytes) -> str:
    """A metadata key as text to sort and compare by, distinct for distinct bytes."""
    return key if isinstance(key, str) else key.decode("utf-8", "surrogateescape")


def _nodes_by_path(graph: onnx.GraphProto, renamed: dict | None = None, origins: dict | None = None,
                   keyed: bool = True, scope: str = "", held_by: tuple | None = None):
    """(path, key, node) for the graph's nodes and, after each node holding bodies, theirs. The path names
    the node as passes do (`pass_api.node_paths`): a body's nodes are named `holder/attribute/` + their name.
    The key finds the node in the input model: (key of the holder and attribute, or None in the main graph)
    with the node's original name (`renamed`: new name -> original name, main graph only, as rename renames
    main-graph nodes only; nodes sharing a name are told apart by `_same_node`), or for an unnamed node its
    op type, domain and outputs' original names (`origins`, `_tensor_origins`), which no other node in its
    graph shares. `keyed=False`: paths only, the key None (15 ms less on 20,000 unnamed nodes)."""
    for node in graph.node:
        key = None
        if keyed:
            name = renamed.get(node.name, node.name) if renamed and held_by is None else node.name
            if name:
                key = (held_by, name)
            else:
                outputs = tuple(origins.get(o, o) for o in node.output) if origins else tuple(node.output)
                key = (held_by, node.op_type, node.domain, outputs)
        yield scope + node.name, key, node
        for attribute, body in subgraphs(node):
            yield from _nodes_by_path(body, renamed, origins, keyed, f"{scope}{node.name}/{attribute}/",
                                      (key, attribute))


def renamed_tensors(steps) -> dict[str, str]:
    """{name in the input model: name after `steps`} of every tensor a `rename` step renamed (its
    `inputs`, `outputs` and `tensors`, at once, as the pass does): validation compares a renamed output
    with the original's under its new name, and a run restores a renamed tensor's free text."""
    original_of: dict[str, str] = {}  # current name -> name in the input model
    for step in steps:
        if step.pass_name != "rename":
            continue
        renames = [(old, new) for key in ("inputs", "outputs", "tensors")
                   for old, new in (step.params.get(key) or {}).items()]
        # A rename step renames at once (passes/rename.py): every origin is taken before any is filed.
        origins = [(new, original_of.pop(old, old)) for old, new in renames]
        original_of.update(origins)
    return {old: new for new, old in original_of.items() if old != new}


def _tensor_origins(records) -> dict[str, str | None]:
    """{name after `records`: name in the input model} of the renamed tensors (`renamed_tensors`), and None
    for an input model's name a renamed tensor left: a tensor holding it now is another one."""
    renamed = renamed_tensors(records)
    origins: dict[str, str | None] = dict.fromkeys(renamed)
    origins.update((new, old) for old, new in renamed.items())
    return origins


def _copy_model_fields(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    model.ir_version = original.ir_version or model.ir_version
    # As they were, unset ones included: graphsurgeon sets every one, and a no-op run keeps every byte.
    for field in ("producer_name", "producer_version", "domain", "doc_string"):
        model.ClearField(field)
        if original.HasField(field):
            set_text_field(model, field, getattr(original, field))
    model.ClearField("model_version")
    if original.HasField("model_version"):
        model.model_version = original.model_version
    # graphsurgeon keeps none of the model's metadata (class names, ...; _stamp replaces surgeon.* keys)
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    # Opset imports: those of the domains the graph (bodies and local functions included) still uses, and
    # the default domain; `org.pytorch.aten` goes with the last ATen node.
    used = {n.domain for n in all_nodes(model.graph)}
    used.update(n.domain for f in model.functions for n in f.node)
    known = {o.domain for o in model.opset_import}
    for imp in original.opset_import:
        if imp.domain not in known and imp.domain in used:
            model.opset_import.add(domain=imp.domain, version=imp.version)
    kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    if len(kept) != len(model.opset_import):
        kept = [onnx.OperatorSetIdProto(domain=o.domain, version=o.version) for o in kept]
        del model.opset_import[:]
        model.opset_import.extend(kept)


def _stamp(model: onnx.ModelProto, recipe: Recipe, records: list[StepRecord]) -> None:
    kept = [p for p in model.metadata_props if not _text_key(p.key).startswith("surgeon.")]
    _write_metadata(model.metadata_props, kept, {
        "surgeon.version": __version__,
        "surgeon.recipe": recipe.name,
        "surgeon.recipe_sha256": recipe.sha256,
        # The profile's name, not the path a file target resolved to: the same recipe run from another
        # folder must give the same bytes.
        "surgeon.target": load_target(recipe.target).name,
        "surgeon.steps": json.dumps([_step_stamp(r) for r in records], sort_keys=True, default=str),
    })


def _step_stamp(record: StepRecord) -> dict[str, Any]:
    """A step as the model's metadata records it. A third-party pass's origin by its file's name, not its path
    (nor the module named after that path, for a plugin file): the same run from another folder gives the
    same bytes."""
    stamp = {"pass": record.pass_name, "with": record.params}
    if record.origin:
        stamp["origin"] = {key: Path(value).name if key == "file" else value
                           for key, value in record.origin.items() if key != "module"}
    return stamp


def check_model(model: onnx.ModelProto | bytes, source=None) -> None:
    """onnx.checker on the result's bytes (or the model under 2 GB); a failure is CheckFailed (exit 1) and
    nothing is written. `source`: the input model's path; where it fails the same check, the failure is
    the input's (ModelError, exit 2)."""
    _checked(model, source)


def check_model_file(path, source=None) -> None:
    """`check_model` for a model past 2 GB, written (to a temporary name) with its external data."""
    _checked(str(path), source)


def _checked(model, source=None) -> None:
    try:
        with stdout_to_stderr():  # the checker's C++ warnings must not land in `--json` output
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        input_failure = _same_input_failure(source, exc) if source is not None else None
        if input_failure is not None:
            raise ModelError(f"the input model fails onnx.checker: {_checker_message(input_failure)}", file=source,
                             hint="the rewritten model fails the same way; repair the input, or set 'checker: "
                                  "false' in the recipe to skip this check") from None
        raise CheckFailed(f"the rewritten model fails onnx.checker: {_checker_message(exc)} "
                          "(nothing was written; set 'checker: false' in the recipe to skip this check)") from None


def _same_input_failure(source, failure: onnx.checker.ValidationError) -> onnx.checker.ValidationError | None:
    """The input model's onnx.checker failure where its first line is the result's (the rule and the name it
    broke; the node printed after it may have been rewritten). Asked only once the result failed."""
    try:
        with stdout_to_stderr():
            onnx.checker.check_model(str(source))
    except onnx.checker.ValidationError as exc:
        return exc if first_line(exc) == first_line(failure) else None
    return None


def _checker_message(exc: onnx.checker.ValidationError) -> str:
    """onnx.checker's whole message on one line: the lines after the first name the node."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__

"""Which recipe step broke the numbers: re-run the steps, keep the graph after each, and bisect.

    step:      1 cleanup   2 grid-sample   3 clip-int   4 toposort
    outputs:   ok          ok              DIFFER       DIFFER      ─► "step 3 (clip-int)"

Each checked step's graph is tidied and exported as the pipeline would finish it; the original
model's outputs are computed once. The graph kept after a step is a snapshot (`Snapshots`): a
later step that edits weights in place (`const.values *= 2`) must not change it. Bisection assumes a step that breaks the outputs is not repaired by a
later one, and so checks about log2(steps) + 1 graphs; every checked step is listed in the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from surgeon.errors import SurgeonError
from surgeon.pipeline import StepRecord, finish_graph, renamed_tensors, run_steps
from surgeon.recipe import Recipe
from surgeon.validation.compare import OutputReport, Tolerance, compare_outputs, run_model
from surgeon.validation.data import Feeds, out_of_memory_named
from surgeon.validation.spill import RunOutputs


@dataclass
class Bisection:
    """The first step after which outputs leave tolerance (None when every step stays within it)."""

    step_index: int | None
    step_name: str | None
    checked: list[dict] = field(default_factory=list)
    outputs: list[OutputReport] = field(default_factory=list)
    records: list[StepRecord] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.step_index is not None

    def describe(self) -> str:
        if not self.found:
            return f"every step of {len(self.records)} stays within tolerance"
        return f"outputs leave tolerance after step {self.step_index} ({self.step_name})"

    def to_dict(self) -> dict:
        return {"step": self.step_index, "name": self.step_name, "checked": self.checked,
                "outputs": [o.to_dict() for o in self.outputs],
                "steps": [{"index": r.index, "name": r.title, "op_delta": r.op_delta,
                           "nodes_before": r.nodes_before, "nodes_after": r.nodes_after,
                           "pruned_before": r.pruned_before} for r in self.records]}


class Snapshots:
    """Copies of a graph that later edits of it cannot reach.

    `Graph.copy()` copies nodes and tensors but shares their NumPy arrays (and attribute values), so
    an in-place edit by a later step (`const.values *= 1.1`) would change every earlier copy. A
    snapshot holds private copies of the arrays instead, made once and shared by the following
    snapshots for as long as the graph's array still holds the same bytes: the memory is about one
    copy of the weights plus the arrays steps change, the time one comparison of the weights per
    step. Weights not loaded yet (graphsurgeon's LazyValues, read from the model on first use)
    cannot have been edited and are not copied.
    """

    def __init__(self):
        self._private: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(graph's array) -> (it, our copy)

    def take(self, graph: gs.Graph) -> gs.Graph:
        copy = graph.copy()
        seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._freeze(copy, seen, set())
        self._private = seen  # arrays the graph dropped are not kept alive
        return copy

    def _freeze(self, graph: gs.Graph, seen: dict, done: set) -> None:
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and id(tensor) not in done:
                done.add(id(tensor))
                tensor.values = self._array(tensor._values, seen) if isinstance(tensor._values, np.ndarray) \
                    else tensor._values
        for node in graph.nodes:
            for name, value in node.attrs.items():
                if isinstance(value, gs.Graph):  # copied by Graph.copy(); its constants are shared still
                    self._freeze(value, seen, done)
                else:
                    node.attrs[name] = self._attribute(value, seen)

    def _attribute(self, value, seen: dict):
        if isinstance(value, gs.Constant):  # a tensor attribute: the Constant object itself is shared
            values = value._values
            return gs.Constant(value.name, self._array(values, seen) if isinstance(values, np.ndarray) else values,
                               export_dtype=value.export_dtype)
        if isinstance(value, np.ndarray):
            return self._array(value, seen)
        if isinstance(value, list):
            return [self._attribute(v, seen) for v in value]
        return value  # numbers, strings, dtypes: immutable

    def _array(self, array: np.ndarray, seen: dict) -> np.ndarray:
        key = id(array)
        if key in seen:
            return seen[key][1]
        kept = self._private.get(key)
        if kept is None or kept[0] is not array or not _same_bytes(array, kept[1]):
            kept = (array, array.copy())
        seen[key] = kept
        return kept[1]


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.hasobject:
        return bool(np.array_equal(a, b))
    return bool(np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


def step_graphs(recipe: Recipe, original: onnx.ModelProto, model_dir=None) -> tuple[list[gs.Graph], list]:
    """A snapshot of the graph after each step (index i: after step i + 1) and the step records."""
    graphs: list[gs.Graph] = []
    records: list[StepRecord] = []
    snapshots = Snapshots()

    def keep(record: StepRecord, graph: gs.Graph) -> None:
        records.append(record)
        graphs.append(snapshots.take(graph))

    run_steps(original, recipe, model_dir=model_dir, after_step=keep)
    return graphs, records


def bisect_steps(recipe: Recipe, original: onnx.ModelProto, feeds: Feeds, tolerance: Tolerance,
                 runner: str = "auto", reference: RunOutputs | None = None, model_dir=None,
                 progress=None, final: list[OutputReport] | None = None, cuts: bool = False) -> Bisection:
    """Find the first step whose graph's outputs differ from `reference` (default: the original model's).

    `final` is the verdict on the finished model when the caller has it (`validate_run` does), so the
    last step is not run again. Each step's outputs are deleted once judged; the original's, run here
    when `reference` is None, once bisection is done. Running out of memory is an error naming the
    number of input sets. `feeds` are keyed by the original's input names: each step's graph is fed them
    under the names the recipe's `rename` steps up to it give those inputs. `cuts`: the recipe has an
    `extract` step; a result that keeps the original's interface is bisected as any recipe, a stage
    (`validate.cut_stage`) is refused (`cut_refusal`): the steps' graphs take or return other tensors.
    """
    with out_of_memory_named(len(feeds)):
        graphs, records = step_graphs(recipe, original, model_dir)
        if cuts and records:
            _check_keeps_interface(recipe, original, graphs, records, tolerance)
        ours = reference is None
        if ours:
            reference, _ = run_model(original, feeds, runner, "original", source="the original model")
        try:
            return _bisect_steps(recipe, original, graphs, records, feeds, tolerance, runner, reference, progress,
                                 final)
        finally:
            if ours:
                reference.close()


def cut_refusal(recipe: Recipe) -> str:
    """Why the steps of `recipe`, whose result is a stage cut from the original, are not bisected."""
    from surgeon.validation.validate import CUT_PASS

    index, step = next((index, step) for index, step in enumerate(recipe.steps, 1) if step.pass_name == CUT_PASS)
    return (f"recipe '{recipe.name}' cuts the graph (step {index}, {step.label or step.pass_name}): its steps' "
            "graphs take or return other tensors than the original, so they cannot be judged against it")


def _check_keeps_interface(recipe, original, graphs, records, tolerance) -> None:
    """Refuse a recipe whose result is a stage cut from the original; check the tolerances' names otherwise
    (`prepare_validation` leaves them to the caller where a recipe cuts)."""
    from surgeon.validation.validate import check_tolerance_names, cut_stage

    renames = renamed_tensors(records)
    if cut_stage(original, finish_graph(graphs[-1], original, recipe, records), renames) is not None:
        raise SurgeonError(f"bisect: {cut_refusal(recipe)}", hint="`surgeon run` validates the finished stage "
                           "against the same tensors of the original (docs/validation.md)")
    check_tolerance_names(tolerance, [o.name for o in original.graph.output], renames)


def _bisect_steps(recipe, original, graphs, records, feeds, tolerance, runner, reference, progress,
                  final) -> Bisection:
    from surgeon.validation.validate import renamed_feeds

    checked: dict[int, tuple[bool, list[OutputReport]]] = {}
    if final is not None and records:
        checked[len(records)] = (all(o.passed for o in final), final)

    def within(step: int) -> bool:
        if step not in checked:
            if progress is not None:
                progress.message(f"bisect: checking the graph after step {step} ({records[step - 1].title})")
            # Finished (tidied, exported) only when checked: bisection looks at few of the steps.
            model = finish_graph(graphs[step - 1], original, recipe, records[:step])
            renames = renamed_tensors(records[:step])
            results, _ = run_model(model, renamed_feeds(feeds, original, renames), runner, f"after-step-{step}",
                                   source=f"the graph after step {step} ({records[step - 1].title})")
            try:
                outputs = compare_outputs(reference, results, tolerance, renames=renames)
            finally:
                results.close()
            checked[step] = (all(o.passed for o in outputs), outputs)
        return checked[step][0]

    result = Bisection(None, None, records=records)
    if not records or within(len(records)):
        result.checked = _checked_rows(checked, records)
        return result
    good, bad = 0, len(records)  # outputs are fine after `good` steps and out of tolerance after `bad`
    while bad - good > 1:
        middle = (good + bad) // 2
        if within(middle):
            good = middle
        else:
            bad = middle
    result.step_index, result.step_name = bad, records[bad - 1].title
    result.outputs = checked[bad][1]
    result.checked = _checked_rows(checked, records)
    return result


def _checked_rows(checked: dict, records: list[StepRecord]) -> list[dict]:
    rows = []
    for step in sorted(checked):
        passed, outputs = checked[step]
        worst = max((o.max_abs for o in outputs if o.max_abs is not None), default=None)
        rows.append({"step": step, "name": records[step - 1].title, "passed": passed, "max_abs": worst})
    return rows

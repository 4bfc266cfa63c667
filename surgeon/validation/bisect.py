"""Which recipe step broke the numbers: re-run the steps, keep the graph after each, and bisect.

    step:      1 cleanup   2 grid-sample   3 clip-int   4 toposort
    outputs:   ok          ok              DIFFER       DIFFER      ─► "step 3 (clip-int)"

Each checked step's graph is tidied and exported as the pipeline would finish it; the original
model's outputs are computed once. Bisection assumes a step that breaks the outputs is not repaired by a
later one, and so checks about log2(steps) + 1 graphs; every checked step is listed in the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs
from polygraphy.comparator import RunResults

from surgeon.pipeline import StepRecord, finish_graph, run_steps
from surgeon.recipe import Recipe
from surgeon.validation.compare import OutputReport, Tolerance, compare_outputs, run_model


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


def step_graphs(recipe: Recipe, original: onnx.ModelProto, model_dir=None) -> tuple[list[gs.Graph], list]:
    """A copy of the graph after each step (index i: after step i + 1) and the step records."""
    graphs: list[gs.Graph] = []
    records: list[StepRecord] = []

    def keep(record: StepRecord, graph: gs.Graph) -> None:
        records.append(record)
        graphs.append(graph.copy())

    run_steps(original, recipe, model_dir=model_dir, after_step=keep)
    return graphs, records


def bisect_steps(recipe: Recipe, original: onnx.ModelProto, feeds: list[dict], tolerance: Tolerance,
                 runner: str = "auto", reference: RunResults | None = None, model_dir=None,
                 progress=None, final: list[OutputReport] | None = None) -> Bisection:
    """Find the first step whose graph's outputs differ from `reference` (default: the original model's).

    `final` is the verdict on the finished model when the caller has it (`validate_run` does), so the
    last step is not run again.
    """
    if reference is None:
        reference, _ = run_model(original, feeds, runner, "original")
    graphs, records = step_graphs(recipe, original, model_dir)
    checked: dict[int, tuple[bool, list[OutputReport]]] = {}
    if final is not None and records:
        checked[len(records)] = (all(o.passed for o in final), final)

    def within(step: int) -> bool:
        if step not in checked:
            if progress is not None:
                progress.message(f"bisect: checking the graph after step {step} ({records[step - 1].title})")
            # Finished (tidied, exported) only when checked: bisection looks at few of the steps.
            model = finish_graph(graphs[step - 1], original, recipe, records[:step])
            results, _ = run_model(model, feeds, runner, f"after-step-{step}")
            outputs = compare_outputs(reference, results, tolerance)
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

"""One validation: run both models on the same inputs, judge every output, localise a failure, report.

    original ──► runner ──┐
                          ├─► Polygraphy compare_accuracy ─► per-output verdicts + statistics
    rewritten ─► runner ──┘          │ failed?
                                     ├─► first diverging tensor (localise.py)
                                     └─► first diverging step (bisect.py, with each_step)
    expected.npz (PyTorch) ─► compared with the rewritten model's outputs too
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper
from polygraphy.comparator import IterationResult, RunResults

from surgeon.errors import SurgeonError
from surgeon.graphinfo import histogram_delta, op_histogram
from surgeon.modelio import load_model
from surgeon.validation.bisect import Bisection, bisect_steps
from surgeon.validation.compare import OutputReport, Tolerance, combine, compare_outputs, run_model, run_runner
from surgeon.validation.data import Feeds, feeds_for, load_arrays
from surgeon.validation.localise import describe_divergence, first_divergence
from surgeon.validation.runners import graph_inputs

ORIGINAL, REWRITTEN, EXPECTED = "original", "rewritten", "expected"


@dataclass
class ValidationResult:
    """What `validate_run` returns to the pipeline: verdict, statistics, where it broke, report files."""

    passed: bool
    tolerance: Tolerance
    outputs: list[OutputReport]
    expected: list[OutputReport] = field(default_factory=list)
    runners: dict[str, str] = field(default_factory=dict)
    iterations: int = 1
    data: str = ""
    divergence: dict | None = None
    notes: list[str] = field(default_factory=list)
    bisection: Bisection | None = None
    graph_diff: dict = field(default_factory=dict)
    reports: list[Path] = field(default_factory=list)
    run_results: RunResults | None = field(default=None, repr=False)
    feeds: Feeds = field(default_factory=list, repr=False)

    @property
    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        runners = " vs ".join(f"{name} ({kind})" for name, kind in self.runners.items())
        judged = f"{len(self.outputs)} output(s)" if self.outputs else f"{len(self.expected)} output(s) vs expected"
        lines = [f"validation {verdict}: {judged}, {self.tolerance.describe()}, "
                 f"{self.iterations} input set(s) from {self.data}; {runners}"]
        lines += [f"  note: {note}" for note in self.notes]
        for group, label in ((self.outputs, "original"), (self.expected, "expected")):
            for o in group:
                if not o.passed:
                    figures = o.note or f"max abs {_g(o.max_abs)}, max rel {_g(o.max_rel)}, cosine {o.cosine:.6f}"
                    lines.append(f"  {o.name} differs from {label}: {figures}")
        if self.divergence:
            label, text = describe_divergence(self.divergence)
            lines.append(f"  {label.lower()}: {text}")
        if self.bisection is not None:
            lines.append(f"  bisect: {self.bisection.describe()}")
        if self.reports:
            lines.append("  reports: " + ", ".join(str(p) for p in self.reports))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": dict(self.tolerance.__dict__),
            "runners": self.runners,
            "iterations": self.iterations,
            "data": self.data,
            "outputs": [o.to_dict() for o in self.outputs],
            "expected": [o.to_dict() for o in self.expected],
            "divergence": self.divergence,
            "notes": self.notes,
            "bisection": self.bisection.to_dict() if self.bisection else None,
            "graph_diff": self.graph_diff,
            "reports": [str(p) for p in self.reports],
        }


def _g(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def validate_models(original: onnx.ModelProto, rewritten: onnx.ModelProto | None, feeds: Feeds,
                    tolerance: Tolerance, runner: str = "auto", expected: str | None = None,
                    data: str = "random inputs", localise: bool = True,
                    rewritten_runner=None) -> ValidationResult:
    """Compare `rewritten` with `original` (and with `expected` outputs, if given) on `feeds`.

    `original=None` compares with the `expected` outputs only: for exports no runtime can run at all.
    `rewritten_runner` (a Polygraphy runner, e.g. TensorRT's) runs the candidate instead of `rewritten`,
    which may then be None (an engine has no graph to diff or localise in).
    """
    if original is None:
        return _validate_against_expected(rewritten, feeds, tolerance, runner, expected, data)
    tolerance.check_outputs([o.name for o in original.graph.output])
    original_results, original_kind = run_model(original, feeds, runner, ORIGINAL)
    if rewritten_runner is not None:
        rewritten_results, rewritten_kind = run_runner(rewritten_runner, feeds), rewritten_runner.name
    else:
        rewritten_results, rewritten_kind = run_model(rewritten, feeds, runner, REWRITTEN)
    outputs = compare_outputs(original_results, rewritten_results, tolerance)
    result = ValidationResult(passed=all(o.passed for o in outputs), tolerance=tolerance, outputs=outputs,
                              runners={ORIGINAL: original_kind, REWRITTEN: rewritten_kind},
                              iterations=len(feeds), data=data, feeds=feeds,
                              graph_diff=graph_diff(original, rewritten) if rewritten is not None else {})
    result.run_results = combine(original_results, rewritten_results)
    result.notes = input_notes(original, rewritten) if rewritten is not None else []
    localise = localise and rewritten is not None
    if expected:
        result.expected = compare_outputs(expected_results(expected), rewritten_results, tolerance, iterations=1)
        result.passed = result.passed and all(o.passed for o in result.expected)
    if localise and not all(o.passed for o in outputs):
        result.divergence = first_divergence(original, rewritten, feeds[0], tolerance, runner)
    return result


def _validate_against_expected(rewritten, feeds, tolerance, runner, expected, data) -> ValidationResult:
    if not expected:
        raise SurgeonError("validate: 'against: none' compares with the expected outputs only, so it needs "
                           "'expected' (an .npz of reference outputs)")
    tolerance.check_outputs([o.name for o in rewritten.graph.output])
    rewritten_results, rewritten_kind = run_model(rewritten, feeds, runner, REWRITTEN)
    compared = compare_outputs(expected_results(expected), rewritten_results, tolerance, iterations=1)
    result = ValidationResult(passed=all(o.passed for o in compared), tolerance=tolerance, outputs=[],
                              expected=compared, runners={REWRITTEN: rewritten_kind}, iterations=len(feeds),
                              data=data, feeds=feeds)
    result.run_results = rewritten_results
    return result


def input_notes(original: onnx.ModelProto, rewritten: onnx.ModelProto) -> list[str]:
    """Polygraphy feeds inputs the rewritten model renamed by position and casts those it retyped;
    say so rather than hide it."""
    def signature(model):
        return [(v.name, np.dtype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)))
                for v in graph_inputs(model)]

    before, after = signature(original), signature(rewritten)
    notes = []
    if [name for name, _ in before] != [name for name, _ in after]:
        pairs = ", ".join(f"{a} -> {b}" for (a, _), (b, _) in zip(before, after) if a != b)
        notes.append(f"the rewritten model's inputs differ from the original's; fed by position: {pairs}")
    for (_, dtype), (name, new_dtype) in zip(before, after):
        if dtype != new_dtype:
            notes.append(f"input {name} is {new_dtype} in the rewritten model, {dtype} in the original: its data is cast")
    return notes


def expected_results(path: str | Path) -> RunResults:
    """Reference outputs (e.g. from PyTorch) as a one-iteration Polygraphy result named 'expected'."""
    arrays = load_arrays(path, "expected outputs")[0]
    results = RunResults()
    results[EXPECTED] = [IterationResult({k: np.asarray(v) for k, v in arrays.items()}, runner_name=EXPECTED)]
    return results


def graph_diff(before: onnx.ModelProto, after: onnx.ModelProto) -> dict:
    """Op histograms before and after, their difference, and the node names added and removed."""
    hist_before, hist_after = op_histogram(before.graph.node), op_histogram(after.graph.node)
    names_before = {n.name for n in before.graph.node}
    names_after = {n.name for n in after.graph.node}
    return {"ops_before": hist_before, "ops_after": hist_after, "delta": histogram_delta(hist_before, hist_after),
            "nodes_before": len(before.graph.node), "nodes_after": len(after.graph.node),
            "added": sorted(names_after - names_before), "removed": sorted(names_before - names_after)}


def validate_run(recipe, original: onnx.ModelProto, original_path: Path, rewritten: onnx.ModelProto,
                 output: Path | None, progress) -> ValidationResult:
    """The pipeline's validation step: compare, localise, bisect when asked, write the reports."""
    from surgeon.validation.report import default_prefix, write_reports

    config = recipe.validate
    against = config.get("against") or "original"
    reference = original if against == "original" else None if against == "none" else load_model(against)
    tolerance = Tolerance.from_config(config)
    runner = config.get("runner") or "auto"
    feeds, data = feeds_for(reference if reference is not None else rewritten, config)
    result = validate_models(reference, rewritten, feeds, tolerance, runner, config.get("expected"), data)
    if reference is None:
        result.graph_diff = graph_diff(original, rewritten)
        if config.get("each_step"):
            raise SurgeonError("validate: each_step bisects against the original model, which 'against: none' "
                               "leaves out")
    if config.get("each_step") and recipe.steps:
        progress.message("bisecting the recipe's steps")
        result.bisection = bisect_steps(recipe, original, feeds, tolerance, runner,
                                        reference=_only_runner(result.run_results, ORIGINAL),
                                        model_dir=Path(original_path).parent, progress=progress,
                                        final=result.outputs)
    if output is not None:
        prefix = Path(config["report"]) if config.get("report") else default_prefix(output)
        result.reports = write_reports(result, prefix)
    return result


def _only_runner(results: RunResults, name: str) -> RunResults:
    single = RunResults()
    single[name] = results[name]
    return single

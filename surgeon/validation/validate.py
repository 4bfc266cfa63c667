"""One validation: run both models on the same inputs, judge every output, localise a failure, report.

    original ──► runner ──┐
                          ├─► compare.py (Polygraphy's rules) ─► per-output verdicts + statistics
    rewritten ─► runner ──┘          │ failed?
                                     ├─► first diverging tensor (localise.py)
                                     └─► first diverging step (bisect.py, with each_step)
    expected.npz (PyTorch) ─► compared with the rewritten model's outputs too

A recipe that cuts the graph (`extract`) makes a stage whose inputs and outputs are other tensors of
the original: the original returns those tensors instead (`Stage`), runs from its own inputs, and
feeds the stage the ones it takes.

Each model runs on one input set at a time, and what is kept of many sets waits on disk past a memory
budget (`spill.py`): memory does not grow with the number of sets.
"""
from __future__ import annotations

import math

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from surgeon import modelio
from surgeon.errors import SurgeonError, suggest
from surgeon.graphinfo import histogram_delta, op_histogram, tensor_bytes
from surgeon.modelio import load_model
from surgeon.pipeline import renamed_tensors
from surgeon.validation.bisect import Bisection, bisect_steps, cut_refusal
from surgeon.validation.compare import OutputReport, Tolerance, compare_outputs, run_model, run_runner
from surgeon.validation.data import (Feeds, check_fits, check_recorded, feed_layouts, feeds_for, load_arrays,
                                     out_of_memory_named)
from surgeon.validation.localise import describe_divergence, first_divergence, with_outputs
from surgeon.validation.runners import RUNNER_KINDS, check_runnable, declared_dtype, graph_inputs
from surgeon.validation.spill import RunOutputs

ORIGINAL, REWRITTEN, EXPECTED, AGAINST = "original", "rewritten", "expected", "against"


#: The pass whose steps make a recipe's result a stage of the original rather than a rewrite of it.
CUT_PASS = "extract"


def cuts_graph(recipe) -> bool:
    """Whether `recipe` has a `CUT_PASS` step, so that its result may be a stage (`cut_stage` tells)."""
    return any(step.pass_name == CUT_PASS for step in recipe.steps)
#: float16's precision, relative (2**-10, its spacing at 1): a tolerance below it judges rounding.
FLOAT16_RTOL = 1e-3


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
    #: What the outputs were compared with: "original", or "against" (a recipe's `validate.against` model).
    reference: str = ORIGINAL
    #: How to set other tolerances (`surgeon compare`'s options, which a recipe's do not reach): shown
    #: when an output fails by its errors.
    tolerance_hint: str = ""
    #: Whether the reference model's own outputs miss the expected ones (None: not compared).
    original_misses_expected: bool | None = None
    #: Each model's outputs, in the order the reports save them (`PREFIX.polygraphy.json`). They are the
    #: caller's to read after the reports are written, so they are kept (in memory within the budget, in
    #: temporary files past it) until the result is collected (`validate_run` bisects against the first).
    runs: list[RunOutputs] = field(default_factory=list, repr=False)
    feeds: Feeds = field(default_factory=list, repr=False)

    @property
    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        runners = " vs ".join(f"{name} ({kind})" for name, kind in self.runners.items())
        judged = f"{len(self.outputs)} output(s)" if self.outputs else f"{len(self.expected)} output(s) vs expected"
        lines = [f"validation {verdict}: {judged}, {self.tolerance.describe()}, "
                 f"{self.iterations} input set(s) from {self.data}; {runners}"]
        lines += [f"  note: {note}" for note in self.notes]
        for group, label in ((self.outputs, self.reference_label), (self.expected, "expected")):
            for o in group:
                if not o.passed:
                    lines.append(f"  {o.name} differs from {label}: {describe_output(o)}")
        if self.divergence:
            label, text = describe_divergence(self.divergence, self.reference_phrase)
            lines.append(f"  {label.lower()}: {text}")
        if self.bisection is not None:
            lines.append(f"  bisect: {self.bisection.describe()}")
        if self.repairs_the_original:
            lines.append(f"  the rewritten model matches the expected outputs where it differs from "
                         f"{self.reference_phrase}: the rewrite repairs it (torch's own export of atan2, for one, "
                         "is wrong on the axes); to judge by the expected outputs alone, set validate.against: none")
        elif self.tolerance_hint and self.near_tolerance:
            lines.append(f"  hint: judged at {self.tolerance.describe()}; {self.tolerance_hint}")
        half = sorted({o.name for o in self.outputs + self.expected
                       if o.within_tolerance is False and "float16" in (o.dtype, o.candidate_dtype)
                       and (o.rtol is None or o.rtol < FLOAT16_RTOL)})
        if half:
            lines.append(f"  {', '.join(half)}: float16, whose precision is about {FLOAT16_RTOL:g} relative; judged "
                         "below that, rounding alone fails them (a float16 model wants rtol 1e-3 or looser)")
        if self.reports:
            lines.append("  reports: " + ", ".join(str(p) for p in self.reports))
        return "\n".join(lines)

    @property
    def repairs_the_original(self) -> bool:
        """Whether the rewrite differs from the reference model in value only where that model is wrong: it
        passes against the expected outputs, the reference model does not, and every output failed on its
        values (not on a dtype, a shape or its absence)."""
        failed = [o for o in self.outputs if not o.passed]
        return (bool(self.expected) and bool(failed) and all(o.passed for o in self.expected)
                and all(o.within_tolerance is False for o in failed) and self.original_misses_expected is True)

    @property
    def near_tolerance(self) -> bool:
        """Whether some output failed by errors a looser tolerance could pass: finite, no NaN mismatch, and
        within 100 times the absolute or the relative tolerance (an error of 6.28 at 1e-5 is a different
        result, not a tolerance question)."""
        failed = [o for o in self.outputs + self.expected if o.within_tolerance is False and not o.nan_mismatched]
        return any(_within(o.max_abs, o.atol) or _within(o.max_rel, o.rtol) for o in failed)

    @property
    def beyond_tolerance(self) -> bool:
        """Whether some output failed by its errors (not only by its dtype, shape or absence)."""
        return any(o.within_tolerance is False for o in self.outputs + self.expected)

    @property
    def reference_label(self) -> str:
        """How summaries and reports name the model compared with ("y differs from original")."""
        return "the against model" if self.reference == AGAINST else self.reference

    @property
    def reference_phrase(self) -> str:
        """The same in running text ("made by ... in the original")."""
        return "the original" if self.reference == ORIGINAL else self.reference_label

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reference": self.reference,
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


def _within(error: float | None, tolerance: float | None, factor: float = 100) -> bool:
    return error is not None and math.isfinite(error) and bool(tolerance) and error <= factor * tolerance


def _g(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def describe_output(o: OutputReport) -> str:
    """Why an output failed, in a few figures (the summary's and the reports' wording)."""
    parts = [o.note] if o.note else []
    if o.candidate_name:
        parts.insert(0, f"compared with {o.candidate_name}")
    if o.max_abs is not None or not o.note:
        cosine = "-" if o.cosine is None else f"{o.cosine:.6f}"
        parts.append(f"max abs {_g(o.max_abs)}, max rel {_g(o.max_rel)}, cosine {cosine}")
    if o.nan_mismatched:
        parts.append(f"{o.nan_mismatched} element(s) NaN in one output only")
    return "; ".join(parts)


@dataclass
class Stage:
    """A cut stage as validation compares it: its outputs with the reference model's tensors of the same
    names (before any `rename`), the reference running from its own inputs. `model` is the reference
    returning those tensors, and also the ones it computes that the stage takes as inputs (BEVFusion's
    vtransform takes the camera features): the stage is fed the reference's values of them."""

    model: onnx.ModelProto
    outputs: list[str]  # the stage's outputs, by their names in the reference
    fed: dict[str, str]  # {stage input: reference tensor} where the reference's own feeds lack the name
    computed: list[str]  # the tensors in `fed` that the reference computes (`model` returns them too)
    dropped: list[str]  # the reference's outputs the stage does not return
    unmatched: list[str]  # the stage's outputs the reference has no tensor of

    def notes(self, reference: str) -> list[str]:
        """What was compared with what, said rather than hidden (`reference`: "the original", ...)."""
        fed = [f"{source} -> {name}" if source != name else name for name, source in self.fed.items()]
        notes = [f"a stage cut by the recipe's {CUT_PASS} step: its outputs are compared with the tensors of "
                 f"the same names in {reference}, which runs from its own inputs"
                 + (f" and feeds the stage its values of {', '.join(fed)}" if fed else "")]
        if self.dropped:
            notes.append(f"outputs of {reference} the stage does not return, not compared: {', '.join(self.dropped)}")
        if self.unmatched:
            notes.append(f"outputs of the stage {reference} has no tensor of, not compared: "
                         f"{', '.join(self.unmatched)}")
        return notes

    def expected_outputs(self, expected: RunOutputs, renames: dict | None) -> tuple[RunOutputs, list[str]]:
        """(the `expected` outputs the stage returns, by their names in the reference, as its outputs are;
        the others, not compared). The expected outputs were recorded for the reference, but may name an
        output the recipe renamed by its new name (`renames`, {reference name: new name}); a name that is one
        of the stage's outputs in the reference is read as that output, as without a cut (a rename swapping
        two outputs must not swap what they are compared with)."""
        reference_of = {(renames or {}).get(name, name): name for name in self.outputs}
        kept = RunOutputs(expected.name)
        kept.append({name if name in self.outputs else reference_of[name]: np.asarray(expected.array(0, name))
                     for name in expected[0] if name in self.outputs or name in reference_of})
        return kept, [name for name in expected[0] if name not in self.outputs and name not in reference_of]


def cut_stage(reference: onnx.ModelProto, stage: onnx.ModelProto, renames: dict | None = None,
              reference_name: str = "the original") -> Stage | None:
    """How to compare `stage`, the result of a recipe that cuts the graph, with `reference`; None where it
    takes the reference's inputs (or fewer) and returns its outputs, so that it is compared as any rewrite.

    Its inputs and outputs are tensors of `reference` under their names there (`renames`, {reference
    name: stage name}, as `pipeline.renamed_tensors` gives). An input that is no tensor of `reference`,
    or no output that is one, leaves nothing comparable: an error saying so."""
    reference_of = {new: old for old, new in (renames or {}).items()}
    inputs = {v.name: reference_of.get(v.name, v.name) for v in graph_inputs(stage)}
    outputs = {o.name: reference_of.get(o.name, o.name) for o in stage.graph.output}
    own_inputs = {v.name for v in graph_inputs(reference)}
    own_outputs = [o.name for o in reference.graph.output]
    if set(inputs.values()) <= own_inputs and set(outputs.values()) == set(own_outputs):
        return None
    computed = {name for node in reference.graph.node for name in node.output if name}
    # A stage output may pass an input or a weight of the reference through: a tensor of it as any other.
    tensors = computed | own_inputs | {tensor.name for tensor in reference.graph.initializer}
    hint = ("a stage's tensors are found by their names in the model compared with: cut at tensors it has, "
            "rename them with the rename pass (which validation follows), or run with --no-validate")
    unknown = [name for name, source in inputs.items() if source not in tensors]
    if unknown:
        raise SurgeonError(f"validate: nothing comparable: the stage takes {', '.join(unknown)}, which "
                           f"{reference_name} has no tensor of, so it cannot run to what the stage is fed", hint=hint)
    compared = [source for source in outputs.values() if source in tensors]
    if not compared:
        raise SurgeonError(f"validate: nothing comparable: none of the stage's outputs ({', '.join(outputs)}) is a "
                           f"tensor of {reference_name}", hint=hint)
    fed = {name: source for name, source in inputs.items() if source != name or source not in own_inputs}
    fed_computed = list(dict.fromkeys(source for source in fed.values() if source not in own_inputs))
    returned = list(dict.fromkeys(compared + fed_computed))
    model = with_outputs(reference, returned)
    kept = [o for o in model.graph.output if o.name in returned]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    return Stage(model, compared, fed, fed_computed, dropped=[name for name in own_outputs if name not in compared],
                 unmatched=[name for name, source in outputs.items() if source not in tensors])


class StageFeeds(Sequence):
    """Each input set of the reference model with what a stage is fed added (`Stage.fed`), taken from the
    set or from the reference's run on it (`computed`, None where the set holds them all): each model
    picks the inputs it takes by name."""

    def __init__(self, feeds: Feeds, computed: RunOutputs | None, fed: dict[str, str]):
        self.feeds, self.computed, self.fed = feeds, computed, fed

    def __len__(self) -> int:
        return len(self.feeds)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        feed = self.feeds[index]
        return {**feed, **{name: feed[source] if source in feed else self.computed.array(index, source)
                           for name, source in self.fed.items()}}


def renamed_feeds(feeds: Feeds, reference: onnx.ModelProto, renames: dict | None) -> Feeds:
    """`feeds` (keyed by `reference`'s input names) under the names a recipe's `rename` steps give those
    inputs (`renames`, {reference name: new name}): a swap {x: y, y: x} feeds each input its own data, where
    names alone would feed them crosswise."""
    own_inputs = {v.name for v in graph_inputs(reference)}
    fed = {new: old for old, new in (renames or {}).items() if old in own_inputs}
    return StageFeeds(feeds, None, fed) if fed else feeds


def _run_to_stage(stage: Stage, feeds: Feeds, kind: str, name: str, sessions: dict | None, files: dict | None,
                  runs: list[RunOutputs]) -> tuple[RunOutputs, str, StageFeeds]:
    """Run the reference returning the stage's tensors (`Stage.model`): its outputs to compare, and the
    feeds with what the stage takes. Both replace the whole run in `runs`, deleted with them on an error;
    the caller takes the feeds' part out of `runs` when done (they are no model's outputs to report)."""
    returned, ran_as = _run_model(stage.model, feeds, kind, name, sessions, files, runs)
    runs.pop()
    outputs, computed = RunOutputs(name, on_disk=len(feeds) > 1), RunOutputs(name, on_disk=len(feeds) > 1)
    runs += [outputs, computed]
    try:
        for index, runtime in enumerate(returned.runtimes):
            outputs.append({n: returned.array(index, n) for n in stage.outputs}, runtime)
            computed.append({n: returned.array(index, n) for n in stage.computed})
    finally:
        returned.close()
    return outputs, ran_as, StageFeeds(feeds, computed, stage.fed)


def validate_models(original: onnx.ModelProto, rewritten: onnx.ModelProto | None, feeds: Feeds,
                    tolerance: Tolerance, runner: str = "auto", expected: str | RunOutputs | None = None,
                    data: str = "random inputs", localise: bool = True,
                    rewritten_runner=None, reference: str = ORIGINAL, renames: dict | None = None,
                    sessions: dict | None = None, files: dict | None = None,
                    stage: Stage | None = None) -> ValidationResult:
    """Compare `rewritten` with `original` (and with `expected` outputs, if given) on `feeds`.

    `original=None` compares with the `expected` outputs only: for exports no runtime can run at all.
    `rewritten_runner` (a Polygraphy runner, e.g. TensorRT's) runs the candidate instead of `rewritten`,
    which may then be None (an engine has no graph to diff or localise in). `expected`: the path of
    the expected outputs, or them as read by `expected_results`. `reference`: what `original` is
    ("original", or "against" for a recipe's `validate.against` model), its runner's name in the
    results. `renames` ({original name: rewritten name}, `pipeline.renamed_tensors`) pairs outputs a
    recipe renamed; other outputs whose names differ are paired by position where that is unambiguous
    (`compare.output_pairs`), with a note. `prepare_validation` checks all of this before anything runs.
    `sessions`: the ONNX Runtime sessions its checks built (`ValidationInputs.sessions`), run instead
    of building them again. `files` ({`reference` or "rewritten": path}) name the models in errors.
    `stage` (`cut_stage`): `rewritten` is a stage cut from `original`, compared as it says; the result's
    feeds are then the ones with what the stage takes (`StageFeeds`).
    The models run on one input set at a time (`feeds` may draw them as asked, `data.RandomFeeds`);
    with more than one, their outputs wait (`ValidationResult.runs`, on disk past `spill.MEMORY_BUDGET`)
    until the result is collected, or are deleted at once when the validation fails to finish. Running
    out of memory is an error naming the number of input sets.
    """
    runs: list[RunOutputs] = []
    with out_of_memory_named(len(feeds)):
        try:
            if original is None:
                return _validate_against_expected(rewritten, feeds, tolerance, runner, expected, data, renames,
                                                  sessions, files, runs)
            return _validate_models(original, rewritten, feeds, tolerance, runner, expected, data, localise,
                                    rewritten_runner, reference, renames, sessions, files, runs, stage)
        except BaseException:
            for run in runs:
                run.close()
            raise


def _validate_models(original, rewritten, feeds, tolerance, runner, expected, data, localise, rewritten_runner,
                     reference, renames, sessions, files, runs, stage) -> ValidationResult:
    if stage is None:
        tolerance.check_outputs([o.name for o in original.graph.output])
        original_outputs, original_kind = _run_model(original, feeds, runner, reference, sessions, files, runs)
    else:
        tolerance.check_outputs(stage.outputs)
        original_outputs, original_kind, feeds = _run_to_stage(stage, feeds, runner, reference, sessions, files,
                                                               runs)
    # A stage's feeds name its inputs already (`Stage.fed` follows the renames); an against model's inputs
    # are named as it names them, which the recipe's renames say nothing of.
    candidate_feeds = renamed_feeds(feeds, original, renames) if stage is None and reference == ORIGINAL else feeds
    if rewritten_runner is not None:
        rewritten_outputs = run_runner(rewritten_runner, candidate_feeds, _source(files, REWRITTEN))
        runs.append(rewritten_outputs)
        rewritten_kind = rewritten_runner.name
    else:
        rewritten_outputs, rewritten_kind = _run_model(rewritten, candidate_feeds, runner, REWRITTEN, sessions, files,
                                                       runs)
    outputs = compare_outputs(original_outputs, rewritten_outputs, tolerance, renames=renames)
    result = ValidationResult(passed=all(o.passed for o in outputs), tolerance=tolerance, outputs=outputs,
                              runners={reference: original_kind, REWRITTEN: rewritten_kind},
                              iterations=len(feeds), data=data, feeds=feeds, reference=reference,
                              graph_diff=graph_diff(original, rewritten) if rewritten is not None else {},
                              runs=runs)
    if stage is not None:
        result.notes = stage.notes(result.reference_phrase)
    elif rewritten is not None:
        result.notes = input_notes(original, rewritten, feed_layouts(feeds)[0])
    result.notes += output_notes(outputs, renames, reference)
    if expected:
        expected = _expected(expected)
        if stage is not None:  # compared where the stage is: its outputs only, as with the reference
            expected, not_returned = stage.expected_outputs(expected, renames)
            if not_returned:
                result.notes.append(f"expected outputs the stage does not return, not compared: "
                                    f"{', '.join(not_returned)}")
        result.expected = compare_outputs(expected, rewritten_outputs, tolerance, iterations=1,
                                          check_dtypes=False, renames=renames, by_position=False)
        result.passed = result.passed and all(o.passed for o in result.expected)
        if not result.passed:  # would the original pass against them? (the rewrite may repair it)
            misses = compare_outputs(expected, original_outputs, tolerance, iterations=1,
                                     check_dtypes=False, by_position=False)
            result.original_misses_expected = not all(o.passed for o in misses)
    # Only an error beyond tolerance has a tensor to look for; a changed dtype, shape or name has not.
    if localise and rewritten is not None and any(o.within_tolerance is False for o in outputs):
        result.divergence = first_divergence(original, rewritten, feeds[0], tolerance, runner)
    if stage is not None:
        runs.remove(feeds.computed)  # held by the result's feeds from here
    return result


def _validate_against_expected(rewritten, feeds, tolerance, runner, expected, data, renames, sessions, files,
                               runs) -> ValidationResult:
    if not expected:
        raise SurgeonError("validate: 'against: none' compares with the expected outputs only, so it needs "
                           "'expected' (an .npz of reference outputs)")
    tolerance.check_outputs([o.name for o in rewritten.graph.output])
    rewritten_outputs, rewritten_kind = _run_model(rewritten, feeds, runner, REWRITTEN, sessions, files, runs)
    compared = compare_outputs(_expected(expected), rewritten_outputs, tolerance, iterations=1, check_dtypes=False,
                               renames=renames, by_position=False)
    return ValidationResult(passed=all(o.passed for o in compared), tolerance=tolerance, outputs=[],
                            expected=compared, runners={REWRITTEN: rewritten_kind}, iterations=len(feeds),
                            data=data, feeds=feeds, runs=runs)


def _run_model(model: onnx.ModelProto, feeds: Feeds, kind: str, name: str, sessions: dict | None,
               files: dict | None, runs: list[RunOutputs]):
    """`compare.run_model`, its outputs added to `runs`, through the session kept for `model` if there is
    one: handed over (taken out of `sessions`), so that it is freed when its run is done. Errors name the
    model by its path in `files`, else as "the NAME model"."""
    kept = (sessions or {}).pop(id(model), None)
    outputs, ran_as = run_model(model, feeds, kind, name, _source(files, name),
                                session=kept[1] if kept is not None and kept[0] is model else None)
    runs.append(outputs)
    return outputs, ran_as


def _source(files: dict | None, name: str) -> str:
    return str((files or {}).get(name) or f"the {name} model")


def _expected(expected: str | Path | RunOutputs) -> RunOutputs:
    return expected if isinstance(expected, RunOutputs) else expected_results(expected)


def input_notes(original: onnx.ModelProto, rewritten: onnx.ModelProto, feed: dict) -> list[str]:
    """What Polygraphy does with the inputs `feed` (made for `original`) to feed `rewritten`, said
    rather than hidden: an input it finds under another name (by name, else a name containing the
    other's, else by position, as `data.check_fits` matches them), an input whose data it casts (for
    both models where it was drawn in another dtype than the original declares, `validate.inputs`), an
    input of the original left unused."""
    from polygraphy.util import find_str_in_iterable

    names = list(feed)
    original_dtypes = {v.name: declared_dtype(v) for v in graph_inputs(original) if v.name in feed}
    # Inputs drawn in another dtype than the original declares (validate.inputs): the dtypes they feed.
    drawn = {name: [] for name, dtype in original_dtypes.items() if feed[name].dtype != dtype}
    notes, pairs, used = [], [], set()
    for index, value in enumerate(graph_inputs(rewritten)):
        source = find_str_in_iterable(value.name, names, index)
        if source is None:
            continue  # refused before anything ran (data.check_fits)
        used.add(source)
        if source != value.name:
            pairs.append(f"{source} -> {value.name}")
        dtype = declared_dtype(value)
        if source in drawn:
            drawn[source].append(dtype)
        elif feed[source].dtype != dtype:
            notes.append(f"input {value.name} is {dtype} in the rewritten model, {feed[source].dtype} in the "
                         f"original: its data is cast")
    notes += [_drawn_note(name, feed[name].dtype, original_dtypes[name], fed) for name, fed in drawn.items()]
    if pairs:
        notes.insert(0, "the rewritten model's inputs differ from the original's; fed from inputs of other names: "
                        + ", ".join(pairs))
    unused = [name for name in original_dtypes if name not in used]
    if unused:
        notes.append(f"input(s) {', '.join(unused)} of the original are not inputs of the rewritten model")
    return notes


def _drawn_note(name: str, drawn: np.dtype, declared: np.dtype, rewritten: list[np.dtype]) -> str:
    """The note on input `name`, drawn as `drawn` where the original declares `declared`: cast for the
    original, and for each input of the rewritten model it feeds (declared `rewritten`) that is not `drawn`."""
    if set(rewritten) == {declared}:
        return f"input {name}: drawn as {drawn} (validate.inputs), cast to {declared} for both models"
    casts = [f"cast to {declared} for the original"]
    casts += ["fed as drawn to the rewritten model" if dtype == drawn else f"cast to {dtype} for the rewritten model"
              for dtype in dict.fromkeys(rewritten)]
    return f"input {name}: drawn as {drawn} (validate.inputs), " + ", ".join(casts)


def output_notes(outputs: list[OutputReport], renames: dict | None, reference: str = ORIGINAL) -> list[str]:
    """Which outputs were compared under another name, and why (`compare.output_pairs`)."""
    renamed = [o for o in outputs if o.candidate_name and (renames or {}).get(o.name) == o.candidate_name]
    by_position = [o for o in outputs if o.candidate_name and o not in renamed]
    owner = "the original" if reference == ORIGINAL else "the against model"
    notes = []
    if renamed:
        notes.append("outputs renamed by the recipe, compared under their new names: "
                     + ", ".join(f"{o.name} -> {o.candidate_name}" for o in renamed))
    if by_position:
        notes.append(f"the rewritten model's outputs are named differently from {owner}'s; compared by position "
                     "(same count, dtypes and shapes): " + ", ".join(f"{o.name} -> {o.candidate_name}"
                                                                    for o in by_position))
    return notes


def expected_results(path: str | Path) -> RunOutputs:
    """Reference outputs (e.g. from PyTorch) as the outputs of one input set of a run named 'expected'."""
    arrays = load_arrays(path, "expected outputs")[0]
    results = RunOutputs(EXPECTED)
    results.append({k: np.asarray(v) for k, v in arrays.items()})
    return results


def graph_diff(before: onnx.ModelProto, after: onnx.ModelProto) -> dict:
    """Op histograms before and after, their difference, and the node names added and removed."""
    hist_before, hist_after = op_histogram(before.graph.node), op_histogram(after.graph.node)
    names_before = {n.name for n in before.graph.node}
    names_after = {n.name for n in after.graph.node}
    return {"ops_before": hist_before, "ops_after": hist_after, "delta": histogram_delta(hist_before, hist_after),
            "nodes_before": len(before.graph.node), "nodes_after": len(after.graph.node),
            "added": sorted(names_after - names_before), "removed": sorted(names_before - names_after)}


@dataclass
class ValidationInputs:
    """What a validation runs on, read and checked before any model runs: the model compared with,
    the tolerance, the feeds, the expected outputs. `surgeon run` prepares them before the first step
    and checks them against the rewritten model before writing it, so bad validation input stops the
    run before anything is written (a validation that runs and fails still writes, for the reports)."""

    config: dict
    reference: onnx.ModelProto | None  # the model compared with; None: the expected outputs only
    reference_name: str | None
    tolerance: Tolerance
    runner: str
    feeds: Feeds | None  # None until `check_candidate` when random inputs are made for the candidate
    data: str
    expected: RunOutputs | None = None
    #: id(model) -> (model, session): the ONNX Runtime session `check_runnable` built for each model
    #: checked (runner 'onnxruntime'), for `validate_models` to run rather than build another; None
    #: where the caller does not hand them over (`prepare_validation`'s `keep_sessions`).
    sessions: dict | None = field(default=None, repr=False)
    #: Whether the candidate may be a stage cut from the reference (the recipe has an `extract` step), and
    #: the tensors the recipe renames ({reference name: new name}) where the reference is the original, to
    #: find the stage's tensors under and to say which name a tolerance naming a renamed output means.
    cuts: bool = False
    renames: dict = field(default_factory=dict)
    #: How the candidate, a stage cut from the reference, is compared with it (`cut_stage`); set by
    #: `check_candidate`, None for any other candidate.
    stage: Stage | None = None

    def keep_session(self, model: onnx.ModelProto, session) -> None:
        # Kept up to 2 GB of weights only: a session holds a copy of them, and held through the recipe's
        # steps and the save, those of a bigger model raise the run's peak (9.2 -> 11.4 GiB for one of
        # 2.25 GiB) to save a rebuild (10 s of 73).
        if (self.sessions is not None and session is not None
                and sum(map(tensor_bytes, model.graph.initializer)) <= modelio.TWO_GB):
            self.sessions[id(model)] = (model, session)

    def check_candidate(self, model: onnx.ModelProto | None, name: str = "the rewritten model", file=None) -> None:
        """Check that `model` (the one judged, called `name` in errors, read from `file` if given; None for
        a TensorRT engine) can run, that the inputs fit it, that the expected outputs name outputs, and
        that per-output tolerances name outputs of the model judged. With `cuts`, a candidate that is a
        stage cut from the reference (`cut_stage`) is compared with the reference's tensors it returns:
        the reference returning them must run, and the inputs need fit only the stage's inputs the
        reference takes too (the reference computes the others)."""
        outputs = [o.name for o in self.reference.graph.output] if self.reference is not None else []
        if model is not None:
            self.keep_session(model, check_runnable(model, file=file, what=name, runner=self.runner))
            source = self.reference_name or "the reference model"
            if self.cuts and self.reference is not None:
                self.stage = cut_stage(self.reference, model, self.renames, source)
                check_tolerance_names(self.tolerance, self.stage.outputs if self.stage else outputs, self.renames)
            if self.stage is not None:
                (self.sessions or {}).pop(id(self.reference), None)  # the whole reference does not run
                what = "the reference model returning the stage's tensors"
                self.keep_session(self.stage.model, check_runnable(self.stage.model, file=self.reference_name,
                                                                   what=what, runner=self.runner))
            if self.feeds is None:
                self.feeds, self.data = feeds_for(model, self.config, name)
            elif self.stage is None or not self.stage.fed:
                # As `validate_models` feeds it: under the names the recipe's renames give the inputs.
                feeds = renamed_feeds(feed_layouts(self.feeds), self.reference, self.renames) if self.renames \
                    else self.feeds
                check_fits(feeds, model, name, source, self.config.get("data"))
            candidate_outputs = [o.name for o in model.graph.output]
            if self.reference is None:
                self.tolerance.check_outputs(candidate_outputs)
            outputs += [o for o in candidate_outputs if o not in outputs]
        if self.expected is not None:
            if self.stage is not None:  # recorded for the reference: they may hold what the stage returns
                outputs += [o for o in self.stage.outputs if o not in outputs]
            known = set(outputs)
            for key in self.expected[0]:
                if key not in known:
                    close = suggest(key, outputs)
                    raise SurgeonError(f"expected outputs hold '{key}', which is not an output of the model",
                                       file=self.config.get("expected"),
                                       hint=f"outputs: {', '.join(outputs)}" + (f"; {close}" if close else ""))


def check_tolerance_names(tolerance: Tolerance, outputs: list[str], renames: dict | None = None) -> None:
    """`Tolerance.check_outputs`, where a per-output tolerance naming an output by the name a `rename` step
    gives it (`renames`, {name in the model compared with: new name}) is refused saying which name that is:
    tolerances name outputs as the model compared with does (`compare_outputs` holds them by that name)."""
    renamed = {new: old for old, new in (renames or {}).items() if old in outputs and new not in outputs}
    for key in ("atol", "rtol", "error_stat"):
        named = getattr(tolerance, key)
        wrong = next((name for name in named if name in renamed), None) if isinstance(named, dict) else None
        if wrong is not None:
            raise SurgeonError(f"{key} names '{wrong}', the name a rename step gives '{renamed[wrong]}': per-output "
                               "tolerances name outputs as the model compared with does",
                               hint=f"name it '{renamed[wrong]}' in {key}")
    tolerance.check_outputs(outputs)


def prepare_validation(config: dict, reference: onnx.ModelProto | None, reference_name: str | None = None, *,
                       recorded_for: onnx.ModelProto | None = None, recorded_for_name: str | None = None,
                       keep_sessions: bool = False, cuts: bool = False,
                       renames: dict | None = None) -> ValidationInputs:
    """Read and check a validate section's inputs (or the same keys from `surgeon compare`) for a
    comparison with `reference` (named `reference_name` in errors, a path where there is one).

    Recorded data must be exactly what `reference` takes; with `reference=None` ('against: none'),
    what `recorded_for` takes (the model it was recorded for), if given. Random inputs are made here
    for `reference`, or by `ValidationInputs.check_candidate` for the candidate when there is none.
    `keep_sessions`: keep the ONNX Runtime sessions the checks build (runner 'onnxruntime') in
    `ValidationInputs.sessions`, for a caller that hands them to `validate_models`. `cuts`: the candidate
    may be a stage cut from `reference` (`ValidationInputs.cuts`), whose outputs per-output tolerances
    then name: checked with the candidate. `renames` ({reference name: new name}, `pipeline.renamed_tensors`):
    the outputs the recipe renames, kept in `ValidationInputs.renames` (a tolerance naming one by its new
    name is refused saying so).
    """
    tolerance = Tolerance.from_config(config)
    runner = config.get("runner") or "auto"
    if runner not in RUNNER_KINDS:
        raise SurgeonError(f"unknown runner '{runner}'; choose one of {', '.join(RUNNER_KINDS)}")
    data_path, expected_path = config.get("data"), config.get("expected")
    if expected_path and not data_path:
        raise SurgeonError("expected outputs can only be compared on the inputs they came from: "
                           "give them as validate.data / --data")
    if reference is None and not expected_path:
        raise SurgeonError("validate: 'against: none' compares with the expected outputs only, so it needs "
                           "'expected' (an .npz of reference outputs)")
    if reference is None and config.get("each_step"):
        raise SurgeonError("validate: each_step bisects against the original model, which 'against: none' "
                           "leaves out")
    session = None
    if reference is not None:
        session = check_runnable(reference, file=reference_name, what="the reference model", runner=runner)
        if not cuts:
            check_tolerance_names(tolerance, [o.name for o in reference.graph.output], renames)
        feeds, data = feeds_for(reference, config, reference_name)
    elif data_path:
        feeds, data = load_arrays(data_path, "inputs"), str(data_path)
        if recorded_for is not None:
            check_recorded(feeds, recorded_for, recorded_for_name, data_path)
    else:
        feeds, data = None, ""
    expected = expected_results(expected_path) if expected_path else None
    prepared = ValidationInputs(config=config, reference=reference, reference_name=reference_name,
                                tolerance=tolerance, runner=runner, feeds=feeds, data=data, expected=expected,
                                sessions={} if keep_sessions else None, cuts=cuts, renames=renames or {})
    prepared.keep_session(reference, session)
    return prepared


def prepare_run_validation(recipe, original: onnx.ModelProto, original_path) -> ValidationInputs:
    """`prepare_validation` for a recipe's `validate:` section: the model compared with is the original,
    another model (`against: PATH`, loaded here) or none; the sessions its checks build are kept for
    `validate_run`. A recipe with an `extract` step may make a stage of the model compared with, not a
    rewrite of it: `ValidationInputs.check_candidate` tells which."""
    config = recipe.validate
    against = config.get("against") or "original"
    if against == "none":
        return prepare_validation(config, None, recorded_for=original, recorded_for_name=str(original_path),
                                  keep_sessions=True)
    cuts = cuts_graph(recipe)
    if against == "original":  # another model's tensors are named as it names them, not as the original does
        prepared = prepare_validation(config, original, str(original_path), keep_sessions=True, cuts=cuts,
                                      renames=renamed_tensors(recipe.steps))
    else:
        prepared = prepare_validation(config, load_model(against), str(against), keep_sessions=True, cuts=cuts)
        if config.get("each_step"):  # bisection runs the original on the same inputs
            check_fits(prepared.feeds, original, f"the original model {original_path}", str(against),
                       config.get("data"))
    return prepared


def validate_run(recipe, original: onnx.ModelProto, original_path: Path, rewritten: onnx.ModelProto,
                 output: Path | None, progress, prepared: ValidationInputs | None = None,
                 steps=()) -> ValidationResult:
    """The pipeline's validation step: compare, localise, bisect when asked, write the reports.

    `prepared`: the inputs from `prepare_run_validation`, already checked against `rewritten` (the
    pipeline prepares them before the steps run); prepared and checked here when not given. `steps`:
    the run's step records, whose `rename` steps say which outputs to compare under new names."""
    from surgeon.validation.report import default_prefix, write_reports

    config = recipe.validate
    if prepared is None:
        prepared = prepare_run_validation(recipe, original, original_path)
        prepared.check_candidate(rewritten)
    reference, tolerance, runner, feeds = prepared.reference, prepared.tolerance, prepared.runner, prepared.feeds
    against = (config.get("against") or ORIGINAL) not in (ORIGINAL, "none")
    reference_label = AGAINST if against else ORIGINAL
    result = validate_models(reference, rewritten, feeds, tolerance, runner, prepared.expected, prepared.data,
                             reference=reference_label, renames=renamed_tensors(steps), sessions=prepared.sessions,
                             files={reference_label: prepared.reference_name, REWRITTEN: output}, stage=prepared.stage)
    result.graph_diff = graph_diff(original, rewritten)  # what the recipe changed, whatever it is compared with
    if config.get("each_step") and recipe.steps and prepared.stage is not None:
        result.notes.append(f"each_step: not bisected: {cut_refusal(recipe)}")
    elif config.get("each_step") and recipe.steps:
        # Bisection compares every step's graph with the original model, also when the finished one was
        # compared with an `against` model: then it runs the original itself and judges the last step too.
        progress.message("bisecting the recipe's steps against the original model")
        result.bisection = bisect_steps(recipe, original, feeds, tolerance, runner,
                                        reference=None if against else result.runs[0],
                                        model_dir=Path(original_path).parent, progress=progress,
                                        final=None if against else result.outputs)
    if output is not None:
        prefix = Path(config["report"]) if config.get("report") else default_prefix(output)
        result.reports = write_reports(result, prefix)
    return result

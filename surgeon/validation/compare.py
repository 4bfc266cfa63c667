"""Running models through Polygraphy and judging their outputs: the verdict, error statistics and
cosine similarity are computed here, with Polygraphy's rules (`SimpleCompareFunc`) but not its
arithmetic, which gets these wrong (docs/validation.md, "How outputs are judged"):

- integers are subtracted in their own type (int32 - int32 wraps: -1 vs 2**31 - 1 "differ" by 0);
  here exactly, so 2**53 vs 2**53 + 1 in int64 differ by 1;
- NaN in both outputs at the same place, and equal infinities, are errors (NaN); here they are
  equal (error 0); NaN in one only stays an error (NaN) and always fails the output;
- inf vs -inf has relative error inf/inf = NaN; here inf;
- an output whose dtype changed is not flagged; here it fails (comparisons with expected outputs
  from an .npz excepted).

Relative error is Polygraphy's: |candidate - reference| / |reference|, with zeros of the reference
nudged by 2.2e-16. `element_mismatches` is Polygraphy's elementwise rule.

Models run on one input set at a time, and outputs are judged one output of one set at a time: what
is kept of many sets goes to disk past a memory budget (`spill.py`), so memory does not grow with
their number.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from polygraphy.comparator.compare import SimpleCompareFunc
from polygraphy.comparator.data_loader import coerce_feed_dict
from polygraphy.exception import PolygraphyException

from surgeon.errors import SurgeonError, first_line, suggest
from surgeon.validation.polygraphy_log import G_LOGGER
from surgeon.validation.runners import make_runner, runner_kind
from surgeon.validation.settings import check_validate_value
from surgeon.validation.spill import Column, RunOutputs, column_folder

#: Worst elements listed per output in the reports.
WORST_K = 10
#: At most this many absolute errors per output are kept for the report's histogram.
HISTOGRAM_SAMPLES = 200_000
_EPSILON = 2.220446049250313e-16  # what Polygraphy adds to zeros before dividing


@dataclass
class Tolerance:
    """How close is close enough: per-output atol/rtol (a float or {name: tol, "": default})."""

    atol: float | dict = 1e-5
    rtol: float | dict = 1e-5
    error_stat: str | dict = "elemwise"
    quantile: float = 0.99

    def __post_init__(self):
        # The recipe loader and `surgeon compare` refuse these with the file and line or the option;
        # this is for Python callers: a NaN tolerance would pass anything, a negative one nothing.
        for key in ("atol", "rtol", "quantile"):
            try:
                check_validate_value(key, getattr(self, key))
            except ValueError as exc:
                raise SurgeonError(f"{key}: {exc}") from None

    @classmethod
    def from_config(cls, config: dict) -> "Tolerance":
        return cls(atol=config.get("atol", 1e-5), rtol=config.get("rtol", 1e-5),
                   error_stat=config.get("error_stat") or "elemwise", quantile=config.get("quantile", 0.99))

    def of(self, output: str) -> tuple[float, float]:
        return _pick(self.atol, output), _pick(self.rtol, output)

    def compare_func(self) -> SimpleCompareFunc:
        return SimpleCompareFunc(atol=_as_dict(self.atol), rtol=_as_dict(self.rtol), check_shapes=True,
                                 check_error_stat=dict(self.error_stat) if isinstance(self.error_stat, dict)
                                 else self.error_stat, error_quantile=self.quantile)

    def describe(self) -> str:
        if isinstance(self.error_stat, dict):
            stat = "{" + ", ".join(f"{k or '*'}: {v}" for k, v in self.error_stat.items()) + "}"
            if "quantile" in self.error_stat.values():
                stat += f", quantile {self.quantile}"
        else:
            stat = self.error_stat if self.error_stat != "quantile" else f"quantile {self.quantile}"
        return f"atol={_text(self.atol)} rtol={_text(self.rtol)} ({stat})"

    @property
    def quantile_label(self) -> str:
        """How tables head the quantile column: the quantile a `quantile` statistic is held to ("p99")."""
        return f"p{self.quantile * 100:g}"

    def check_outputs(self, outputs: list[str]) -> None:
        """Refuse a per-output tolerance naming no output (a typo would silently use the default)."""
        for key, value in (("atol", self.atol), ("rtol", self.rtol), ("error_stat", self.error_stat)):
            for name in value if isinstance(value, dict) else ():
                if name and name not in outputs:
                    raise SurgeonError(f"{key} names '{name}', which is not an output of the model",
                                       hint=suggest(name, outputs) or f"outputs: {', '.join(outputs)}")

    def stat(self, output: str) -> str:
        return _pick_text(self.error_stat, output)

    def element_mismatches(self, output: str, abs_err: np.ndarray, rel_err: np.ndarray) -> np.ndarray:
        """Elements outside tolerance under Polygraphy's elementwise rule: both errors above their
        tolerance, a NaN error counting as above (`error_arrays` makes NaN only for NaN in one side)."""
        atol, rtol = self.of(output)
        with np.errstate(invalid="ignore"):
            return ((abs_err > atol) | np.isnan(abs_err)) & ((rel_err > rtol) | np.isnan(rel_err))

    def passes(self, output: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> bool:
        """The verdict on one output from its (absolute, relative) errors per input set: Polygraphy's
        rule for the output's error statistic, every input set held to it (as `compare_accuracy` does)."""
        stat, atol, rtol = self.stat(output), *self.of(output)
        for abs_err, rel_err in pairs:
            if abs_err.size == 0:
                continue
            if stat == "elemwise":
                if self.element_mismatches(output, abs_err, rel_err).any():
                    return False
                continue
            if np.isnan(abs_err).any():  # NaN in one output only: no statistic may hide it
                return False
            a, r = (_STATS[stat](e, self.quantile) for e in (abs_err, rel_err))
            if (np.isnan(a) or a > atol) and (np.isnan(r) or r > rtol):
                return False
        return True


def _pick(value: float | dict, output: str) -> float:
    if isinstance(value, dict):
        return float(value.get(output, value.get("", 1e-5)))
    return float(value)


def _pick_text(value: str | dict, output: str) -> str:
    if isinstance(value, dict):
        return str(value.get(output, value.get("", "elemwise")))
    return str(value)


def _quantile(errors: np.ndarray, q: float, reorder: bool = False) -> float:
    """np.quantile of errors without NaN; infinities interpolate to NaN (inf - inf) there, here to inf.
    `reorder`: partition `errors` in place rather than a copy (the same value, without the copy)."""
    with np.errstate(invalid="ignore"):
        value = float(np.quantile(errors, q, overwrite_input=reorder))
    return np.inf if np.isnan(value) else value


_STATS = {"max": lambda e, q: float(np.max(e)), "mean": lambda e, q: float(np.mean(e)),
          "median": lambda e, q: _quantile(e, 0.5), "quantile": _quantile}


def _as_dict(value: float | dict) -> dict:
    return dict(value) if isinstance(value, dict) else {"": float(value)}


def _text(value: float | dict) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k or '*'}: {v:g}" for k, v in value.items()) + "}"
    return f"{value:g}"


@dataclass
class OutputReport:
    """One output compared: the verdict and the statistics (over all input sets).

    `dtype` is the reference's, `candidate_dtype` the candidate's. Statistics leave out elements
    that are NaN in one output only (their error is NaN); `nan_mismatched` counts those. `cosine`
    is None when no element is finite in both."""

    name: str
    passed: bool
    shape: list[int] | None = None
    dtype: str | None = None
    candidate_dtype: str | None = None
    #: The candidate's output compared, when its name differs (a rename): see `output_pairs`.
    candidate_name: str | None = None
    #: The errors alone against the tolerance; None when not compared (missing output, shape changed).
    within_tolerance: bool | None = None
    max_abs: float | None = None
    mean_abs: float | None = None
    #: The tolerance's quantile (`Tolerance.quantile`, 0.99 by default) of the errors.
    quantile_abs: float | None = None
    max_rel: float | None = None
    mean_rel: float | None = None
    quantile_rel: float | None = None
    cosine: float | None = None
    atol: float | None = None
    rtol: float | None = None
    worst: list[dict] = field(default_factory=list)
    nan_mismatched: int = 0
    note: str = ""
    abs_errors: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "abs_errors"}


def error_arrays(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute and relative errors of two outputs of one shape as float64, as Polygraphy defines them,
    computed without its overflow: integers are subtracted exactly (then rounded once to float64). NaN
    at the same place in both and equal infinities have error 0; NaN in one only has error NaN; inf vs
    -inf (or vs a finite value) has absolute and relative error inf."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    kinds = (reference.dtype.kind, candidate.dtype.kind)
    # In place where it can be: float64 copies of an output are the largest memory judging it takes (6 were
    # alive at once, 74 MiB for a 6.2 MiB float32 output; now 3 at most).
    ref = None  # the reference as float64 where the errors need it; then the relative error's denominator
    if kinds == ("b", "b"):
        abs_err = np.logical_xor(reference, candidate).astype(np.float64)
    elif all(k in "biu" for k in kinds):
        abs_err = np.asarray(_integer_abs_diff(reference, candidate))
    else:
        ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            abs_err = np.asarray(cand - ref)  # an array also for 0-d outputs
            np.abs(abs_err, out=abs_err)
        undefined = np.isnan(abs_err)  # NaN on either side, or inf - inf
        if undefined.any():
            with np.errstate(invalid="ignore"):
                equal = undefined & ((ref == cand) | (np.isnan(ref) & np.isnan(cand)))
            abs_err[equal] = 0.0
        del cand
    with np.errstate(invalid="ignore", over="ignore"):
        denominator = reference.astype(np.float64) if ref is None else ref
        np.abs(denominator, out=denominator)
        denominator[denominator == 0] = _EPSILON
        rel_err = np.divide(abs_err, denominator, out=denominator)
    rel_err[np.isinf(abs_err)] = np.inf  # inf / inf would be NaN
    rel_err[abs_err == 0] = 0.0  # NaN in both: 0 / NaN would be NaN
    return abs_err, rel_err


def _integer_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of two integer (or bool) arrays, exact until the final rounding to float64."""
    if np.dtype(np.uint64) in (a.dtype, b.dtype) and a.dtype != b.dtype:  # uint64 vs signed: Python ints
        difference = np.asarray(a, dtype=object) - np.asarray(b, dtype=object)
        return np.asarray(np.abs(difference), dtype=object).astype(np.float64)
    wide = np.uint64 if a.dtype == np.uint64 else np.int64
    high, low = np.maximum(a.astype(wide), b.astype(wide)), np.minimum(a.astype(wide), b.astype(wide))
    # high - low fits in uint64: the unsigned subtraction wraps modulo 2**64 to exactly it.
    with np.errstate(over="ignore"):
        return (high.astype(np.uint64) - low.astype(np.uint64)).astype(np.float64)


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Cosine similarity of the elements finite in both (NaN and infinities have no direction);
    None when there is none."""
    return _cosine(*_finite_pairs(reference, candidate))


def _finite_pairs(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The elements finite in both, as float64, flat: what cosine similarity is computed on."""
    a = reference.astype(np.float64).ravel()
    b = candidate.astype(np.float64).ravel()
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.all():
        a, b = a[finite], b[finite]
    return a, b


def _cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size == 0:
        return None
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norms)


def run_model(model: onnx.ModelProto, feeds: Sequence[dict], kind: str, name: str, source=None,
              session=None) -> tuple[RunOutputs, str]:
    """Run `model` on every feed through a Polygraphy runner named `name` (`session`: the ONNX Runtime
    session to run, `runners.make_runner`'s); return the outputs and runner kind. `source` (the model's
    path, or words for a model without one) names it in any error."""
    runner = make_runner(model, kind, name, session=session, what=source and str(source))
    return run_runner(runner, feeds, source), runner_kind(runner)


def run_runner(runner, feeds: Sequence[dict], source=None) -> RunOutputs:
    """Run any Polygraphy runner (ours, ONNX Runtime's, TensorRT's) on every feed, one at a time, its
    outputs kept as `RunOutputs` (on disk past its budget for more than one feed); `source` names the
    model in any error."""
    outputs = RunOutputs(runner.name, on_disk=len(feeds) > 1)
    # Polygraphy prints a refusal (G_LOGGER.critical) before raising it: silenced, it reaches the user once.
    with errors_naming(source), G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        try:
            with runner as active:
                metadata = active.get_input_metadata(use_numpy_dtypes=False)
                for index in range(len(feeds)):
                    feed = fitted = None  # the set before let go before the next is drawn
                    feed = feeds[index]
                    # Fed as `Comparator.run` feeds its runners (DataLoaderCache): names matched, buffers
                    # cast; one that cannot be made to fit goes as it is, for the runner to say why not.
                    fitted = coerce_feed_dict(feed, metadata, fallback=feed.__getitem__)
                    outputs.append(active.infer(feed_dict=fitted), active.last_inference_time())
        except BaseException as exc:
            outputs.close()
            if isinstance(exc, PolygraphyException):  # its runners' checks of the feeds, multi-line
                raise SurgeonError(f"Polygraphy cannot run it: {first_line(exc)}") from None
            raise
    return outputs


@contextlib.contextmanager
def errors_naming(source):
    """SurgeonErrors raised in the block name `source` (a model's path, or words such as "the graph after
    step 3"): with two models compared, an error about one says which."""
    try:
        yield
    except SurgeonError as exc:
        if source is not None and exc.file != str(source):
            exc.message = f"{source}: {exc.message}"
        raise


def compare_outputs(reference: RunOutputs, candidate: RunOutputs, tolerance: Tolerance,
                    iterations: int | None = None, check_dtypes: bool = True, renames: dict | None = None,
                    by_position: bool = True) -> list[OutputReport]:
    """Judge the candidate's outputs against the reference's (the first `iterations` input sets, one
    set at a time), each paired with a candidate output by `output_pairs` (`renames`, `by_position`).

    With `check_dtypes`, an output whose dtype differs fails (a consumer reads the type); off for
    expected outputs from an .npz, whose dtypes are whatever the exporter saved."""
    count = min(len(reference), len(candidate)) if iterations is None else iterations
    pairs = output_pairs(reference[0], candidate[0], renames, by_position)
    folder = column_folder(count)
    try:
        reports = []
        for name, paired in pairs.items():
            if paired is None:
                reports.append(OutputReport(name, False, note=f"output missing from {candidate.name}"))
                continue
            # One output of one set at a time: what is held does not grow with the outputs or the sets.
            judgement = _Judgement(name, tolerance, check_dtypes, folder and folder.name, count)
            for index in range(count):
                judgement.add(index, np.asarray(reference.array(index, name)),
                              np.asarray(candidate.array(index, paired)))
            report = judgement.report()
            report.candidate_name = paired if paired != name else None
            reports.append(report)
        return reports
    finally:
        if folder is not None:
            folder.cleanup()


def output_pairs(reference: dict, candidate: dict, renames: dict | None = None,
                 by_position: bool = True) -> dict[str, str | None]:
    """The candidate output each reference output is compared with (None: missing), from their first
    input set ({name: array}). Same name, else the name `renames` ({reference name: candidate name},
    the recipe's `rename` steps) gives it. With `by_position`, outputs still unpaired are paired by
    position when the two lists correspond one to one: as many outputs, and at every position the
    same name or two names each absent from the other list, with the same dtype and shape (a rename
    surgeon did not see, e.g. by another tool)."""
    renames = renames or {}
    pairs = {name: renames.get(name, name) for name in reference}
    unpaired = any(paired not in candidate for paired in pairs.values())
    if unpaired and by_position and _correspond(reference, pairs, candidate):
        return dict(zip(pairs, candidate))
    return {name: paired if paired in candidate else None for name, paired in pairs.items()}


def _correspond(reference: dict, pairs: dict, candidate: dict) -> bool:
    ours = list(pairs.values())

    def alike(name, paired, theirs):
        if paired == theirs:
            return True
        a, b = np.asarray(reference[name]), np.asarray(candidate[theirs])
        return paired not in candidate and theirs not in ours and a.shape == b.shape and a.dtype == b.dtype

    return len(ours) == len(candidate) and all(alike(*names) for names in zip(pairs, ours, candidate))


class _Judgement:
    """One output judged over the input sets, given one at a time: the verdict (every set held to the
    tolerance) and statistics over the elements of all sets, as if their errors were one array."""

    def __init__(self, name: str, tolerance: Tolerance, check_dtypes: bool, folder: str | None, sets: int):
        self.name, self.tolerance, self.check_dtypes = name, tolerance, check_dtypes
        self.first: tuple | None = None  # the first set's (shape, dtype) of each side: what is reported
        self.shapes_differ = False
        self.within = True
        self.nan_mismatched = 0
        self.worst: list[dict] = []
        # Errors without NaN, and the elements finite in both outputs (cosine similarity's).
        self.columns = [Column(folder, f"{part}-{id(self)}", sets) for part in ("abs", "rel", "ref", "cand")]
        self.abs_err, self.rel_err, self.finite_ref, self.finite_cand = self.columns

    def add(self, index: int, reference: np.ndarray, candidate: np.ndarray) -> None:
        if self.first is None:
            self.first = ((reference.shape, reference.dtype), (candidate.shape, candidate.dtype))
        if self.shapes_differ or reference.shape != candidate.shape:
            self.shapes_differ = True  # then no statistics, from any set
            return
        abs_err, rel_err = error_arrays(reference, candidate)
        self.within = self.tolerance.passes(self.name, [(abs_err, rel_err)]) and self.within
        self.worst = _worst(self.worst, index, reference, candidate, abs_err)
        abs_err, rel_err = abs_err.ravel(), rel_err.ravel()
        undefined = np.isnan(abs_err)
        if undefined.any():
            self.nan_mismatched += int(undefined.sum())
            abs_err, rel_err = abs_err[~undefined], rel_err[~undefined]
        self.abs_err.append(abs_err)
        self.rel_err.append(rel_err)
        for column, values in zip((self.finite_ref, self.finite_cand), _finite_pairs(reference, candidate)):
            column.append(values)

    def report(self) -> OutputReport:
        """The verdict and statistics; the values kept for them are let go (their files deleted)."""
        (ref_shape, ref_dtype), (cand_shape, cand_dtype) = self.first
        atol, rtol = self.tolerance.of(self.name)
        report = OutputReport(self.name, False, shape=list(ref_shape), dtype=str(ref_dtype),
                              candidate_dtype=str(cand_dtype), atol=atol, rtol=rtol)
        try:
            if self.shapes_differ:
                report.note = f"shape {list(ref_shape)} vs {list(cand_shape)}"
            else:
                self._judge(report, ref_dtype, cand_dtype)
        finally:
            for column in self.columns:
                column.discard()
        return report

    def _judge(self, report: OutputReport, ref_dtype, cand_dtype) -> None:
        report.passed = report.within_tolerance = self.within
        if self.check_dtypes and ref_dtype != cand_dtype:
            report.passed = False
            report.note = f"dtype {ref_dtype} vs {cand_dtype}"
        report.nan_mismatched = self.nan_mismatched
        abs_err = self.abs_err.values()
        # Sampled before the quantile reorders the errors: every step-th error, in order.
        report.abs_errors = np.array(abs_err[::max(1, abs_err.size // HISTOGRAM_SAMPLES)])
        if abs_err.size:
            report.max_abs, report.mean_abs, report.quantile_abs = self._statistics(abs_err)
            abs_err = None  # a column at a time: each may be a memory map as large as the errors of all sets
            report.max_rel, report.mean_rel, report.quantile_rel = self._statistics(self.rel_err.values())
        report.cosine = _cosine(self.finite_ref.values(), self.finite_cand.values())
        report.worst = self.worst

    def _statistics(self, errors: np.ndarray) -> tuple[float, float, float]:
        """Max, mean and quantile of `errors` (reordered)."""
        return float(np.max(errors)), float(np.mean(errors)), _quantile(errors, self.tolerance.quantile, reorder=True)


def _worst(rows: list[dict], iteration: int, ref: np.ndarray, cand: np.ndarray, abs_err: np.ndarray) -> list[dict]:
    """`rows` (the WORST_K elements with the largest absolute error so far, NaN (NaN in one output
    only) first) updated with input set `iteration`'s."""
    flat = abs_err.ravel()
    k = min(WORST_K, flat.size)
    if k == 0:
        return rows
    score = np.where(np.isnan(flat), np.inf, flat)  # argpartition would put NaN last
    np.negative(score, out=score)  # the largest first, without another copy of the output's size
    top = np.argpartition(score, k - 1)[:k] if flat.size > k else np.arange(flat.size)
    rows = list(rows)
    for index in top:
        where = np.unravel_index(int(index), abs_err.shape)
        rows.append({"iteration": iteration, "index": [int(i) for i in where],
                     "reference": ref[where].item(), "candidate": cand[where].item(),
                     "abs_error": float(flat[index])})

    def rank(row):
        error = row["abs_error"]
        return (error == error, -error if error == error else 0.0, row["iteration"], row["index"])

    rows.sort(key=rank)
    return rows[:WORST_K]

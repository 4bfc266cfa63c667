"""Running models through Polygraphy and judging their outputs: pass/fail from Polygraphy's
`SimpleCompareFunc`, error statistics and cosine similarity computed here for the reports.

Relative error is Polygraphy's: |candidate - reference| / |reference|, with zeros of the reference
nudged by 2.2e-16, so a report's figures and Polygraphy's verdict agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from polygraphy.comparator import Comparator, IterationResult, RunResults
from polygraphy.comparator.compare import SimpleCompareFunc

from surgeon.errors import SurgeonError, suggest
from surgeon.validation.polygraphy_log import G_LOGGER
from surgeon.validation.runners import make_runner, runner_kind
from surgeon.validation.settings import check_validate_value

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
        else:
            stat = self.error_stat if self.error_stat != "quantile" else f"quantile {self.quantile}"
        return f"atol={_text(self.atol)} rtol={_text(self.rtol)} ({stat})"

    def check_outputs(self, outputs: list[str]) -> None:
        """Refuse a per-output tolerance naming no output (a typo would silently use the default)."""
        for key, value in (("atol", self.atol), ("rtol", self.rtol), ("error_stat", self.error_stat)):
            for name in value if isinstance(value, dict) else ():
                if name and name not in outputs:
                    raise SurgeonError(f"{key} names '{name}', which is not an output of the model",
                                       hint=suggest(name, outputs) or f"outputs: {', '.join(outputs)}")

    def element_mismatches(self, output: str, abs_err: np.ndarray, rel_err: np.ndarray) -> np.ndarray:
        """Elements outside tolerance under the elementwise rule (for intermediate tensors)."""
        atol, rtol = self.of(output)
        return (abs_err > atol) & (rel_err > rtol) | np.isnan(abs_err)


def _pick(value: float | dict, output: str) -> float:
    if isinstance(value, dict):
        return float(value.get(output, value.get("", 1e-5)))
    return float(value)


def _as_dict(value: float | dict) -> dict:
    return dict(value) if isinstance(value, dict) else {"": float(value)}


def _text(value: float | dict) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k or '*'}: {v:g}" for k, v in value.items()) + "}"
    return f"{value:g}"


@dataclass
class OutputReport:
    """One output compared: Polygraphy's verdict and our statistics (over all input sets)."""

    name: str
    passed: bool
    shape: list[int] | None = None
    dtype: str | None = None
    max_abs: float | None = None
    mean_abs: float | None = None
    p99_abs: float | None = None
    max_rel: float | None = None
    mean_rel: float | None = None
    p99_rel: float | None = None
    cosine: float | None = None
    atol: float | None = None
    rtol: float | None = None
    worst: list[dict] = field(default_factory=list)
    note: str = ""
    abs_errors: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "abs_errors"}


def error_arrays(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute and relative errors as float64, defined as Polygraphy defines them."""
    if reference.dtype == bool and candidate.dtype == bool:
        abs_err = np.logical_xor(reference, candidate).astype(np.float64)
    else:
        abs_err = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    denominator = np.abs(reference.astype(np.float64))
    denominator = np.where(denominator == 0, _EPSILON, denominator)
    with np.errstate(invalid="ignore", over="ignore"):
        rel_err = abs_err / denominator
    return abs_err, rel_err


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
    a = reference.astype(np.float64).ravel()
    b = candidate.astype(np.float64).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.dot(a, b) / norms)


def run_model(model: onnx.ModelProto, feeds: list[dict], kind: str, name: str) -> tuple[RunResults, str]:
    """Run `model` on every feed through a Polygraphy runner named `name`; return the results and runner kind."""
    runner = make_runner(model, kind, name)
    return run_runner(runner, feeds), runner_kind(runner)


def run_runner(runner, feeds: list[dict]) -> RunResults:
    """Run any Polygraphy runner (ours, ONNX Runtime's, TensorRT's) on every feed."""
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        return Comparator.run([runner], data_loader=feeds)


def combine(*results: RunResults) -> RunResults:
    combined = RunResults()
    for result in results:
        for name, iterations in result.items():
            combined[name] = iterations
    return combined


def compare_outputs(reference: RunResults, candidate: RunResults, tolerance: Tolerance,
                    iterations: int | None = None) -> list[OutputReport]:
    """Judge the candidate's outputs against the reference's (the first `iterations` input sets)."""
    ref_name, ref_iters = next(iter(reference.items()))
    cand_name, cand_iters = next(iter(candidate.items()))
    count = min(len(ref_iters), len(cand_iters)) if iterations is None else iterations
    ref_iters, cand_iters = ref_iters[:count], cand_iters[:count]
    ref_names = list(ref_iters[0].keys())
    cand_names = set(cand_iters[0].keys())
    common = [n for n in ref_names if n in cand_names]
    verdicts: dict[str, bool] = {}
    if common:
        pair = combine(_restricted(ref_name, ref_iters, common), _restricted(cand_name, cand_iters, common))
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL), np.errstate(divide="ignore", invalid="ignore"):
            accuracy = Comparator.compare_accuracy(pair, comparisons=[(1, 0)], compare_func=tolerance.compare_func())
        for per_pair in accuracy:
            for per_iteration in per_pair.values():
                for iteration in per_iteration:
                    for name, outcome in iteration.items():
                        verdicts[name] = verdicts.get(name, True) and bool(outcome)
    reports = []
    for name in ref_names:
        if name not in cand_names:
            reports.append(OutputReport(name, False, note=f"output missing from {cand_name}"))
            continue
        reports.append(_statistics(name, [it[name] for it in ref_iters], [it[name] for it in cand_iters],
                                   verdicts.get(name, False), tolerance))
    return reports


def _restricted(name: str, iterations, outputs: list[str]) -> RunResults:
    """One runner's results holding only `outputs` (those both sides have)."""
    single = RunResults()
    single[name] = [IterationResult({k: it[k] for k in outputs}, runner_name=name) for it in iterations]
    return single


def _statistics(name: str, references: list[np.ndarray], candidates: list[np.ndarray], passed: bool,
                tolerance: Tolerance) -> OutputReport:
    atol, rtol = tolerance.of(name)
    first_ref, first_cand = np.asarray(references[0]), np.asarray(candidates[0])
    report = OutputReport(name, passed, shape=list(first_ref.shape), dtype=str(first_ref.dtype), atol=atol, rtol=rtol)
    if any(np.shape(r) != np.shape(c) for r, c in zip(references, candidates)):
        report.passed = False
        report.note = f"shape {list(first_ref.shape)} vs {list(first_cand.shape)}"
        return report
    pairs = [error_arrays(np.asarray(r), np.asarray(c)) for r, c in zip(references, candidates)]
    abs_err = np.concatenate([p[0].ravel() for p in pairs])
    rel_err = np.concatenate([p[1].ravel() for p in pairs])
    if abs_err.size:
        report.max_abs, report.mean_abs = float(np.max(abs_err)), float(np.mean(abs_err))
        report.p99_abs = float(np.quantile(abs_err, 0.99))
        report.max_rel, report.mean_rel = float(np.max(rel_err)), float(np.mean(rel_err))
        report.p99_rel = float(np.quantile(rel_err, 0.99))
    report.cosine = cosine_similarity(np.concatenate([np.ravel(r) for r in references]),
                                      np.concatenate([np.ravel(c) for c in candidates]))
    report.worst = _worst(references, candidates, pairs)
    step = max(1, abs_err.size // HISTOGRAM_SAMPLES)
    report.abs_errors = abs_err[::step]
    return report


def _worst(references, candidates, pairs) -> list[dict]:
    rows = []
    for iteration, ((abs_err, _), ref, cand) in enumerate(zip(pairs, references, candidates)):
        flat = abs_err.ravel()
        k = min(WORST_K, flat.size)
        if k == 0:
            continue
        top = np.argpartition(-flat, k - 1)[:k] if flat.size > k else np.arange(flat.size)
        for index in top:
            where = np.unravel_index(int(index), abs_err.shape)
            rows.append({"iteration": iteration, "index": [int(i) for i in where],
                         "reference": np.asarray(ref)[where].item(), "candidate": np.asarray(cand)[where].item(),
                         "abs_error": float(flat[index])})
    rows.sort(key=lambda r: (-r["abs_error"], r["iteration"], r["index"]))
    return rows[:WORST_K]

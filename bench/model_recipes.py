"""Each shipped model recipe on each zoo export it is tested on: nodes before and after, the largest error
against PyTorch and against the original export, and the seconds of the run and of `surgeon compare`.

    OMP_NUM_THREADS=1 python bench/model_recipes.py [--recipe NAME ...]

Prints the table of docs/model-recipes.md ("Figures"). The cases are the ones tests/test_model_recipes.py
proves (imported from there, so the two cannot drift apart).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from surgeon.pipeline import run_recipe  # noqa: E402
from test_model_recipes import CASES, ZOO, compare  # noqa: E402


def compare_report(original: Path, result: Path, case, report: Path) -> dict:
    compare(original, result, case, report)
    return json.loads(report.with_suffix(".json").read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    recipes = sorted({case.recipe for case in CASES})
    parser.add_argument("--recipe", action="append", choices=recipes, metavar="NAME",
                        help=f"measure only this recipe's cases (repeatable; default: all of {', '.join(recipes)})")
    args = parser.parse_args(argv)
    print("| recipe on export | nodes | vs PyTorch | vs original | run | compare |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if args.recipe and case.recipe not in args.recipe:
                continue
            output = Path(tmp) / f"{case.recipe}.onnx"
            started = time.perf_counter()
            run_recipe(REPO / "recipes" / f"{case.recipe}.yaml", model=ZOO / f"{case.export}.onnx", output=output,
                       validate=False)
            run_seconds = time.perf_counter() - started
            before = len(onnx.load(ZOO / f"{case.export}.onnx", load_external_data=False).graph.node)
            after = len(onnx.load(output, load_external_data=False).graph.node)
            started = time.perf_counter()
            if case.original == "equal":
                report = compare_report(ZOO / f"{case.reference}.onnx", output, case, Path(tmp) / "compare")
                compare_seconds = f"{time.perf_counter() - started:.2f} s"
                original = f"{max(e['max_abs'] for e in report['outputs']):.1e}"
            else:  # the raw export runs nowhere or computes something else: PyTorch's outputs judge alone
                report = compare_report(output, output, case, Path(tmp) / "compare")
                compare_seconds, original = "–", f"({case.original})"
            pytorch = max(e["max_abs"] for e in report["expected"])
            export = case.export.split(".")[-1]
            print(f"| {case.recipe} on {export} | {before} → {after} | {pytorch:.1e} | {original} | "
                  f"{run_seconds:.2f} s | {compare_seconds} |", flush=True)


if __name__ == "__main__":
    main()

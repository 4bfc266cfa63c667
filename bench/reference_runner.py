"""The reference runner against ONNX Runtime on the same network.

    python bench/reference_runner.py [--size fixture|full] [--repeat 7]

BEVFormer-tiny exported twice from the same module: at opset 11 with the ATen fallback (13
`ATen(grid_sampler)` nodes: ONNX Runtime refuses it, the reference runner runs it as ORT segments plus
NumPy references) and at opset 16 (native GridSample, run by ONNX Runtime: the baseline). `fixture`
uses the committed exports under tests/data/zoo (no torch needed); `full` exports the upstream size
with the zoo (needs the zoo extra). Prints medians of --repeat runs and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from surgeon.validation.runners import ReferenceRunner, ort_session  # noqa: E402

FIXTURES = REPO / "tests" / "data" / "zoo"


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def exports(size: str, tmp: str) -> tuple[Path, Path, Path]:
    """(opset-11 ATen export, opset-16 export, inputs .npz)."""
    if size == "fixture":
        return (FIXTURES / "bevformer-tiny.fixture.opset11-aten.onnx", FIXTURES / "bevformer-tiny.fixture.opset16.onnx",
                FIXTURES / "bevformer-tiny.fixture.opset11-aten.inputs.npz")
    from surgeon.zoo.exporter import export

    aten = export("bevformer-tiny", size, 11, aten_fallback=True, out_dir=tmp)
    standard = export("bevformer-tiny", size, 16, out_dir=tmp)
    return Path(aten["onnx"]), Path(standard["onnx"]), Path(aten["inputs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("fixture", "full"), default="fixture")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        aten, standard, inputs = exports(args.size, tmp)
        feeds = dict(np.load(inputs))
        session = ort_session(onnx.load(standard))
        session.run(None, feeds)
        baseline = median_seconds(lambda: session.run(None, feeds), args.repeat)
        with ReferenceRunner(onnx.load(aten)) as runner:
            runner.infer(feeds)
            measured = median_seconds(lambda: runner.infer(feeds), args.repeat)
            segments = len(runner.segments)
    print("| model | ONNX Runtime, opset 16 (ms) | reference runner, opset 11 ATen (ms) | segments | ratio |")
    print("|---|---:|---:|---:|---:|")
    print(f"| bevformer-tiny {args.size} | {baseline * 1e3:.1f} | {measured * 1e3:.1f} | {segments} | "
          f"{measured / baseline:.2f}x |")


if __name__ == "__main__":
    main()

"""Peak memory and time of `surgeon run` on a model past protobuf's 2 GB limit.

    python bench/large_model.py [--weights 36] [--side 4096]

The model is tests/test_large_models.py's: `--weights` float32 [side, side] MatMul weights (64 MiB each
at 4096; 36 of them make 2.25 GiB) in one sparse external-data file, so building it costs no disk.
Each case runs in a fresh process (peak RSS is per process): loading the model alone (the baseline:
one copy of the weights), and a one-step recipe (`remove-node`) written to disk with external data
and checked by onnx.checker. Reported: wall time and peak RSS as a multiple of the weights' size, the
baseline's in the same run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CASE = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from pathlib import Path
from test_large_models import _sparse_model_past_two_gb
model = _sparse_model_past_two_gb(Path({folder!r}) / "in", count={weights}, side={side})
started = time.perf_counter()
if {case!r} == "load":
    import onnx
    onnx.load(model)
else:
    import surgeon
    surgeon.run_recipe({{"name": "big", "steps": [{{"pass": "remove-node", "with": {{"op_types": ["Identity"]}}}}]}},
                       model=model, output=Path({folder!r}) / "out" / "big.onnx")
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def run_case(case: str, weights: int, side: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        script = CASE.format(repo=str(REPO), tests=str(REPO / "tests"), folder=folder, weights=weights,
                             side=side, case=case)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=int, default=36)
    parser.add_argument("--side", type=int, default=4096)
    args = parser.parse_args()
    size_gb = args.weights * args.side * args.side * 4 / 2**30
    print(f"model: {args.weights} weights of [{args.side}, {args.side}] float32 = {size_gb:.2f} GiB")
    baseline = run_case("load", args.weights, args.side)
    run = run_case("run", args.weights, args.side)
    for name, result in (("onnx.load (baseline)", baseline), ("surgeon run, 1 step", run)):
        peak_gb = result["peak_kb"] / 2**20
        print(f"{name:24} {result['seconds']:7.1f} s   peak {peak_gb:5.2f} GiB = {peak_gb / size_gb:4.2f}x the weights"
              f"   ({peak_gb / (baseline['peak_kb'] / 2**20):4.2f}x the baseline)")


if __name__ == "__main__":
    main()

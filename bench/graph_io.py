"""onnx-graphsurgeon's import/export against surgeon.graphio's, on the generated 21,000-node graphs.

    python bench/graph_io.py [--nodes 21000] [--repeat 5]

The graphs are bench/pipeline_overhead.py's (an MLP chain and an export-like convnet), saved and
loaded back so the protos are what a pipeline reads from disk, and the bundled BEVFormer-tiny
fixture (a real TorchScript export, 6,400 nodes). Each figure is the median wall time of
--repeat runs in this process, with the garbage collector paused as surgeon's pipeline runs; ratios
are graphsurgeon's time over surgeon.graphio's, measured in the same run. Outputs are checked
byte-identical first.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from pipeline_overhead import REPO, exported_convnet, mlp_chain

sys.path.insert(0, str(REPO))

from surgeon.graphio import export_model, import_graph  # noqa: E402


def median_time(fn, repeat: int) -> float:
    """Median wall time of `fn()` with the cyclic garbage collector paused, as surgeon's pipeline runs
    (graphs are cycles by design; collections while building one free nothing). The previous run's
    graph is collected untimed."""
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return statistics.median(times)


def measure(model: onnx.ModelProto, repeat: int) -> dict[str, float]:
    graph = gs.import_onnx(model)
    expected = gs.export_onnx(graph, do_type_check=False).SerializeToString()
    if export_model(import_graph(model), do_type_check=False).SerializeToString() != expected:
        raise SystemExit("surgeon.graphio's round trip differs from graphsurgeon's: fix that before timing")
    return {
        "gs.import_onnx": median_time(lambda: gs.import_onnx(model), repeat),
        "import_graph": median_time(lambda: import_graph(model), repeat),
        "gs.export_onnx": median_time(lambda: gs.export_onnx(graph, do_type_check=False), repeat),
        "export_model": median_time(lambda: export_model(graph, do_type_check=False), repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=21000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print("| graph | gs.import_onnx s | import_graph s | import speed-up | gs.export_onnx s | export_model s "
          "| export speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        for title, build in (("generated MLP chain", mlp_chain), ("generated export-like convnet", exported_convnet)):
            cases.append((title, Path(tmp) / f"{build.__name__}.onnx"))
            onnx.save(build(args.nodes), cases[-1][1])
        cases.append(("BEVFormer-tiny fixture", REPO / "tests/data/zoo/bevformer-tiny.fixture.opset11-aten.onnx"))
        for title, path in cases:
            model = onnx.load(path)
            t = measure(model, args.repeat)
            print(f"| {title}, {len(model.graph.node)} nodes | {t['gs.import_onnx']:.3f} | {t['import_graph']:.3f} "
                  f"| {t['gs.import_onnx'] / t['import_graph']:.1f}x | {t['gs.export_onnx']:.3f} "
                  f"| {t['export_model']:.3f} | {t['gs.export_onnx'] / t['export_model']:.1f}x |")


if __name__ == "__main__":
    main()

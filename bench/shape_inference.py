"""What shape inference at the start of a run costs, with and without ONNX's data propagation.

    python bench/shape_inference.py [--length 1000] [--repeat 3]

Graphs: chains of 5,000, 10,000 and 20,000 Adds on a 1-D float tensor of --length elements (opset 17,
where Add propagates data), without and with a Shape node reading the chain's input; the
BEVFormer-tiny and Sparse4D-head zoo exports; bench/pipeline_overhead.py's export-like convnet.
Forms, taking turns round by round: ONNX inference without data propagation (the baseline), with it
(what a run's first inference always did before), and `surgeon.inference.infer_without_weights`
(now: with data propagation only where the graph has Shape or Size nodes). Each figure is the median wall time of --repeat rounds in this process;
ratios are against the baseline of the same run. Last, each form's peak memory on the 20,000-Add
chain with a Shape node, each in a fresh process (`--peak FORM`).
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipeline_overhead import exported_convnet

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from surgeon.inference import computes_shapes, infer_without_weights, without_weights  # noqa: E402
from surgeon.testing import IR_VERSION  # noqa: E402

ZOO = REPO / "tests" / "data" / "zoo"


def add_chain(adds: int, length: int, with_shape: bool) -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x" if i == 0 else f"a{i - 1}", "one"], [f"a{i}"]) for i in range(adds)]
    outputs = [helper.make_tensor_value_info(f"a{adds - 1}", onnx.TensorProto.FLOAT, [length])]
    if with_shape:
        nodes.append(helper.make_node("Shape", ["x"], ["s"]))
        outputs.append(helper.make_tensor_value_info("s", onnx.TensorProto.INT64, [1]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [length])],
                              outputs, [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


def forms(model: onnx.ModelProto) -> dict:
    def inferred(data_prop):
        return lambda: onnx.shape_inference.infer_shapes(without_weights(model), strict_mode=False, data_prop=data_prop)

    return {"without propagation": inferred(False), "with propagation": inferred(True),
            "infer_without_weights": lambda: infer_without_weights(model)}


def measure(model: onnx.ModelProto, repeat: int) -> dict[str, float]:
    runs = forms(model)
    times = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            gc.collect()
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def report(label: str, model: onnx.ModelProto, repeat: int) -> None:
    medians = measure(model, repeat)
    baseline = medians["without propagation"]
    shapes = "has Shape/Size nodes" if computes_shapes(model) else "no Shape/Size nodes"
    print(f"{label}  ({len(model.graph.node):,} nodes, {shapes})")
    for name, seconds in medians.items():
        print(f"    {name:24s} {seconds:8.3f} s  {seconds / baseline:7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1000, help="elements of the chain's 1-D tensor")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peak", metavar="FORM", help="run FORM once on the 20,000-Add chain, print its peak memory")
    args = parser.parse_args()
    if args.peak:
        print(peak(args.peak, args.length))
        return
    # Before anything else: a child inherits this process's peak resident size (Linux keeps it across fork
    # and exec), so children started after the big inferences would all report theirs.
    peaks = {name: subprocess.run([sys.executable, __file__, "--length", str(args.length), "--peak", name],
                                  capture_output=True, text=True, check=True).stdout.strip()
             for name in forms(add_chain(1, 1, False))}
    for with_shape in (False, True):
        for adds in (5000, 10000, 20000):
            label = f"{adds:,} Adds on [{args.length}]" + (" + a Shape node" if with_shape else "")
            report(label, add_chain(adds, args.length, with_shape), args.repeat)
    for fixture in ("bevformer-tiny.fixture.opset11-aten.onnx", "bevformer-tiny.fixture.opset16.onnx",
                    "sparse4d-head.fixture.opset11-aten.onnx"):
        report(fixture, onnx.load(ZOO / fixture), max(args.repeat, 7))
    report("generated export-like convnet", exported_convnet(21000), max(args.repeat, 5))
    print(f"peak memory, 20,000 Adds on [{args.length}] + a Shape node, each form in a fresh process:")
    for name, figure in peaks.items():
        print(f"    {name:24s} {figure}")


def peak(form: str, length: int) -> str:
    model = add_chain(20000, length, True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    forms(model)[form]()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return f"{after / 1024:8.0f} MiB peak ({(after - before) / 1024:.0f} MiB more than before it ran)"


if __name__ == "__main__":
    main()

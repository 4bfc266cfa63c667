"""What the pipeline costs around the passes, against plain onnx I/O and onnxsim, on the same graphs.

    python bench/pipeline_overhead.py [--nodes 21000] [--repeat 3]

Graphs: two generated graphs of at least 20,000 nodes — an MLP chain (MatMul/Add/Relu, ~7 MB of
weights, nothing to fold) and an export-like convnet (Conv/BatchNorm/Relu with torch's dynamic
Shape/Gather/Unsqueeze/Concat/Reshape chains and Identity leftovers, 8,404 nodes to fold) — the bundled
CenterPoint repair sample, and the BEVFormer-tiny and Sparse4D-head zoo exports. Each figure is the median wall time of --repeat runs in this
process, the forms taking turns; ratios are against the no-op recipe measured in the same run.
Last, clip-int's step time on 1,000 to 8,000 integer Clips that share their input with as many kept
nodes (`shared_input_fan_out`): unlinking a rewritten node from a tensor thousands of nodes read.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import surgeon  # noqa: E402
from surgeon.testing import IR_VERSION  # noqa: E402

def five_steps(model_path: Path) -> list[dict]:
    """A typical repair recipe: ordering, leftovers removed, a name for deploy code, folding, tidy."""
    first_input = onnx.load(model_path, load_external_data=False).graph.input[0].name
    return [
        {"pass": "toposort"},
        {"pass": "remove-node", "with": {"op_types": ["Identity", "Dropout"]}},
        {"pass": "rename", "with": {"inputs": {first_input: "features"}}},
        {"pass": "fold-constants"},
        {"pass": "cleanup"},
    ]


def mlp_chain(nodes: int, width: int = 16) -> onnx.ModelProto:
    """x -> (MatMul W_i -> Add b_i -> Relu) * n: `nodes` nodes, weights seeded."""
    rng = np.random.default_rng(0)
    blocks = nodes // 3 + 1
    graph_nodes, inits, current = [], [], "x"
    for i in range(blocks):
        w = (rng.standard_normal((width, width)) / width).astype(np.float32)
        b = rng.standard_normal(width).astype(np.float32) * 0.01
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        graph_nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"], name=f"MatMul_{i}"),
                        helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"Add_{i}"),
                        helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"Relu_{i}")]
        current = f"r{i}"
    graph = helper.make_graph(graph_nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, width])],
                              [helper.make_tensor_value_info(current, onnx.TensorProto.FLOAT, [4, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR_VERSION)


def exported_convnet(nodes: int, channels: int = 8, size: int = 8) -> onnx.ModelProto:
    """Blocks as torch's exporter writes them (opset 11): Conv -> BatchNormalization -> Relu, then a
    dynamic flatten through Shape -> Gather -> Unsqueeze -> Concat -> Reshape and a Reshape back."""
    rng = np.random.default_rng(0)
    blocks = nodes // 10 + 1
    graph_nodes, inits, current = [], [], "x"
    inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"),
              numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
              numpy_helper.from_array(np.array([1, channels, size, size], np.int64), "image_shape")]
    for i in range(blocks):
        w = (rng.standard_normal((channels, channels, 3, 3)) / 9).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.w"), numpy_helper.from_array(np.zeros(channels, np.float32), f"conv{i}.b")]
        for name, value in (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
            inits.append(numpy_helper.from_array(np.full(channels, value, np.float32), f"bn{i}.{name}"))
        graph_nodes += [
            helper.make_node("Conv", [current, f"conv{i}.w", f"conv{i}.b"], [f"c{i}"], name=f"Conv_{i}", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"c{i}", f"bn{i}.scale", f"bn{i}.bias", f"bn{i}.mean", f"bn{i}.var"],
                             [f"n{i}"], name=f"BatchNormalization_{i}"),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"Relu_{i}"),
            helper.make_node("Shape", [f"r{i}"], [f"s{i}"], name=f"Shape_{i}"),
            helper.make_node("Gather", [f"s{i}", "zero"], [f"g{i}"], name=f"Gather_{i}", axis=0),
            helper.make_node("Unsqueeze", [f"g{i}"], [f"u{i}"], name=f"Unsqueeze_{i}", axes=[0]),
            helper.make_node("Concat", [f"u{i}", "minus_one"], [f"shape{i}"], name=f"Concat_{i}", axis=0),
            helper.make_node("Reshape", [f"r{i}", f"shape{i}"], [f"flat{i}"], name=f"Reshape_{i}"),
            helper.make_node("Identity", [f"flat{i}"], [f"id{i}"], name=f"Identity_{i}"),
            helper.make_node("Reshape", [f"id{i}", "image_shape"], [f"img{i}"], name=f"Reshape_back_{i}"),
        ]
        current = f"img{i}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(graph_nodes, "convnet", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(current, onnx.TensorProto.FLOAT, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=IR_VERSION)


def shared_input_fan_out(sites: int) -> onnx.ModelProto:
    """x (int64) read by `sites` Neg nodes and `sites` integer Clips, pairs added: every Clip that clip-int
    rewrites leaves a reader list of 2 x `sites` nodes to be unlinked from."""
    graph_nodes, outputs = [], []
    for i in range(sites):
        graph_nodes += [helper.make_node("Neg", ["x"], [f"n{i}"], name=f"Neg_{i}"),
                        helper.make_node("Clip", ["x", "lo", "hi"], [f"c{i}"], name=f"Clip_{i}"),
                        helper.make_node("Add", [f"n{i}", f"c{i}"], [f"y{i}"], name=f"Add_{i}")]
        outputs.append(helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.INT64, [8]))
    bounds = [numpy_helper.from_array(np.array(value, np.int64), name) for name, value in (("lo", 0), ("hi", 5))]
    graph = helper.make_graph(graph_nodes, "fan_out", [helper.make_tensor_value_info("x", onnx.TensorProto.INT64, [8])],
                              outputs, bounds)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=IR_VERSION)


def fan_out_rewrites(work: Path, repeat: int) -> None:
    """clip-int's step time as the rewritten nodes' shared input gains readers: linear, not quadratic."""
    print("\n| Clips rewritten (clip-int, tensorrt-8.6) | readers of x | median step s | s per 1,000 |")
    print("|---:|---:|---:|---:|")
    for sites in (1000, 2000, 4000, 8000):
        path = work / f"fan_out_{sites}.onnx"
        onnx.save(shared_input_fan_out(sites), path)
        recipe = {"name": "bench", "target": "tensorrt-8.6", "checker": False, "steps": [{"pass": "clip-int"}]}
        seconds = statistics.median(
            surgeon.run_recipe(recipe, model=path, output=work / "out.onnx").steps[0].seconds for _ in range(repeat))
        print(f"| {sites:,} | {2 * sites:,} | {seconds:.3f} | {seconds * 1000 / sites:.3f} |")


@contextlib.contextmanager
def output_silenced():
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def timed(fn) -> float:
    # Each run starts with no garbage of the previous ones to collect, as a fresh CLI process does.
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(model_path: Path, work: Path, repeat: int) -> dict[str, float | str]:
    """Median seconds of each form, the forms run round-robin (one of each per round), so a machine
    whose speed drifts during the benchmark shifts them all alike and the ratios stay fair."""
    import onnxsim

    steps = five_steps(model_path)

    def load_save():
        onnx.save(onnx.load(model_path), work / "copy.onnx")

    def recipe(steps):
        return lambda: surgeon.run_recipe({"name": "bench", "steps": steps}, model=model_path,
                                          output=work / "out.onnx")

    def simplify():
        with output_silenced():  # onnxsim's C++ prints a warning per node it cannot evaluate
            onnxsim.simplify(onnx.load(model_path), check_n=0)

    forms = {"onnx.load + onnx.save": load_save, "no-op recipe": recipe([]), "5-step recipe": recipe(steps),
             "onnxsim.simplify(check_n=0)": simplify}
    times: dict[str, list[float]] = {name: [] for name in forms}
    failed: dict[str, str] = {}
    for _ in range(repeat):
        for name, fn in forms.items():
            if name in failed:
                continue
            try:
                times[name].append(timed(fn))
            except Exception as exc:  # onnxsim refuses some real graphs outright (e.g. unsorted ones)
                failed[name] = f"fails: {str(exc).splitlines()[0][:60]}"
    figures: dict[str, float | str] = {name: failed.get(name) or statistics.median(times[name]) for name in forms}
    result = surgeon.run_recipe({"name": "bench", "steps": steps}, model=model_path, output=work / "out.onnx")
    for step in result.steps:
        figures[f"  step {step.index} {step.pass_name}"] = step.seconds
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=21000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        chain, convnet = work / "mlp.onnx", work / "convnet.onnx"
        onnx.save(mlp_chain(args.nodes), chain)
        onnx.save(exported_convnet(args.nodes), convnet)
        cases = [(f"generated MLP chain, {len(onnx.load(chain).graph.node)} nodes", chain, args.repeat),
                 (f"generated export-like convnet, {len(onnx.load(convnet).graph.node)} nodes", convnet, args.repeat),
                 ("CenterPoint PFE repair sample, 10 nodes", REPO / "tests/data/centerpoint_pfe_sim_unsorted.onnx",
                  max(args.repeat, 10))]
        for fixture in ("bevformer-tiny.fixture.opset11-aten", "sparse4d-head.fixture.opset11-aten"):
            path = REPO / "tests/data/zoo" / f"{fixture}.onnx"
            if path.exists():  # real exports, for scale: a fifth to a third of the generated graphs' size
                cases.append((f"{fixture}, {len(onnx.load(path).graph.node)} nodes", path, args.repeat))
        print("| graph | step | median s | x no-op recipe |")
        print("|---|---|---:|---:|")
        for title, path, repeat in cases:
            figures = measure(path, work, repeat)
            base = figures["no-op recipe"]
            for name, seconds in figures.items():
                if isinstance(seconds, str):
                    print(f"| {title} | {name} | {seconds} | - |")
                else:
                    print(f"| {title} | {name} | {seconds:.3f} | {seconds / base:.2f} |")
            summary = f"{title}: 5-step / no-op = {figures['5-step recipe'] / base:.2f} (target <= 2)"
            simplify = figures["onnxsim.simplify(check_n=0)"]
            if not isinstance(simplify, str):
                summary += f", onnxsim / 5-step = {simplify / figures['5-step recipe']:.1f}"
            print(summary, file=sys.stderr)
        fan_out_rewrites(work, args.repeat)


if __name__ == "__main__":
    main()

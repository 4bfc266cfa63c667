"""ONNX Runtime CPU latency of grid sampling: native GridSample vs the grid-sample passes' decompose forms
vs the widely copied mmcv-style `bilinear_grid_sample` (the second baseline, 2-D only), in one process;
then nearest sampling (native vs decompose, 2-D), which `mode: auto` decomposes on ONNX Runtime; then
mmcv's whole deformable-attention block (native GridSample vs grid-sample decompose vs msda-decompose).

    python bench/grid_sample.py [--runs 9] [--threads 0] [--quick] [--only samplers|nearest|msda|model]

Prints the median latency of each form and its ratio to native GridSample on the same inputs, for
BEVFormer's spatial cross-attention shapes (DESIGN.md "Fast decompositions") and one variant. The forms
run round-robin (one run of each per round), so a machine shared with other jobs slows all of them
alike. With `--threads 1` the clock is the process CPU time, which other jobs barely disturb; otherwise
it is wall time. Before timing, every form's output is compared with native GridSample.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from surgeon.testing import apply_pass, make_model  # noqa: E402

#: (input [N,C,H,W], grid [N,Hg,Wg,2]): BEVFormer MSDA per head split, and 6 cameras x 256 channels;
#: then one volumetric case (input [N,C,D,H,W], grid [N,Dg,Hg,Wg,3]) for grid-sample-3d.
SHAPES = [((48, 32, 15, 25), (48, 2500, 8, 2)), ((6, 256, 15, 25), (6, 2500, 4, 2)),
          ((1, 32, 8, 32, 32), (1, 8, 64, 64, 3))]
QUICK_SHAPES = [((8, 32, 15, 25), (8, 500, 8, 2)), ((1, 8, 4, 8, 8), (1, 4, 16, 16, 3))]
#: mmcv's multi_scale_deformable_attn_pytorch (level shapes, batch, queries, heads, channels, points):
#: The issue's BEVFormer-like shapes (6 cameras, 256 channels as 8 heads x 32, one 15x25 map, 2500 queries x 4
#: points: each sampler [48,32,15,25] x [48,2500,4,2]), BEVFormer-tiny's spatial cross-attention (8 points), and
#: four levels as BEVFormer-base has.
MSDA_BLOCKS = [([(15, 25)], 6, 2500, 8, 32, 4), ([(15, 25)], 6, 2500, 8, 32, 8),
               ([(15, 25), (8, 13), (4, 7), (2, 4)], 6, 2500, 8, 32, 4)]
QUICK_MSDA_BLOCKS = [([(6, 8), (3, 4)], 2, 100, 4, 8, 4)]
#: What --only picks: single samplers (bilinear), the same shapes nearest (2-D), whole deformable-attention blocks,
#: the whole BEVFormer-tiny fixture.
PARTS = ("samplers", "nearest", "msda", "model")
#: The zoo's BEVFormer-tiny as torch exports it (ATen grid_sampler, opset 11), timed whole.
WHOLE_MODEL = (Path(__file__).resolve().parent.parent / "tests" / "data" / "zoo"
               / "bevformer-tiny.fixture.opset11-aten.onnx")


def native_model(x_shape, grid_shape, nearest: bool = False) -> onnx.ModelProto:
    """GridSample-16 (4-D) or GridSample-20 (5-D), bilinear (or nearest), zero padding."""
    volumetric = len(x_shape) == 5
    mode = "nearest" if nearest else "linear" if volumetric else "bilinear"
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="grid_sample", mode=mode,
                            padding_mode="zeros", align_corners=0)
    return make_model([node], [("x", np.float32, list(x_shape)), ("grid", np.float32, list(grid_shape))],
                      [("y", np.float32, [*x_shape[:2], *grid_shape[1:-1]])], opset=20 if volumetric else 16)


def mmcv_style_model(x_shape, grid_shape) -> onnx.ModelProto:
    """mmcv's `bilinear_grid_sample` (pad, four GatherElements over an index expanded to [N,C,P]),
    re-typed from its published algorithm and exported at opset 11 as users do."""
    import torch
    import torch.nn.functional as F

    class MmcvBilinearGridSample(torch.nn.Module):
        def forward(self, im, grid):
            n, c, h, w = im.shape
            _, gh, gw, _ = grid.shape
            x = ((grid[..., 0] + 1) * w - 1) / 2
            y = ((grid[..., 1] + 1) * h - 1) / 2
            x, y = x.view(n, -1), y.view(n, -1)
            x0, y0 = torch.floor(x).long(), torch.floor(y).long()
            x1, y1 = x0 + 1, y0 + 1
            wa = ((x1 - x) * (y1 - y)).unsqueeze(1)
            wb = ((x1 - x) * (y - y0)).unsqueeze(1)
            wc = ((x - x0) * (y1 - y)).unsqueeze(1)
            wd = ((x - x0) * (y - y0)).unsqueeze(1)
            padded = F.pad(im, pad=[1, 1, 1, 1], mode="constant", value=0).view(n, c, -1)
            pw, ph = w + 2, h + 2
            x0, x1 = (x0 + 1).clamp(0, pw - 1), (x1 + 1).clamp(0, pw - 1)
            y0, y1 = (y0 + 1).clamp(0, ph - 1), (y1 + 1).clamp(0, ph - 1)

            def corner(yy, xx):
                return torch.gather(padded, 2, (xx + yy * pw).unsqueeze(1).expand(-1, c, -1))

            out = corner(y0, x0) * wa + corner(y1, x0) * wb + corner(y0, x1) * wc + corner(y1, x1) * wd
            return out.reshape(n, c, gh, gw)

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(MmcvBilinearGridSample(), (torch.zeros(x_shape), torch.zeros(grid_shape)), buffer,
                          dynamo=False, opset_version=11, input_names=["x", "grid"], output_names=["y"])
    return onnx.load_from_string(buffer.getvalue())


def msda_block(level_shapes, batch, queries, heads, channels, points, rng):
    """mmcv's fallback block as torch exports it (ATen grid_sampler, opset 11), and feeds: unit-normal values,
    locations uniform in [-0.1, 1.1] (some outside the image), attention weights uniform in [0, 1)."""
    import torch

    from surgeon.testing import export_torch
    from surgeon.zoo.layers import multi_scale_deformable_attn_pytorch

    levels, keys = len(level_shapes), sum(h * w for h, w in level_shapes)
    feeds = {"value": rng.standard_normal((batch, keys, heads, channels), dtype=np.float32),
             "loc": rng.uniform(-0.1, 1.1, (batch, queries, heads, levels, points, 2)).astype(np.float32),
             "weights": rng.uniform(0, 1, (batch, queries, heads, levels, points)).astype(np.float32)}
    model = export_torch(lambda value, loc, weights: multi_scale_deformable_attn_pytorch(value, level_shapes, loc,
                                                                                          weights),
                         *map(torch.from_numpy, feeds.values()), input_names=list(feeds), output_names=["out"])
    return model, feeds


def msda_forms(exported: onnx.ModelProto) -> dict[str, onnx.ModelProto]:
    """An export's samplers as native GridSample (the baseline), decomposed one by one, and msda-decompose's
    fused blocks (then grid-sample decompose for samplers outside a block, as the opset-11 target recipe)."""
    fused = apply_pass(exported, "msda-decompose")[0]
    return {"native GridSample-16": apply_pass(exported, "grid-sample", mode="onnx")[0],
            "surgeon decompose": apply_pass(exported, "grid-sample", mode="decompose")[0],
            "surgeon msda-decompose": apply_pass(fused, "grid-sample", mode="decompose")[0]}


def random_feeds(rng, x_shape, grid_shape) -> dict[str, np.ndarray]:
    """Unit-normal input; a grid uniform in [-1.1, 1.1], so some points fall outside the image."""
    return {"x": rng.standard_normal(x_shape, dtype=np.float32),
            "grid": rng.uniform(-1.1, 1.1, grid_shape).astype(np.float32)}


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # The forms take turns in one process: a session's workers, left spinning after its run, would take
    # the cores from the next form (native GridSample 14 -> 24 ms at C=256 on two cores). They still spin
    # within a run, where waking them per op would charge the many-op forms for it.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def median_ms(sessions: dict[str, ort.InferenceSession], feeds, runs: int, clock) -> dict[str, float]:
    """Median milliseconds per form, the forms taking turns within each round."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for sess in sessions.values():
        sess.run(None, feeds)  # warm-up: allocations, thread pool
    for _ in range(runs):
        for name, sess in sessions.items():
            started = clock()
            sess.run(None, feeds)
            times[name].append((clock() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def report(label: str, grid_label: str, forms: dict[str, onnx.ModelProto], feeds, runs: int, threads: int,
           clock) -> None:
    """Time `forms` (the first is the baseline) on `feeds`; print one row per form."""
    sessions = {name: session(model, threads) for name, model in forms.items()}
    baseline_name = next(iter(sessions))
    expected = sessions[baseline_name].run(None, feeds)
    diffs = {name: max(float(np.abs(got - want).max()) for got, want in zip(sess.run(None, feeds), expected))
             for name, sess in sessions.items()}
    medians = median_ms(sessions, feeds, runs, clock)
    for name, ms in medians.items():
        print(f"{label:>20} {grid_label:>22} | {name:<28} {ms:9.1f} {ms / medians[baseline_name]:8.2f}x "
              f"{diffs[name]:11.2e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per form (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT default)")
    parser.add_argument("--quick", action="store_true", help="small shapes and no whole model, for a smoke run")
    parser.add_argument("--only", action="append", choices=PARTS,
                        help="time only this part (repeatable; default: all of " + ", ".join(PARTS) + ")")
    args = parser.parse_args(argv)
    parts = set(args.only or PARTS)
    rng = np.random.default_rng(0)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    print(f"onnxruntime {ort.__version__}, CPU, intra-op threads {args.threads or 'default'}, "
          f"median of {args.runs} runs, {'CPU' if args.threads == 1 else 'wall'} time")
    print(f"{'input':>20} {'grid':>22} | {'form':<28} {'ms':>9} {'x native':>9} {'max |diff|':>11}")
    shapes = (QUICK_SHAPES if args.quick else SHAPES) if "samplers" in parts else []
    for x_shape, grid_shape in shapes:
        native = native_model(x_shape, grid_shape)
        if len(x_shape) == 5:
            forms = {"native GridSample-20": native,
                     "surgeon decompose": apply_pass(native, "grid-sample-3d", mode="decompose")[0]}
        else:
            forms = {"native GridSample-16": native,
                     "surgeon decompose": apply_pass(native, "grid-sample", mode="decompose")[0],
                     "mmcv-style (opset 11)": mmcv_style_model(x_shape, grid_shape)}
        report(str(list(x_shape)), str(list(grid_shape)), forms, random_feeds(rng, x_shape, grid_shape),
               args.runs, args.threads, clock)
    for x_shape, grid_shape in shapes if "nearest" in parts else []:
        if len(x_shape) == 4:
            native = native_model(x_shape, grid_shape, nearest=True)
            forms = {"native GridSample-16 nearest": native,
                     "surgeon decompose nearest": apply_pass(native, "grid-sample", mode="decompose")[0]}
            report(str(list(x_shape)), str(list(grid_shape)), forms, random_feeds(rng, x_shape, grid_shape),
                   args.runs, args.threads, clock)
    blocks = (QUICK_MSDA_BLOCKS if args.quick else MSDA_BLOCKS) if "msda" in parts else []
    for level_shapes, batch, queries, heads, channels, points in blocks:
        model, feeds = msda_block(level_shapes, batch, queries, heads, channels, points, rng)
        report(f"msda {len(level_shapes)} level(s)", f"[{batch},{queries},{heads},{channels}] P={points}",
               msda_forms(model), feeds, args.runs, args.threads, clock)
    if "model" in parts and not args.quick and WHOLE_MODEL.exists():  # the whole BEVFormer-tiny fixture, its recorded inputs
        exported = onnx.load(WHOLE_MODEL)
        feeds = dict(np.load(WHOLE_MODEL.with_suffix(".inputs.npz")))
        sites = sum(n.op_type == "ATen" for n in exported.graph.node)
        report("bevformer-tiny", f"whole model, {sites} sites", msda_forms(exported), feeds, args.runs, args.threads,
               clock)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

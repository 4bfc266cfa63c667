"""grid-sample-3d pass: 5-D input, every spelling, checked against torch.nn.functional.grid_sample.

Tolerance: float32, atol 1e-5 (rtol 0) against PyTorch's CPU grid_sample; nearest mode is compared exactly.
The float64 test at opsets 11 and 13 is shared with grid-sample (test_pass_grid_sample.py).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.registry import discover
from surgeon.targets import load_target
from surgeon.testing import apply_pass, make_model, op_types, run_ort

torch = pytest.importorskip("torch")
F = torch.nn.functional

discover()  # the built-in passes import as surgeon.passes.*
from surgeon.passes.grid_sample_3d import choose_form as choose_form_3d  # noqa: E402
from test_pass_grid_sample import (ATOL, OPSET11_OPS, PADDINGS, calling_a_local_function, make_grid,  # noqa: E402
                                   torch_grid_sample)


#: (N, C, D, H, W, Dg, Hg, Wg): size-1 dims; sizes 4 (align False) and 5 (align True) give exact ties.
SHAPES_3D = [(1, 1, 1, 1, 1, 1, 1, 1), (2, 3, 4, 5, 4, 2, 3, 4), (1, 2, 5, 1, 3, 3, 2, 2)]
NON_FINITE = [np.nan, np.inf, -np.inf]


def grid_sample_20(shape, mode, padding, align_corners) -> onnx.ModelProto:
    n, c, d, h, w, dg, hg, wg = shape
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="sampler3d", mode=mode, padding_mode=padding,
                            align_corners=int(align_corners))
    return make_model([node], [("x", np.float32, [n, c, d, h, w]), ("grid", np.float32, [n, dg, hg, wg, 3])],
                      [("y", np.float32, [n, c, dg, hg, wg])], opset=20)


def feeds_3d(shape, seed, align_corners, far_out=True):
    n, c, d, h, w, dg, hg, wg = shape
    rng = np.random.default_rng(seed)
    grid = make_grid(rng, (n, dg, hg, wg, 3), (d, h, w), align_corners, far_out)
    if far_out:
        grid.reshape(-1)[rng.choice(grid.size, size=min(3, grid.size), replace=False)] = NON_FINITE[:grid.size]
    return rng.standard_normal((n, c, d, h, w), dtype=np.float32), grid


@pytest.mark.parametrize("align_corners", (False, True))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", ("linear", "nearest"))
def test_3d_decompose_matches_torch(mode, padding, align_corners):
    """Including far-out, infinite and NaN coordinates: torch's 3-D CPU kernel maps them without NaN."""
    torch_mode = "bilinear" if mode == "linear" else mode
    for index, shape in enumerate(SHAPES_3D):
        model, step = apply_pass(grid_sample_20(shape, mode, padding, align_corners), "grid-sample-3d",
                                 mode="decompose")
        assert step.rewritten == ["sampler3d"]
        x, grid = feeds_3d(shape, index, align_corners)
        out = run_ort(model, {"x": x, "grid": grid})[0]
        expected = torch_grid_sample(x, grid, torch_mode, padding, align_corners)
        assert np.isfinite(expected).all()
        if mode == "nearest":
            np.testing.assert_array_equal(out, expected)
        else:
            np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)


def test_3d_decompose_output_is_opset11_ops_and_idempotent():
    model, _ = apply_pass(grid_sample_20(SHAPES_3D[1], "linear", "reflection", False), "grid-sample-3d",
                          mode="decompose")
    onnx.checker.check_model(model)
    ops = set(op_types(model))
    assert ops <= OPSET11_OPS | {"Mod", "Equal"} and "GridSample" not in ops
    assert all(onnx.defs.get_schema(op, 11).since_version <= 11 for op in ops)
    assert apply_pass(model, "grid-sample-3d", mode="decompose")[1].rewritten == []


def test_3d_aten_export_is_left_by_grid_sample_and_taken_by_grid_sample_3d():
    class Sampler(torch.nn.Module):
        def forward(self, x, grid):
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Sampler(), (torch.zeros(1, 2, 3, 4, 5), torch.zeros(1, 2, 3, 4, 3)), buffer, dynamo=False,
                          opset_version=11,
                          operator_export_type=torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK,
                          input_names=["x", "grid"], output_names=["y"])
    exported = onnx.load_from_string(buffer.getvalue())
    aten_name = next(n.name for n in exported.graph.node if n.op_type == "ATen")
    untouched, step = apply_pass(exported, "grid-sample", mode="decompose")
    assert step.rewritten == [] and "ATen" in op_types(untouched)
    assert any("to grid-sample-3d: " + aten_name in note for note in step.notes)

    x, grid = feeds_3d((1, 2, 3, 4, 5, 2, 3, 4), seed=3, align_corners=True, far_out=False)
    for mode, ops in (("decompose", None), ("onnx", ["GridSample"])):
        model, step = apply_pass(exported, "grid-sample-3d", mode=mode)
        assert step.rewritten == [aten_name]
        assert ops is None or op_types(model) == ops
        np.testing.assert_allclose(run_ort(model, {"x": x, "grid": grid})[0],
                                   torch_grid_sample(x, grid, "bilinear", "border", True), atol=ATOL, rtol=0)
    assert {o.domain: o.version for o in model.opset_import}[""] == 20


def test_3d_bevformer_tensorrt_spelling():
    """GridSampler3DTRT: grid fed as [N,3,Dg,Hg,Wg] * 10; the wrapper does permute(0,2,3,4,1) / 10."""
    shape = SHAPES_3D[1]
    n, c, d, h, w, dg, hg, wg = shape
    node = helper.make_node("GridSampler3DTRT", ["x", "grid10"], ["y"], name="trt3d", interpolation_mode=1,
                            padding_mode=0, align_corners=0)
    model = make_model([node], [("x", np.float32, [n, c, d, h, w]), ("grid10", np.float32, [n, 3, dg, hg, wg])],
                       [("y", np.float32, [n, c, dg, hg, wg])], opset=11)
    x, grid = feeds_3d(shape, seed=4, align_corners=False, far_out=False)
    grid10 = np.ascontiguousarray(np.moveaxis(grid, -1, 1) * np.float32(10))
    wrapper_grid = (torch.from_numpy(grid10).permute(0, 2, 3, 4, 1) / 10).numpy()
    out, step = apply_pass(model, "grid-sample-3d", mode="decompose")
    assert step.rewritten == ["trt3d"]
    np.testing.assert_array_equal(run_ort(out, {"x": x, "grid10": grid10})[0],
                                  torch_grid_sample(x, wrapper_grid, "nearest", "zeros", False))
    assert apply_pass(model, "grid-sample", mode="decompose")[1].rewritten == []


def test_3d_auto_mode(tmp_path):
    """GridSample-20 only where the target's opset has it; TensorRT's GridSample is 2-D only."""
    for target in ("onnxruntime", "tensorrt-10", "opset-11"):
        assert choose_form_3d(load_target(target)) == "decompose"
    profile = tmp_path / "onnxruntime-20.yaml"
    profile.write_text("name: onnxruntime-20\nruntime: onnxruntime\nopset: 20\n")
    assert choose_form_3d(load_target(str(profile))) == "onnx"


def test_3d_onnx_mode_keeps_local_functions_when_it_raises_the_opset():
    """Raised to opset 20 by the same conversion as set-opset, which keeps local functions."""
    sampler = helper.make_node("ATen", ["x2", "grid", "mode", "padding", "align"], ["y"], name="aten3d",
                               domain="org.pytorch.aten", operator="grid_sampler")
    shape = SHAPES_3D[1]
    model = calling_a_local_function(sampler, shape[:5], (shape[0], *shape[5:], 3))
    out, step = apply_pass(model, "grid-sample-3d", mode="onnx")
    assert step.rewritten == ["aten3d"] and op_types(out) == ["Twice", "GridSample"]
    (function,) = out.functions
    assert {o.domain: o.version for o in function.opset_import}[""] == 20
    onnx.checker.check_model(out, full_check=True)
    x, grid = feeds_3d(shape, seed=5, align_corners=False, far_out=False)
    np.testing.assert_allclose(run_ort(out, {"x": x, "grid": grid})[0], torch_grid_sample(x + x, grid),
                               atol=ATOL, rtol=0)

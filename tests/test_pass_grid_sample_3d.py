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
from surgeon.sampling import INTERPOLATION_CODES, PADDING_CODES
from surgeon.targets import load_target
from surgeon.testing import apply_pass, make_model, op_types, run_ort
from surgeon.validation.runners import default_opset

torch = pytest.importorskip("torch")
F = torch.nn.functional

discover()  # the built-in passes import as surgeon.passes.*
from surgeon.passes.grid_sample_3d import choose_form as choose_form_3d  # noqa: E402
from test_pass_grid_sample import (ATOL, OPSET11_OPS, PADDINGS, assert_matches_torch_bfloat16,  # noqa: E402
                                   calling_a_local_function, in_bfloat16, make_grid, torch_grid_sample)


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


@pytest.fixture
def opset20_target(tmp_path) -> str:
    """A profile of ONNX Runtime at opset 20, where grid-sample-3d's auto picks GridSample."""
    profile = tmp_path / "onnxruntime-20.yaml"
    profile.write_text("name: onnxruntime-20\nruntime: onnxruntime\nopset: 20\n")
    return str(profile)


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
    assert default_opset(model) == 20


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


def test_3d_auto_mode(opset20_target):
    """GridSample-20 only where the target's opset has it; TensorRT's GridSample is 2-D only."""
    for target in ("onnxruntime", "tensorrt-10", "opset-11"):
        assert choose_form_3d(load_target(target)) == "decompose"
    assert choose_form_3d(load_target(opset20_target)) == "onnx"


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


#: ONNX Runtime 1.31's GridSample-20 rounds, then reflects; torch reflects, then rounds (docs: "Ties outside
#: the image"): x = 1.4 of W = 5 is voxel 5.5 -> GridSample 3, torch 4.
TIE_SHAPE_3D = (1, 1, 1, 1, 5, 1, 1, 1)
TIE_FEEDS_3D = {"x": np.arange(5, dtype=np.float32).reshape(1, 1, 1, 1, 5),
                "grid": np.array([1.4, 0.0, 0.0], np.float32).reshape(1, 1, 1, 1, 3)}


def sampler_3d(spelling, shape, mode, padding, align_corners, name="sampler3d") -> onnx.ModelProto:
    """One 3-D sampler `name` (x -> y), spelt `GridSample` (opset 20), `aten` or `mmdeploy` (opset 11)."""
    if spelling == "GridSample":
        model = grid_sample_20(shape, "linear" if mode == "bilinear" else mode, padding, align_corners)
        model.graph.node[0].name = name
        return model
    n, c, d, h, w, dg, hg, wg = shape
    codes = {"interpolation_mode": INTERPOLATION_CODES.index(mode), "padding_mode": PADDING_CODES.index(padding),
             "align_corners": int(align_corners)}
    constants = {}
    if spelling == "mmdeploy":
        node = helper.make_node("grid_sampler", ["x", "grid"], ["y"], name=name, domain="mmdeploy", **codes)
    else:
        node = helper.make_node("ATen", ["x", "grid", "mode", "padding", "align"], ["y"], name=name,
                                domain="org.pytorch.aten", operator="grid_sampler")
        constants = {"mode": np.array(codes["interpolation_mode"]), "padding": np.array(codes["padding_mode"]),
                     "align": np.array(align_corners)}
    return make_model([node], [("x", np.float32, [n, c, d, h, w]), ("grid", np.float32, [n, dg, hg, wg, 3])],
                      [("y", np.float32, [n, c, dg, hg, wg])], initializers=constants, opset=11)


def test_3d_onnx_form_rounds_nearest_before_reflecting_unlike_torch():
    """As in 2-D: GridSample-20 on ONNX Runtime reads voxel 3 where torch reads 4; mode onnx says so, naming
    the node; decompose follows torch."""
    assert torch_grid_sample(**TIE_FEEDS_3D, mode="nearest", padding="reflection").item() == 4
    model = sampler_3d("GridSample", TIE_SHAPE_3D, "nearest", "reflection", False)
    for form, voxel in (("onnx", 3), ("decompose", 4)):
        rewritten, step = apply_pass(model, "grid-sample-3d", mode=form)
        assert run_ort(rewritten, TIE_FEEDS_3D)[0].item() == voxel
        tie_notes = [text for text in step.notes if "rounds a coordinate before reflecting it" in text]
        assert tie_notes == ([] if form == "decompose" else [
            "sampler3d: GridSample nearest with reflection padding and align_corners 0, where ONNX's GridSample "
            "rounds a coordinate before reflecting it and torch after: a coordinate outside the image exactly "
            "halfway between two pixels reads another pixel than torch (ONNX Runtime and onnx.reference); mode "
            "decompose follows torch exactly"])


@pytest.mark.parametrize("spelling", ("aten", "mmdeploy", "GridSample"))
def test_3d_auto_decomposes_the_sites_whose_ties_differ_where_it_would_pick_gridsample(spelling, opset20_target):
    """On a target whose opset has GridSample-20 (auto's onnx form), nearest reflection sites with
    align_corners 0 are decomposed: torch's voxel, a GridSample-20 node too, the opset kept, the reason noted."""
    model = sampler_3d(spelling, TIE_SHAPE_3D, "nearest", "reflection", False)
    rewritten, step = apply_pass(model, "grid-sample-3d", target=opset20_target)
    assert step.rewritten == ["sampler3d"] and "GridSample" not in op_types(rewritten)
    assert run_ort(rewritten, TIE_FEEDS_3D)[0].item() == 4
    notes = " ".join(step.notes)
    assert "mode auto chose 'decompose' for sampler3d: nearest with reflection padding and align_corners 0" in notes
    assert "mode auto chose 'onnx'" not in notes and "raised" not in notes
    assert default_opset(rewritten) == default_opset(model)


@pytest.mark.parametrize("target", ("onnxruntime", "tensorrt-10", "opset-11"))
def test_3d_auto_decomposes_every_site_below_opset_20_and_on_tensorrt(target):
    """TensorRT's GridSample is 2-D only: auto decomposes there whatever the opset, so the ties are torch's."""
    rewritten, step = apply_pass(sampler_3d("mmdeploy", TIE_SHAPE_3D, "nearest", "reflection", False),
                                 "grid-sample-3d", target=target)
    assert "GridSample" not in op_types(rewritten) and run_ort(rewritten, TIE_FEEDS_3D)[0].item() == 4
    assert step.notes == [f"mode auto chose 'decompose' for target {target}"]


def test_3d_auto_decomposes_only_the_sites_whose_ties_differ(opset20_target):
    """A bilinear and a nearest reflection sampler in one opset-11 graph: GridSample-20 (opset raised) and the
    decomposition side by side, each equal to torch."""
    shape = SHAPES_3D[1]
    n, c, d, h, w, dg, hg, wg = shape
    codes = {"bilinear": (0, 0), "nearest": (1, 2)}
    nodes = [helper.make_node("ATen", ["x", "grid", f"{name}_mode", f"{name}_padding", "align"], [f"y_{name}"],
                              name=name, domain="org.pytorch.aten", operator="grid_sampler") for name in codes]
    constants = {f"{name}_{what}": np.array(code) for name, pair in codes.items()
                 for what, code in zip(("mode", "padding"), pair)}
    model = make_model(nodes, [("x", np.float32, [n, c, d, h, w]), ("grid", np.float32, [n, dg, hg, wg, 3])],
                       [(f"y_{name}", np.float32, [n, c, dg, hg, wg]) for name in codes], opset=11,
                       initializers={**constants, "align": np.array(False)})
    rewritten, step = apply_pass(model, "grid-sample-3d", target=opset20_target)
    onnx.checker.check_model(rewritten)
    assert sorted(step.rewritten) == ["bilinear", "nearest"] and op_types(rewritten).count("GridSample") == 1
    assert default_opset(rewritten) == 20 and "mode auto chose 'onnx' for target onnxruntime-20" in step.notes
    x, grid = feeds_3d(shape, seed=6, align_corners=False, far_out=False)
    bilinear, nearest = run_ort(rewritten, {"x": x, "grid": grid})
    np.testing.assert_allclose(bilinear, torch_grid_sample(x, grid), atol=ATOL, rtol=0)
    np.testing.assert_array_equal(nearest, torch_grid_sample(x, grid, "nearest", "reflection"))


@pytest.mark.parametrize("mode, padding, align_corners", [("nearest", "reflection", True),
                                                          ("nearest", "zeros", False),
                                                          ("bilinear", "reflection", False)])
def test_3d_auto_keeps_gridsample_where_its_ties_are_torchs(mode, padding, align_corners, opset20_target):
    model, step = apply_pass(sampler_3d("aten", SHAPES_3D[1], mode, padding, align_corners), "grid-sample-3d",
                             target=opset20_target)
    assert op_types(model) == ["GridSample"]
    assert step.notes[-1] == "mode auto chose 'onnx' for target onnxruntime-20"


def test_3d_auto_keeps_gridsample_whose_ties_differ_where_decompose_cannot(opset20_target):
    """A dynamic spatial size: decompose cannot, so the site becomes GridSample-20, named in the note."""
    node = helper.make_node("grid_sampler", ["x", "grid"], ["y"], name="dynamic", domain="mmdeploy",
                            interpolation_mode=1, padding_mode=2, align_corners=0)
    model = make_model([node], [("x", np.float32, [1, 3, "d", "h", "w"]), ("grid", np.float32, [1, 2, 6, 7, 3])],
                       [("y", np.float32, None)], opset=11)
    rewritten, step = apply_pass(model, "grid-sample-3d", target=opset20_target)
    assert op_types(rewritten) == ["GridSample"] and step.rewritten == ["dynamic"]
    assert any(text.startswith("dynamic/GridSample: GridSample nearest with reflection padding")
               and text.endswith("mode decompose follows torch exactly") for text in step.notes)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", ("bilinear", "nearest"))
@pytest.mark.parametrize("form", ("decompose", "auto"))
def test_3d_bfloat16_site_is_sampled_in_float32_as_torchs_cuda_kernel(form, mode, padding, opset20_target):
    """As in 2-D: between Casts, in float32 (ONNX has no bfloat16 GridSample-20, nor Where before 16; auto here
    writes GridSample-20). ONNX Runtime against torch's bfloat16 kernel as CUDA computes it: nearest identical,
    trilinear within one bfloat16 ulp."""
    shape = SHAPES_3D[1]
    model = in_bfloat16(sampler_3d("aten", shape, mode, padding, False))
    rewritten, step = apply_pass(model, "grid-sample-3d", target=opset20_target, mode=form)
    onnx.checker.check_model(rewritten, full_check=True)
    native = form == "auto" and (mode, padding) != ("nearest", "reflection")  # auto decomposes those: ties
    assert ("GridSample" in op_types(rewritten)) == native
    assert any(text.startswith("sampled sampler3d in float32 between Casts from and to bfloat16")
               for text in step.notes)
    x, grid = feeds_3d(shape, seed=4, align_corners=False, far_out=not native)
    assert_matches_torch_bfloat16(run_ort(rewritten, {"x": x, "grid": grid})[0], x, grid, mode, padding)


def test_3d_auto_decomposes_a_site_whose_dtype_the_target_has_no_gridsample_for(tmp_path):
    """A profile at opset 20 whose GridSample takes float32 only: auto decomposes a float64 site (its opset kept)
    and says why, and keeps a float32 one as GridSample-20."""
    profile = tmp_path / "float32-gridsample.yaml"
    profile.write_text("name: float32-gridsample\nruntime: onnxruntime\nopset: 20\n"
                       "ops:\n  GridSample: {since: 16, dtypes: [float32]}\n")
    for dtype, kept in ((np.float64, False), (np.float32, True)):
        model = sampler_3d("mmdeploy", SHAPES_3D[1], "bilinear", "border", False)
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        rewritten, step = apply_pass(model, "grid-sample-3d", target=str(profile))
        assert ("GridSample" in op_types(rewritten)) == kept
        decomposed_note = ("mode auto chose 'decompose' for sampler3d: target float32-gridsample runs no float64 "
                           "GridSample-20 (mode onnx keeps GridSample)")
        assert (decomposed_note in step.notes) == (not kept)
        assert default_opset(rewritten) == (20 if kept else 11)
        x, grid = feeds_3d(SHAPES_3D[1], seed=5, align_corners=False, far_out=False)
        np.testing.assert_allclose(run_ort(rewritten, {"x": x.astype(dtype), "grid": grid.astype(dtype)})[0],
                                   torch_grid_sample(x, grid, "bilinear", "border"), atol=ATOL, rtol=0)

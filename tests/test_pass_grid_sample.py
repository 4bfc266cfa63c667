"""grid-sample pass: every spelling, every mode, checked against torch.nn.functional.grid_sample.

Tolerance: float32, atol 1e-5 (rtol 0) against PyTorch's CPU grid_sample; nearest mode is compared exactly.
"""
from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from surgeon.errors import RecipeError, SurgeonError
from surgeon.pass_api import Context
from surgeon.pipeline import finish_graph, run_steps
from surgeon.plugins import specs
from surgeon.recipe import load_recipe
from surgeon.reference import find_reference
from surgeon.registry import discover
from surgeon.targets import load_target
from surgeon.testing import apply_pass, make_model, op_types, run_ort
from surgeon.validation.runners import ReferenceRunner

torch = pytest.importorskip("torch")
F = torch.nn.functional

discover()  # the built-in passes import as surgeon.passes.*
from surgeon.passes.grid_sample import (MATMUL_MIN_CHANNELS, ORT_NEAREST_SLOWDOWN, GridSamplePass,  # noqa: E402
                                         choose_form)
from surgeon.sampling import INTERPOLATION_CODES, PADDING_CODES  # noqa: E402

ATOL = 1e-5
OPSET11_OPS = {"Pad", "Transpose", "Flatten", "Gather", "Add", "Sub", "Mul", "Div", "Clip", "Floor", "Round",
               "Cast", "Unsqueeze", "Slice", "Concat", "Reshape", "MatMul", "IsNaN", "Where", "Abs", "Min"}
MODES = ("bilinear", "nearest")
PADDINGS = ("zeros", "border", "reflection")
#: (N, C, H, W, Hg, Wg), size-1 dims and an empty grid included; W=4/H=8 (align False) and W=5/H=9 (align
#: True) give exact ties; C=130 takes the MatMul blend (MATMUL_MIN_CHANNELS).
SHAPES = [(1, 1, 1, 1, 1, 1), (2, 3, 4, 5, 6, 7), (1, 2, 1, 6, 3, 1), (3, 1, 5, 1, 2, 4), (2, 4, 8, 4, 5, 6),
          (1, 3, 9, 5, 4, 4), (2, 2, 1, 3, 0, 4), (2, 130, 3, 4, 2, 5)]


def torch_grid_sample(x, grid, mode="bilinear", padding="zeros", align_corners=False) -> np.ndarray:
    return F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=mode, padding_mode=padding,
                         align_corners=align_corners).numpy()


def tie_coords(size: int, align_corners: bool) -> np.ndarray:
    """Normalised coordinates that unnormalise to k + 0.5 (nearest-mode rounding ties), plus pixel centres."""
    k = np.arange(-1, size + 1, dtype=np.float32)
    if align_corners:
        scale = np.float32(max(size - 1, 1) / 2)
        return np.concatenate([(k + np.float32(0.5)) / scale - 1, k / scale - 1]).astype(np.float32)
    scale = np.float32(size / 2)
    return np.concatenate([(k + 1) / scale - 1, (k + np.float32(0.5)) / scale - 1]).astype(np.float32)


#: Coordinates far outside the image. ONNX Runtime 1.31's own GridSample gets them wrong (it returns
#: e.g. 2.0 instead of 0 at x=1e30 with zero padding), so they are left out where its kernel is checked.
FAR_OUT = [1e30, -1e30, 1e10, -1e7]


def make_grid(rng, grid_shape, sizes, align_corners, far_out=True, ties_outside=True) -> np.ndarray:
    """Uniform in [-1.5, 1.5], then overwritten in places by borders, ties, pixel centres and far-out values
    (ties and centres of every spatial size in `sizes`; without `ties_outside`, those within [-1, 1] only)."""
    grid = rng.uniform(-1.5, 1.5, grid_shape).astype(np.float32)
    ties = np.concatenate([tie_coords(size, align_corners) for size in sizes])
    if not ties_outside:
        ties = ties[np.abs(ties) <= 1]
    specials = np.concatenate([np.array([-1, 1, 0, -3.0] + (FAR_OUT if far_out else []), np.float32), ties])
    flat = grid.reshape(-1)
    picks = rng.choice(specials, size=flat.size // 2)
    flat[rng.choice(flat.size, size=picks.size, replace=False)] = picks
    return grid


def grid_sample_16(shape, mode, padding, align_corners, opset=16) -> onnx.ModelProto:
    n, c, h, w, hg, wg = shape
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="sampler", mode=mode, padding_mode=padding,
                            align_corners=int(align_corners))
    return make_model([node], [("x", np.float32, [n, c, h, w]), ("grid", np.float32, [n, hg, wg, 2])],
                      [("y", np.float32, [n, c, hg, wg])], opset=opset)


def aten_export(opset: int, mode="bilinear", padding="zeros", align_corners=False) -> onnx.ModelProto:
    """torch's own ATen fallback export of F.grid_sample (inputs x [1,3,4,5], grid [1,6,7,2])."""

    class Sampler(torch.nn.Module):
        def forward(self, x, grid):
            return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(Sampler(), (torch.zeros(1, 3, 4, 5), torch.zeros(1, 6, 7, 2)), buffer, dynamo=False,
                          opset_version=opset,
                          operator_export_type=torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK,
                          input_names=["x", "grid"], output_names=["y"])
    return onnx.load_from_string(buffer.getvalue())


def sampler_model(spelling, shape, mode, padding, align_corners) -> onnx.ModelProto:
    """One sampler named 'sampler', x [N,C,H,W] and grid [N,Hg,Wg,2] -> y, spelt as `GridSample` (opset 16),
    `aten` (grid_sampler, constants as initializers) or `mmdeploy` (opset 11)."""
    if spelling == "GridSample":
        return grid_sample_16(shape, mode, padding, align_corners)
    n, c, h, w, hg, wg = shape
    codes = {"interpolation_mode": INTERPOLATION_CODES.index(mode), "padding_mode": PADDING_CODES.index(padding),
             "align_corners": int(align_corners)}
    if spelling == "mmdeploy":
        node, constants = helper.make_node("grid_sampler", ["x", "grid"], ["y"], name="sampler", domain="mmdeploy",
                                           **codes), {}
    else:
        node = helper.make_node("ATen", ["x", "grid", "mode", "padding", "align"], ["y"], name="sampler",
                                domain="org.pytorch.aten", operator="grid_sampler")
        constants = {"mode": np.array(codes["interpolation_mode"]), "padding": np.array(codes["padding_mode"]),
                     "align": np.array(align_corners)}
    return make_model([node], [("x", np.float32, [n, c, h, w]), ("grid", np.float32, [n, hg, wg, 2])],
                      [("y", np.float32, [n, c, hg, wg])], initializers=constants, opset=11)


def feeds(shape, seed=0, align_corners=False, far_out=True, ties_outside=True):
    n, c, h, w, hg, wg = shape
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c, h, w), dtype=np.float32),
            make_grid(rng, (n, hg, wg, 2), (h, w), align_corners, far_out, ties_outside))


def run_form(model, form, inputs: dict) -> np.ndarray:
    """The output on ONNX Runtime; a plugin node's through the reference runner (its CPU reference), as
    validation runs it."""
    if form != "plugin":
        return run_ort(model, inputs)[0]
    with ReferenceRunner(model) as runner:
        return runner.infer(inputs)["y"]


def assert_matches_torch(model, x, grid, mode, padding, align_corners, grid_feed=None, form="decompose"):
    out = run_form(model, form, {"x": x, "grid": grid if grid_feed is None else grid_feed})
    expected = torch_grid_sample(x, grid, mode, padding, align_corners)
    if mode == "nearest":
        np.testing.assert_array_equal(out, expected)
    else:
        np.testing.assert_allclose(out, expected, atol=ATOL, rtol=0)


#: The spellings each form's sweep takes in turn, shape by shape: onnx leaves a GridSample-16 as it is.
SWEPT_SPELLINGS = {"decompose": ("GridSample", "aten", "mmdeploy"), "plugin": ("GridSample", "aten", "mmdeploy"),
                   "onnx": ("aten", "mmdeploy")}


@pytest.mark.parametrize("align_corners", (False, True))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ("decompose", "onnx", "plugin"))
def test_form_matches_torch_over_shapes(form, mode, padding, align_corners):
    """Every shape, with borders, ties and pixel centres; far-out coordinates too except for onnx (FAR_OUT),
    and for onnx nearest reflection no ties outside the image (see the test after this one). plugin: the
    node runs through its CPU reference, as validation runs it."""
    spellings = SWEPT_SPELLINGS[form]
    ties_outside = (form, mode, padding) != ("onnx", "nearest", "reflection")
    for index, shape in enumerate(SHAPES):
        model = sampler_model(spellings[index % len(spellings)], shape, mode, padding, align_corners)
        model, step = apply_pass(model, "grid-sample", mode=form)
        assert step.rewritten == ["sampler"]
        assert ("GridSample" in op_types(model)) == (form == "onnx")
        x, grid = feeds(shape, seed=index, align_corners=align_corners, far_out=form != "onnx",
                        ties_outside=ties_outside)
        assert_matches_torch(model, x, grid, mode, padding, align_corners, form=form)


def test_onnx_form_rounds_nearest_before_reflecting_unlike_torch():
    """ONNX's GridSample (ONNX Runtime and onnx.reference alike) rounds a nearest coordinate, then reflects it;
    torch reflects, then rounds. Reflected about a pixel edge (align_corners false), a tie outside the image
    gets another pixel: x = 1.4 of W = 5 is at 5.5, which ONNX rounds to 6 and reflects to 3, while torch
    reflects it to 3.5 and rounds to 4. decompose follows torch."""
    shape = (1, 1, 1, 5, 1, 1)
    x = np.arange(5, dtype=np.float32).reshape(shape[:4])
    grid = np.array([1.4, 0.0], np.float32).reshape(1, 1, 1, 2)
    assert torch_grid_sample(x, grid, "nearest", "reflection").item() == 4
    model = sampler_model("aten", shape, "nearest", "reflection", False)
    for form, pixel in (("onnx", 3), ("decompose", 4)):
        rewritten, _ = apply_pass(model, "grid-sample", mode=form)
        assert run_ort(rewritten, {"x": x, "grid": grid})[0].item() == pixel


@pytest.mark.parametrize("mode, padding, shape", [("bilinear", "zeros", SHAPES[1]), ("nearest", "border", SHAPES[1]),
                                                  ("bilinear", "reflection", SHAPES[1]),
                                                  ("bilinear", "zeros", SHAPES[-1])])
def test_decompose_output_is_opset11_only_and_valid(mode, padding, shape):
    model, _ = apply_pass(grid_sample_16(shape, mode, padding, False, opset=11), "grid-sample", mode="decompose")
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}[""] == 11
    ops = set(op_types(model))
    assert ops <= OPSET11_OPS and all(onnx.defs.get_schema(op, 11).since_version <= 11 for op in ops)
    assert "GridSample" not in ops
    assert ("MatMul" in ops) == (mode == "bilinear" and shape[1] >= MATMUL_MIN_CHANNELS)


@pytest.mark.parametrize("coords", [[[1e30, 0.2], [-1e30, -1e30], [np.inf, 0.0], [0.1, -np.inf]],
                                    [[np.nan, 0.0], [0.0, np.nan], [0.2, 0.1]]], ids=["far-out", "nan"])
def test_decompose_non_finite_coordinates(coords):
    """Results are finite and equal torch's, except where torch itself gives NaN (bilinear, zero padding:
    its weights become inf - inf or NaN): there the decomposition reads the zero border. A NaN must not
    reach Gather as an index: ORT would fail the whole run."""
    grid = np.array([[coords]], np.float32)
    shape = (1, 2, 3, 4, 1, grid.shape[2])
    x, _ = feeds(shape)
    for mode in MODES:
        for padding in PADDINGS:
            model, _ = apply_pass(grid_sample_16(shape, mode, padding, False), "grid-sample", mode="decompose")
            out = run_ort(model, {"x": x, "grid": grid})[0]
            expected = torch_grid_sample(x, grid, mode, padding)
            torch_nan = np.isnan(expected)
            assert np.isfinite(out).all()
            assert not torch_nan.any() or (mode, padding) == ("bilinear", "zeros")
            assert not out[torch_nan].any()
            np.testing.assert_allclose(out[~torch_nan], expected[~torch_nan], atol=ATOL, rtol=0)


#: torch's vectorised 2-D CPU kernel is compiled with fused multiply-adds on AVX2/AVX512 (the decomposition
#: emulates them); a build without them rounds twice, and the tests that depend on it would not apply.
TORCH_FMA = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
needs_torch_fma = pytest.mark.skipif(not TORCH_FMA, reason="torch's CPU kernel here is "
                                     f"{torch.backends.cpu.get_cpu_capability()}, not AVX2/AVX512 (fused multiply-adds)")


@needs_torch_fma
@pytest.mark.parametrize("align_corners", (False, True))
@pytest.mark.parametrize("mode", MODES)
def test_decompose_matches_torch_on_feature_map_sizes(mode, align_corners):
    """BEV feature-map sizes, where one rounding of (g + 1) * (size / 2) - 0.5 against two moves the pixel
    coordinate by an ulp that the image gradient makes larger than 1e-5 (up to 6e-5 when rounded twice).
    Uniform points in [-1.05, 1.05], a quarter of them replaced by rounding ties and pixel centres."""
    for index, (h, w) in enumerate(((64, 176), (200, 200))):
        shape = (1, 2, h, w, 40, 100)
        rng = np.random.default_rng(index)
        x = rng.standard_normal(shape[:4], dtype=np.float32)
        grid = rng.uniform(-1.05, 1.05, (1, 40, 100, 2)).astype(np.float32)
        flat = grid.reshape(-1)
        ties = np.concatenate([tie_coords(h, align_corners), tie_coords(w, align_corners)])
        flat[rng.choice(flat.size, flat.size // 4, replace=False)] = rng.choice(ties, flat.size // 4)
        for padding in PADDINGS:
            model, _ = apply_pass(grid_sample_16(shape, mode, padding, align_corners), "grid-sample", mode="decompose")
            assert_matches_torch(model, x, grid, mode, padding, align_corners)


@needs_torch_fma
@pytest.mark.parametrize("width, x_coord", [(97, -0.97938144), (194, -0.9896907), (257, -0.9922179)])
def test_decompose_nearest_picks_torchs_pixel_where_two_roundings_would_tie(width, x_coord):
    """(g + 1) * (W / 2) - 0.5 is 0.50000006 rounded once (pixel 1) but exactly 0.5 rounded twice (pixel 0)."""
    x = np.arange(width, dtype=np.float32).reshape(1, 1, 1, width)
    grid = np.array([x_coord, 0.0], np.float32).reshape(1, 1, 1, 2)
    for padding in PADDINGS:
        model, _ = apply_pass(grid_sample_16((1, 1, 1, width, 1, 1), "nearest", padding, False), "grid-sample",
                              mode="decompose")
        assert_matches_torch(model, x, grid, "nearest", padding, False)


#: Reflection of coordinates hundreds to millions of images away, where torch's fused remainder
#: |p| - flips * twice_span (and its fused unnormalise) differ from Mul then Sub by whole pixels.
FAR_REFLECTIONS = [326.68997, 1309.7401, -5000.123, 20000.5, 3e6, -3e6, 4.9123095e6, -3.2461672e6, -2.26e7,
                   -22565508.0]


@needs_torch_fma
@pytest.mark.parametrize("align_corners", (False, True))
@pytest.mark.parametrize("mode", MODES)
def test_decompose_reflects_far_out_coordinates_as_torch(mode, align_corners):
    grid = np.stack([np.array(FAR_REFLECTIONS, np.float32), np.zeros(len(FAR_REFLECTIONS), np.float32)], -1)
    grid = grid.reshape(1, 1, -1, 2)
    shape = (1, 1, 4, 100, 1, grid.shape[2])
    x = np.random.default_rng(0).standard_normal(shape[:4], dtype=np.float32)
    model, _ = apply_pass(grid_sample_16(shape, mode, "reflection", align_corners), "grid-sample", mode="decompose")
    assert_matches_torch(model, x, grid, mode, "reflection", align_corners)


def _double_ops(model) -> list[str]:
    """Nodes that compute in float64: Casts to double (the FMA emulation's way in)."""
    return [n.name for n in model.graph.node
            if n.op_type == "Cast" and helper.get_attribute_value(n.attribute[0]) == onnx.TensorProto.DOUBLE]


@pytest.mark.parametrize("target, params, float64", [("onnxruntime", {}, True), ("opset-11", {}, True),
                                                     ("tensorrt-8.5", {}, False),
                                                     ("onnxruntime", {"fma_emulation": "none"}, False),
                                                     ("opset-11", {"fma_emulation": "float64"}, True)])
def test_fma_emulation_follows_the_target(target, params, float64):
    """auto: float64 where the target runs float64 Cast/Mul/Sub; TensorRT has no float64."""
    shape = SHAPES[1]
    model, step = apply_pass(grid_sample_16(shape, "bilinear", "reflection", False, opset=11), "grid-sample",
                             target=target, mode="decompose", **params)
    assert bool(_double_ops(model)) == float64
    note = next(note for note in step.notes if note.startswith("fma_emulation"))
    assert note.startswith(f"fma_emulation {'float64' if float64 else 'none'}")
    assert ("auto: target" in note) == (not params)
    x, grid = feeds(shape, seed=2)
    assert_matches_torch(model, x, grid, "bilinear", "reflection", False)  # tiny maps: both roundings agree


def test_fma_emulation_float64_is_refused_where_the_target_has_no_float64():
    """When the recipe loads, and by the step of a Recipe whose target was changed in code after that: the
    same message, naming the step and the parameter."""
    model = grid_sample_16(SHAPES[1], "bilinear", "zeros", False, opset=11)
    params = {"mode": "decompose", "fma_emulation": "float64"}
    why = (r"step 1 \(grid-sample\): parameter 'fma_emulation' of pass 'grid-sample': 'float64' needs float64 .* "
           "'tensorrt-8.5' lacks")
    with pytest.raises(RecipeError, match=why):
        apply_pass(model, "grid-sample", target="tensorrt-8.5", **params)
    recipe = load_recipe({"name": "x", "steps": [{"pass": "grid-sample", "with": params}]})
    recipe.target = "tensorrt-8.5"
    with pytest.raises(SurgeonError, match=why):
        run_steps(model, recipe)


@pytest.mark.parametrize("pass_name", ("grid-sample", "grid-sample-3d"))
@pytest.mark.parametrize("opset", (11, 13))
def test_decompose_float64_loads_and_runs_in_onnxruntime(pass_name, opset):
    """ONNX Runtime has Clip-11 for float32 only: below opset 12 other dtypes clip with Max and Min."""
    spatial = (3, 4, 5) if pass_name == "grid-sample-3d" else (4, 5)
    x_shape, grid_shape = (1, 2, *spatial), (1, *(3,) * len(spatial), len(spatial))
    node = helper.make_node("grid_sampler", ["x", "grid"], ["y"], name="mm", domain="mmdeploy", interpolation_mode=0,
                            padding_mode=1, align_corners=0)
    model = make_model([node], [("x", np.float64, list(x_shape)), ("grid", np.float64, list(grid_shape))],
                       [("y", np.float64, None)], opset=opset)
    decomposed, step = apply_pass(model, pass_name, mode="decompose")
    assert step.rewritten == ["mm"]
    onnx.checker.check_model(decomposed)
    assert ("Clip" in op_types(decomposed)) == (opset >= 12)
    rng = np.random.default_rng(opset)
    x, grid = rng.standard_normal(x_shape), rng.uniform(-1.2, 1.2, grid_shape)
    # torch's float64 kernel fuses its multiply-adds too; float64 ops round twice: ~1 ulp of double apart
    np.testing.assert_allclose(run_ort(decomposed, {"x": x, "grid": grid})[0],
                               torch_grid_sample(x, grid, "bilinear", "border"), atol=1e-12, rtol=0)


@pytest.mark.parametrize("opset", (11, 13))
def test_aten_export_decompose_and_onnx(opset):
    shape = (1, 3, 4, 5, 6, 7)
    x, grid = feeds(shape, seed=opset, align_corners=True, far_out=False)
    exported = aten_export(opset, "bilinear", "border", True)
    assert [n.op_type for n in exported.graph.node if n.op_type == "ATen"] == ["ATen"]
    aten_name = next(n.name for n in exported.graph.node if n.op_type == "ATen")

    decomposed, step = apply_pass(exported, "grid-sample", mode="decompose")
    assert step.rewritten == [aten_name]
    assert set(op_types(decomposed)) <= OPSET11_OPS
    assert_matches_torch(decomposed, x, grid, "bilinear", "border", True)

    standard, step = apply_pass(exported, "grid-sample", mode="onnx")
    assert step.rewritten == [aten_name] and op_types(standard) == ["GridSample"]
    assert {o.domain: o.version for o in standard.opset_import}[""] == 16
    assert any("opset to 16" in note for note in step.notes)
    onnx.checker.check_model(standard)
    assert_matches_torch(standard, x, grid, "bilinear", "border", True)
    assert standard.graph.output[0].name == "y"



def calling_a_local_function(sampler: onnx.NodeProto, x_shape, grid_shape, function_body=None) -> onnx.ModelProto:
    """x -> custom::Twice (a local function, x + x by default) -> `sampler`(., grid) -> y, at opset 11."""
    body = function_body or [helper.make_node("Add", ["a", "a"], ["b"])]
    twice = helper.make_function("custom", "Twice", ["a"], ["b"], body, [helper.make_opsetid("", 11)],
                                 attributes=["where"] if function_body else [])
    call = helper.make_node("Twice", ["x"], ["x2"], name="twice", domain="custom")
    model = make_model([call, sampler], [("x", np.float32, list(x_shape)), ("grid", np.float32, list(grid_shape))],
                       [("y", np.float32, None)], opset=11, extra_opsets={"custom": 1},
                       initializers={"mode": np.array(0), "padding": np.array(0), "align": np.array(False)})
    model.functions.append(twice)
    return model


def test_onnx_mode_keeps_local_functions_when_it_raises_the_opset():
    """The version converter drops local functions; the opset raise converts them as set-opset does."""
    sampler = helper.make_node("ATen", ["x2", "grid", "mode", "padding", "align"], ["y"], name="aten",
                               domain="org.pytorch.aten", operator="grid_sampler")
    shape = (1, 2, 4, 4, 3, 3)
    model = calling_a_local_function(sampler, shape[:4], (1, 3, 3, 2))
    out, step = apply_pass(model, "grid-sample", mode="onnx")
    assert step.rewritten == ["aten"] and op_types(out) == ["Twice", "GridSample"]
    (function,) = out.functions
    assert (function.domain, function.name) == ("custom", "Twice")
    assert {o.domain: o.version for o in function.opset_import}[""] == 16
    onnx.checker.check_model(out, full_check=True)
    x, grid = feeds(shape, seed=11, far_out=False)
    np.testing.assert_allclose(run_ort(out, {"x": x, "grid": grid})[0], torch_grid_sample(x + x, grid),
                               atol=ATOL, rtol=0)


def test_onnx_mode_refuses_a_local_function_the_converter_cannot_convert():
    unsqueeze = helper.make_node("Unsqueeze", ["a"], ["u"])
    unsqueeze.attribute.append(onnx.AttributeProto(name="axes", ref_attr_name="where", type=onnx.AttributeProto.INTS))
    body = [unsqueeze, helper.make_node("Squeeze", ["u"], ["b"], axes=[0])]
    sampler = helper.make_node("ATen", ["x2", "grid", "mode", "padding", "align"], ["y"], name="aten",
                               domain="org.pytorch.aten", operator="grid_sampler")
    model = calling_a_local_function(sampler, (1, 2, 4, 4), (1, 3, 3, 2), function_body=body)
    model.graph.node[0].attribute.append(helper.make_attribute("where", [0]))
    with pytest.raises(SurgeonError, match="GridSample needs opset 16: cannot convert local function custom::Twice "
                                           ".* use mode decompose"):
        apply_pass(model, "grid-sample", mode="onnx")

def test_aten_nearest_export():
    shape = (1, 3, 4, 5, 6, 7)
    x, grid = feeds(shape, seed=5)
    model, _ = apply_pass(aten_export(11, "nearest", "zeros", False), "grid-sample", mode="decompose")
    assert_matches_torch(model, x, grid, "nearest", "zeros", False)


def test_opset20_linear_spelling():
    shape = SHAPES[1]
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="sampler20", mode="linear",
                            padding_mode="zeros", align_corners=0)
    n, c, h, w, hg, wg = shape
    model = make_model([node], [("x", np.float32, [n, c, h, w]), ("grid", np.float32, [n, hg, wg, 2])],
                       [("y", np.float32, [n, c, hg, wg])], opset=20)
    x, grid = feeds(shape, seed=3)
    decomposed, step = apply_pass(model, "grid-sample", mode="decompose")
    assert step.rewritten == ["sampler20"]
    assert_matches_torch(decomposed, x, grid, "bilinear", "zeros", False)
    unchanged, step = apply_pass(model, "grid-sample", mode="onnx")
    assert step.rewritten == [] and unchanged.graph.node[0].attribute == model.graph.node[0].attribute


def test_mmdeploy_spelling():
    shape = SHAPES[1]
    n, c, h, w, hg, wg = shape
    node = helper.make_node("grid_sampler", ["x", "grid"], ["y"], name="mm", domain="mmdeploy",
                            interpolation_mode=1, padding_mode=1, align_corners=1)
    model = make_model([node], [("x", np.float32, [n, c, h, w]), ("grid", np.float32, [n, hg, wg, 2])],
                       [("y", np.float32, [n, c, hg, wg])], opset=11)
    x, grid = feeds(shape, seed=4, align_corners=True, far_out=False)
    for mode in ("decompose", "onnx"):
        out, step = apply_pass(model, "grid-sample", mode=mode)
        assert step.rewritten == ["mm"]
        assert_matches_torch(out, x, grid, "nearest", "border", True)


@pytest.mark.parametrize("op_type", ("GridSampler2DTRT", "GridSampler2DTRT2"))
def test_bevformer_tensorrt_spelling(op_type):
    """BEVFormer_tensorrt's wrapper: grid fed as [N,2,Hg,Wg] * 10; forward does permute(0,2,3,1) / 10."""
    shape = SHAPES[1]
    n, c, h, w, hg, wg = shape
    node = helper.make_node(op_type, ["x", "grid10"], ["y"], name="trt", interpolation_mode=0, padding_mode=0,
                            align_corners=0)
    model = make_model([node], [("x", np.float32, [n, c, h, w]), ("grid10", np.float32, [n, 2, hg, wg])],
                       [("y", np.float32, [n, c, hg, wg])], opset=11)
    x, grid = feeds(shape, seed=6, far_out=False)
    grid10 = np.ascontiguousarray(grid.transpose(0, 3, 1, 2) * np.float32(10))
    wrapper_grid = (torch.from_numpy(grid10).permute(0, 2, 3, 1) / 10).numpy()
    for mode in ("decompose", "onnx"):
        out, step = apply_pass(model, "grid-sample", mode=mode)
        assert step.rewritten == ["trt"]
        result = run_ort(out, {"x": x, "grid10": grid10})[0]
        np.testing.assert_allclose(result, torch_grid_sample(x, wrapper_grid), atol=ATOL, rtol=0)


def test_plugin_node_contract():
    exported = aten_export(11, "nearest", "reflection", True)
    model, step = apply_pass(exported, "grid-sample", mode="plugin", plugin_version="2")
    onnx.checker.check_model(model)
    (node,) = [n for n in model.graph.node if n.op_type == "GridSample2D"]
    assert op_types(model) == ["GridSample2D"] and node.domain == "surgeon"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_version": b"2", "plugin_namespace": b"surgeon", "interpolation_mode": 1,
                     "padding_mode": 2, "align_corners": 1}
    assert list(node.input) == ["x", "grid"] and list(node.output) == ["y"]
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims == [1, 3, 6, 7]
    assert step.rewritten == [next(n.name for n in exported.graph.node if n.op_type == "ATen")]


def test_plugin_node_runs_through_the_plugin_reference():
    """The emitted node is what the GridSample2D spec's CPU reference (used by validation) expects."""
    reference = find_reference("GridSample2D", "surgeon")
    if reference is None:
        pytest.skip("no CPU reference registered for surgeon::GridSample2D (surgeon.plugins.specs)")
    shape = (1, 3, 4, 5, 6, 7)
    x, grid = feeds(shape, seed=8, align_corners=True)
    model, _ = apply_pass(aten_export(11, "bilinear", "border", True), "grid-sample", mode="plugin")
    (node,) = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    (out,) = reference([x, grid], attrs)
    np.testing.assert_allclose(out, torch_grid_sample(x, grid, "bilinear", "border", True), atol=ATOL, rtol=0)


def test_plugin_from_trt_spelling_standardises_the_grid():
    n, c, h, w, hg, wg = SHAPES[1]
    node = helper.make_node("GridSampler2DTRT", ["x", "grid10"], ["y"], name="trt", interpolation_mode=0,
                            padding_mode=1, align_corners=0)
    model = make_model([node], [("x", np.float32, [n, c, h, w]), ("grid10", np.float32, [n, 2, hg, wg])],
                       [("y", np.float32, [n, c, hg, wg])], opset=11)
    out, _ = apply_pass(model, "grid-sample", mode="plugin", plugin_op="MyGridSample", plugin_namespace="acme")
    assert op_types(out) == ["Transpose", "Div", "MyGridSample"]
    plugin = out.graph.node[-1]
    assert plugin.domain == "acme"
    assert {a.name: helper.get_attribute_value(a) for a in plugin.attribute}["padding_mode"] == 1


@pytest.mark.parametrize("op_type", ("GridSampler2DTRT", "GridSampler2DTRT2"))
@pytest.mark.parametrize("plugin_op", ("GridSample2D", "MyGridSample"))
def test_plugin_from_trt_spelling_gives_an_intermediate_output_its_shape(op_type, plugin_op):
    """The sampler's output is read by another node and declared nowhere: the plugin output still gets
    [N, C, Hg, Wg] (from the standardised grid), and so does what follows it; from the spec's rule, or for
    a plugin no spec describes, from grid-sample's."""
    n, c, h, w, hg, wg = SHAPES[1]
    nodes = [helper.make_node(op_type, ["x", "grid10"], ["y"], name="trt"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    model = make_model(nodes, [("x", np.float32, [n, c, h, w]), ("grid10", np.float32, [n, 2, hg, wg])],
                       [("z", np.float32, None)], opset=11)
    out, _ = apply_pass(model, "grid-sample", mode="plugin", plugin_op=plugin_op)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*out.graph.value_info, *out.graph.output] if v.type.tensor_type.HasField("shape")}
    assert shapes["y"] == shapes["z"] == [n, c, hg, wg]


@pytest.mark.parametrize("plugin_op, namespace, label", [
    ("GridSampler2DTRT", "", "'GridSampler2DTRT'"),  # a BEVFormer_tensorrt user's settings
    ("GridSampler2DTRT", "surgeon", "'GridSampler2DTRT'"),  # the op type names that contract in any namespace
    ("GridSampler3DTRT2", "surgeon", "'GridSampler3DTRT2'"),
    ("GridSample", "", "'GridSample'"),
    ("grid_sampler", "mmdeploy", "'mmdeploy::grid_sampler'"),
])
def test_plugin_op_the_pass_reads_as_input_is_refused_at_its_recipe_line(tmp_path, plugin_op, namespace, label):
    """Such a node would be misread (BEVFormer_tensorrt's grid is [N,2,Hg,Wg] x 10) or rewritten by every run."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: r\ntarget: tensorrt-8.6\nsteps:\n  - pass: grid-sample\n    with:\n      mode: plugin\n"
                      f"      plugin_op: {plugin_op}\n      plugin_namespace: '{namespace}'\n")
    with pytest.raises(SurgeonError, match=rf"recipe.yaml:7:.*parameter 'plugin_op' of pass 'grid-sample': "
                                           rf"{label} is an input spelling of grid-sample"):
        load_recipe(recipe)


@pytest.mark.parametrize("plugin_op, namespace", [("GridSample2D", ""), ("grid_sampler", "surgeon"),
                                                   ("MyGridSample", "acme"), ("GridSample2D", "acme")])
def test_plugin_op_of_the_plugin_contract_is_accepted(plugin_op, namespace):
    """The spec's op in either domain, and op types the pass does not read (mmdeploy's TensorRT plugin is
    grid_sampler, with the spec's contract; the pass reads it in the mmdeploy domain only). GridSample2D in
    another namespace is a plugin of the user's own, which make_plugin_node takes in any domain."""
    out, _ = apply_pass(aten_export(11), "grid-sample", mode="plugin", plugin_op=plugin_op,
                        plugin_namespace=namespace)
    assert [(n.op_type, n.domain) for n in out.graph.node] == [(plugin_op, namespace)]
    assert {a.name: a.s for a in out.graph.node[0].attribute}["plugin_namespace"] == namespace.encode()
    assert apply_pass(out, "grid-sample", mode="plugin", plugin_op=plugin_op,
                      plugin_namespace=namespace)[1].rewritten == []


def narrow_padding_modes(monkeypatch, op_type: str) -> None:
    """Register `op_type` as GridSample2D's spec with padding_mode zeros and border only."""
    spec = specs.get_spec("GridSample2D")
    narrowed = tuple(dataclasses.replace(a, choices=(0, 1)) if a.name == "padding_mode" else a for a in spec.attrs)
    monkeypatch.setitem(specs._SPECS, op_type, dataclasses.replace(spec, name=op_type, attrs=narrowed))


@pytest.mark.parametrize("plugin_op", ("GridSample2D", "AcmeGridSample"))
def test_plugin_node_is_checked_against_the_spec_of_its_op_type(monkeypatch, plugin_op):
    """Where a spec has the op type, make_plugin_node builds the node, so that spec's attribute check applies:
    one whose padding_mode takes zeros and border only refuses a reflection site."""
    narrow_padding_modes(monkeypatch, plugin_op)
    with pytest.raises(SurgeonError, match=rf"plugin {plugin_op}: attribute 'padding_mode' must be one of \(0, 1\), "
                                           r"got 2"):
        apply_pass(aten_export(11, padding="reflection"), "grid-sample", mode="plugin", plugin_op=plugin_op)


def test_a_plugin_op_no_spec_describes_is_named_after_itself_and_not_checked_against_gridsample2d(monkeypatch):
    """The user's own plugin: GridSample2D's spec (narrowed here) does not judge it, and the node's name says
    its op type; the output is still grid-sample's [N, C, Hg, Wg]."""
    narrow_padding_modes(monkeypatch, "GridSample2D")
    exported = aten_export(11, padding="reflection")
    out, step = apply_pass(exported, "grid-sample", mode="plugin", plugin_op="MyGridSample")
    (node,) = out.graph.node
    assert (node.op_type, node.name) == ("MyGridSample", f"{step.rewritten[0]}/MyGridSample")
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute}["padding_mode"] == 2


def test_plugin_op_of_another_spec_is_refused_at_its_recipe_line(tmp_path):
    """Rotate's spec would check the node (and validation run it) as a rotation."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: r\nsteps:\n  - pass: grid-sample\n    with: {mode: plugin, plugin_op: Rotate}\n")
    with pytest.raises(SurgeonError, match=r"recipe.yaml:4:.*'plugin_op' of pass 'grid-sample': 'Rotate' is the "
                                           r"plugin spec Rotate \(inputs input, angle, center; attributes "
                                           r"interpolation_mode\), not grid-sample's contract"):
        load_recipe(recipe)


@pytest.mark.parametrize("mode", ("decompose", "onnx", "plugin"))
def test_second_run_changes_nothing(mode):
    once, _ = apply_pass(aten_export(11), "grid-sample", mode=mode)
    twice, step = apply_pass(once, "grid-sample", mode=mode)
    assert step.rewritten == []
    assert op_types(twice) == op_types(once)


def test_graph_without_grid_sampling_is_unchanged():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2, 3])],
                       [("y", np.float32, [2, 3])])
    out, step = apply_pass(model, "grid-sample", mode="decompose")
    assert step.rewritten == [] and op_types(out) == ["Relu"]


def test_bicubic_is_kept_by_onnx_and_refused_by_decompose_and_plugin():
    model = grid_sample_16(SHAPES[1], "bicubic", "zeros", False)
    assert apply_pass(model, "grid-sample", mode="onnx")[1].rewritten == []
    for mode in ("decompose", "plugin"):
        with pytest.raises(SurgeonError, match=f"node 'sampler': bicubic is not supported by {mode}; use mode onnx"):
            apply_pass(model, "grid-sample", mode=mode)


def test_a_refused_site_leaves_the_graph_untouched():
    """Every site is checked before the first one is rewritten."""
    n, c, h, w, hg, wg = SHAPES[1]
    nodes = [helper.make_node("GridSample", ["x", "grid"], ["y1"], name="fine"),
             helper.make_node("GridSample", ["x", "grid"], ["y2"], name="cubic", mode="bicubic")]
    model = make_model(nodes, [("x", np.float32, [n, c, h, w]), ("grid", np.float32, [n, hg, wg, 2])],
                       [("y1", np.float32, None), ("y2", np.float32, None)], opset=16)
    graph = gs.import_onnx(model)
    with pytest.raises(SurgeonError, match="node 'cubic'"):
        GridSamplePass(mode="decompose").run(graph, Context(target=load_target("onnxruntime")))
    assert [node.op for node in graph.nodes] == ["GridSample", "GridSample"]


def test_aten_grid_sampler_2d_built_by_hand():
    """aten::grid_sampler_2d (same inputs as grid_sampler), constants as initializers, no overload_name."""
    n, c, h, w, hg, wg = SHAPES[1]
    node = helper.make_node("ATen", ["x", "grid", "mode", "padding", "align"], ["y"], name="aten2d",
                            domain="org.pytorch.aten", operator="grid_sampler_2d")
    model = make_model([node], [("x", np.float32, [n, c, h, w]), ("grid", np.float32, [n, hg, wg, 2])],
                       [("y", np.float32, [n, c, hg, wg])], opset=11,
                       initializers={"mode": np.array(1), "padding": np.array(2), "align": np.array(False)})
    x, grid = feeds(SHAPES[1], seed=9)
    out, step = apply_pass(model, "grid-sample", mode="decompose")
    assert step.rewritten == ["aten2d"]
    assert_matches_torch(out, x, grid, "nearest", "reflection", False)


@pytest.mark.parametrize("mode, channels", [("bilinear", 3), ("nearest", 3), ("bilinear", MATMUL_MIN_CHANNELS)])
def test_decompose_with_dynamic_batch(mode, channels):
    """A symbolic batch: the batch offsets come from Shape and Range at run time."""
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="sampler", mode=mode)
    model = make_model([node], [("x", np.float32, ["n", channels, 4, 5]), ("grid", np.float32, ["n", 6, 7, 2])],
                       [("y", np.float32, None)], opset=16)
    decomposed, step = apply_pass(model, "grid-sample", mode="decompose")
    assert step.rewritten == ["sampler"] and "Range" in op_types(decomposed)
    for batch in (1, 3):
        x, grid = feeds((batch, channels, 4, 5, 6, 7), seed=batch)
        assert_matches_torch(decomposed, x, grid, mode, "zeros", False)


@pytest.mark.parametrize("channels", [3, MATMUL_MIN_CHANNELS + 2])
@pytest.mark.parametrize("grid_size", [(1, 0), (0, 3)])
def test_decompose_of_an_empty_grid_gives_torchs_empty_output(grid_size, channels):
    """The MatMul blend's Reshapes name C: ONNX Runtime cannot infer -1 in an empty tensor."""
    shape = (1, channels, 3, 2) + grid_size
    model, step = apply_pass(grid_sample_16(shape, "bilinear", "zeros", False, opset=11), "grid-sample",
                             mode="decompose")
    assert step.rewritten == ["sampler"]
    x, grid = feeds(shape)
    out = run_ort(model, {"x": x, "grid": grid})[0]
    assert out.shape == torch_grid_sample(x, grid).shape == (1, channels) + grid_size


ZOO = Path(__file__).resolve().parent / "data" / "zoo"


def zoo_fixture(name):
    path = ZOO / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"zoo fixture {path} is missing (python -m surgeon.zoo.regenerate writes it)")
    return onnx.load(path), dict(np.load(ZOO / f"{name}.inputs.npz"))


def run_recipe_steps(model, steps, target="onnxruntime"):
    recipe = load_recipe({"name": "zoo", "target": target, "checker": False, "steps": steps})
    graph, records = run_steps(model, recipe)
    return finish_graph(graph, model, recipe, records), records[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name, before", [("bevformer-tiny.fixture.opset11-aten", []),
                                          ("sparse4d-head.fixture.opset11-aten", [{"pass": "fold-constants"}])])
def test_real_exported_models(name, before):
    """torch's own ATen exports of BEVFormer-tiny (13 grid_sampler nodes) and the Sparse4D head (24, whose
    input shapes come from Shape/Concat chains: fold-constants first). decompose vs native GridSample on
    the same graph isolates this pass. ONNX Runtime's GridSample rounds the unnormalise twice, as
    fma_emulation none does: atol 1e-5 (observed identical). The default rounds once, as torch; the ulp
    that moves some coordinates grows through the decoder layers after them: atol 2e-5 (observed 1.5e-5)."""
    model, inputs = zoo_fixture(name)
    sites = sum(n.op_type == "ATen" for n in model.graph.node)
    native, step = run_recipe_steps(model, before + [{"pass": "grid-sample", "with": {"mode": "onnx"}}])
    assert len(step.rewritten) == sites
    expected = run_ort(native, inputs)
    for fma_emulation, atol in (("none", ATOL), ("auto", 2 * ATOL)):
        decomposed, step = run_recipe_steps(
            model, before + [{"pass": "grid-sample", "with": {"mode": "decompose", "fma_emulation": fma_emulation}}],
            target="opset-11")
        assert len(step.rewritten) == sites and "GridSample" not in op_types(decomposed)
        onnx.checker.check_model(decomposed)
        for got, want in zip(run_ort(decomposed, inputs), expected):
            np.testing.assert_allclose(got, want, atol=atol, rtol=0)


def test_decompose_needs_static_spatial_size():
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="sampler")
    model = make_model([node], [("x", np.float32, [1, 3, "h", "w"]), ("grid", np.float32, [1, 6, 7, 2])],
                       [("y", np.float32, None)], opset=16)
    with pytest.raises(SurgeonError, match="node 'sampler': decompose needs a static spatial size .* run "
                                           "fold-constants"):
        apply_pass(model, "grid-sample", mode="decompose")


@pytest.mark.parametrize("target, form", [("onnxruntime", "onnx"), ("tensorrt-8.5", "onnx"),
                                          ("tensorrt-10", "onnx"), ("opset-11", "decompose")])
def test_auto_mode_follows_the_target(target, form):
    assert choose_form(load_target(target)) == form
    model, step = apply_pass(aten_export(11), "grid-sample", target=target)
    assert ("GridSample" in op_types(model)) == (form == "onnx")
    assert f"mode auto chose '{form}'" in " ".join(step.notes)


#: The tie of test_onnx_form_rounds_nearest_before_reflecting_unlike_torch: x = 1.4 of W = 5 is pixel 5.5.
TIE_SHAPE = (1, 1, 1, 5, 1, 1)
TIE_FEEDS = {"x": np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5),
             "grid": np.array([1.4, 0.0], np.float32).reshape(1, 1, 1, 2)}


@pytest.mark.parametrize("spelling", ("aten", "mmdeploy", "GridSample"))
def test_auto_on_onnx_runtime_decomposes_the_sites_whose_ties_differ_from_torch(spelling):
    """nearest, reflection, align_corners 0: auto gives torch's pixel (4, not GridSample's 3), a GridSample-16
    node too, and says why."""
    model = sampler_model(spelling, TIE_SHAPE, "nearest", "reflection", False)
    rewritten, step = apply_pass(model, "grid-sample", target="onnxruntime")
    assert step.rewritten == ["sampler"] and "GridSample" not in op_types(rewritten)
    assert run_ort(rewritten, TIE_FEEDS)[0].item() == torch_grid_sample(**TIE_FEEDS, mode="nearest",
                                                                        padding="reflection").item() == 4
    notes = " ".join(step.notes)
    assert "mode auto chose 'decompose' for sampler: nearest with reflection padding and align_corners 0" in notes
    assert "mode auto chose 'onnx'" not in notes and "fma_emulation float64" in notes
    # no GridSample is written, so an opset-11 graph is not raised to 16
    opsets = [{o.domain: o.version for o in m.opset_import}[""] for m in (model, rewritten)]
    assert opsets[0] == opsets[1] and "raised" not in notes


@pytest.mark.parametrize("padding, align_corners", [("reflection", False), ("reflection", True), ("zeros", False),
                                                    ("border", True)])
def test_auto_on_onnx_runtime_keeps_bilinear_gridsample(padding, align_corners):
    model, step = apply_pass(sampler_model("aten", SHAPES[1], "bilinear", padding, align_corners), "grid-sample",
                             target="onnxruntime")
    assert op_types(model) == ["GridSample"]
    assert step.notes[-1] == "mode auto chose 'onnx' for target onnxruntime"


@pytest.mark.parametrize("spelling", ("aten", "mmdeploy", "GridSample"))
@pytest.mark.parametrize("padding, align_corners", [("zeros", False), ("border", True), ("reflection", True)])
def test_auto_on_onnx_runtime_decomposes_nearest_sites_for_speed(spelling, padding, align_corners):
    """ONNX Runtime's nearest GridSample kernel is about ten times slower than the decomposition (docs: Speed):
    auto decomposes nearest sites whose ties GridSample gets right too, equal to torch, and says why; the
    opset stays. TensorRT's kernel is unmeasured: auto keeps GridSample there."""
    model = sampler_model(spelling, SHAPES[4], "nearest", padding, align_corners)
    rewritten, step = apply_pass(model, "grid-sample", target="onnxruntime")
    assert step.rewritten == ["sampler"] and "GridSample" not in op_types(rewritten)
    x, grid = feeds(SHAPES[4], seed=7, align_corners=align_corners)
    np.testing.assert_array_equal(run_ort(rewritten, {"x": x, "grid": grid})[0],
                                  torch_grid_sample(x, grid, "nearest", padding, align_corners))
    notes = " ".join(step.notes)
    assert (f"mode auto chose 'decompose' for sampler: ONNX Runtime's nearest GridSample kernel is "
            f"{ORT_NEAREST_SLOWDOWN} slower than the decomposition here; mode onnx keeps it") in notes
    assert "mode auto chose 'onnx'" not in notes and "fma_emulation float64" in notes
    opsets = [{o.domain: o.version for o in m.opset_import}[""] for m in (model, rewritten)]
    assert opsets[0] == opsets[1]
    on_tensorrt, _ = apply_pass(model, "grid-sample", target="tensorrt-10")
    assert op_types(on_tensorrt) == ["GridSample"]


def test_auto_on_onnx_runtime_decomposes_only_the_sites_whose_ties_differ():
    """A bilinear and a nearest reflection sampler in one opset-11 graph: GridSample (opset raised to 16)
    and the decomposition side by side, each equal to torch."""
    n, c, h, w, hg, wg = SHAPES[1]
    codes = {"bilinear": (0, 0), "nearest": (1, 2)}
    nodes = [helper.make_node("ATen", ["x", "grid", f"{name}_mode", f"{name}_padding", "align"], [f"y_{name}"],
                              name=name, domain="org.pytorch.aten", operator="grid_sampler") for name in codes]
    constants = {f"{name}_{what}": np.array(code) for name, pair in codes.items()
                 for what, code in zip(("mode", "padding"), pair)}
    model = make_model(nodes, [("x", np.float32, [n, c, h, w]), ("grid", np.float32, [n, hg, wg, 2])],
                       [(f"y_{name}", np.float32, [n, c, hg, wg]) for name in codes], opset=11,
                       initializers={**constants, "align": np.array(False)})
    rewritten, step = apply_pass(model, "grid-sample", target="onnxruntime")
    onnx.checker.check_model(rewritten)
    assert sorted(step.rewritten) == ["bilinear", "nearest"] and op_types(rewritten).count("GridSample") == 1
    x, grid = feeds(SHAPES[1], seed=3, far_out=False)
    bilinear, nearest = run_ort(rewritten, {"x": x, "grid": grid})
    np.testing.assert_allclose(bilinear, torch_grid_sample(x, grid), atol=ATOL, rtol=0)
    np.testing.assert_array_equal(nearest, torch_grid_sample(x, grid, "nearest", "reflection"))


@pytest.mark.parametrize("target, mode, runtimes", [("onnxruntime", "onnx", "ONNX Runtime and onnx.reference"),
                                                    ("tensorrt-10", "auto", "TensorRT's kernel not checked")])
def test_gridsample_whose_ties_differ_from_torch_is_noted(target, mode, runtimes):
    """mode onnx anywhere, and auto on TensorRT (whose kernel is unchecked), keep GridSample: a note names each
    such node, rewritten or already standard, and the mode that follows torch."""
    n, c, h, w, hg, wg = SHAPES[1]
    nodes = [helper.make_node("GridSample", ["x", "grid"], ["y1"], name="kept", mode="nearest",
                              padding_mode="reflection"),
             helper.make_node("GridSample", ["x", "grid"], ["y2"], name="torch_like", mode="nearest",
                              padding_mode="reflection", align_corners=1),
             helper.make_node("grid_sampler", ["x", "grid"], ["y3"], name="mmdeploy", domain="mmdeploy",
                              interpolation_mode=1, padding_mode=2, align_corners=0)]
    model = make_model(nodes, [("x", np.float32, [n, c, h, w]), ("grid", np.float32, [n, hg, wg, 2])],
                       [(name, np.float32, [n, c, hg, wg]) for name in ("y1", "y2", "y3")], opset=16)
    rewritten, step = apply_pass(model, "grid-sample", target=target, mode=mode)
    assert step.rewritten == ["mmdeploy"] and op_types(rewritten) == ["GridSample"] * 3
    (note,) = [text for text in step.notes if "rounds a coordinate before reflecting it" in text]
    assert note.startswith("kept, mmdeploy/GridSample: GridSample nearest with reflection padding and "
                           "align_corners 0, where ONNX's GridSample rounds a coordinate before reflecting it and "
                           "torch after")
    assert note.endswith(f"({runtimes}); mode decompose follows torch exactly")


@pytest.mark.parametrize("padding", ("reflection", "zeros"))
def test_auto_on_onnx_runtime_keeps_nearest_gridsample_where_decompose_cannot(padding):
    """A dynamic spatial size: decompose cannot, so the site becomes GridSample, with the note where its
    ties differ from torch's."""
    node = helper.make_node("grid_sampler", ["x", "grid"], ["y"], name="sampler", domain="mmdeploy",
                            interpolation_mode=1, padding_mode=PADDING_CODES.index(padding), align_corners=0)
    model = make_model([node], [("x", np.float32, [1, 3, "h", "w"]), ("grid", np.float32, [1, 6, 7, 2])],
                       [("y", np.float32, None)], opset=16)
    rewritten, step = apply_pass(model, "grid-sample", target="onnxruntime")
    assert op_types(rewritten) == ["GridSample"] and step.rewritten == ["sampler"]
    assert "mode auto chose 'onnx' for target onnxruntime" in step.notes
    tie_noted = any(text.endswith("mode decompose follows torch exactly") for text in step.notes)
    assert tie_noted == (padding == "reflection")


@pytest.mark.parametrize("shape", [(0, 2, 3, 4, 2, 2), (1, 0, 3, 4, 2, 2), (0, MATMUL_MIN_CHANNELS, 3, 4, 2, 2)],
                         ids=["no-batch", "no-channels", "no-batch-matmul"])
@pytest.mark.parametrize("form", ("decompose", "onnx", "plugin"))
def test_empty_batch_or_channels_give_torchs_empty_output(form, shape):
    """plugin through its CPU reference, which failed to reshape an empty input before."""
    for mode in MODES:
        model, _ = apply_pass(sampler_model("aten", shape, mode, "zeros", False), "grid-sample", mode=form)
        x, grid = feeds(shape)
        out = run_form(model, form, {"x": x, "grid": grid})
        assert out.shape == torch_grid_sample(x, grid, mode).shape == shape[:2] + shape[4:]


def typed_sampler(spelling: str, dtype, opset: int, x_shape=(1, 2, 4, 5)) -> onnx.ModelProto:
    """One bilinear, border-padded sampler named 'sampler' on `dtype` x and grid [N,3,3,2] (GridSample spelt
    for `opset`)."""
    grid_shape = [x_shape[0], 3, 3, 2]
    if spelling == "GridSample":
        node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="sampler", padding_mode="border",
                                mode="linear" if opset >= 20 else "bilinear")
        constants = {}
    elif spelling == "mmdeploy":
        node = helper.make_node("grid_sampler", ["x", "grid"], ["y"], name="sampler", domain="mmdeploy",
                                interpolation_mode=0, padding_mode=1, align_corners=0)
        constants = {}
    else:
        node = helper.make_node("ATen", ["x", "grid", "mode", "padding", "align"], ["y"], name="sampler",
                                domain="org.pytorch.aten", operator="grid_sampler")
        constants = {"mode": np.array(0), "padding": np.array(1), "align": np.array(False)}
    return make_model([node], [("x", dtype, list(x_shape)), ("grid", dtype, grid_shape)], [("y", dtype, None)],
                      initializers=constants, opset=opset)


@pytest.mark.parametrize("spelling, opset, kept", [("aten", 13, False), ("mmdeploy", 11, False),
                                                   ("GridSample", 16, False), ("GridSample", 20, True),
                                                   ("aten", 20, True)])
def test_auto_decomposes_a_float64_site_where_the_target_has_no_float64_gridsample(spelling, opset, kept):
    """ONNX Runtime's profile has float64 GridSample from version 20 only: below opset 20 auto decomposes a
    float64 site (GridSample-16 would not load: NOT_IMPLEMENTED), the opset kept and why noted; from 20 it
    writes or keeps GridSample. Either way ONNX Runtime runs the result, equal to torch's float64 kernel."""
    model = typed_sampler(spelling, np.float64, opset)
    rewritten, step = apply_pass(model, "grid-sample", target="onnxruntime")
    onnx.checker.check_model(rewritten, full_check=True)
    assert ("GridSample" in op_types(rewritten)) == kept
    decomposed_note = ("mode auto chose 'decompose' for sampler: target onnxruntime runs no float64 GridSample-16 "
                       "(mode onnx keeps GridSample)")
    assert (decomposed_note in step.notes) == (not kept)
    if not kept:
        assert step.rewritten == ["sampler"] and "raised" not in " ".join(step.notes)
        assert {o.domain: o.version for o in rewritten.opset_import}[""] == opset
    rng = np.random.default_rng(opset)
    x, grid = rng.standard_normal((1, 2, 4, 5)), rng.uniform(-1.2, 1.2, (1, 3, 3, 2))
    np.testing.assert_allclose(run_ort(rewritten, {"x": x, "grid": grid})[0],
                               torch_grid_sample(x, grid, "bilinear", "border"), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype, target", [(np.float16, "onnxruntime"), (np.float64, "tensorrt-10")])
def test_auto_keeps_gridsample_where_the_runtime_casts_the_dtype_itself(dtype, target):
    """As `surgeon check` accepts them: ONNX Runtime runs a float16 GridSample in float32 itself
    (InsertCastTransformer), TensorRT casts float64 to float32."""
    rewritten, step = apply_pass(typed_sampler("aten", dtype, 13), "grid-sample", target=target)
    assert op_types(rewritten) == ["GridSample"]
    assert f"mode auto chose 'onnx' for target {target}" in step.notes
    if target == "onnxruntime":
        rng = np.random.default_rng(1)
        x, grid = rng.standard_normal((1, 2, 4, 5)), rng.uniform(-1.2, 1.2, (1, 3, 3, 2))
        np.testing.assert_allclose(run_ort(rewritten, {"x": x.astype(dtype), "grid": grid.astype(dtype)})[0],
                                   torch_grid_sample(x, grid, "bilinear", "border"), atol=2e-3, rtol=0)


@pytest.mark.parametrize("x_dtype, grid_dtype", [(np.float32, np.float64), (np.float64, np.float32),
                                                  (np.float16, np.float32)])
def test_auto_decomposes_a_gridsample_onnxruntime_computes_in_two_types(x_dtype, grid_dtype):
    """ONNX Runtime's GridSample kernels take input and grid of one type: GridSample-20 on float32 and float64
    would not load (NOT_IMPLEMENTED), so auto decomposes it, saying why. float16 with float32 is kept: ONNX
    Runtime computes the float16 in float32 itself."""
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="sampler", mode="linear")
    model = make_model([node], [("x", x_dtype, [1, 2, 4, 5]), ("grid", grid_dtype, [1, 3, 3, 2])],
                       [("y", x_dtype, [1, 2, 3, 3])], opset=20)
    rewritten, step = apply_pass(model, "grid-sample", target="onnxruntime")
    mixed = x_dtype != np.float16
    assert ("GridSample" in op_types(rewritten)) != mixed
    names = (np.dtype(x_dtype).name, np.dtype(grid_dtype).name)
    note = (f"mode auto chose 'decompose' for sampler: target onnxruntime runs no GridSample-20 on {names[0]} input "
            f"and {names[1]} grid (its kernels take one type for both) (mode onnx keeps GridSample)")
    assert (note in step.notes) == mixed
    rng = np.random.default_rng(2)
    x, grid = rng.standard_normal((1, 2, 4, 5)), rng.uniform(-1.2, 1.2, (1, 3, 3, 2))
    np.testing.assert_allclose(run_ort(rewritten, {"x": x.astype(x_dtype), "grid": grid.astype(grid_dtype)})[0],
                               torch_grid_sample(x, grid), atol=2e-3 if x_dtype == np.float16 else 1e-6, rtol=0)


def test_auto_stops_where_the_target_lacks_the_sites_gridsample_and_decompose_cannot():
    """A float64 site of dynamic spatial size on ONNX Runtime: neither GridSample-16 nor the decomposition
    would run, so the pass stops, naming the node, why and what to do; nothing is rewritten."""
    model = typed_sampler("mmdeploy", np.float64, 11, x_shape=(1, 2, "h", "w"))
    with pytest.raises(SurgeonError, match=r"node 'sampler': decompose needs a static spatial size .* run "
                                           r"fold-constants .*; mode auto decomposes it: target onnxruntime runs "
                                           r"no float64 GridSample-16"):
        apply_pass(model, "grid-sample", target="onnxruntime")


def test_fma_note_says_what_applies_to_float64_grids():
    """fma_emulation concerns float32 coordinates: a float64 grid's note says what it gets instead."""
    float64_note = ("float64 grids: torch's float64 kernel fuses the same multiply-adds, which float64 ops cannot "
                    "emulate: the coordinates are rounded twice there, about one ulp of double from torch's")
    _, step = apply_pass(typed_sampler("aten", np.float64, 13), "grid-sample", mode="decompose")
    assert step.notes == [f"fma_emulation applies to float32 grids only; {float64_note}"]
    n, c, h, w, hg, wg = SHAPES[1]
    nodes = [helper.make_node("grid_sampler", [f"x{bits}", f"grid{bits}"], [f"y{bits}"], name=f"sampler{bits}",
                              domain="mmdeploy", interpolation_mode=0, padding_mode=0, align_corners=0)
             for bits in (32, 64)]
    model = make_model(nodes, [(f"{name}{bits}", dtype, shape) for bits, dtype in ((32, np.float32), (64, np.float64))
                               for name, shape in (("x", [n, c, h, w]), ("grid", [n, hg, wg, 2]))],
                       [(f"y{bits}", dtype, None) for bits, dtype in ((32, np.float32), (64, np.float64))], opset=13)
    _, step = apply_pass(model, "grid-sample", mode="decompose")
    assert step.notes == ["fma_emulation float64 (auto: target onnxruntime runs float64 Cast/Mul/Sub): float32 "
                          "grids' coordinates are rounded once where torch's kernel fuses a multiply-add, as torch's "
                          f"are; {float64_note}"]


def in_bfloat16(model: onnx.ModelProto, opset: int = 13) -> onnx.ModelProto:
    """`model`'s one sampler on bfloat16: its float32 x and grid Cast to bfloat16 before it, its output Cast back
    after (ONNX Runtime's Python API cannot feed bfloat16; Cast takes bfloat16 from opset 13)."""
    graph = model.graph
    sampler = graph.node[0]
    sampler.input[0], sampler.input[1], sampler.output[0] = "x_bf16", "grid_bf16", "y_bf16"
    nodes = [helper.make_node("Cast", [name], [f"{name}_bf16"], name=f"{name}_to_bf16",
                              to=onnx.TensorProto.BFLOAT16) for name in ("x", "grid")]
    nodes += [sampler, helper.make_node("Cast", ["y_bf16"], ["y"], name="y_to_float", to=onnx.TensorProto.FLOAT)]
    del graph.node[:]
    graph.node.extend(nodes)
    {o.domain: o for o in model.opset_import}[""].version = max(opset, 13)
    return model


def torch_bfloat16_as_cuda(x, grid, mode, padding, align_corners=False) -> np.ndarray:
    """torch's bfloat16 grid_sample as its CUDA kernel computes it (opmath: float32 on the bfloat16 values, one
    rounding to bfloat16 at the end), here on the CPU's float32 kernel; as float32."""
    x16, grid16 = (torch.from_numpy(a).bfloat16().float() for a in (x, grid))
    out = F.grid_sample(x16, grid16, mode=mode, padding_mode=padding, align_corners=align_corners)
    return out.bfloat16().float().numpy()


#: One bfloat16 ulp relative to the value: bfloat16 keeps 8 significant bits, so neighbours lie 2^-8 to 2^-7 of
#: a value apart, and results that differ in float32 by an ulp of float32 can round to neighbouring bfloat16s.
BFLOAT16_RTOL = 2.0 ** -7


def assert_matches_torch_bfloat16(out, x, grid, mode, padding):
    """`out` (a bfloat16 site's, as float32) against `torch_bfloat16_as_cuda`: nearest identical, (tri)linear
    within one bfloat16 ulp."""
    expected = torch_bfloat16_as_cuda(x, grid, mode, padding)
    if mode == "nearest":
        np.testing.assert_array_equal(out, expected)
    else:
        np.testing.assert_allclose(out, expected, rtol=BFLOAT16_RTOL, atol=1e-6)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ("auto", "decompose", "onnx"))
def test_bfloat16_site_is_sampled_in_float32_as_torchs_cuda_kernel(form, mode, padding):
    """A bfloat16 site is sampled in float32 between Casts (ONNX has no bfloat16 GridSample before opset 22, nor
    Where before 16: the full check refused both). ONNX Runtime on the result against torch's bfloat16 kernel
    on the same inputs as CUDA computes it: nearest identical, bilinear within one bfloat16 ulp (rtol 2^-7).
    torch's CPU bfloat16 kernel rounds every step to bfloat16 and is further off (docs: Modes, bfloat16)."""
    shape = SHAPES[1]
    model = in_bfloat16(sampler_model("aten", shape, mode, padding, False))
    rewritten, step = apply_pass(model, "grid-sample", mode=form)
    onnx.checker.check_model(rewritten, full_check=True)
    assert ("sampled sampler in float32 between Casts from and to bfloat16, as torch's CUDA kernel computes "
            "bfloat16 (its CPU kernel rounds every step to bfloat16 and differs)") in step.notes
    native = form == "onnx" or (form == "auto" and mode == "bilinear")  # auto: ONNX Runtime's nearest is slow
    assert ("GridSample" in op_types(rewritten)) == native
    x, grid = feeds(shape, seed=11, far_out=not native, ties_outside=not native)
    assert_matches_torch_bfloat16(run_ort(rewritten, {"x": x, "grid": grid})[0], x, grid, mode, padding)


def test_bfloat16_gridsample_the_target_lacks_is_decomposed_in_float32():
    """A standard bfloat16 GridSample-22 is kept as it is by the onnx form; ONNX Runtime has none, so auto
    decomposes it, in float32."""
    model = in_bfloat16(grid_sample_16(SHAPES[1], "linear", "zeros", False, opset=22), opset=22)
    rewritten, step = apply_pass(model, "grid-sample", target="onnxruntime")
    onnx.checker.check_model(rewritten, full_check=True)
    assert "GridSample" not in op_types(rewritten)
    assert ("mode auto chose 'decompose' for sampler: target onnxruntime runs no bfloat16 GridSample-22 (mode onnx "
            "keeps GridSample)") in step.notes
    x, grid = feeds(SHAPES[1], seed=12)
    assert_matches_torch_bfloat16(run_ort(rewritten, {"x": x, "grid": grid})[0], x, grid, "bilinear", "zeros")

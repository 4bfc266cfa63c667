"""clip-int: integer Clip becomes Max/Min (opset >= 12) or Where (opset 11), exactly equal to torch.clamp."""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

from surgeon.errors import RecipeError, SurgeonError
from surgeon.pipeline import run_steps
from surgeon.recipe import load_recipe
from surgeon.testing import apply_pass, make_model, op_types, run_ort

torch = pytest.importorskip("torch")


def clip_model(dtype, opset, lo=None, hi=None, attrs=None):
    """Clip(x, lo, hi) with bounds as initializers; None leaves the bound out (an empty input name)."""
    names = ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    while names[-1] == "":
        names.pop()
    inits = {k: np.array(v, dtype) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
    node = helper.make_node("Clip", names, ["y"], name="clip", **(attrs or {}))
    return make_model([node], [("x", dtype, [None])], [("y", dtype, [None])], initializers=inits, opset=opset)


def torch_clamp(x, lo, hi):
    if lo is None and hi is None:
        return x  # torch.clamp insists on a bound; Clip without bounds is the identity
    return torch.clamp(torch.from_numpy(x), min=lo, max=hi).numpy()


@pytest.mark.parametrize("opset, target, expected_ops", [(11, "opset-11", {"Less", "Greater", "Where"}),
                                                         (13, "onnxruntime", {"Less", "Greater", "Where"}),
                                                         (13, "tensorrt-8.6", {"Less", "Greater", "Where"})])
def test_exported_int_clamp_is_exact(opset, target, expected_ops):
    class Clamp(torch.nn.Module):
        def forward(self, x):
            return torch.clamp(x, -3, 5)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Clamp(), (torch.arange(-9, 9),), buffer, dynamo=False, opset_version=opset,
                          operator_export_type=torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK,
                          input_names=["x"], dynamic_axes={"x": [0]})
    model = onnx.load_from_string(buffer.getvalue())
    assert "Clip" in op_types(model)
    out, step = apply_pass(model, "clip-int", target=target)
    assert len(step.rewritten) == 1
    assert "Clip" not in op_types(out) and expected_ops <= set(op_types(out))
    onnx.checker.check_model(out, full_check=True)
    x = np.array([-2**40, -2**31 - 1, -9, -4, -3, -2, 0, 5, 6, 2**31, 2**40], np.int64)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], torch_clamp(x, -3, 5))


bound = st.one_of(st.none(), st.integers(-2**31, 2**31 - 1))


def around_bounds(dtype, lo, hi):
    """The type's extremes, 0, and each bound with its neighbours (those the type holds)."""
    info = np.iinfo(dtype)
    near = [b + step for b in (lo, hi) if b is not None for step in (-1, 0, 1)]
    return np.array(sorted({info.min, info.max, 0, *(v for v in near if info.min <= v <= info.max)}), dtype)


@pytest.mark.parametrize("mode", ["minmax", "cast"])
@settings(max_examples=25, deadline=None)
@given(dtype=st.sampled_from([np.int32, np.int64]), opset=st.sampled_from([11, 13]), lo=bound, hi=bound,
       data=st.data())
def test_random_values_and_bounds_match_torch(mode, dtype, opset, lo, hi, data):
    """Full-range values (an empty tensor too), and the values at and beside each bound."""
    x = data.draw(hnp.arrays(dtype, st.integers(0, 30), elements=st.integers(np.iinfo(dtype).min,
                                                                            np.iinfo(dtype).max)))
    model = clip_model(dtype, opset, lo, hi)
    out, step = apply_pass(model, "clip-int", mode=mode)
    assert step.rewritten == ["clip"]
    assert "Clip" not in op_types(out)
    info = np.iinfo(dtype)
    # A bound at the type's extreme clips nothing, so the pass leaves it out (hypothesis found lo = INT32_MIN,
    # hi None: a plain Identity).
    lo_clips, hi_clips = (lo is not None and lo > info.min), (hi is not None and hi < info.max)
    if lo_clips or hi_clips:
        # cast: Max/Min in float64 between two Casts, except for int64 with a bound left out, which keeps
        # minmax (the missing bound is the type's extreme, which float64 would round)
        in_float64 = mode == "cast" and (dtype == np.int32 or None not in (lo, hi))
        assert ("Cast" in op_types(out)) == in_float64
    else:
        assert op_types(out) == ["Identity"]
    for values in (x, around_bounds(dtype, lo, hi)):
        np.testing.assert_array_equal(run_ort(out, {"x": values})[0], torch_clamp(values, lo, hi))


@pytest.mark.parametrize("mode", ["minmax", "cast"])
def test_a_bound_at_the_types_extreme_clips_nothing_and_becomes_the_identity(mode):
    """What hypothesis drew once (int32, lo = INT32_MIN, hi None): the test had expected cast's Casts."""
    out, step = apply_pass(clip_model(np.int32, 11, -2**31, None), "clip-int", mode=mode)
    assert step.rewritten == ["clip"] and op_types(out) == ["Identity"]
    x = np.array([-2**31, -1, 0, 2**31 - 1], np.int32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], x)


def test_lower_bound_above_upper_gives_upper_like_torch():
    out, _ = apply_pass(clip_model(np.int64, 13, lo=7, hi=2), "clip-int")
    x = np.array([-5, 0, 3, 9], np.int64)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], torch_clamp(x, 7, 2))


def test_opset10_float_attributes_become_ceil_and_floor():
    out, _ = apply_pass(clip_model(np.int32, 10, attrs={"min": -2.5, "max": 4.5}), "clip-int")
    x = np.arange(-6, 7, dtype=np.int32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], np.clip(x, -2, 4))


def test_clip_without_bounds_becomes_the_identity():
    out, step = apply_pass(clip_model(np.int64, 13), "clip-int")
    assert step.rewritten == ["clip"]
    x = np.array([-2**62, 0, 2**62], np.int64)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], x)


def test_cast_mode_is_exact_over_the_whole_int32_range():
    out, _ = apply_pass(clip_model(np.int32, 13, lo=-2**31 + 1, hi=2**31 - 2), "clip-int", mode="cast")
    assert op_types(out) == ["Cast", "Max", "Min", "Cast"]
    assert {v.type.tensor_type.elem_type for v in out.graph.value_info} == {onnx.TensorProto.DOUBLE}
    x = np.array([-2**31, -2**31 + 1, -16777217, 16777217, 2**31 - 2, 2**31 - 1], np.int32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], torch_clamp(x, -2**31 + 1, 2**31 - 2))


def test_cast_mode_is_refused_for_tensorrt():
    """When the recipe loads (tests/test_recipe_errors.py: at its line), and by the step of a Recipe whose
    target was changed in code after that."""
    model = clip_model(np.int32, 13, lo=0, hi=3)
    with pytest.raises(RecipeError, match="'cast' needs float64, which target 'tensorrt-8.6' lacks"):
        apply_pass(model, "clip-int", target="tensorrt-8.6", mode="cast")
    recipe = load_recipe({"name": "x", "steps": [{"pass": "clip-int", "with": {"mode": "cast"}}]})
    recipe.target = "tensorrt-8.6"
    with pytest.raises(SurgeonError, match=r"step 1 \(clip-int\): parameter 'mode' .* 'tensorrt-8.6' lacks"):
        run_steps(model, recipe)


def test_float_clip_is_left_alone_and_second_run_changes_nothing():
    float_model = clip_model(np.float32, 13, lo=0.0, hi=1.0)
    _, step = apply_pass(float_model, "clip-int")
    assert step.rewritten == []
    once, _ = apply_pass(clip_model(np.int64, 11, lo=0, hi=3), "clip-int")
    twice, step = apply_pass(once, "clip-int")
    assert step.rewritten == [] and op_types(twice) == op_types(once)


@pytest.mark.parametrize("opset", [11, 13])
def test_runtime_bounds_of_the_input_type_and_float_bounds_rounded_inward(opset):
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")]
    model = make_model(nodes, [("x", np.int64, [None]), ("lo", np.int64, []), ("hi", np.float32, [])],
                       [("y", np.int64, [None])], opset=opset)
    out, _ = apply_pass(model, "clip-int")
    x = np.arange(-6, 7, dtype=np.int64)
    got = run_ort(out, {"x": x, "lo": np.array(-4, np.int64), "hi": np.array(2.5, np.float32)})[0]
    np.testing.assert_array_equal(got, np.clip(x, -4, 2))


def test_onnxruntime_int64_min_max_with_a_scalar_are_still_wrong_near_2_pow_31():
    """Why int64 gets the Where form on ONNX Runtime; when this fails, ORT is fixed and Max/Min can return."""
    nodes = [helper.make_node("Min", ["x", "zero"], ["low"]), helper.make_node("Max", ["x", "zero"], ["high"])]
    model = make_model(nodes, [("x", np.int64, [None])], [("low", np.int64, [None]), ("high", np.int64, [None])],
                       initializers={"zero": np.array(0, np.int64)}, opset=13)
    x = np.array([2**31, -2**31 - 1], np.int64)
    low, high = run_ort(model, {"x": x})
    assert not (np.array_equal(low, np.minimum(x, 0)) and np.array_equal(high, np.maximum(x, 0)))


def test_int32_keeps_max_min_on_onnxruntime():
    out, _ = apply_pass(clip_model(np.int32, 13, lo=-3, hi=5), "clip-int")
    assert {"Max", "Min"} <= set(op_types(out))
    x = np.array([-2**31, -4, 0, 6, 2**31 - 1], np.int32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], np.clip(x, -3, 5))


INTEGER_TYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


def reference_clamp(x, lo, hi):
    """torch.clamp with integer bounds; torch 2.13 has no clamp for uint16/32 (done in int64, exact) or
    uint64 (NumPy's clip, exact in uint64)."""
    if x.dtype == np.uint64:
        return np.clip(x, np.uint64(lo if lo is not None else 0), np.uint64(hi if hi is not None else 2**64 - 1))
    if x.dtype in (np.uint16, np.uint32):
        return torch_clamp(x.astype(np.int64), lo, hi).astype(x.dtype)
    return torch_clamp(x, lo, hi)


def edge_values(dtype):
    info = np.iinfo(dtype)
    return np.array(sorted({info.min, info.min + 1, 0, 1, 5, 6, 7, info.max - 1, info.max}), dtype)


def runtime_bound_model(dtype, bound_type, opset):
    node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")
    return make_model([node], [("x", dtype, [None]), ("lo", bound_type, []), ("hi", bound_type, [])],
                      [("y", dtype, [None])], opset=opset)


def saturated_bounds(lo, hi, dtype):
    """The integer bounds the docs promise for float bounds: ceil(lo), floor(hi), saturated to the type;
    a NaN bound clips nothing."""
    info = np.iinfo(dtype)

    def saturate(value, rounding):
        if np.isnan(value):
            return None
        if np.isinf(value):
            return info.min if value < 0 else info.max
        return max(info.min, min(info.max, rounding(float(value))))

    return saturate(lo, math.ceil), saturate(hi, math.floor)


F32_BELOW_2_POW_31 = float(np.nextafter(np.float32(2**31), np.float32(0)))  # 2**31 - 128
F32_BELOW_2_POW_63 = float(np.nextafter(np.float32(2**63), np.float32(0)))  # 2**63 - 2**39
RUNTIME_FLOAT_BOUNDS = [(-np.inf, np.inf), (-1.5, 1e20), (-3e9, 3e9), (-1.5, 300.0), (2.5, 4.5), (6.0, 2.0),
                        (np.inf, np.inf), (-np.inf, -np.inf), (-1e20, 2.0**31), (-2.0**31, F32_BELOW_2_POW_31),
                        (-2.0**63, 2.0**63), (-1.5, F32_BELOW_2_POW_63), (np.nan, 4.5), (2.5, np.nan)]


@pytest.mark.parametrize("mode", ["minmax", "cast"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_runtime_float_bounds_saturate_to_the_integer_type(dtype, opset, mode):
    """Ceil/Floor then a plain Cast wrapped: int32 with hi=inf gave INT32_MIN everywhere, uint8 with
    hi=300 gave 44. Bounds at float32's edges (2**31, the float32 just below it) must land exactly."""
    out, step = apply_pass(runtime_bound_model(dtype, np.float32, opset), "clip-int", mode=mode)
    assert step.rewritten == ["clip"] and "Clip" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    x = edge_values(dtype)
    for lo, hi in RUNTIME_FLOAT_BOUNDS:
        feeds = {"x": x, "lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}
        want = reference_clamp(x, *saturated_bounds(np.float32(lo), np.float32(hi), dtype))
        np.testing.assert_array_equal(run_ort(out, feeds)[0], want, err_msg=f"lo={lo}, hi={hi}")


@pytest.mark.parametrize("bound_type", [onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE])
def test_float16_bfloat16_and_float64_runtime_bounds_saturate_too(bound_type):
    """Bounds fed as float64 and cast in the graph (ONNX Runtime's Python API takes no bfloat16 arrays);
    every bound below is exact in each type."""
    nodes = [helper.make_node("Cast", [f"{name}64"], [name], to=bound_type) for name in ("lo", "hi")]
    nodes.append(helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip"))
    model = make_model(nodes, [("x", np.int16, [None]), ("lo64", np.float64, []), ("hi64", np.float64, [])],
                       [("y", np.int16, [None])], opset=13)
    out, step = apply_pass(model, "clip-int")
    assert step.rewritten == ["clip"]
    x = edge_values(np.int16)
    for lo, hi in [(-np.inf, np.inf), (-2.5, 4.5), (np.nan, 30720.0), (-2.0**40, 2.0**40), (30720.0, np.nan)]:
        feeds = {"x": x, "lo64": np.array(lo), "hi64": np.array(hi)}
        want = reference_clamp(x, *saturated_bounds(lo, hi, np.int16))
        np.testing.assert_array_equal(run_ort(out, feeds)[0], want, err_msg=f"lo={lo}, hi={hi}")


def test_a_nan_constant_bound_is_an_error_naming_the_node():
    model = clip_model(np.int32, 13, attrs=None)
    model.graph.node[0].input.extend(["lo"])
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(np.nan, np.float32), "lo"))
    with pytest.raises(SurgeonError, match="'clip'.*NaN"):
        apply_pass(model, "clip-int")


@pytest.mark.parametrize("mode", ["minmax", "cast"])
@pytest.mark.parametrize("opset", [10, 11, 13])
@pytest.mark.parametrize("dtype", INTEGER_TYPES)
def test_every_integer_type_loads_in_onnxruntime_and_is_exact(dtype, opset, mode):
    """ONNX Runtime has no int16/uint16 Where or Max/Min, no uint64 Where, and no float64 Clip before
    opset 12: each such form failed to load. uint64 below opset 12 has no form and stays, with a note."""
    attrs = {"min": 1.0, "max": 6.0} if opset < 11 else None
    model = clip_model(dtype, opset, attrs=attrs) if attrs else clip_model(dtype, opset, lo=1, hi=6)
    out, step = apply_pass(model, "clip-int", mode=mode)
    if dtype == np.uint64 and opset < 12 and mode == "minmax":
        assert step.rewritten == [] and "uint64" in step.notes[0] and "Where" in step.notes[0]
        return
    assert step.rewritten == ["clip"] and "Clip" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    x = edge_values(dtype)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], reference_clamp(x, 1, 6))


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_16_bit_types_are_clipped_in_int32(dtype):
    out, _ = apply_pass(clip_model(dtype, 13, lo=-3 if dtype == np.int16 else 3, hi=300), "clip-int")
    assert op_types(out) == ["Cast", "Max", "Min", "Cast"]
    assert {v.type.tensor_type.elem_type for v in out.graph.value_info} == {onnx.TensorProto.INT32}


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_cast_mode_is_exact_for_64_bit_types_with_constant_bounds_within_2_pow_53(dtype):
    """Rounding to float64 is monotone: values beyond a representable bound still land on it."""
    lo, hi = (-2**53, 2**53) if dtype == np.int64 else (3, 2**53)
    out, step = apply_pass(clip_model(dtype, 11, lo=lo, hi=hi), "clip-int", mode="cast")
    assert op_types(out) == ["Cast", "Max", "Min", "Cast"] and step.notes == []
    info = np.iinfo(dtype)
    x = np.array([info.min, info.min + 1, lo - 1, lo, lo + 1, 5, hi - 1, hi, hi + 1, hi + 3, info.max], dtype)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], reference_clamp(x, lo, hi))


@pytest.mark.parametrize("lo, hi", [(None, 5), (-3, 2**53 + 1)])
def test_cast_mode_gives_int64_the_minmax_form_where_float64_would_round(lo, hi):
    out, step = apply_pass(clip_model(np.int64, 11, lo=lo, hi=hi), "clip-int", mode="cast")
    assert "Where" in op_types(out) and "clip" in step.notes[0] and "2**53" in step.notes[0]
    x = np.array([-2**62 - 1, -2**53 - 1, -4, 0, 5, 2**53 + 1, 2**53 + 3, 2**62 + 1], np.int64)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], torch_clamp(x, lo, hi))


def test_tensorrt_uint8_goes_through_int32_and_int16_is_left_alone_with_a_note():
    """TensorRT 10 compares, selects and takes Max/Min in int32/int64 only, and casts no int16."""
    out, _ = apply_pass(clip_model(np.uint8, 13, lo=3, hi=200), "clip-int", target="tensorrt-10")
    assert op_types(out) == ["Cast", "Max", "Min", "Cast"]
    x = edge_values(np.uint8)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], reference_clamp(x, 3, 200))
    _, step = apply_pass(clip_model(np.int16, 13, lo=3, hi=200), "clip-int", target="tensorrt-10")
    assert step.rewritten == [] and "int16" in step.notes[0] and "tensorrt-10" in step.notes[0]


def test_runtime_integer_bounds_of_a_narrower_type_are_cast_and_of_a_wider_one_left_alone():
    """An int64 bound next to int32 values would wrap when cast (2**32 + 3 becomes 3)."""
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")]
    narrow = make_model(nodes, [("x", np.int32, [None]), ("lo", np.int8, []), ("hi", np.int32, [])],
                        [("y", np.int32, [None])], opset=13)
    out, step = apply_pass(narrow, "clip-int")
    assert step.rewritten == ["clip"]
    x = edge_values(np.int32)
    got = run_ort(out, {"x": x, "lo": np.array(-128, np.int8), "hi": np.array(2**31 - 2, np.int32)})[0]
    np.testing.assert_array_equal(got, torch_clamp(x, -128, 2**31 - 2))
    wide = make_model(nodes, [("x", np.int32, [None]), ("lo", np.int64, []), ("hi", np.int32, [])],
                      [("y", np.int32, [None])], opset=13)
    _, step = apply_pass(wide, "clip-int")
    assert step.rewritten == [] and "'lo' is int64" in step.notes[0]


def test_integer_constant_bounds_of_a_wider_type_saturate_instead_of_wrapping():
    """uint8 with int64 bounds -1 and 300: a plain cast made them 255 and 44."""
    node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")
    for lo, hi in [(-1, 300), (-1, 200), (3, 300)]:
        model = make_model([node], [("x", np.uint8, [None])], [("y", np.uint8, [None])],
                           initializers={"lo": np.array(lo, np.int64), "hi": np.array(hi, np.int64)}, opset=13)
        out, _ = apply_pass(model, "clip-int")
        x = edge_values(np.uint8)
        np.testing.assert_array_equal(run_ort(out, {"x": x})[0], reference_clamp(x, max(lo, 0), min(hi, 255)))


def test_rounding_and_saturation_direction_is_an_explicit_flag_not_the_suffix():
    """rounded_inward/saturated take `lower`: the suffix only names the nodes (it once chose Ceil or Floor)."""
    import onnx_graphsurgeon as gs

    from surgeon.pass_api import Context
    from surgeon.registry import discover
    from surgeon.rewrite import Rewrite

    discover()  # the built-in passes import as surgeon.passes.*
    from surgeon.passes.clip_int import rounded_inward, saturated

    bound = gs.Variable("bound", np.float32, [])
    graph = gs.Graph(nodes=[gs.Node("Identity", name="clip", inputs=[bound],
                                    outputs=[gs.Variable("y", np.float32, [])])], opset=13)
    rw = Rewrite(graph, Context(target=None), graph.nodes[0])
    for lower, rounding, limit in ((True, "Ceil", "Greater"), (False, "Floor", "Less")):
        rounded = rounded_inward(rw, bound, "any_name", lower=lower)
        saturated(rw, rounded, rounded, "any_name", lower, np.dtype(np.int32), np.dtype(np.float32))
        written = [node.op for node in rw.nodes]
        assert written[0] == rounding and limit in written
        rw.nodes.clear()


@pytest.mark.parametrize("dtype, forms", [(np.int64, {"Where"}), (np.uint64, {"Max", "Min"})])
def test_clip_int_and_maximum_minimum_share_the_onnxruntime_int64_max_min_rule(dtype, forms):
    """One rule (surgeon.rewrite.max_min_is_wrong) for both passes: int64 Max/Min are wrong on ONNX Runtime,
    uint64 Max/Min are right (maximum-minimum used to send uint64 to the wrap-around select as well)."""
    clipped, _ = apply_pass(clip_model(dtype, 13, lo=1, hi=2**40), "clip-int")
    aten = helper.make_node("ATen", ["a", "b"], ["y"], name="mx", domain="org.pytorch.aten", operator="maximum")
    maxed, _ = apply_pass(make_model([aten], [("a", dtype, [3]), ("b", dtype, [3])], [("y", dtype, [3])], opset=13),
                          "maximum-minimum")
    assert forms <= set(op_types(clipped)) and op_types(maxed)[-1] in forms
    x = np.array([0, 2**31, 2**41], dtype)
    np.testing.assert_array_equal(run_ort(clipped, {"x": x})[0], np.clip(x, 1, 2**40))
    np.testing.assert_array_equal(run_ort(maxed, {"a": x, "b": x[::-1].copy()})[0], np.maximum(x, x[::-1]))


def test_the_pass_template_in_pass_api_shows_clip_ints_real_parameter():
    import surgeon.pass_api
    from surgeon.registry import get_pass

    mode = get_pass("clip-int").params["mode"]
    choices = ", ".join(f'"{choice}"' for choice in mode.choices)
    assert f'Param(str, "{mode.default}", choices=({choices}),' in surgeon.pass_api.__doc__


# (clamp, its name, whether a bound passes 2**24, past which float32 skips integers)
TORCH_ROUNDED_CLAMPS = [(lambda t: t.clamp(-3, 2**41), "-3, 2**41", True),
                        (lambda t: t.clamp_min(-2**40), "min -2**40", True),
                        (lambda t: t.clamp_max(2**40), "max 2**40", True), (lambda t: t.clamp(-3, 5), "-3, 5", False)]


@pytest.mark.parametrize("target", ["opset-11", "onnxruntime", "tensorrt-8.6"])
@pytest.mark.parametrize("clamp, name, beyond_float32_precision", TORCH_ROUNDED_CLAMPS,
                         ids=[name for _, name, _ in TORCH_ROUNDED_CLAMPS])
def test_torchs_float_rounded_int64_clamp_is_rewritten_exactly(clamp, name, beyond_float32_precision, target):
    """Exported without dynamic axes at opset 11, torch writes an int64 clamp as Cast(float32) -> Clip ->
    Cast(int64), which gave 16777216 for 16777217; the integer bounds it stores as float32 are exact here."""
    from surgeon.testing import export_torch

    x = torch.tensor([2**24 + 1, 2**40 + 1, -2**40 - 1, -7, 3, 2**62 + 1, -2**63], dtype=torch.int64)
    model = export_torch(clamp, x, opset=11, input_names=["x"])
    assert [op for op in op_types(model) if op != "Constant"] == ["Cast", "Clip", "Cast"]
    out, step = apply_pass(model, "clip-int", target=target)
    assert len(step.rewritten) == 1 and "Clip" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_array_equal(run_ort(out, {"x": x.numpy()})[0], clamp(x).numpy())
    assert any("beyond 2**24" in note for note in step.notes) == beyond_float32_precision


def float_rounded_clip_model(lo, hi, float_type=np.float32):
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=helper.np_dtype_to_tensor_dtype(np.dtype(float_type))),
             helper.make_node("Clip", ["xf", "lo", "hi"], ["yf"], name="clip"),
             helper.make_node("Cast", ["yf"], ["y"], to=onnx.TensorProto.INT64)]
    return make_model(nodes, [("x", np.int64, [None])], [("y", np.int64, [None])],
                      initializers={"lo": np.array(lo, float_type), "hi": np.array(hi, float_type)}, opset=11)


@pytest.mark.parametrize("lo, hi", [(-2.5, 4.0), (0.0, 2.0**63), (-np.inf, 4.0), (0.0, np.nan)])
def test_a_float_rounded_clamp_whose_bound_is_no_integer_of_the_type_is_left_alone_with_a_note(lo, hi):
    out, step = apply_pass(float_rounded_clip_model(lo, hi), "clip-int", target="opset-11")
    assert step.rewritten == [] and "Clip" in op_types(out)
    assert "clip: left alone" in step.notes[0] and "int64 integer" in step.notes[0]


def test_a_float_rounded_clamp_with_a_runtime_bound_is_left_alone_with_a_note():
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Clip", ["xf", "lo"], ["yf"], name="clip"),
             helper.make_node("Cast", ["yf"], ["y"], to=onnx.TensorProto.INT64)]
    model = make_model(nodes, [("x", np.int64, [None]), ("lo", np.float32, [])], [("y", np.int64, [None])],
                       opset=11)
    _, step = apply_pass(model, "clip-int", target="opset-11")
    assert step.rewritten == [] and "'lo' is computed at run time" in step.notes[0]


def test_a_float_rounded_clamp_in_float64_is_exact_in_cast_mode_too():
    out, step = apply_pass(float_rounded_clip_model(-2.0**53, 2.0**40 + 1, np.float64), "clip-int",
                           target="onnxruntime", mode="cast")
    assert step.rewritten == ["clip"] and step.notes == []
    x = np.array([-2**62, -2**53 - 1, 0, 2**40, 2**40 + 2, 2**62 + 1], np.int64)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], np.clip(x, -2**53, 2**40 + 1))

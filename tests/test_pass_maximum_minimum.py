"""maximum-minimum: ATen maximum/minimum/fmax/fmin and integer Max/Min against torch, exactly."""
from __future__ import annotations


import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from surgeon.testing import apply_pass, export_torch, make_model, op_types, run_ort

torch = pytest.importorskip("torch")

TORCH_FN = {"maximum": torch.maximum, "minimum": torch.minimum, "fmax": torch.fmax, "fmin": torch.fmin}
FLOAT_EDGES = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.25, 65504.0]
INT_EDGES = {np.int64: [2**62 + 1, 2**62, -(2**63), 2**63 - 1, 2**24 + 1, 2**24, -1, 0],
             np.int32: [2**31 - 1, -(2**31), 2**24 + 1, 2**24, -1, 0]}


def export(fn, args, opset):
    return export_torch(fn, *args, opset=opset)


def aten_model(operator, dtype, shape_a, shape_b, opset, overload=""):
    node = helper.make_node("ATen", ["a", "b"], ["y"], name=f"aten_{operator}", domain="org.pytorch.aten",
                            operator=operator, overload_name=overload)
    out_shape = list(np.broadcast_shapes(tuple(shape_a), tuple(shape_b)))
    return make_model([node], [("a", dtype, shape_a), ("b", dtype, shape_b)], [("y", dtype, out_shape)],
                      opset=opset)


def rewritten_matches_torch(model, operator, a, b, **params):
    out, step = apply_pass(model, "maximum-minimum", **params)
    onnx.checker.check_model(out)
    feeds = dict(zip([i.name for i in out.graph.input], (a, b)))
    got = run_ort(out, feeds)[0]
    want = TORCH_FN[operator](torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(got, want)  # NaN positions equal; -0.0 == 0.0 (see the docs on ties)
    assert got.dtype == want.dtype
    return out, step


def values(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        pool = np.array(INT_EDGES[dtype] + list(rng.integers(-50, 50, 8)), dtype)
    else:
        pool = np.array(FLOAT_EDGES + list(rng.normal(0, 3, 8)), dtype)
    return rng.choice(pool, size=shape)


shapes = st.sampled_from([([3, 4], [3, 4]), ([2, 1, 4], [3, 1]), ([1], [5]), ([0, 3], [1, 3]), ([], [2, 2])])


@settings(max_examples=40, deadline=None)
@given(operator=st.sampled_from(sorted(TORCH_FN)), dtype=st.sampled_from([np.float32, np.float16, np.int64, np.int32]),
       opset=st.sampled_from([11, 13]), shape_pair=shapes, seed=st.integers(0, 2**16))
def test_aten_forms_match_torch_exactly(operator, dtype, opset, shape_pair, seed):
    shape_a, shape_b = shape_pair
    model = aten_model(operator, dtype, shape_a, shape_b, opset)
    out, step = rewritten_matches_torch(model, operator, values(dtype, shape_a, seed), values(dtype, shape_b, seed + 1))
    assert step.rewritten == [f"aten_{operator}"]
    assert "ATen" not in op_types(out)


def test_integers_at_opset_11_use_where_and_at_13_use_max():
    at_11, _ = apply_pass(aten_model("maximum", np.int32, [4], [4], 11), "maximum-minimum")
    at_13, _ = apply_pass(aten_model("maximum", np.int32, [4], [4], 13), "maximum-minimum")
    assert op_types(at_11) == ["Greater", "Where"]
    assert op_types(at_13) == ["Max"]
    # 64-bit integers keep Where on ONNX Runtime (its int64 Max broadcasts wrongly, see below)
    int64_at_13, _ = apply_pass(aten_model("maximum", np.int64, [4], [4], 13), "maximum-minimum")
    assert op_types(int64_at_13) == ["Greater", "Where"]


def test_mode_where_forces_where_on_integer_max_and_leaves_floats_alone():
    int_max = make_model([helper.make_node("Max", ["a", "b"], ["y"], name="max")],
                         [("a", np.int64, [3]), ("b", np.int64, [3])], [("y", np.int64, [3])], opset=13)
    a, b = np.array([2**62 + 1, -3, 0]), np.array([2**62, 5, 0])
    out, step = rewritten_matches_torch(int_max, "maximum", a, b, mode="where")
    assert step.rewritten == ["max"] and op_types(out) == ["Greater", "Where"]
    float_max = make_model([helper.make_node("Max", ["a", "b"], ["y"], name="max")],
                           [("a", np.float32, [3]), ("b", np.float32, [3])], [("y", np.float32, [3])], opset=11)
    _, step = apply_pass(float_max, "maximum-minimum", mode="where")
    assert step.rewritten == []


def test_invalid_integer_max_at_opset_11_is_repaired():
    model = make_model([helper.make_node("Min", ["a", "b", "c"], ["y"], name="min3")],
                       [("a", np.int64, [3]), ("b", np.int64, [3]), ("c", np.int64, [1])],
                       [("y", np.int64, [3])], opset=11)
    out, step = apply_pass(model, "maximum-minimum")
    a, b, c = np.array([5, -2**63, 7]), np.array([2**62, 4, -1]), np.array([3])
    np.testing.assert_array_equal(run_ort(out, {"a": a, "b": b, "c": c})[0], np.minimum(np.minimum(a, b), c))
    assert step.rewritten == ["min3"]


def test_torch_max_other_and_bool_operands():
    model = aten_model("max", np.int64, [3], [3], 11, overload="other")
    rewritten_matches_torch(model, "maximum", np.array([1, -9, 2**40]), np.array([0, -8, 2**40 + 1]))
    for operator in ("maximum", "minimum"):
        a, b = np.array([True, True, False, False]), np.array([True, False, True, False])
        out, _ = rewritten_matches_torch(aten_model(operator, np.bool_, [4], [4], 11), operator, a, b)
        assert op_types(out) == ["Or" if operator == "maximum" else "And"]


@pytest.mark.parametrize("opset", [11, 13])
def test_real_integer_export_is_exact_beyond_float32(opset):
    # torch rounds int64 through float32 at opset 11: Cast -> Min -> Cast. 2**40 + 1 is not a float32.
    a = torch.tensor([[2**40 + 1, -5], [3, 2**62 + 1]])
    b = torch.tensor([2**40 + 2, -7])
    model = export(torch.minimum, (a, b), opset)
    out, step = rewritten_matches_torch(model, "minimum", a.numpy(), b.numpy())
    if opset == 11:
        assert "Cast" in op_types(model) and len(step.rewritten) == 1
        assert op_types(out) == ["Less", "Where"]
    else:  # ORT's int64 Min is replaced too (it broadcasts wrongly past the int32 range)
        assert len(step.rewritten) == 1 and op_types(out) == ["Less", "Where"]


@pytest.mark.parametrize("operator", ["fmax", "fmin", "maximum"])
@pytest.mark.parametrize("opset", [11, 13])
def test_real_float_exports(operator, opset):
    a = torch.tensor([[np.nan, 1.0, -np.inf, 0.0], [2.0, np.nan, np.inf, -1.0]])
    b = torch.tensor([1.0, np.nan, np.nan, -0.0])
    model = export(TORCH_FN[operator], (a, b), opset)
    out, step = rewritten_matches_torch(model, operator, a.numpy(), b.numpy())
    assert len(step.rewritten) == (0 if operator == "maximum" else 1)  # torch exports maximum as Max already
    again, second = apply_pass(out, "maximum-minimum")
    assert second.rewritten == [] and op_types(again) == op_types(out)


def test_graph_without_sites_is_unchanged():
    model = make_model([helper.make_node("Relu", ["a"], ["y"], name="relu")], [("a", np.int64, [3])],
                       [("y", np.int64, [3])], opset=14)
    out, step = apply_pass(model, "maximum-minimum")
    assert step.rewritten == [] and op_types(out) == ["Relu"]


@pytest.mark.parametrize("target, dtype, form", [("onnxruntime", np.int16, "Where"), ("onnxruntime", np.int32, "Max"),
                                                 ("tensorrt-8.5", np.int8, "Where"), ("tensorrt-8.5", np.int32, "Max")])
def test_integer_form_follows_the_target_profile(target, dtype, form):
    # The profiles: ONNX Runtime 1.31 has no int16 Max kernel; TensorRT 8.5's Max takes int32/int64, not int8.
    out, _ = apply_pass(aten_model("maximum", dtype, [3], [3], 13), "maximum-minimum", target=target)
    assert op_types(out)[-1] == form


def test_int64_with_a_scalar_avoids_onnxruntimes_wrong_broadcast():
    """ORT 1.31: int64 Min/Max with a scalar operand are wrong past the int32 range; the pass uses Where."""
    a = np.array([-2147483649, 2147483648, 2147483649], np.int64)
    b = np.array(-1, np.int64)
    raw = make_model([helper.make_node("Min", ["a", "b"], ["y"], name="min")],
                     [("a", np.int64, [3]), ("b", np.int64, [])], [("y", np.int64, [3])], opset=13)
    assert not np.array_equal(run_ort(raw, {"a": a, "b": b})[0], np.minimum(a, b)), "ORT fixed: drop the workaround"
    aten = helper.make_node("ATen", ["a", "b"], ["y"], name="mn", domain="org.pytorch.aten", operator="minimum")
    for model in (raw, make_model([aten], [("a", np.int64, [3]), ("b", np.int64, [])], [("y", np.int64, [3])],
                                  opset=13)):
        out, step = apply_pass(model, "maximum-minimum")
        assert "Min" not in [n.op_type for n in out.graph.node] and step.rewritten
        np.testing.assert_array_equal(run_ort(out, {"a": a, "b": b})[0], np.minimum(a, b))

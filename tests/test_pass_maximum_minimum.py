"""maximum-minimum: ATen maximum/minimum/fmax/fmin and integer Max/Min against torch, exactly."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from surgeon.registry import discover
from surgeon.testing import apply_pass, export_torch, make_model, op_types, run_ort

discover()  # the built-in passes import as surgeon.passes.*
from surgeon.promotion import torch_result_type  # noqa: E402

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


SWEPT_DTYPES = st.sampled_from([np.float32, np.float16, np.int64, np.int32])


def assert_integers_select_with_where(out, dtype, mode):
    """`mode: where` leaves no integer Max/Min (floats keep theirs)."""
    if mode == "where" and np.issubdtype(dtype, np.integer):
        assert "Where" in op_types(out) and not {"Max", "Min"} & set(op_types(out))


@pytest.mark.parametrize("mode", ["auto", "where"])
@settings(max_examples=40, deadline=None)
@given(operator=st.sampled_from(sorted(TORCH_FN)), dtype=SWEPT_DTYPES, opset=st.sampled_from([11, 13]),
       shape_pair=shapes, seed=st.integers(0, 2**16))
def test_aten_forms_match_torch_exactly(mode, operator, dtype, opset, shape_pair, seed):
    shape_a, shape_b = shape_pair
    model = aten_model(operator, dtype, shape_a, shape_b, opset)
    out, step = rewritten_matches_torch(model, operator, values(dtype, shape_a, seed), values(dtype, shape_b, seed + 1),
                                        mode=mode)
    assert step.rewritten == [f"aten_{operator}"]
    assert "ATen" not in op_types(out)
    assert_integers_select_with_where(out, dtype, mode)


@pytest.mark.parametrize("mode", ["auto", "where"])
@settings(max_examples=40, deadline=None)
@given(operator=st.sampled_from(["maximum", "minimum"]), dtype=SWEPT_DTYPES, opset=st.sampled_from([11, 13]),
       shape_pair=shapes, seed=st.integers(0, 2**16))
def test_standard_max_min_match_torch_exactly(mode, operator, dtype, opset, shape_pair, seed):
    """Integer Max/Min are replaced where invalid (opset 11), wrong on ONNX Runtime (int64) or with `mode:
    where`; float ones are kept."""
    shape_a, shape_b = shape_pair
    op_type = "Max" if operator == "maximum" else "Min"
    out_shape = list(np.broadcast_shapes(tuple(shape_a), tuple(shape_b)))
    model = make_model([helper.make_node(op_type, ["a", "b"], ["y"], name="site")],
                       [("a", dtype, shape_a), ("b", dtype, shape_b)], [("y", dtype, out_shape)], opset=opset)
    out, step = rewritten_matches_torch(model, operator, values(dtype, shape_a, seed), values(dtype, shape_b, seed + 1),
                                        mode=mode)
    replaced = np.issubdtype(dtype, np.integer) and (mode == "where" or opset < 12 or dtype == np.int64)
    assert step.rewritten == (["site"] if replaced else [])
    assert_integers_select_with_where(out, dtype, mode)


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


@pytest.mark.parametrize("target, dtype, form", [("onnxruntime", np.int8, "Max"), ("onnxruntime", np.int32, "Max"),
                                                 ("tensorrt-8.5", np.int8, "Where"), ("tensorrt-8.5", np.int32, "Max")])
def test_integer_form_follows_the_target_profile(target, dtype, form):
    # The profiles: TensorRT 8.5's Max takes int32/int64, not int8.
    out, _ = apply_pass(aten_model("maximum", dtype, [3], [3], 13), "maximum-minimum", target=target)
    assert op_types(out)[-1] == form


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_16_bit_integers_on_onnxruntime_are_computed_in_int32(dtype, opset):
    """ONNX Runtime 1.31 has no int16/uint16 Max/Min or Where kernel (pinned here), so these run in int32."""
    for op in ("Max", "Where"):
        inputs = [("c", np.bool_, [2])] * (op == "Where") + [("a", dtype, [2]), ("b", dtype, [2])]
        raw = make_model([helper.make_node(op, [name for name, _, _ in inputs], ["y"])], inputs,
                         [("y", dtype, [2])], opset=13)
        with pytest.raises(Exception, match="implementation"):
            run_ort(raw, {name: np.ones(2, kind) for name, kind, _ in inputs})
    info = np.iinfo(dtype)
    a = np.array([info.min, info.max, 7, info.max], dtype)
    b = np.array([info.max, info.min, -1 if info.min else 8, info.max - 1], dtype)
    for operator in ("maximum", "minimum"):  # NumPy's: torch has no uint16 maximum kernel
        out, _ = apply_pass(aten_model(operator, dtype, [4], [4], opset), "maximum-minimum")
        got = run_ort(out, {"a": a, "b": b})[0]
        assert got.dtype == dtype and op_types(out)[-1] == "Cast"
        np.testing.assert_array_equal(got, getattr(np, operator)(a, b))


UINT64_TOP = np.iinfo(np.uint64).max
#: Values past 2**31 and 2**63 in both broadcast directions: where ONNX Runtime's int64 Max/Min go wrong.
UINT64_OPERANDS = (np.array([[0, UINT64_TOP, 2**63, 2**63 + 5, 7, UINT64_TOP - 1, 2**31, 2**32 + 1]], np.uint64),
                   np.array([[UINT64_TOP], [0], [2**63 + 4], [2**31 - 1]], np.uint64))


def test_uint64_selects_with_wrap_around_arithmetic_below_opset_12_where_onnxruntime_has_no_where():
    """Below opset 12 (no integer Max/Min) ONNX Runtime 1.31 has no uint64 Where either (pinned here), and
    uint64 has no wider type to compute in; b + (a - b) * [a taken] wraps around exactly. Against NumPy
    (torch has no uint64 maximum kernel), with both broadcast directions and values past 2**63."""
    opset = 11
    inputs = [("c", np.bool_, [2]), ("a", np.uint64, [2]), ("b", np.uint64, [2])]
    raw = make_model([helper.make_node("Where", ["c", "a", "b"], ["y"])], inputs, [("y", np.uint64, [2])],
                     opset=opset)
    with pytest.raises(Exception, match="implementation"):
        run_ort(raw, {name: np.ones(2, kind) for name, kind, _ in inputs})
    a, b = UINT64_OPERANDS
    for operator, (first, second) in itertools.product(("maximum", "minimum"), ((a, b), (b, a))):
        model = aten_model(operator, np.uint64, list(first.shape), list(second.shape), opset)
        out, _ = apply_pass(model, "maximum-minimum")
        assert "Where" not in op_types(out)
        got = run_ort(out, {"a": first, "b": second})[0]
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got, getattr(np, operator)(first, second))


@pytest.mark.parametrize("opset", [13, 17])
def test_uint64_keeps_max_min_from_opset_12_where_onnxruntime_gets_them_right(opset):
    """ONNX Runtime 1.31's wrong broadcast is int64's only: its uint64 Max/Min are right past 2**31 and 2**63
    (pinned here), so uint64 gets one Max/Min, not the four-node wrap-around select."""
    a, b = UINT64_OPERANDS
    for operator, (first, second) in itertools.product(("maximum", "minimum"), ((a, b), (b, a))):
        op_type = "Max" if operator == "maximum" else "Min"
        raw = make_model([helper.make_node(op_type, ["a", "b"], ["y"])],
                         [("a", np.uint64, list(first.shape)), ("b", np.uint64, list(second.shape))],
                         [("y", np.uint64, None)], opset=opset)
        np.testing.assert_array_equal(run_ort(raw, {"a": first, "b": second})[0], getattr(np, operator)(first, second))
        out, _ = apply_pass(aten_model(operator, np.uint64, list(first.shape), list(second.shape), opset),
                            "maximum-minimum")
        assert op_types(out) == [op_type]
        np.testing.assert_array_equal(run_ort(out, {"a": first, "b": second})[0], getattr(np, operator)(first, second))


# torch's type promotion, for every pair of these dtypes, tensors of rank 0 or 1 (uint16: torch refuses most pairs)
PROMOTED = ["bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "float16", "bfloat16", "float32", "float64"]


def test_result_type_is_torchs_for_every_dtype_pair_and_rank():
    def np_dtype(name):  # NumPy has no bfloat16; onnx's is ml_dtypes'
        return helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16) if name == "bfloat16" else np.dtype(name)

    for (a, b), (rank_a, rank_b) in itertools.product(itertools.product(PROMOTED, repeat=2),
                                                      itertools.product((0, 1), repeat=2)):
        try:
            want = str(torch.result_type(torch.zeros([2] * rank_a, dtype=getattr(torch, a)),
                                         torch.zeros([2] * rank_b, dtype=getattr(torch, b)))).removeprefix("torch.")
        except RuntimeError:
            want = None
        tensors = [gs.Variable("a", dtype=np_dtype(a), shape=[2] * rank_a),
                   gs.Variable("b", dtype=np_dtype(b), shape=[2] * rank_b)]
        got = torch_result_type(tensors)
        assert (None if got is None else got.name) == want, (a, rank_a, b, rank_b)
    # An unknown rank decides only where both readings agree.
    undecided = [gs.Variable("a", dtype=np.int64, shape=None), gs.Variable("b", dtype=np.int32, shape=[2])]
    assert torch_result_type(undecided) is None  # int32 if a is 0-d, else int64
    agreeing = [gs.Variable("a", dtype=np.int32, shape=None), gs.Variable("b", dtype=np.int64, shape=[2])]
    assert torch_result_type(agreeing) == np.int64


def mixed_model(operator, dtype_a, shape_a, dtype_b, shape_b, out_dtype, opset):
    node = helper.make_node("ATen", ["a", "b"], ["y"], name=f"aten_{operator}", domain="org.pytorch.aten",
                            operator=operator, overload_name="")
    model = make_model([node], [("a", dtype_a, shape_a), ("b", dtype_b, shape_b)], [("y", np.float32, None)],
                       opset=opset)
    if out_dtype is None:  # the output's type unknown: the pass works torch's result type out itself
        model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
    else:
        model.graph.output[0].type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype))
    return model


MIXED = [(np.int64, [4], np.float32, [4]), (np.int32, [4], np.float32, [4]), (np.int32, [4], np.int64, [4]),
         (np.float16, [4], np.float32, [4]), (np.uint8, [4], np.int8, [4]), (np.bool_, [4], np.float32, [4]),
         (np.int64, [4], np.bool_, [4]), (np.float32, [4], np.int64, [4]),
         # 0-d operands promote only from a lower category: int32 stays int32, float16 stays float16
         (np.int32, [4], np.int64, []), (np.float16, [4], np.float32, []), (np.int32, [4], np.float64, []),
         (np.int64, [], np.uint8, [4]), (np.bool_, [4], np.int8, [])]


def mixed_values(dtype, shape, seed):
    """Seeded values of `dtype`, with NaN/inf/overflow-to-inf for floats and the extremes for integers."""
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        pool = np.array([True, False])
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        extra = [2**40 + 5, 2**24 + 1] if info.bits == 64 else []  # not float32 values; 2**40 + 5 wraps in int32
        pool = np.array([info.min, info.max, 0, 1, 3, -1 if info.min else 2] + extra, dtype)
    else:
        with np.errstate(over="ignore"):  # 1e5 is inf in float16, in torch's casts as in ONNX's
            pool = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0, 2.5, -3.0, 1e5]).astype(dtype)
    return np.asarray(rng.choice(pool, size=shape))


@pytest.mark.parametrize("recorded", [True, False], ids=["output-typed", "output-untyped"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("operator", ["maximum", "fmax"])
@pytest.mark.parametrize("dtype_a, shape_a, dtype_b, shape_b", MIXED)
def test_mixed_dtypes_are_promoted_like_torch(dtype_a, shape_a, dtype_b, shape_b, operator, opset, recorded):
    a, b = mixed_values(dtype_a, shape_a, 1), mixed_values(dtype_b, shape_b, 2)
    want_dtype = TORCH_FN[operator](torch.from_numpy(a), torch.from_numpy(b)).numpy().dtype
    model = mixed_model(operator, dtype_a, shape_a, dtype_b, shape_b, want_dtype if recorded else None, opset)
    out, step = rewritten_matches_torch(model, operator, a, b)
    assert step.rewritten == [f"aten_{operator}"]
    onnx.checker.check_model(out, full_check=True)


@pytest.mark.parametrize("opset", [11, 13])
def test_real_export_of_fmax_with_int64_and_float32_operands(opset):
    a = torch.tensor([3, 0, 1, 7, 2**40 + 1], dtype=torch.int64)
    b = torch.tensor([2.5, np.nan, 0.0, 9.0, np.nan])
    for operator in ("fmax", "fmin"):
        model = export(TORCH_FN[operator], (a, b), opset)
        assert op_types(model) == ["ATen"]
        out, _ = rewritten_matches_torch(model, operator, a.numpy(), b.numpy())
        onnx.checker.check_model(out, full_check=True)
        assert "IsNaN" in op_types(out)  # the float path: fmax's NaN handling kept


def test_unknown_operand_types_leave_the_node_with_a_note():
    unknown = helper.make_node("Mystery", ["a"], ["t"], name="mystery", domain="custom")
    node = helper.make_node("ATen", ["t", "b"], ["y"], name="aten_fmax", domain="org.pytorch.aten", operator="fmax")
    model = make_model([unknown, node], [("a", np.float32, [3]), ("b", np.int64, [3])], [("y", np.float32, None)])
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
    out, step = apply_pass(model, "maximum-minimum")
    assert step.rewritten == [] and "ATen" in op_types(out)
    assert "aten_fmax" in step.notes[0] and "unknown" in step.notes[0]


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


def test_a_0d_operand_of_a_wider_integer_type_is_cast_down_as_torch_does():
    """maximum(int32[n], int64[]) is int32 in torch: the 0-d int64 wraps into int32 (2**40 + 5 -> 5)."""
    a = np.array([1, -1, 6], np.int32)
    for value in (2**40 + 5, 2**31 + 7, -(2**40) - 3):
        model = mixed_model("maximum", np.int32, [3], np.int64, [], None, 13)
        out, _ = rewritten_matches_torch(model, "maximum", a, np.array(value, np.int64))
        assert op_types(out)[0] == "Cast"


@pytest.mark.parametrize("target", ["opset-11", "onnxruntime", "tensorrt-8.6"])
@pytest.mark.parametrize("operator, constant", [("maximum", -3), ("minimum", 2**41), ("maximum", -2**40)])
def test_real_integer_export_with_a_constant_operand_is_exact_beyond_float32(operator, constant, target):
    """torch.maximum(int64, torch.tensor(c)) exports at opset 11 as Cast(float32) -> Max(., float32 c) ->
    Cast(int64), which gave 16777216 for 16777217; c is an integer float32 holds, so the rewrite is exact."""
    x = torch.tensor([2**24 + 1, 2**40 + 1, -2**40 - 1, -7, 3, 2**62 + 1, -2**63])
    fn = lambda t: TORCH_FN[operator](t, torch.tensor(constant))  # noqa: E731
    model = export(fn, (x,), 11)
    assert [op for op in op_types(model) if op != "Constant"] == ["Cast", "Max" if operator == "maximum" else "Min",
                                                                  "Cast"]
    out, step = apply_pass(model, "maximum-minimum", target=target)
    assert len(step.rewritten) == 1 and "Cast" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    np.testing.assert_array_equal(run_ort(out, {i.name: x.numpy() for i in out.graph.input})[0], fn(x).numpy())
    assert any("cannot be recovered" in note for note in step.notes) == (abs(constant) > 2**24)


def test_a_constant_the_exporter_rounded_gets_a_note_and_a_fractional_one_is_left_alone():
    x = torch.tensor([2**40 + 1, 5])
    _, step = apply_pass(export(lambda t: torch.minimum(t, torch.tensor(2**40 + 1)), (x,), 11), "maximum-minimum")
    assert "constant 1099511627776 is beyond 2**24, where float32 skips integers" in step.notes[0]
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Max", ["xf", "c"], ["yf"], name="max"),
             helper.make_node("Cast", ["yf"], ["y"], to=onnx.TensorProto.INT64)]
    model = make_model(nodes, [("x", np.int64, [2])], [("y", np.int64, [2])],
                       initializers={"c": np.array(2.5, np.float32)}, opset=11)
    assert apply_pass(model, "maximum-minimum")[1].rewritten == []


@pytest.mark.parametrize("target", ["tensorrt-8.5", "tensorrt-8.6", "tensorrt-10"])
def test_int64_gets_where_on_tensorrt_targets_too_since_validation_runs_on_onnxruntime(target):
    """TensorRT targets kept int64 Max, which ONNX Runtime (where `surgeon run` validates every target)
    computes wrongly past the int32 range: validation failed on a correct rewrite."""
    model = export(torch.fmax, (torch.tensor([0, -2**31 - 1, 5, 7]), torch.tensor([2**31, -1, 1, 2])), 13)
    a, b = np.array([0, -2**31 - 1, 5, 7]), np.array([2**31, -1, 1, 2])
    out, _ = rewritten_matches_torch(model, "fmax", a, b, target=target)
    assert op_types(out) == ["Greater", "Where"]


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("operator", ["maximum", "minimum"])
def test_real_bool_export_becomes_or_and(operator, opset):
    """From opset 13 torch writes a bare Max/Min on bool, which ONNX Runtime refuses (INVALID_GRAPH)."""
    a, b = torch.tensor([True, True, False, False]), torch.tensor([True, False, True, False])
    out, _ = rewritten_matches_torch(export(TORCH_FN[operator], (a, b), opset), operator, a.numpy(), b.numpy())
    if opset >= 13:
        assert op_types(out) == ["Or" if operator == "maximum" else "And"]


def test_variadic_bool_max_folds_into_ors():
    model = make_model([helper.make_node("Max", ["a", "b", "c"], ["y"], name="max3")],
                       [(name, np.bool_, [2]) for name in "abc"], [("y", np.bool_, [2])], opset=13)
    out, step = apply_pass(model, "maximum-minimum", target="tensorrt-8.6")
    a, b, c = np.array([True, False]), np.array([False, False]), np.array([False, False])
    np.testing.assert_array_equal(run_ort(out, {"a": a, "b": b, "c": c})[0], a | b | c)
    assert step.rewritten == ["max3"] and op_types(out) == ["Or", "Or"]


BFLOAT16 = onnx.TensorProto.BFLOAT16


def bfloat16_model(operator, opset):
    """ATen `operator` on bfloat16 operands, float32 at the graph's boundary (ONNX Runtime's Python API feeds no
    bfloat16): Cast in, the site, Cast out."""
    nodes = [helper.make_node("Cast", [name], [f"{name}_bf16"], name=f"to_bf16_{name}", to=BFLOAT16) for name in "ab"]
    nodes.append(helper.make_node("ATen", ["a_bf16", "b_bf16"], ["y_bf16"], name=f"aten_{operator}",
                                  domain="org.pytorch.aten", operator=operator, overload_name=""))
    nodes.append(helper.make_node("Cast", ["y_bf16"], ["y"], name="to_float", to=onnx.TensorProto.FLOAT))
    model = make_model(nodes, [("a", np.float32, [8]), ("b", np.float32, [8])], [("y", np.float32, [8])], opset=opset)
    model.graph.value_info.append(helper.make_tensor_value_info("y_bf16", BFLOAT16, [8]))
    return model


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("operator", ["maximum", "minimum", "fmax", "fmin"])
def test_bfloat16_is_computed_in_float32_where_bfloat16_is_not_taken(operator, opset):
    """ONNX Runtime has no bfloat16 Max/Min/IsNaN/Where kernels, and Where takes bfloat16 only from opset 16:
    the site runs in float32 between Casts (exact: every bfloat16 is a float32, max/min pick one of them).
    Bit for bit torch's bfloat16 result, NaN placement included; the output passes onnx's full check."""
    a = np.array([np.nan, 1.0, -0.0, np.inf, -3.0, 2.5, np.nan, 1e38], np.float32)
    b = np.array([1.0, np.nan, 0.0, -np.inf, -3.5, 2.5078125, np.nan, -1e38], np.float32)
    out, step = apply_pass(bfloat16_model(operator, opset), "maximum-minimum")
    onnx.checker.check_model(out, full_check=True)
    assert step.rewritten == [f"aten_{operator}"]
    got = run_ort(out, {"a": a, "b": b})[0]
    want = TORCH_FN[operator](torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()).float().numpy()
    np.testing.assert_array_equal(got, want)
    on_tensorrt, step = apply_pass(bfloat16_model(operator, opset), "maximum-minimum", target="tensorrt-10")
    onnx.checker.check_model(on_tensorrt, full_check=True)
    stays = opset >= 16 or operator in ("maximum", "minimum")  # TensorRT 10 runs bfloat16; Where-9 lacks it
    assert op_types(on_tensorrt).count("Cast") == (3 if stays else 6)  # the model's 3, or 2 operands in, 1 back

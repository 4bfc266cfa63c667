"""inplace-and: ATen and/or/xor (in-place, bitwise, logical) and unsupported Bitwise* become standard ops
whose results equal torch's exactly, for bool and for integers of any value at opset 11, 13 and 18."""
from __future__ import annotations


import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, export_torch, make_model, op_types, run_ort

torch = pytest.importorskip("torch")

TORCH_OPS = {"and": torch.bitwise_and, "or": torch.bitwise_or, "xor": torch.bitwise_xor}
LOGICAL_OPS = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}
TARGETS = {11: "opset-11", 13: "tensorrt-10", 18: "onnxruntime"}


def export(module, args, opset):
    return export_torch(module, *args, opset=opset, input_names=["a", "b"], dynamic_axes={"a": [0], "b": [0]})


def aten_model(operator, dtype, opset, out_dtype=None):
    node = helper.make_node("ATen", ["a", "b"], ["c"], name="op_node", domain="org.pytorch.aten",
                            operator=operator, overload_name="Tensor")
    return make_model([node], [("a", dtype, [None]), ("b", dtype, [None])], [("c", out_dtype or dtype, [None])],
                      opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
def test_exported_inplace_mask_and_is_replaced_by_and(opset):
    class Mask(torch.nn.Module):
        def forward(self, a, b):
            keep = a > 0
            keep &= b > 0
            return keep

    model = export(Mask(), (torch.randn(5), torch.randn(5)), opset)
    aten = [n for n in model.graph.node if n.op_type == "ATen"]
    assert [(a.s, b.s) for a, b in (n.attribute for n in aten)] == [(b"__iand_", b"Tensor")]  # verified spelling
    out, step = apply_pass(model, "inplace-and", target=TARGETS[opset])
    assert len(step.rewritten) == 1 and "And" in op_types(out) and "ATen" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    a, b = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"a": a, "b": b})[0], (a > 0) & (b > 0))


@pytest.mark.parametrize("opset", [11, 13])
def test_exported_integer_inplace_ops_are_exact(opset):
    class Bits(torch.nn.Module):
        def forward(self, a, b):
            c = a.clone()
            c &= b
            d = a | b
            return c, d, torch.bitwise_xor(a, b)

    model = export(Bits(), (torch.arange(5), torch.arange(5)), opset)
    out, step = apply_pass(model, "inplace-and", target=TARGETS[opset])
    assert len(step.rewritten) == 3 and "ATen" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    info = np.iinfo(np.int64)
    a = np.array([info.min, info.max, -1, 0, 1, -2**32, 2**32 + 5, 12345678901234], np.int64)
    b = np.roll(a, 3)
    got = run_ort(out, {"a": a, "b": b})
    for result, want in zip(got, (a & b, a | b, a ^ b)):
        np.testing.assert_array_equal(result, want)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(TORCH_OPS)), spelling=st.sampled_from(["__i{}_", "__{}_", "bitwise_{}"]),
       dtype=st.sampled_from([np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_]),
       opset=st.sampled_from([11, 13, 18]), data=st.data())
def test_random_integers_and_bools_match_torch(kind, spelling, dtype, opset, data):
    a = data.draw(hnp.arrays(dtype, st.integers(1, 20)))
    b = data.draw(hnp.arrays(dtype, st.sampled_from([a.shape, (1,)])))  # broadcasting too
    out, step = apply_pass(aten_model(spelling.format(kind), dtype, opset), "inplace-and", target=TARGETS[opset])
    assert step.rewritten == ["op_node"]
    if opset == 18 and dtype != np.bool_:
        assert f"Bitwise{kind.capitalize()}" in op_types(out)
    want = TORCH_OPS[kind](torch.from_numpy(a), torch.from_numpy(b)).numpy()
    got = run_ort(out, {"a": a, "b": b})[0]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", sorted(LOGICAL_OPS))
def test_logical_ops_on_integers_give_bool(kind):
    out, _ = apply_pass(aten_model(f"logical_{kind}", np.int32, 11, out_dtype=np.bool_), "inplace-and")
    a = np.array([0, 0, 3, -4], np.int32)
    b = np.array([0, 7, 0, -1], np.int32)
    want = LOGICAL_OPS[kind](torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(run_ort(out, {"a": a, "b": b})[0], want)


def test_standard_bitwise_op_is_lowered_for_tensorrt_and_kept_for_onnxruntime():
    node = helper.make_node("BitwiseOr", ["a", "b"], ["c"], name="or_node")
    model = make_model([node], [("a", np.int32, [3]), ("b", np.int32, [3])], [("c", np.int32, [3])], opset=18)
    _, kept = apply_pass(model, "inplace-and", target="onnxruntime")
    assert kept.rewritten == []
    out, lowered = apply_pass(model, "inplace-and", target="tensorrt-10")
    assert lowered.rewritten == ["or_node"] and "BitwiseOr" not in op_types(out)
    a, b = np.array([-8, 5, 2**31 - 1], np.int32), np.array([3, -6, 2**30], np.int32)
    np.testing.assert_array_equal(run_ort(out, {"a": a, "b": b})[0], a | b)


def test_masks_mode_is_the_short_form_for_zero_one_operands():
    out, _ = apply_pass(aten_model("__iand_", np.int64, 11), "inplace-and", integers="masks")
    assert "Mod" not in op_types(out) and "And" in op_types(out)
    a, b = np.array([0, 1, 1, 0], np.int64), np.array([1, 1, 0, 0], np.int64)
    np.testing.assert_array_equal(run_ort(out, {"a": a, "b": b})[0], a & b)


def test_uint64_below_opset_18_is_refused_naming_the_node():
    with pytest.raises(SurgeonError, match="op_node.*uint64.*BitwiseAnd"):
        apply_pass(aten_model("bitwise_and", np.uint64, 11), "inplace-and")


def test_second_run_and_unrelated_graph_change_nothing():
    once, _ = apply_pass(aten_model("__ixor_", np.int32, 11), "inplace-and")
    twice, step = apply_pass(once, "inplace-and")
    assert step.rewritten == [] and op_types(twice) == op_types(once)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_0d_operands_give_a_0d_result(dtype, opset):
    """The bit-plane form's constants are 0-d where their values are (`Rewrite.const` keeps the shape), so
    0-d operands come out 0-d, through the Unsqueeze/ReduceSum pair of either opset."""
    node = helper.make_node("ATen", ["a", "b"], ["c"], name="op_node", domain="org.pytorch.aten",
                            operator="__and_", overload_name="Tensor")
    model = make_model([node], [("a", dtype, []), ("b", dtype, [])], [("c", dtype, [])], opset=opset)
    out, _ = apply_pass(model, "inplace-and", target=TARGETS[opset])
    info = np.iinfo(dtype)
    for a, b in ((info.min, -1), (info.max, 12345), (-6, 5)):
        got = run_ort(out, {"a": np.array(a, dtype), "b": np.array(b, dtype)})[0]
        assert got.shape == () and got == np.bitwise_and(dtype(a), dtype(b))


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_empty_operands_give_an_empty_result_of_torchs_shape(dtype, opset):
    """The planes are summed over a positive axis: ONNX Runtime leaves an empty tensor unreduced over -1."""
    node = helper.make_node("ATen", ["a", "b"], ["c"], name="op_node", domain="org.pytorch.aten",
                            operator="__and_", overload_name="Tensor")
    model = make_model([node], [("a", dtype, [None, 4]), ("b", dtype, [1, 4])], [("c", dtype, [None, 4])],
                       opset=opset)
    out, _ = apply_pass(model, "inplace-and", target=TARGETS[opset])
    b = np.arange(1, 5, dtype=dtype)[None]
    for a in (np.zeros((0, 4), dtype), np.full((3, 4), -7, dtype)):
        got = run_ort(out, {"a": a, "b": b})[0]
        expected = (torch.from_numpy(a) & torch.from_numpy(b)).numpy()
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)

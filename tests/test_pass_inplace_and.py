"""inplace-and: ATen and/or/xor (in-place, bitwise, logical) and unsupported Bitwise* become standard ops
whose results equal torch's exactly, for bool and for integers of any value at opset 11, 13 and 18, in
every mode, in forms `surgeon check` accepts for the target (TensorRT 8 included)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

from surgeon.check import Settings, check_file
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


def torch_bitwise(kind, a, b):
    """torch's `kind` of two integer arrays of one type; uint16/uint32 through int64 (torch lacks their kernels)."""
    compute = np.int64 if a.dtype in (np.uint16, np.uint32) else a.dtype
    result = TORCH_OPS[kind](torch.from_numpy(a.astype(compute)), torch.from_numpy(b.astype(compute)))
    return result.numpy().astype(a.dtype)


def plane_type(model):
    """The arithmetic type of the bit-plane form in `model`: int64 (bool planes from Mod/Greater), int32 (sign
    and Div/Mod planes joined by Concat), or None where there is no bit-plane form."""
    ops = op_types(model)
    return "int64" if "Greater" in ops else "int32" if "Concat" in ops else None


def check_errors(model, target, tmp_path):
    """`surgeon check`'s errors for `model` on `target`."""
    path = tmp_path / "checked.onnx"
    onnx.save(model, path)
    return [f"{f.rule} {f.message}" for f in check_file(path, Settings(target=target)) if f.severity == "error"]


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


@pytest.mark.parametrize("params", [{"integers": "masks"}, {"mode": "masks"}])
def test_masks_mode_is_the_short_form_for_zero_one_operands(params):
    out, _ = apply_pass(aten_model("__iand_", np.int64, 11), "inplace-and", **params)
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


#: Where the bit-plane form sums with ReduceSum (axes an attribute, then an input) and with Split/Add
PLANE_SUM_CASES = [(11, "opset-11"), (13, "tensorrt-10"), (13, "tensorrt-8.6")]


@pytest.mark.parametrize("opset, target", PLANE_SUM_CASES)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_0d_operands_give_a_0d_result(dtype, opset, target):
    """The bit-plane form's constants are 0-d where their values are (`Rewrite.const` keeps the shape), so
    0-d operands come out 0-d, through the Unsqueeze/ReduceSum pair of either opset and through Split/Add."""
    node = helper.make_node("ATen", ["a", "b"], ["c"], name="op_node", domain="org.pytorch.aten",
                            operator="__and_", overload_name="Tensor")
    model = make_model([node], [("a", dtype, []), ("b", dtype, [])], [("c", dtype, [])], opset=opset)
    out, _ = apply_pass(model, "inplace-and", target=target)
    info = np.iinfo(np.int32 if target.startswith("tensorrt-8") else dtype)  # all TensorRT 8 holds
    for a, b in ((info.min, -1), (info.max, 12345), (-6, 5)):
        got = run_ort(out, {"a": np.array(a, dtype), "b": np.array(b, dtype)})[0]
        assert got.shape == () and got == np.bitwise_and(dtype(a), dtype(b))


@pytest.mark.parametrize("opset, target", PLANE_SUM_CASES)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_empty_operands_give_an_empty_result_of_torchs_shape(dtype, opset, target):
    """The planes are summed over a positive axis: ONNX Runtime leaves an empty tensor unreduced over -1."""
    node = helper.make_node("ATen", ["a", "b"], ["c"], name="op_node", domain="org.pytorch.aten",
                            operator="__and_", overload_name="Tensor")
    model = make_model([node], [("a", dtype, [None, 4]), ("b", dtype, [1, 4])], [("c", dtype, [None, 4])],
                       opset=opset)
    out, _ = apply_pass(model, "inplace-and", target=target)
    b = np.arange(1, 5, dtype=dtype)[None]
    for a in (np.zeros((0, 4), dtype), np.full((3, 4), -7, dtype)):
        got = run_ort(out, {"a": a, "b": b})[0]
        expected = (torch.from_numpy(a) & torch.from_numpy(b)).numpy()
        assert got.shape == expected.shape and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


#: (target, opset) pairs the sweep covers: each built-in profile, TensorRT 8 included (32-bit integers only)
SWEEP_TARGETS = [("opset-11", 11), ("onnxruntime", 13), ("onnxruntime", 18), ("tensorrt-10", 13),
                 ("tensorrt-8.6", 13), ("tensorrt-8.5", 11)]
SWEEP_SHAPES = [(), (8,), (6, 1), (6, 8)]  # b's shape, against a's [6, 8]: scalar, broadcast, equal


def sweep_values(rng, dtype, shape, mode, int32_only):
    """Seeded operands: random values of the type's range, up to half of them replaced by its extremes, 0 and
    ±1 (0/1 for masks)."""
    if mode == "masks":
        return rng.integers(0, 2, size=shape).astype(dtype)
    info = np.iinfo(np.int32 if int32_only else dtype)
    values = rng.integers(info.min, info.max, size=shape, dtype=np.int64, endpoint=True)
    edges = [info.min, info.max, 0, 1, info.max - 1] + ([-1, info.min + 1] if info.min < 0 else [])
    flat = values.reshape(-1)
    count = min(len(edges), flat.size // 2)
    flat[:count] = rng.permutation(edges)[:count]
    return values.astype(dtype)


def three_kinds_model(dtype, opset, b_shape):
    """a & b, a | b, a ^ b (ATen, in-place spellings) on a [6, 8] and b of `b_shape`."""
    nodes = [helper.make_node("ATen", ["a", "b"], [kind], name=f"{kind}_node", domain="org.pytorch.aten",
                              operator=f"__i{kind}_", overload_name="Tensor") for kind in TORCH_OPS]
    return make_model(nodes, [("a", dtype, [6, 8]), ("b", dtype, list(b_shape))],
                      [(kind, dtype, [6, 8]) for kind in TORCH_OPS], opset=opset)


SWEEP_CASES = [(target, opset, mode) for target, opset in SWEEP_TARGETS for mode in ("auto", "bits", "masks")]


@pytest.mark.parametrize("target, opset, mode", SWEEP_CASES + [("onnxruntime", 18, "bitwise")])
def test_seeded_sweep_every_mode_matches_torch_and_passes_check(target, opset, mode, tmp_path):
    """Every integer type the target holds, and/or/xor at once, scalar and broadcast operands: results equal
    torch's exactly on ONNX Runtime, and `surgeon check` finds no error for the target (the bit-plane form
    once summed in int64, which TensorRT 8 lacks). The bit-plane form is the int32 one on TensorRT 8 only,
    the compact int64 one elsewhere."""
    rng = np.random.default_rng(sum(map(ord, f"{target}{opset}{mode}")))
    tensorrt_8 = target.startswith("tensorrt-8")
    dtypes = [np.int32, np.int64] if target.startswith("tensorrt") else \
        [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32]
    for i, dtype in enumerate(dtypes):
        b_shape = SWEEP_SHAPES[i % len(SWEEP_SHAPES)]
        out, step = apply_pass(three_kinds_model(dtype, opset, b_shape), "inplace-and", target=target, mode=mode)
        assert step.rewritten == [f"{kind}_node" for kind in TORCH_OPS]
        assert check_errors(out, target, tmp_path) == [], (np.dtype(dtype).name, b_shape)
        narrowed = tensorrt_8 and dtype == np.int64 and mode != "masks"
        bit_planes = mode == "bits" or (mode == "auto" and opset < 18)
        assert plane_type(out) == (("int32" if tensorrt_8 else "int64") if bit_planes else None)
        assert any("computed in int32" in note for note in step.notes) == narrowed
        for _ in range(3):
            a = sweep_values(rng, dtype, (6, 8), mode, int32_only=narrowed)
            b = sweep_values(rng, dtype, b_shape, mode, int32_only=narrowed)
            for kind, got in zip(TORCH_OPS, run_ort(out, {"a": a, "b": b})):
                want = torch_bitwise(kind, a, b)
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got, want, err_msg=f"{kind} {np.dtype(dtype).name} {b_shape}")


@pytest.mark.parametrize("target", ["tensorrt-8.5", "tensorrt-8.6"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_tensorrt_8_form_computes_in_int32_only(target, dtype, tmp_path):
    """TensorRT 8 sums floats only (ReduceSum) and casts int64 constants to int32, clamping: the bit planes
    are summed by Split/Add in int32, every constant fits int32, and int64 operands say they are narrowed."""
    model = aten_model("__iand_", dtype, 13)
    out, step = apply_pass(model, "inplace-and", target=target)
    assert "ReduceSum" not in op_types(out) and check_errors(out, target, tmp_path) == []
    info = np.iinfo(np.int32)
    for initializer in out.graph.initializer:
        values = onnx.numpy_helper.to_array(initializer)
        assert values.size == 0 or info.min <= values.min() <= values.max() <= info.max, initializer.name
    narrowed = (f"op_node: int64 and computed in int32, as target '{target}' holds int64 in int32: exact for "
                "operands within the int32 range (TensorRT before 10 clamps int64 beyond it to +-INT_MAX; ONNX "
                "Runtime wraps it)")
    assert step.notes == ([narrowed] if dtype == np.int64 else [])


def test_mode_bits_replaces_bitwise_where_the_target_runs_it():
    out, step = apply_pass(aten_model("__ixor_", np.int64, 18), "inplace-and", target="onnxruntime", mode="bits")
    assert step.rewritten == ["op_node"] and not any(op.startswith("Bitwise") for op in op_types(out))
    a = np.array([np.iinfo(np.int64).min, -1, 2**40 + 3, 7], np.int64)
    b = np.array([5, np.iinfo(np.int64).max, -2**33, 7], np.int64)
    np.testing.assert_array_equal(run_ort(out, {"a": a, "b": b})[0], a ^ b)


@pytest.mark.parametrize("mode", ["bits", "masks"])
def test_modes_bits_and_masks_lower_standard_bitwise_ops_too(mode):
    node = helper.make_node("BitwiseAnd", ["a", "b"], ["c"], name="and_node")
    model = make_model([node], [("a", np.int32, [4]), ("b", np.int32, [4])], [("c", np.int32, [4])], opset=18)
    out, step = apply_pass(model, "inplace-and", target="onnxruntime", mode=mode)
    assert step.rewritten == ["and_node"] and "BitwiseAnd" not in op_types(out)
    a, b = np.array([0, 1, 1, 0], np.int32), np.array([1, 1, 0, 0], np.int32)
    np.testing.assert_array_equal(run_ort(out, {"a": a, "b": b})[0], a & b)


def test_mode_bitwise_keeps_bitwise_ops_the_target_lacks_and_says_so():
    node = helper.make_node("BitwiseOr", ["a", "b"], ["c"], name="or_node")
    aten = helper.make_node("ATen", ["c", "b"], ["d"], name="iand_node", domain="org.pytorch.aten",
                            operator="__iand_", overload_name="Tensor")
    model = make_model([node, aten], [("a", np.int32, [3]), ("b", np.int32, [3])], [("d", np.int32, [3])], opset=18)
    out, step = apply_pass(model, "inplace-and", target="tensorrt-10", mode="bitwise")
    assert step.rewritten == ["iand_node"] and {"BitwiseOr", "BitwiseAnd"} <= set(op_types(out))
    assert step.notes == ["iand_node: BitwiseAnd on int32 as mode bitwise asks, which target 'tensorrt-10' does "
                          "not run"]


def test_mode_bitwise_below_opset_18_is_refused_naming_the_node():
    with pytest.raises(SurgeonError, match="op_node.*mode bitwise needs BitwiseAnd.*opset 18.*opset 13"):
        apply_pass(aten_model("__and_", np.int32, 13), "inplace-and", mode="bitwise")


def test_integers_masks_with_a_mode_other_than_auto_is_refused_naming_the_parameter():
    with pytest.raises(SurgeonError, match="parameter 'integers'.*mode auto only.*mode 'bits'"):
        apply_pass(aten_model("__iand_", np.int32, 11), "inplace-and", mode="bits", integers="masks")


@pytest.mark.parametrize("target, opset", SWEEP_TARGETS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_operand_of_unknown_rank_keeps_an_empty_results_shape(dtype, target, opset, tmp_path):
    """With an operand's rank unknown the planes are summed over axis -1, over which ONNX Runtime leaves an
    empty tensor unreduced: the result is still torch's shape, [0, 4] not [0, 4, 32]."""
    nodes = [helper.make_node("Reshape", ["a", "shape"], ["a_reshaped"], name="reshape_node"),
             helper.make_node("ATen", ["a_reshaped", "b"], ["c"], name="op_node", domain="org.pytorch.aten",
                              operator="__ixor_", overload_name="Tensor")]
    model = make_model(nodes, [("a", dtype, [None]), ("shape", np.int64, [None]), ("b", dtype, [None])],
                       [("c", dtype, [None, None])], opset=opset)
    out, step = apply_pass(model, "inplace-and", target=target, mode="bits")
    assert step.rewritten == ["op_node"]
    # SG006: opset-11 wants static input shapes, which an empty and a full run of one graph cannot have
    assert [error for error in check_errors(out, target, tmp_path) if not error.startswith("SG006")] == []
    info = np.iinfo(np.int32 if target.startswith("tensorrt-8") else dtype)  # all TensorRT 8 holds
    b = np.array([0, 1, info.max, info.min], dtype)
    for shape in ([0, 4], [3, 4]):
        a = np.arange(np.prod(shape), dtype=dtype) * 37
        got = run_ort(out, {"a": a, "shape": np.array(shape, np.int64), "b": b})[0]
        want = torch_bitwise("xor", a.reshape(shape), b)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)

"""nan-to-num: the exported cluster and ATen(nan_to_num) against torch.nan_to_num, bit for bit."""
from __future__ import annotations


import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from surgeon.testing import apply_pass, export_torch, make_model, op_types, run_ort

torch = pytest.importorskip("torch")

EXACT_OPS = sorted(["IsNaN", "Equal", "Equal", "Where", "Where", "Where"])
BITS = {np.dtype(np.float16): np.uint16, np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def export(fn, x, opset):
    return export_torch(fn, x, opset=opset)


def edge_values(dtype, shape, seed):
    info = np.finfo(dtype)
    pool = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, info.max, info.min, info.tiny, -info.smallest_subnormal,
                     1.5, -7.0], dtype)
    return np.random.default_rng(seed).choice(pool, size=shape)


def assert_bitwise_equal(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(BITS[got.dtype]), want.view(BITS[want.dtype]))


def run_single(model, x):
    return run_ort(model, {model.graph.input[0].name: x})[0]


def aten_model(dtype, shape, opset=11, nan=None, posinf=None, neginf=None, as_attributes=False):
    """ATen(nan_to_num): scalars as constant inputs (an omitted one is torch's None) or as attributes."""
    inputs, initializers, attrs = ["x"], {}, {}
    for kind, value in (("nan", nan), ("posinf", posinf), ("neginf", neginf)):
        if as_attributes:
            if value is not None:
                attrs[kind] = float(value)
        elif value is None:
            inputs.append("")
        else:
            inputs.append(kind)
            initializers[kind] = np.array(value, np.float64)
    node = helper.make_node("ATen", inputs, ["y"], name="nan_to_num", domain="org.pytorch.aten",
                            operator="nan_to_num", overload_name="", **attrs)
    return make_model([node], [("x", dtype, shape)], [("y", dtype, shape)], initializers=initializers, opset=opset)


replacement = st.one_of(st.none(), st.sampled_from([0.0, -1.5, 1e10, 65504.0, 3e38, np.inf, -np.inf]))


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float16, np.float32, np.float64]), opset=st.sampled_from([11, 13]),
       shape=st.sampled_from([[6], [2, 1, 5], [0, 3], []]), nan=replacement, posinf=replacement,
       neginf=replacement, as_attributes=st.booleans(), seed=st.integers(0, 2**16))
def test_aten_form_matches_torch_bitwise(dtype, opset, shape, nan, posinf, neginf, as_attributes, seed):
    model = aten_model(dtype, shape, opset, nan, posinf, neginf, as_attributes)
    out, step = apply_pass(model, "nan-to-num")
    onnx.checker.check_model(out)
    assert step.rewritten == ["nan_to_num"] and sorted(op_types(out)) == EXACT_OPS
    x = edge_values(dtype, shape, seed)
    if as_attributes:  # ONNX float attributes hold float32: the graph itself carries the rounded value
        nan, posinf, neginf = (None if v is None else float(np.float32(v)) for v in (nan, posinf, neginf))
    want = torch.nan_to_num(torch.from_numpy(x), nan=nan, posinf=posinf, neginf=neginf).numpy()
    assert_bitwise_equal(run_single(out, x), want)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("kwargs", [{}, {"nan": 1.0, "posinf": 2.0, "neginf": -3.0}, {"nan": float("inf")}])
def test_real_export_cluster_becomes_exact_form(opset, dtype, kwargs):
    x = torch.from_numpy(edge_values(np.dtype(str(dtype).split(".")[1]), [4, 8], seed=opset))
    model = export(lambda v: torch.nan_to_num(v, **kwargs), x, opset)
    assert len(model.graph.node) == 21 and "IsInf" in op_types(model)
    out, step = apply_pass(model, "nan-to-num")
    onnx.checker.check_model(out)
    assert step.rewritten == [model.graph.node[-1].name]
    assert sorted(op_types(out)) == EXACT_OPS
    # With nan=inf the exported cluster turns NaN into posinf; torch (and the rewrite) keep inf.
    assert_bitwise_equal(run_single(out, x.numpy()), torch.nan_to_num(x, **kwargs).numpy())


@pytest.mark.parametrize("opset", [11, 13])
def test_remove_mode_wires_input_to_output(opset):
    x = torch.tensor([[1.0, -2.5, 0.0], [3e38, -0.0, 7.0]])
    model = export(torch.nan_to_num, x, opset)
    out, step = apply_pass(model, "nan-to-num", mode="remove")
    assert len(step.rewritten) == 1 and op_types(out) == ["Identity"]  # the graph output keeps its name
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    assert_bitwise_equal(run_single(out, x.numpy()), x.numpy())
    aten_out, _ = apply_pass(aten_model(np.float32, [3], nan=1.0), "nan-to-num", mode="remove")
    assert op_types(aten_out) == ["Identity"]


def test_running_twice_changes_nothing():
    model = export(torch.nan_to_num, torch.zeros(3), 13)
    once, _ = apply_pass(model, "nan-to-num")
    twice, step = apply_pass(once, "nan-to-num")
    assert step.rewritten == []
    assert [n.name for n in twice.graph.node] == [n.name for n in once.graph.node]
    removed, step = apply_pass(once, "nan-to-num", mode="remove")  # our own form is recognised too
    assert len(step.rewritten) == 1 and op_types(removed) == ["Identity"]


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("values", [(-0.0, -0.0, -0.0), (-0.0, 1.0, None), (None, -0.0, 2.0), (1.0, None, -0.0)])
def test_negative_zero_replacements_keep_their_sign(values, dtype, opset):
    """ONNX Runtime's Where drops the sign of a -0.0 it selects from its second input; a sign Mul keeps it."""
    nan, posinf, neginf = values
    out, step = apply_pass(aten_model(dtype, [12], opset, nan, posinf, neginf), "nan-to-num")
    onnx.checker.check_model(out)
    assert step.rewritten == ["nan_to_num"] and op_types(out).count("Mul") == values.count(-0.0)
    x = edge_values(dtype, [12], seed=opset)
    x[:3] = [np.nan, np.inf, -np.inf]
    want = torch.nan_to_num(torch.from_numpy(x), nan=nan, posinf=posinf, neginf=neginf).numpy()
    assert_bitwise_equal(run_single(out, x), want)
    twice, again = apply_pass(out, "nan-to-num")
    assert again.rewritten == [] and op_types(twice) == op_types(out)


def test_two_chained_clusters_are_two_sites():
    x = torch.tensor([np.nan, np.inf, -np.inf, 2.0])
    model = export(lambda v: torch.nan_to_num(torch.nan_to_num(v, nan=np.inf) * 2, posinf=5.0), x, 11)
    out, step = apply_pass(model, "nan-to-num")
    assert len(step.rewritten) == 2
    want = torch.nan_to_num(torch.nan_to_num(x, nan=np.inf) * 2, posinf=5.0)
    assert_bitwise_equal(run_single(out, x.numpy()), want.numpy())


def test_unrelated_isnan_where_users_are_left_alone():
    nodes = [helper.make_node("IsNaN", ["x"], ["isnan"], name="isnan"),
             helper.make_node("Where", ["isnan", "zero", "x"], ["clean"], name="where"),
             helper.make_node("Cast", ["isnan"], ["mask"], name="mask", to=onnx.TensorProto.FLOAT)]
    model = make_model(nodes, [("x", np.float32, [4])], [("clean", np.float32, [4]), ("mask", np.float32, [4])],
                       initializers={"zero": np.zeros(1, np.float32)})
    out, step = apply_pass(model, "nan-to-num")
    assert step.rewritten == [] and op_types(out) == ["IsNaN", "Where", "Cast"]


def test_shared_intermediate_keeps_its_other_user():
    x = torch.tensor([np.nan, np.inf, -np.inf, 1.0])
    model = export(lambda v: torch.nan_to_num(v), x, 11)
    first_stage = model.graph.node[2].output[0]  # Where(IsNaN(x), 0, x), also made a graph output here
    model.graph.output.append(helper.make_tensor_value_info(first_stage, onnx.TensorProto.FLOAT, [4]))
    out, step = apply_pass(model, "nan-to-num")
    y, stage = run_ort(out, {out.graph.input[0].name: x.numpy()})
    assert len(step.rewritten) == 1
    assert_bitwise_equal(y, torch.nan_to_num(x).numpy())
    assert_bitwise_equal(stage, torch.where(x.isnan(), 0.0, x).numpy())


def test_integer_input_is_a_copy():
    out, step = apply_pass(aten_model(np.int64, [3]), "nan-to-num")
    x = np.array([-(2**63), 0, 2**63 - 1])
    assert step.rewritten == ["nan_to_num"] and op_types(out) == ["Identity"]
    np.testing.assert_array_equal(run_single(out, x), x)


def test_non_constant_replacement_is_a_clear_error():
    model = aten_model(np.float32, [3], nan=0.0)
    model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info("nan", onnx.TensorProto.DOUBLE, []))
    with pytest.raises(Exception, match="'nan_to_num'.*nan .input 1. is not a constant"):
        apply_pass(model, "nan-to-num")


def test_cluster_is_recognised_after_onnxsim():
    onnxsim = pytest.importorskip("onnxsim")
    x = torch.tensor([np.nan, np.inf, -np.inf, 1.0, -0.0])
    simplified, ok = onnxsim.simplify(export(torch.nan_to_num, x, 11))
    assert ok and "And" in op_types(simplified)  # onnxsim drops torch's bool Casts, keeps the rest
    out, step = apply_pass(simplified, "nan-to-num")
    assert len(step.rewritten) == 1 and sorted(op_types(out)) == EXACT_OPS
    assert_bitwise_equal(run_single(out, x.numpy()), torch.nan_to_num(x).numpy())


def test_aten_input_of_unknown_dtype_is_a_clear_error():
    model = aten_model(np.float32, [3], nan=1.0, posinf=2.0, neginf=-2.0)
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
    with pytest.raises(Exception, match="'nan_to_num': cannot tell the dtype"):
        apply_pass(model, "nan-to-num")


def bfloat16_model(opset, nan=None, posinf=None, neginf=None):
    """ATen(nan_to_num) on bfloat16, float32 at the graph's boundary (ONNX Runtime's Python API feeds no bfloat16)."""
    model = aten_model(np.float32, [12], opset, nan, posinf, neginf)
    graph = model.graph
    graph.node[0].input[0], graph.node[0].output[0] = "x_bf16", "y_bf16"
    graph.node.insert(0, helper.make_node("Cast", ["x"], ["x_bf16"], name="to_bf16", to=onnx.TensorProto.BFLOAT16))
    graph.node.append(helper.make_node("Cast", ["y_bf16"], ["y"], name="to_float", to=onnx.TensorProto.FLOAT))
    graph.value_info.append(helper.make_tensor_value_info("x_bf16", onnx.TensorProto.BFLOAT16, [12]))
    return model


def bfloat16_values(seed):
    x = edge_values(np.float32, [12], seed).astype(np.float32)
    x[:4] = [np.nan, np.inf, -np.inf, -0.0]
    return torch.from_numpy(x).bfloat16().float().numpy()  # values bfloat16 holds


@pytest.mark.parametrize("opset", [13, 17])  # Cast takes bfloat16 from opset 13
@pytest.mark.parametrize("values", [(None, None, None), (1.5, 1e39, -0.0), (-0.0, -2.0, None)])
def test_bfloat16_matches_torch_bitwise(opset, values):
    """bfloat16 is a float (ml_dtypes' type is no np.floating): ONNX Runtime has no bfloat16 Equal/IsNaN/Where,
    so the rewrite runs in float32 between Casts; torch's defaults are bfloat16's own max/min (3.3895e38)."""
    nan, posinf, neginf = values
    out, step = apply_pass(bfloat16_model(opset, nan, posinf, neginf), "nan-to-num")
    onnx.checker.check_model(out, full_check=True)
    assert step.rewritten == ["nan_to_num"] and "IsNaN" in op_types(out)
    x = bfloat16_values(opset)
    want = torch.nan_to_num(torch.from_numpy(x).bfloat16(), nan=nan, posinf=posinf, neginf=neginf).float().numpy()
    assert_bitwise_equal(run_single(out, x), want)
    twice, again = apply_pass(out, "nan-to-num")
    assert again.rewritten == [] and op_types(twice) == op_types(out)


def test_bfloat16_export_cluster_matches_torch_bitwise():
    x = torch.from_numpy(bfloat16_values(0))
    model = export(lambda v: torch.nan_to_num(v.bfloat16()).float(), x, 13)
    out, step = apply_pass(model, "nan-to-num")
    onnx.checker.check_model(out, full_check=True)
    assert len(step.rewritten) == 1 and "IsInf" not in op_types(out)
    assert_bitwise_equal(run_single(out, x.numpy()), torch.nan_to_num(x.bfloat16()).float().numpy())


def test_bfloat16_stays_bfloat16_where_target_and_opset_take_it():
    out, step = apply_pass(bfloat16_model(17), "nan-to-num", target="tensorrt-10")
    onnx.checker.check_model(out, full_check=True)
    ops = op_types(out)
    assert step.rewritten == ["nan_to_num"] and "IsNaN" in ops and ops.count("Cast") == 2  # the model's own two

"""any-all: ATen any/all and torch's exported ReduceSum clusters against torch.any/torch.all, exactly."""
from __future__ import annotations


import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from surgeon.testing import apply_pass, export_torch, make_model, op_types, run_ort

torch = pytest.importorskip("torch")

REDUCTION = {"any": "ReduceMax", "all": "ReduceMin"}


def export(fn, x, opset):
    return export_torch(fn, x, opset=opset)


def torch_reduce(kind, x, dim, keepdim):
    fn = getattr(torch, kind)
    tensor = torch.from_numpy(x)
    return (fn(tensor) if dim is None else fn(tensor, dim=dim, keepdim=keepdim)).numpy()


def aten_model(kind, dtype, shape, opset, dim=None, keepdim=None, as_attributes=False):
    """ATen any/all with dim/keepdim as constant inputs (omitted: torch's None) or as attributes."""
    as_attributes = as_attributes and dim != []  # onnx-graphsurgeon cannot export an empty-list attribute
    inputs, initializers, attrs = ["x"], {}, []
    for name, value in (("dim", dim), ("keepdim", keepdim)):
        if as_attributes and value is not None:
            kind_of = onnx.AttributeProto.INTS if isinstance(value, list) else onnx.AttributeProto.INT
            attrs.append(helper.make_attribute(name, value, attr_type=kind_of))
        elif not as_attributes:
            inputs.append(name if value is not None else "")
            if value is not None:
                initializers[name] = np.array(value, np.int64 if name == "dim" else np.bool_)
    node = helper.make_node("ATen", inputs, ["y"], name=f"aten_{kind}", domain="org.pytorch.aten",
                            operator=kind, overload_name="dim" if dim is not None else "")
    node.attribute.extend(attrs)
    out_dtype = np.uint8 if dtype == np.uint8 else np.bool_
    return make_model([node], [("x", dtype, shape)], [("y", out_dtype, None)], initializers=initializers,
                      opset=opset)


def check_against_torch(model, kind, x, dim, keepdim, **params):
    out, step = apply_pass(model, "any-all", **params)
    onnx.checker.check_model(out)
    got = run_ort(out, {out.graph.input[0].name: x})[0]
    want = torch_reduce(kind, x, dim, keepdim)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    return out, step


def sample(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.random(shape) < rng.choice([0.05, 0.5, 0.95])
    pool = {np.float32: [0.0, -0.0, np.nan, np.inf, -1.5], np.int64: [0, -(2**63), -1, 2**40],
            np.uint8: [0, 1, 255]}[dtype]
    return rng.choice(np.array(pool, dtype), size=shape)


shapes_and_dims = st.sampled_from([([4, 5], None), ([4, 5], 1), ([2, 3, 4], -1), ([2, 3, 4], [0, 2]),
                                   ([2, 0, 3], 1), ([2, 0, 3], None), ([2, 0, 3], 0), ([1, 1], 0), ([3, 2], []),
                                   ([5], 0)])


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["any", "all"]), dtype=st.sampled_from([np.bool_, np.float32, np.int64, np.uint8]),
       opset=st.sampled_from([11, 13, 18]), shape_dim=shapes_and_dims, keepdim=st.booleans(),
       as_attributes=st.booleans(), seed=st.integers(0, 2**16))
def test_aten_forms_match_torch_exactly(kind, dtype, opset, shape_dim, keepdim, as_attributes, seed):
    shape, dim = shape_dim
    model = aten_model(kind, dtype, shape, opset, dim, keepdim if dim is not None else None, as_attributes)
    out, step = check_against_torch(model, kind, sample(dtype, shape, seed), dim, keepdim)
    assert step.rewritten == [f"aten_{kind}"] and "ATen" not in op_types(out)
    assert (REDUCTION[kind] in op_types(out)) == (dim != [])


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_axes_attribute_before_18_and_input_from_18(opset):
    out, _ = apply_pass(aten_model("any", np.bool_, [2, 3], opset, dim=1, keepdim=True), "any-all")
    reduce = next(n for n in out.graph.node if n.op_type == "ReduceMax")
    assert (len(reduce.input) == 2) == (opset >= 18)
    assert any(a.name == "axes" for a in reduce.attribute) == (opset < 18)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("kind", ["any", "all"])
@pytest.mark.parametrize("dim, keepdim", [(None, False), (1, True), (-1, False)])
@pytest.mark.parametrize("shape", [[3, 4, 5], [2, 0, 3], [1, 1, 1]])
def test_real_exports_match_torch(opset, kind, dim, keepdim, shape):
    x = torch.from_numpy(sample(np.bool_, shape, seed=len(shape) + opset))
    fn = getattr(torch, kind)
    model = export((lambda v: fn(v)) if dim is None else (lambda v: fn(v, dim=dim, keepdim=keepdim)), x, opset)
    assert "ReduceSum" in op_types(model)
    out, step = check_against_torch(model, kind, x.numpy(), dim, keepdim)
    assert step.rewritten == [model.graph.node[-1].name]
    assert "ReduceSum" not in op_types(out) and REDUCTION[kind] in op_types(out)
    again, second = apply_pass(out, "any-all")
    assert second.rewritten == [] and op_types(again) == op_types(out)


def test_match_exported_false_keeps_torch_cluster():
    model = export(torch.any, torch.zeros(3, dtype=torch.bool), 13)
    out, step = apply_pass(model, "any-all", match_exported=False)
    assert step.rewritten == [] and op_types(out) == op_types(model)


def test_sum_of_floats_is_not_an_any():
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=onnx.TensorProto.INT64, name="cast"),
             helper.make_node("ReduceSum", ["c"], ["s"], keepdims=0, name="sum"),
             helper.make_node("Greater", ["s", "zero"], ["y"], name="positive")]
    model = make_model(nodes, [("x", np.float32, [4])], [("y", np.bool_, [])],
                       initializers={"zero": np.array(0, np.int64)})
    out, step = apply_pass(model, "any-all")
    assert step.rewritten == [] and op_types(out) == ["Cast", "ReduceSum", "Greater"]


def test_non_constant_dim_is_a_clear_error():
    model = aten_model("any", np.bool_, [2, 3], 11, dim=1, keepdim=False)
    model.graph.initializer.pop(0)
    model.graph.input.append(helper.make_tensor_value_info("dim", onnx.TensorProto.INT64, []))
    with pytest.raises(Exception, match="'aten_any'.*dim .input 1. is not a constant"):
        apply_pass(model, "any-all")


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_invalid_export_of_all_on_non_bool_is_repaired(dtype):
    x = torch.tensor([[0.5, 1.0, -2.0], [3.0, 0.0, 1.0]]).to(dtype)
    model = export(lambda v: torch.all(v, dim=1), x, 13)
    with pytest.raises(Exception, match="Not"):  # torch applies Not to the non-bool tensor
        run_ort(model, {model.graph.input[0].name: x.numpy()})
    check_against_torch(model, "all", x.numpy(), 1, False)


def test_float_any_is_opt_in():
    x = torch.tensor([[0.5, 0.0], [-1.0, 1.0], [np.nan, 0.0], [0.0, 0.0]])
    model = export(lambda v: torch.any(v, dim=1), x, 13)
    exported = run_ort(model, {model.graph.input[0].name: x.numpy()})[0]
    assert not exported.any()  # torch's export truncates to int64: every row reads false
    out, step = apply_pass(model, "any-all")
    assert step.rewritten == [] and op_types(out) == op_types(model)
    _, step = check_against_torch(model, "any", x.numpy(), 1, False, float_any=True)
    assert len(step.rewritten) == 1


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("dim", [-1, None])
def test_mask_count_is_summed_in_float_where_the_target_lacks_int_reducesum(opset, dim):
    count = (lambda m: m.sum(-1)) if dim == -1 else (lambda m: m.sum())
    mask = np.random.default_rng(opset).random((3, 4, 6)) > 0.4
    model = export_torch(count, torch.from_numpy(mask), opset=opset)
    assert "ReduceSum" in op_types(model)
    out, step = apply_pass(model, "any-all", target="tensorrt-8.6")
    assert len(step.rewritten) == 1 and op_types(out)[-1] == "Cast"
    reduce_sum = next(n for n in out.graph.node if n.op_type == "ReduceSum")
    cast = next(n for n in out.graph.node if n.output[0] == reduce_sum.input[0])
    assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
    onnx.checker.check_model(out, full_check=True)
    got = run_ort(out, {model.graph.input[0].name: mask})[0]
    want = count(torch.from_numpy(mask)).numpy()
    assert got.dtype == want.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_mask_count_is_kept_where_the_target_sums_integers_or_the_extent_is_unknown():
    mask = torch.zeros(3, 4, dtype=torch.bool)
    model = export_torch(lambda m: m.sum(-1), mask, opset=13)
    _, kept = apply_pass(model, "any-all", target="onnxruntime")
    assert kept.rewritten == [] and not kept.notes
    dynamic = export_torch(lambda m: m.sum(-1), mask, opset=13, input_names=["m"], dynamic_axes={"m": [1]})
    _, unknown = apply_pass(dynamic, "any-all", target="tensorrt-8.6")
    assert unknown.rewritten == [] and "below 2**24" in unknown.notes[0]


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("dim, keepdim", [([-1], False), ([-3, -1], True), (None, False), (None, True)])
@pytest.mark.parametrize("shape", [[2, 0, 3], [2, 4, 3]])
def test_mask_count_of_an_empty_mask_has_torchs_shape(shape, dim, keepdim, opset):
    """The float ReduceSum names its axes, non-negative: ONNX Runtime returns an empty input unreduced over
    a negative axis."""
    axes = {} if dim is None else {"axes": dim}
    cast = helper.make_node("Cast", ["m"], ["counted"], to=onnx.TensorProto.INT64)
    if opset >= 13 and axes:
        reduce_sum = helper.make_node("ReduceSum", ["counted", "axes"], ["n"], keepdims=int(keepdim))
    else:
        reduce_sum = helper.make_node("ReduceSum", ["counted"], ["n"], keepdims=int(keepdim), **axes)
    initializers = {"axes": np.array(dim, np.int64)} if opset >= 13 and axes else {}
    model = make_model([cast, reduce_sum], [("m", np.bool_, shape)], [("n", np.int64, None)],
                       initializers=initializers, opset=opset)
    out, step = apply_pass(model, "any-all", target="tensorrt-8.6")
    assert len(step.rewritten) == 1
    mask = np.random.default_rng(0).random(shape) > 0.5
    got = run_ort(out, {"m": mask})[0]
    tensor = torch.from_numpy(mask)
    want = (tensor.sum() if dim is None and not keepdim else tensor.sum(dim=dim or [0, 1, 2], keepdim=keepdim))
    assert got.dtype == np.int64 and got.shape == tuple(want.shape)
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("dim", [None, 1])
def test_exported_all_of_uint8_keeps_its_declared_bool_output(dim, opset):
    """torch exports all(uint8) with a bool output; the rewrite ends in that type, not torch's uint8."""
    x = torch.tensor([[1, 2, 0], [3, 255, 7]], dtype=torch.uint8)
    fn = (lambda t: torch.all(t)) if dim is None else (lambda t: torch.all(t, dim=dim))
    model = export_torch(fn, x, opset=opset, input_names=["x"])
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    out, step = apply_pass(model, "any-all", target="onnxruntime")
    assert len(step.rewritten) == 1
    onnx.checker.check_model(out, full_check=True)
    got = run_ort(out, {"x": x.numpy()})[0]
    want = fn(x).numpy()
    assert got.dtype == np.bool_ and got.shape == want.shape
    np.testing.assert_array_equal(got, want.astype(np.bool_))


ZERO_D_ELEMENTS = {np.bool_: [False, True], np.float32: [0.0, -0.0, np.nan, 0.5], np.uint8: [0, 255]}


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("dtype", list(ZERO_D_ELEMENTS))
@pytest.mark.parametrize("dim", [0, -1, [-1], None])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("kind", ["any", "all"])
def test_zero_d_input_reduces_to_the_truth_of_its_element(kind, keepdim, dim, dtype, opset):
    # torch wraps dim 0 / -1 of a 0-d tensor: the result is the element's truth, 0-d, keepdim or not.
    model = aten_model(kind, dtype, [], opset, dim, keepdim if dim is not None else None)
    for element in ZERO_D_ELEMENTS[dtype]:
        out, step = check_against_torch(model, kind, np.array(element, dtype), dim, keepdim)
        assert step.rewritten == [f"aten_{kind}"]


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("dim", [0, -1])
@pytest.mark.parametrize("kind", ["any", "all"])
def test_real_export_on_a_zero_d_input_is_repaired(kind, dim, opset):
    fn = getattr(torch, kind)
    model = export(lambda v: fn(v, dim=dim), torch.tensor(True), opset)
    name = model.graph.input[0].name
    with pytest.raises(Exception, match="axis must be in"):  # torch reduces the rank-0 input over axis 0
        run_ort(model, {name: np.array(True)})
    for element in (False, True):
        out, step = check_against_torch(model, kind, np.array(element), dim, False)
        assert len(step.rewritten) == 1 and not {"ReduceSum", "ReduceMax", "ReduceMin"} & set(op_types(out))


@pytest.mark.parametrize("shape, dim", [([2, 3], 2), ([2, 3], [0, -3]), ([], 1), ([], -2)])
def test_dim_out_of_range_is_a_clear_error(shape, dim):
    model = aten_model("all", np.bool_, shape, 13, dim, False)
    with pytest.raises(Exception, match=rf"'aten_all': all over dim -?\d of a rank-{len(shape)} input, outside"):
        apply_pass(model, "any-all")

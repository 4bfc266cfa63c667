"""atan2: the rewrite matches torch.atan2 (1e-6 absolute, float32) in every quadrant, on the axes, at
signed zeros and infinities, for ATen nodes from a real export and for custom Atan2 nodes."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import helper

from surgeon.testing import apply_pass, export_torch, make_model, op_types, run_ort

torch = pytest.importorskip("torch")

ATOL = 1e-6
EDGES = np.array([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 1e-45, -1e-45, 1e30, -1e30, 3.5, -2.25,
                  np.inf, -np.inf, np.nan], np.float32)


def atan2_model(domain="org.pytorch.aten", op="ATen", opset=11):
    attrs = {"operator": "atan2", "overload_name": ""} if op == "ATen" else {}
    node = helper.make_node(op, ["y", "x"], ["angle"], name="atan2_node", domain=domain, **attrs)
    return make_model([node], [("y", np.float32, [None]), ("x", np.float32, [None])],
                      [("angle", np.float32, [None])], opset=opset)


def assert_matches_torch(model, y, x, signed_zeros=True):
    got = run_ort(model, {"y": y, "x": x})[0]
    want = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)  # NaN must meet NaN
    if signed_zeros:
        both = ~np.isnan(want)
        np.testing.assert_array_equal(np.signbit(got[both]), np.signbit(want[both]))


def exported_aten_atan2(opset):
    """torch 2.13 decomposes atan2 itself; older exporters emitted ATen(atan2), which the fallback
    symbolic reproduces through torch's own exporter."""
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    class Angle(torch.nn.Module):
        def forward(self, y, x):
            return torch.atan2(y, x)

    register_custom_op_symbolic("aten::atan2", lambda g, y, x: g.at("atan2", y, x), opset)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Angle(), (torch.ones(4), torch.ones(4)), buffer, dynamo=False, opset_version=opset,
                              operator_export_type=torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK,
                              input_names=["y", "x"], output_names=["angle"], dynamic_axes={"y": [0], "x": [0]})
    finally:
        unregister_custom_op_symbolic("aten::atan2", opset)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("opset", [11, 13])
def test_exported_aten_atan2_matches_torch_on_all_edge_pairs(opset):
    model = exported_aten_atan2(opset)
    assert "ATen" in op_types(model)
    out, step = apply_pass(model, "atan2", target="opset-11" if opset == 11 else "onnxruntime")
    assert len(step.rewritten) == 1
    assert "ATen" not in op_types(out) and "Sigmoid" not in op_types(out)
    onnx.checker.check_model(out)
    y, x = (grid.ravel() for grid in np.meshgrid(EDGES, EDGES))
    assert_matches_torch(out, y, x)


def test_axes_origin_and_tiny_x_give_torch_values_exactly_where_torch_is_exact():
    out, _ = apply_pass(atan2_model(), "atan2")
    y = np.array([1, -1, 0, 0, -0.0, -0.0, 1, np.inf, np.inf], np.float32)
    x = np.array([0, 0, 1, -1, 1, -1, 1e-30, np.inf, -np.inf], np.float32)
    got = run_ort(out, {"y": y, "x": x})[0]
    pi = np.float32(np.pi)
    want = np.array([pi / 2, -pi / 2, 0, pi, -0.0, -pi, pi / 2, pi / 4, 3 * pi / 4], np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    assert np.signbit(got[4])


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(width=32, allow_nan=True)),
       st.data())
def test_random_values_match_torch(y, data):
    x = data.draw(hnp.arrays(np.float32, y.shape, elements=st.floats(width=32, allow_nan=True)))
    assert_matches_torch(REWRITTEN, y, x)


REWRITTEN = apply_pass(atan2_model(), "atan2")[0]


@pytest.mark.parametrize("domain", ["", "mmdeploy", "custom.ops"])
def test_custom_atan2_op_in_any_domain_is_rewritten(domain):
    model = atan2_model(domain=domain, op="Atan2")
    out, step = apply_pass(model, "atan2")
    assert step.rewritten == ["atan2_node"]
    assert "Atan2" not in op_types(out)
    y, x = (grid.ravel() for grid in np.meshgrid(EDGES, EDGES))
    assert_matches_torch(out, y, x)


def test_mmdeploy_atan2_in_an_if_body_is_noted_and_checks_fix_is_this_pass(tmp_path):
    """The pass rewrites mmdeploy::Atan2 in the main graph, so it declares it: inside a body the step notes it
    as left, and `surgeon check` names this pass as its fix."""
    from surgeon.pipeline import run_recipe
    from surgeon.registry import passes_handling

    body = helper.make_graph([helper.make_node("Atan2", ["y", "x"], ["angle"], name="site", domain="mmdeploy")],
                             "then", [], [helper.make_tensor_value_info("angle", onnx.TensorProto.FLOAT, [2])])
    branch = helper.make_node("If", ["c"], ["r"], name="if", then_branch=body, else_branch=body)
    model = make_model([branch], [("c", np.bool_, []), ("y", np.float32, [2]), ("x", np.float32, [2])],
                       [("r", np.float32, [2])], opset=13, extra_opsets={"mmdeploy": 1})
    onnx.save(model, tmp_path / "m.onnx")
    result = run_recipe({"name": "t", "steps": [{"pass": "atan2"}]}, tmp_path / "m.onnx", dry_run=True,
                        validate=False, quiet=True)
    assert sorted(note.split(": left")[0] for note in result.steps[0].notes) == [
        "if/else_branch/site (mmdeploy::Atan2)", "if/then_branch/site (mmdeploy::Atan2)"]
    assert [c.name for c in passes_handling("mmdeploy::Atan2")] == ["atan2"]


def test_without_signed_zeros_only_negative_zero_inputs_differ():
    out, _ = apply_pass(atan2_model(), "atan2", signed_zeros=False)
    y, x = (grid.ravel() for grid in np.meshgrid(EDGES, EDGES))
    plain = ~(((y == 0) & np.signbit(y)) | ((x == 0) & np.signbit(x)))
    assert_matches_torch(out, y[plain], x[plain])
    exact, _ = apply_pass(atan2_model(), "atan2")
    assert len(out.graph.node) == len(exact.graph.node) - 4


def test_second_run_and_graph_without_atan2_change_nothing():
    out, _ = apply_pass(atan2_model(), "atan2")
    again, step = apply_pass(out, "atan2")
    assert step.rewritten == []
    assert op_types(again) == op_types(out)


def test_integer_atan2_is_left_with_a_note():
    node = helper.make_node("Atan2", ["y", "x"], ["angle"], name="int_atan2")
    model = make_model([node], [("y", np.int32, [3]), ("x", np.int32, [3])], [("angle", np.int32, [3])])
    _, step = apply_pass(model, "atan2")
    assert step.rewritten == [] and "int_atan2" in step.notes[0]


def test_integer_atan2_with_no_recorded_type_notes_torchs_float_result():
    """torch.atan2(int8, uint8) is float32 (torch's default float), not torch.result_type's int16."""
    node = helper.make_node("ATen", ["y", "x"], ["angle"], name="int_atan2", domain="org.pytorch.aten",
                            operator="atan2")
    model = make_model([node], [("y", np.int8, [3]), ("x", np.uint8, [3])], [("angle", np.float32, None)])
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
    _, step = apply_pass(model, "atan2")
    assert step.rewritten == [] and "default float type" in step.notes[0] and "int16" not in step.notes[0]


def test_scalar_inputs_give_a_scalar_output():
    node = helper.make_node("Atan2", ["y", "x"], ["angle"], name="atan2_node")
    model = make_model([node], [("y", np.float32, []), ("x", np.float32, [])], [("angle", np.float32, [])])
    out, _ = apply_pass(model, "atan2")
    got = run_ort(out, {"y": np.array(-1, np.float32), "x": np.array(-1, np.float32)})[0]
    assert got.shape == () and got == np.float32(-3 * np.pi / 4)


def exported_decomposed_atan2(opset):
    class Angle(torch.nn.Module):
        def forward(self, y, x):
            return torch.atan2(y, x)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Angle(), (torch.ones(4), torch.ones(4)), buffer, dynamo=False, opset_version=opset,
                          input_names=["y", "x"], output_names=["angle"], dynamic_axes={"y": [0], "x": [0]})
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("opset", [11, 13])
def test_torch_own_atan2_export_is_replaced_because_it_is_wrong_on_the_axes(opset):
    model = exported_decomposed_atan2(opset)
    y = np.array([0, 0, 1, -1], np.float32)
    x = np.array([0, -1, -1, -1], np.float32)
    exported = run_ort(model, {"y": y, "x": x})[0]
    assert np.isnan(exported[0]) and exported[1] == np.float32(-np.pi)  # torch: 0 and pi
    out, step = apply_pass(model, "atan2")
    assert len(step.rewritten) == 1 and op_types(out).count("Atan") == 1
    grid_y, grid_x = (grid.ravel() for grid in np.meshgrid(EDGES, EDGES))
    assert_matches_torch(out, grid_y, grid_x)
    _, kept = apply_pass(model, "atan2", match_exported=False)
    assert kept.rewritten == []


def test_a_near_miss_of_torchs_own_export_is_noted():
    model = exported_decomposed_atan2(13)
    greater = next(n for n in model.graph.node if n.op_type == "Greater")
    greater.input[0] = "x"  # not y's sign: not atan2
    out, step = apply_pass(model, "atan2")
    where = next(n.name for n in model.graph.node if n.op_type == "Where" and n.output[0] == model.graph.output[0].name)
    assert step.rewritten == [] and op_types(out) == op_types(model)
    assert step.notes == [f"{where}: left alone, Where(Less, Where, Atan(Div)) as torch's atan2 export writes, but "
                          "its Less, Greater, Add or Sub do not read the Div's operands (or Casts of them that keep "
                          "every sign), the Atan, 0 and pi as that export does"]


def export_comparing_casts(to):
    """torch's atan2 export with float32 operands, but its Less and Greater reading Cast(x, to), Cast(y, to)."""
    nodes = [helper.make_node("Cast", ["x"], ["x_cast"], to=helper.np_dtype_to_tensor_dtype(np.dtype(to))),
             helper.make_node("Cast", ["y"], ["y_cast"], to=helper.np_dtype_to_tensor_dtype(np.dtype(to))),
             helper.make_node("Div", ["y", "x"], ["ratio"]), helper.make_node("Atan", ["ratio"], ["a"]),
             helper.make_node("Less", ["x_cast", "zero"], ["x_negative"]),
             helper.make_node("Greater", ["y_cast", "zero"], ["y_positive"]),
             helper.make_node("Add", ["a", "pi"], ["a_plus"]), helper.make_node("Sub", ["a", "pi"], ["a_minus"]),
             helper.make_node("Where", ["y_positive", "a_plus", "a_minus"], ["shifted"]),
             helper.make_node("Where", ["x_negative", "shifted", "a"], ["angle"], name="where")]
    return make_model(nodes, [("y", np.float32, ["n"]), ("x", np.float32, ["n"])], [("angle", np.float32, ["n"])],
                      {"zero": np.array(0, to), "pi": np.float32(np.pi)}, opset=17)


@pytest.mark.parametrize("to", [np.int64, np.uint8, np.float16])
def test_comparisons_through_a_cast_that_changes_signs_are_not_atan2(to):
    """float -> int64 truncates (-0.5 -> 0), -> uint8 wraps negatives, -> float16 flushes 1e-30 to 0: the
    comparisons then read other signs than the Div's, so what the graph computes is not atan2's."""
    model = export_comparing_casts(to)
    out, step = apply_pass(model, "atan2")
    assert step.rewritten == [] and op_types(out) == op_types(model)
    assert len(step.notes) == 1 and step.notes[0].startswith("where: left alone, Where(Less, Where, Atan(Div))")
    feed = {"y": np.float32([1, 2, -1, 1e-30]), "x": np.float32([-0.5, -0.25, -0.9, -2])}
    np.testing.assert_array_equal(run_ort(out, feed)[0], run_ort(model, feed)[0])


def test_comparisons_through_a_widening_cast_are_atan2():
    out, step = apply_pass(export_comparing_casts(np.float64), "atan2")
    assert step.rewritten == ["where"]
    grid_y, grid_x = (grid.ravel() for grid in np.meshgrid(EDGES, EDGES))
    assert_matches_torch(out, grid_y, grid_x)


class _Atan2(torch.nn.Module):
    def forward(self, y, x):
        return torch.atan2(y, x)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_torch_own_float16_export_is_replaced(opset):
    """torch's float16 export holds pi as float16 3.140625: matched as pi rounded to the constant's own type.
    Edge grid: equal to torch bit for bit (computed in float32, rounded once, as torch does)."""
    y, x = (torch.from_numpy(grid.ravel()).half() for grid in np.meshgrid(EDGES, EDGES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        torch.onnx.export(_Atan2(), (y, x), buffer, dynamo=False, opset_version=opset, input_names=["y", "x"],
                          output_names=["angle"])
    model = onnx.load_from_string(buffer.getvalue())
    out, step = apply_pass(model, "atan2")
    assert len(step.rewritten) == 1 and op_types(out).count("Atan") == 1
    got = run_ort(out, {"y": y.numpy(), "x": x.numpy()})[0]
    want = torch.atan2(y, x).numpy()
    np.testing.assert_array_equal(got, want)
    both = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[both]), np.signbit(want[both]))


def test_integer_operand_is_rounded_to_float16_first_like_torch():
    """atan2(int32, float16) is float16 in torch, which rounds the integer to float16 first (2049 -> 2048,
    70000 -> inf) and then computes in float32: the rewrite casts int32 -> float16 -> float32. Bit for bit."""
    y = np.array([2049, 4097, 70000, -70000, 65519, 65520, 3, 1, 0], np.int32)
    x = np.array([2048, 4096, 1e4, 1e4, 1e4, 6e4, 0, -0.0, -1], np.float16)
    out, step = apply_pass(typed_atan2_model(np.int32, np.float16, np.float16), "atan2")
    assert step.rewritten == ["atan2_node"]
    onnx.checker.check_model(out, full_check=True)
    got = run_ort(out, {"y": y, "x": x})[0]
    want = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    assert got.dtype == want.dtype == np.float16
    np.testing.assert_array_equal(got, want)


def typed_atan2_model(dtype_y, dtype_x, out_dtype, opset=13):
    node = helper.make_node("ATen", ["y", "x"], ["angle"], name="atan2_node", domain="org.pytorch.aten",
                            operator="atan2", overload_name="")
    return make_model([node], [("y", dtype_y, [None]), ("x", dtype_x, [None])], [("angle", out_dtype, [None])],
                      opset=opset)


def operand(values, dtype):
    """`values` (EDGES pairs) as `dtype`: floats as they are (1e30 is inf in float16), bools as `!= 0`,
    integers from a fixed pool of those the type holds (2049 and 70000 round in float16), of the same length."""
    if dtype == np.bool_:
        return values != 0
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        pool = [v for v in (0, 1, -1, 3, -7, 2049, -70000, 2**40, -(2**40)) if limits.min <= v <= limits.max]
        return np.resize(np.array(pool, dtype), values.shape)
    with np.errstate(over="ignore"):
        return values.astype(dtype)


@pytest.mark.parametrize("recorded", [True, False], ids=["output-typed", "output-untyped"])
@pytest.mark.parametrize("dtype_y, dtype_x", [(np.float16, np.float32), (np.float32, np.float16),
                                              (np.int64, np.float32), (np.float32, np.bool_)])
def test_mixed_operand_types_are_promoted_like_torch(dtype_y, dtype_x, recorded):
    """torch promotes: float16 with float32 is float32, int64 with float32 float32 (1e-6 absolute, as above)."""
    y, x = (grid.ravel() for grid in np.meshgrid(EDGES, EDGES))
    y, x = operand(y, dtype_y), operand(x, dtype_x)
    want = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    model = typed_atan2_model(dtype_y, dtype_x, want.dtype)
    if not recorded:
        model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
    out, step = apply_pass(model, "atan2")
    assert step.rewritten == ["atan2_node"]
    onnx.checker.check_model(out, full_check=True)
    got = run_ort(out, {"y": y, "x": x})[0]
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    both = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[both]), np.signbit(want[both]))


def test_float16_is_computed_in_float32_where_the_target_lacks_float16_ops():
    """ONNX Runtime has no float16 Atan (nor Abs, Div, ...): the rewrite runs in float32 and rounds once, as
    torch computes float16 atan2. 100,000 random float16 bit patterns: within 1 float16 ulp of torch, and the
    edge grid exact. TensorRT runs float16 Atan, so there the rewrite stays in float16."""
    model = typed_atan2_model(np.float16, np.float16, np.float16)
    out, step = apply_pass(model, "atan2")
    types = op_types(out)
    assert step.rewritten == ["atan2_node"] and types[:2] == ["Cast", "Cast"] and types[-1] == "Cast"
    y, x = (operand(grid.ravel(), np.float16) for grid in np.meshgrid(EDGES, EDGES))
    got = run_ort(out, {"y": y, "x": x})[0]
    want = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)
    both = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[both]), np.signbit(want[both]))
    bits = np.random.default_rng(0).integers(0, 2**16, (2, 100_000)).astype(np.uint16)
    y, x = bits.view(np.float16)
    got = run_ort(out, {"y": y, "x": x})[0]
    want = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    ulps = np.abs(got[finite].view(np.int16).astype(np.int32) - want[finite].view(np.int16).astype(np.int32))
    assert ulps.max() <= 1
    on_tensorrt, _ = apply_pass(model, "atan2", target="tensorrt-10")
    assert "Cast" not in op_types(on_tensorrt)


@pytest.mark.parametrize("target, missing", [("onnxruntime", "Atan"), ("tensorrt-10", "Abs")])
def test_float64_is_left_with_a_note_where_the_target_cannot_run_it(target, missing):
    """ONNX Runtime has no double Atan kernel (measured below), TensorRT no double at all: a float64 rewrite
    would not load, and computing it in float32 would not match torch's float64."""
    model = typed_atan2_model(np.float64, np.float64, np.float64)
    out, step = apply_pass(model, "atan2", target=target)
    assert step.rewritten == [] and op_types(out) == ["ATen"]
    assert "atan2_node" in step.notes[0] and f"no float64 {missing}" in step.notes[0]
    if target == "onnxruntime":  # pins the profile: drop the note once ONNX Runtime has the kernel
        atan = make_model([helper.make_node("Atan", ["y"], ["angle"])], [("y", np.float64, [1])],
                          [("angle", np.float64, [1])])
        with pytest.raises(Exception, match="implementation for Atan"):
            run_ort(atan, {"y": np.ones(1)})


def test_float64_is_rewritten_for_a_target_that_runs_it():
    """The opset-11 profile limits no dtypes: the float64 rewrite, run by ONNX's reference evaluator, is within
    4.5e-16 (2 ulp of pi) of torch on random pairs spanning 1e-5..1e5, and exact on the edge grid's signs."""
    from onnx.reference import ReferenceEvaluator

    out, step = apply_pass(typed_atan2_model(np.float64, np.float64, np.float64, opset=11), "atan2",
                           target="opset-11")
    assert step.rewritten == ["atan2_node"] and "Cast" not in op_types(out)
    rng = np.random.default_rng(0)
    y, x = rng.standard_normal((2, 20_000)) * 10.0 ** rng.integers(-5, 6, (2, 20_000))
    edge_y, edge_x = (grid.ravel().astype(np.float64) for grid in np.meshgrid(EDGES, EDGES))
    y, x = np.concatenate([y, edge_y]), np.concatenate([x, edge_x])
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 and 1/0 inside the rewrite, as in ORT
        got = ReferenceEvaluator(out).run(None, {"y": y, "x": x})[0]
    want = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=4.5e-16)
    both = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[both]), np.signbit(want[both]))


def test_unknown_result_type_leaves_the_node_with_a_note():
    mystery = helper.make_node("Mystery", ["a"], ["y"], name="mystery", domain="custom")
    node = helper.make_node("Atan2", ["y", "x"], ["angle"], name="atan2_node")
    model = make_model([mystery, node], [("a", np.float32, [3]), ("x", np.float32, [3])],
                       [("angle", np.float32, [3])])
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.UNDEFINED
    out, step = apply_pass(model, "atan2")
    assert step.rewritten == [] and "Atan2" in op_types(out)
    assert "atan2_node" in step.notes[0] and "unknown" in step.notes[0]


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("dtype_y, dtype_x", [(np.int32, np.float16), (np.float16, np.int64), (np.int64, np.float32),
                                              (np.float16, np.float32)])
def test_torch_own_export_of_mixed_operand_types_is_replaced(dtype_y, dtype_x, opset):
    """torch's own export Casts mixed operands apart for the Div and for each comparison (int32 y, float16 x:
    Div(Cast(y, float16), x), Greater(Cast(y, int64), 0)): matched through those Casts. float16 results bit for
    bit, float32 within 1e-6 absolute (as above), signs of zeros as torch's."""
    y, x = (operand(grid.ravel(), dtype) for grid, dtype in zip(np.meshgrid(EDGES, EDGES), (dtype_y, dtype_x)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = export_torch(_Atan2(), torch.from_numpy(y), torch.from_numpy(x), opset=opset, input_names=["y", "x"],
                             output_names=["angle"])
    out, step = apply_pass(model, "atan2")
    assert len(step.rewritten) == 1 and op_types(out).count("Atan") == 1
    got = run_ort(out, {"y": y, "x": x})[0]
    want = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=0 if want.dtype == np.float16 else ATOL)
    both = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[both]), np.signbit(want[both]))

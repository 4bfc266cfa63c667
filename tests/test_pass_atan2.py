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

from surgeon.testing import apply_pass, make_model, op_types, run_ort

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

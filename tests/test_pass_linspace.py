"""linspace: constant bounds give torch.linspace bit for bit; runtime bounds give a Range subgraph
within 1e-6 * max(1, |start|, |end|) (float32) of torch."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.registry import discover
from surgeon.testing import apply_pass, make_model, op_types, run_ort

torch = pytest.importorskip("torch")
FMA = torch.backends.cpu.get_cpu_capability() != "DEFAULT"  # see passes/linspace.py
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64, np.int32: torch.int32, np.int64: torch.int64}
bounds = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def torch_linspace_np(start, end, steps, dtype=np.float32):
    return torch.linspace(float(start), float(end), int(steps), dtype=TORCH_DTYPES[dtype]).numpy()


def exported_aten_linspace(opset):
    """torch 2.13 folds or decomposes linspace; older exporters emitted ATen(linspace, start, end, steps),
    which a fallback symbolic reproduces through torch's own exporter."""
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    class Grid(torch.nn.Module):
        def forward(self, bounds):
            return torch.linspace(bounds[0], bounds[1], 9)

    register_custom_op_symbolic("aten::linspace", lambda g, start, end, steps, *options: g.at("linspace", start, end,
                                                                                            steps), opset)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Grid(), (torch.tensor([-51.2, 51.2]),), buffer, dynamo=False, opset_version=opset,
                              operator_export_type=torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK,
                              input_names=["bounds"], output_names=["values"])
    finally:
        unregister_custom_op_symbolic("aten::linspace", opset)
    return onnx.load_from_string(buffer.getvalue())


def aten_linspace(inputs, initializers, out_dtype=np.float32, extra=()):
    node = helper.make_node("ATen", ["start", "end", "steps", *extra], ["values"], name="linspace_node",
                            domain="org.pytorch.aten", operator="linspace", overload_name="")
    return make_model([node], inputs, [("values", out_dtype, [None])], initializers=initializers)


def test_constant_aten_linspace_becomes_a_bit_exact_initializer():
    # torch's tracer folds a constant linspace before export, so this spelling is built by hand.
    model = aten_linspace([], {"start": np.float32(-51.2), "end": np.float32(51.2), "steps": np.int64(9)})
    out, step = apply_pass(model, "linspace", fused_multiply_add=FMA)
    assert step.rewritten == ["linspace_node"]
    assert "ATen" not in op_types(out) and "Range" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    got = run_ort(out, {})[0]
    np.testing.assert_array_equal(got.view(np.int32), torch_linspace_np(-51.2, 51.2, 9).view(np.int32))


@pytest.mark.parametrize("opset", [11, 13])
def test_exported_runtime_linspace_becomes_a_range_subgraph(opset):
    model = exported_aten_linspace(opset)
    out, _ = apply_pass(model, "linspace", target="opset-11" if opset == 11 else "onnxruntime")
    assert "Range" in op_types(out) and "ATen" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    for lo, hi in [(-51.2, 51.2), (3.0, -7.5), (0.0, 0.0)]:
        got = run_ort(out, {"bounds": np.array([lo, hi], np.float32)})[0]
        np.testing.assert_allclose(got, torch_linspace_np(lo, hi, 9), rtol=0, atol=1e-6 * max(1, abs(lo), abs(hi)))


@settings(max_examples=150, deadline=None)
@given(start=bounds, end=bounds, steps=st.one_of(st.integers(0, 3), st.integers(0, 5000)),
       dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
def test_constant_values_are_bit_exact_for_every_dtype(start, end, steps, dtype):
    discover()
    from surgeon.passes.linspace import torch_linspace

    got = torch_linspace(start, end, steps, dtype, fused_multiply_add=FMA)
    want = torch_linspace_np(start, end, steps, dtype)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(f"i{got.itemsize}"), want.view(f"i{want.itemsize}"))


RANGE_MODEL = aten_linspace([("start", np.float32, []), ("end", np.float32, []), ("steps", np.int64, [])], {})
RANGE_REWRITTEN = apply_pass(RANGE_MODEL, "linspace", target="opset-11")[0]


@settings(max_examples=60, deadline=None)
@given(start=bounds, end=bounds, steps=st.one_of(st.integers(0, 3), st.integers(0, 2000)))
def test_range_form_is_within_tolerance_including_steps_0_and_1(start, end, steps):
    feeds = {"start": np.array(start, np.float32), "end": np.array(end, np.float32), "steps": np.array(steps)}
    got = run_ort(RANGE_REWRITTEN, feeds)[0]
    want = torch_linspace_np(start, end, steps)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1, abs(start), abs(end)))
    if steps >= 1:
        assert got[0] == want[0]
        assert steps == 1 or got[-1] == want[-1]  # both ends are exact, as in torch


def test_range_form_casts_to_an_integer_output():
    model = aten_linspace([("start", np.int64, []), ("end", np.int64, []), ("steps", np.int64, [])], {},
                          out_dtype=np.int64)
    out, _ = apply_pass(model, "linspace")
    for start, end, steps in [(0, 10, 11), (-7, 20, 5), (5, -5, 4), (3, 3, 1)]:
        feeds = {"start": np.array(start), "end": np.array(end), "steps": np.array(steps)}
        np.testing.assert_array_equal(run_ort(out, feeds)[0], torch_linspace_np(start, end, steps, np.int64))


def test_full_aten_signature_with_dtype_code_gives_float64_constant():
    scalar_type_double = 7
    model = aten_linspace([], {"start": np.array(0.0), "end": np.array(1.0), "steps": np.array(7),
                               "dtype": np.array(scalar_type_double), "layout": np.array(0)},
                          out_dtype=np.float64, extra=("dtype", "layout"))
    out, step = apply_pass(model, "linspace")
    assert step.rewritten == ["linspace_node"]
    np.testing.assert_array_equal(run_ort(out, {})[0], torch_linspace_np(0, 1, 7, np.float64))


def test_range_mode_keeps_constant_bounds_at_runtime_and_second_run_changes_nothing():
    model = aten_linspace([], {"start": np.float32(-1), "end": np.float32(1), "steps": np.int64(5)})
    out, _ = apply_pass(model, "linspace", mode="range")
    assert "Range" in op_types(out)
    np.testing.assert_allclose(run_ort(out, {})[0], torch_linspace_np(-1, 1, 5), rtol=0, atol=1e-6)
    again, step = apply_pass(out, "linspace")
    assert step.rewritten == [] and op_types(again) == op_types(out)


def test_negative_constant_steps_is_an_error_naming_the_node():
    model = aten_linspace([], {"start": np.float32(0), "end": np.float32(1), "steps": np.int64(-2)})
    with pytest.raises(SurgeonError, match="linspace_node.*steps = -2"):
        apply_pass(model, "linspace")

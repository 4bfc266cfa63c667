"""linspace: constant bounds give torch.linspace bit for bit, and so do runtime bounds (a Range subgraph)."""
from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from surgeon.errors import SurgeonError
from surgeon.registry import discover
from surgeon.testing import apply_pass, make_model, op_types, run_ort

torch = pytest.importorskip("torch")
FMA = torch.backends.cpu.get_cpu_capability() != "DEFAULT"  # see passes/linspace.py
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64, np.int32: torch.int32, np.int64: torch.int64}
bounds = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def torch_linspace_np(start, end, steps, dtype=np.float32):
    return torch.linspace(float(start), float(end), int(steps), dtype=TORCH_DTYPES[dtype]).numpy()


def constant_model():
    """passes/linspace.py's model of torch's kernel (the constant form's values)."""
    discover()
    from surgeon.passes.linspace import torch_linspace

    return torch_linspace


def assert_same_bits(got, want):
    """Equal bit for bit (signed zeros included); NaN only where torch has NaN (its sign bit is not compared)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        got, want = got[~np.isnan(got)], want[~np.isnan(want)]
    np.testing.assert_array_equal(got.view(f"i{got.itemsize}"), want.view(f"i{want.itemsize}"))


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


def constant(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))


def folded_bounds_linspace(steps_from):
    """start = Constant(-51) + initializer(-0.2), end = Constant(2) * initializer(25.6), steps from a Cast of a
    Constant or a static dim (Shape -> Gather): constant only once folded, as exporters leave them."""
    nodes = [constant("start_a", np.array(-51.0, np.float32)),
             helper.make_node("Add", ["start_a", "start_b"], ["start"]),
             constant("end_a", np.array(2.0, np.float32)), helper.make_node("Mul", ["end_a", "end_b"], ["end"])]
    if steps_from == "cast":
        nodes += [constant("steps_float", np.array(9.0, np.float32)),
                  helper.make_node("Cast", ["steps_float"], ["steps"], to=onnx.TensorProto.INT64)]
    else:
        nodes += [helper.make_node("Shape", ["x"], ["x_shape"]), constant("zero", np.array(0, np.int64)),
                  helper.make_node("Gather", ["x_shape", "zero"], ["steps"])]
    nodes += [helper.make_node("ATen", ["start", "end", "steps"], ["values"], name="linspace_node",
                               domain="org.pytorch.aten", operator="linspace", overload_name=""),
              helper.make_node("Add", ["values", "x"], ["y"], name="use")]
    return make_model(nodes, [("x", np.float32, [9])], [("y", np.float32, [9])],
                      initializers={"start_b": np.array(-0.2, np.float32), "end_b": np.array(25.6, np.float32)})


@pytest.mark.parametrize("steps_from", ["cast", "static_dim"])
@pytest.mark.parametrize("target", ["opset-11", "tensorrt-8.6"])
def test_bounds_constant_after_folding_give_the_bit_exact_constant(steps_from, target):
    """They became ~60 Range-form nodes (TensorRT: float32 Mul/Add, one rounding off torch), since only
    initializers and Constant nodes counted as constant; fold-constants first failed on the ATen node."""
    out, step = apply_pass(folded_bounds_linspace(steps_from), "linspace", target=target, fused_multiply_add=FMA)
    assert step.rewritten == ["linspace_node"] and step.notes == [] and op_types(out) == ["Add"]
    start, end = np.float32(-51.0) + np.float32(-0.2), np.float32(2.0) * np.float32(25.6)
    got = run_ort(out, {"x": np.zeros(9, np.float32)})[0]
    assert_same_bits(got, torch_linspace_np(start, end, 9))


@pytest.mark.parametrize("opset", [11, 13])
def test_exported_runtime_linspace_becomes_a_range_subgraph(opset):
    model = exported_aten_linspace(opset)
    out, _ = apply_pass(model, "linspace", target="opset-11" if opset == 11 else "onnxruntime", fused_multiply_add=FMA)
    assert "Range" in op_types(out) and "ATen" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    for lo, hi in [(-51.2, 51.2), (3.0, -7.5), (0.0, 0.0)]:
        got = run_ort(out, {"bounds": np.array([lo, hi], np.float32)})[0]
        assert_same_bits(got, torch.linspace(torch.tensor(lo), torch.tensor(hi), 9).numpy())


@settings(max_examples=150, deadline=None)
@given(start=bounds, end=bounds, steps=st.one_of(st.integers(0, 3), st.integers(0, 5000)),
       dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
def test_constant_values_are_bit_exact_for_every_dtype(start, end, steps, dtype):
    got = constant_model()(start, end, steps, dtype, fused_multiply_add=FMA)
    want = torch_linspace_np(start, end, steps, dtype)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(f"i{got.itemsize}"), want.view(f"i{want.itemsize}"))


def range_linspace(bound_dtype, out_dtype, **params):
    """The Range form for runtime start, end, steps; returns f(start, end, steps) running one ORT session."""
    model = aten_linspace([("start", bound_dtype, []), ("end", bound_dtype, []), ("steps", np.int64, [])], {},
                          out_dtype=out_dtype)
    out, step = apply_pass(model, "linspace", target="opset-11", **{"fused_multiply_add": FMA, **params})
    assert step.rewritten == ["linspace_node"] and "Range" in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    session = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda start, end, steps: session.run(None, {"start": np.array(start, bound_dtype),
                                                        "end": np.array(end, bound_dtype),
                                                        "steps": np.array(steps, np.int64)})[0]


def torch_from_tensors(start, end, steps, bound_dtype, out_dtype):
    """torch.linspace as the exported model called it: tensor bounds of the graph's input type."""
    bounds = (torch.tensor(np.array(b, bound_dtype)) for b in (start, end))
    return torch.linspace(*bounds, int(steps), dtype=TORCH_DTYPES[out_dtype]).numpy()


RANGE_FLOAT32 = range_linspace(np.float32, np.float32)


@settings(max_examples=60, deadline=None)
@given(start=bounds, end=bounds, steps=st.one_of(st.integers(0, 3), st.integers(0, 2000)))
def test_range_form_is_bit_exact_including_steps_0_and_1(start, end, steps):
    assert_same_bits(RANGE_FLOAT32(start, end, steps), torch_linspace_np(start, end, steps))


@pytest.mark.parametrize("bound_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("out_dtype", [np.int32, np.int64])
def test_range_form_converts_float_bounds_to_the_integer_type_first(bound_dtype, out_dtype):
    # torch truncates 5.9 to 5 before the step is computed: (5 - 0) / 4 gives 3 at i = 3, not 4.
    linspace = range_linspace(bound_dtype, out_dtype)
    for start, end, steps in [(0.0, 5.9, 5), (-0.9, 3.9, 4), (0.5, 10.5, 3), (7.99, -7.99, 6)]:
        assert_same_bits(linspace(start, end, steps), torch_from_tensors(start, end, steps, bound_dtype, out_dtype))


def test_range_form_integer_output_rounds_once_like_torch():
    # An FMA build of torch rounds step * i + start once; rounding the product first, as the baseline
    # kernel does, gives -45: a whole unit off after truncation.
    linspace = range_linspace(np.int64, np.int64)
    assert torch_linspace_np(752, -842, 19, np.int64)[9] == (-44 if FMA else -45)
    for start, end, steps in [(752, -842, 19), (50, -250, 94), (-546, 428, 187), (-700, 720, 136)]:
        assert_same_bits(linspace(start, end, steps), torch_linspace_np(start, end, steps, np.int64))


def sweep_bounds(rng, bound_dtype, out_dtype, count):
    """Seeded (start, end, steps): both orders and signs, several magnitudes, steps 0, 1, 2, ... 3000."""
    largest = 2 ** 30 if np.int32 in (bound_dtype, out_dtype) else 2 ** 62
    scales = [10, 1000, 10 ** 6, largest] if np.dtype(bound_dtype).kind == "i" else [1, 10, 1000, 10 ** 6]
    for k in range(count):
        scale = scales[k % len(scales)]
        if np.dtype(bound_dtype).kind == "i":
            start, end = (int(v) for v in rng.integers(-scale, scale, 2))
        else:
            start, end = (float(bound_dtype(v)) for v in rng.uniform(-scale, scale, 2))
        yield start, end, int([rng.integers(0, 4), rng.integers(0, 300), rng.integers(0, 3000)][k % 3])


@pytest.mark.parametrize("bound_dtype", [np.int64, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("out_dtype", [np.int32, np.int64, np.float32, np.float64])
def test_range_form_is_bit_exact_over_a_seeded_sweep(bound_dtype, out_dtype):
    # 250 cases per pair, 4000 in all; measured on the old Range form: 176 of 3000 int64 cases were off by one.
    linspace = range_linspace(bound_dtype, out_dtype)
    rng = np.random.default_rng(2024)
    for start, end, steps in sweep_bounds(rng, bound_dtype, out_dtype, 250):
        assert_same_bits(linspace(start, end, steps), torch_from_tensors(start, end, steps, bound_dtype, out_dtype))


@pytest.mark.parametrize("out_dtype", [np.int32, np.int64, np.float32, np.float64])
def test_range_form_other_fma_setting_matches_the_constant_model(out_dtype):
    # The machine's torch gives only one setting; the other is checked against the constant form's model,
    # which matches torch under ATEN_CPU_CAPABILITY=default (separate rounding) and avx2/avx512 (fused).
    linspace = range_linspace(np.float64, out_dtype, fused_multiply_add=not FMA)
    rng = np.random.default_rng(7)
    for start, end, steps in sweep_bounds(rng, np.float64, out_dtype, 200):
        assert_same_bits(linspace(start, end, steps), constant_model()(start, end, steps, out_dtype, not FMA))


@pytest.mark.parametrize("dtype, start, end, steps", [
    # the float64 sum rounds onto a float32 midpoint; rounding it to odd first keeps the tie-breaking bit
    (np.float32, -3.4e38, 1.0, 7), (np.float32, 1.473120009537454e+17, -2.1768980026245117, 1857),
    (np.float32, 7.348875445036646e+16, 0.26791152358055115, 399),
    # the exact product's low part decides a tie in the final float64 addition
    (np.float64, 6.968706427828902e+16, -1.893848676429675e-17, 10),
    (np.float64, 1.7834165263954293e-18, -1.7456113367119286e+16, 11),
])
def test_range_form_rounds_like_a_fused_multiply_add_where_double_rounding_would_not(dtype, start, end, steps):
    want = torch_from_tensors(start, end, steps, dtype, dtype)
    assert_same_bits(range_linspace(dtype, dtype)(start, end, steps), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_signed_zeros_and_infinite_bounds_match_torch_in_both_forms(dtype):
    linspace = range_linspace(dtype, dtype)
    special = [0.0, -0.0, 2.5, -1.0, np.inf, -np.inf, np.nan]
    for start, end, steps in itertools.product(special, special, [0, 1, 2, 3, 6]):
        want = torch_from_tensors(start, end, steps, dtype, dtype)
        assert_same_bits(linspace(start, end, steps), want)
        assert_same_bits(constant_model()(start, end, steps, dtype, FMA), want)


def test_large_int64_bounds_keep_every_digit_for_one_step():
    linspace = range_linspace(np.int64, np.int64)
    start, end = 3644922420848034091, 252346947733585611  # above 2**53: a float64 detour would round them
    assert linspace(start, end, 1).tolist() == [start]
    assert_same_bits(linspace(start, end, 5), torch_linspace_np(start, end, 5, np.int64))


@pytest.mark.parametrize("target", ["tensorrt-8.6", "tensorrt-10"])
def test_targets_without_float64_get_float32_or_a_note(target):
    # TensorRT has no float64: float32 outputs keep a float32 form (separate rounding, as the baseline
    # kernel rounds); integer outputs, which need float64 to match torch, are left alone.
    def runtime(out_dtype):
        model = aten_linspace([("start", np.float32, []), ("end", np.float32, []), ("steps", np.int64, [])], {},
                              out_dtype=out_dtype)
        return apply_pass(model, "linspace", target=target)

    out, step = runtime(np.float32)
    assert step.rewritten == ["linspace_node"] and "may differ from torch by one rounding" in step.notes[0]
    made = [a.i for n in out.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    assert onnx.TensorProto.DOUBLE not in made + [t.data_type for t in out.graph.initializer]
    for start, end, steps in [(-51.2, 51.2, 9), (752.0, -842.0, 19), (0.5, 0.5, 1), (3.0, -7.5, 0)]:
        feeds = {"start": np.array(start, np.float32), "end": np.array(end, np.float32), "steps": np.array(steps)}
        assert_same_bits(run_ort(out, feeds)[0], constant_model()(start, end, steps, np.float32, False))
    out, step = runtime(np.int64)
    assert step.rewritten == [] and op_types(out) == ["ATen"]
    assert step.notes == [f"linspace_node: left alone, target '{target}' has no float64 Cast, which the runtime "
                          "form needs for int64 outputs (in float32 it would not match torch)"]


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
    out, _ = apply_pass(model, "linspace", mode="range", fused_multiply_add=FMA)
    assert "Range" in op_types(out)
    assert_same_bits(run_ort(out, {})[0], torch_linspace_np(-1, 1, 5))
    again, step = apply_pass(out, "linspace")
    assert step.rewritten == [] and op_types(again) == op_types(out)


def test_negative_constant_steps_is_an_error_naming_the_node():
    model = aten_linspace([], {"start": np.float32(0), "end": np.float32(1), "steps": np.int64(-2)})
    with pytest.raises(SurgeonError, match="linspace_node.*steps = -2"):
        apply_pass(model, "linspace")

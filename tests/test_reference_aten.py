"""CPU references of ATen and custom grid-sampler nodes match PyTorch, alone and inside graphs run by
the reference runner (ONNX Runtime segments around the special nodes)."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.reference import find_reference
from surgeon.testing import make_model
from surgeon.validation.runners import ReferenceRunner

torch = pytest.importorskip("torch")
ATEN = "org.pytorch.aten"


def aten(operator: str):
    fn = find_reference("ATen", ATEN, operator)
    assert fn is not None, operator
    return lambda *inputs: fn(list(inputs), {})[0]


def run_reference(model, feeds):
    with ReferenceRunner(model) as runner:
        return runner.infer(feeds), runner.segments


@pytest.mark.parametrize("operator,torch_fn", [("__iand_", torch.bitwise_and), ("__and_", torch.bitwise_and),
                                               ("__ior_", torch.bitwise_or), ("__or_", torch.bitwise_or),
                                               ("__ixor_", torch.bitwise_xor), ("__xor_", torch.bitwise_xor)])
@pytest.mark.parametrize("dtype", [bool, np.int64, np.int32])
def test_bitwise_ops(operator, torch_fn, dtype):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(-5, 6, (3, 4)).astype(dtype) for _ in range(2))
    expected = torch_fn(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    out = aten(operator)(a, b)
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


def test_atan2_every_quadrant_and_axis():
    values = np.array([-2.0, -1.0, -0.0, 0.0, 1.0, 3.0], np.float32)
    y, x = np.meshgrid(values, values)
    expected = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(aten("atan2")(y, x), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("start,end,steps", [(0.0, 1.0, 5), (-3.0, 7.5, 11), (2.0, -2.0, 4), (1.0, 1.0, 1),
                                             (-51.2, 51.2, 200)])
def test_linspace(start, end, steps):
    expected = torch.linspace(start, end, steps).numpy()
    out = aten("linspace")(np.array(start, np.float32), np.array(end, np.float32), np.array(steps, np.int64))
    # torch's vectorised kernel rounds some points one ulp differently (1 ulp at 51.2 is 3.8e-6).
    np.testing.assert_allclose(out, expected, rtol=0, atol=2 * np.spacing(np.float32(max(abs(start), abs(end)))))
    assert out.dtype == expected.dtype


@pytest.mark.parametrize("operator", ["inverse", "linalg_inv"])
def test_inverse(operator):
    rng = np.random.default_rng(1)
    m = (rng.standard_normal((2, 4, 4)) + 4 * np.eye(4)).astype(np.float32)
    np.testing.assert_allclose(aten(operator)(m), torch.linalg.inv(torch.from_numpy(m)).numpy(), rtol=1e-5, atol=1e-6)


def test_nan_to_num_defaults_and_given_values():
    x = np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(aten("nan_to_num")(x), torch.nan_to_num(t).numpy())
    given = aten("nan_to_num")(x, np.array(2.0), np.array(9.0), np.array(-9.0))
    np.testing.assert_array_equal(given, torch.nan_to_num(t, 2.0, 9.0, -9.0).numpy())
    omitted = aten("nan_to_num")(x, None, np.array(9.0), None)
    np.testing.assert_array_equal(omitted, torch.nan_to_num(t, posinf=9.0).numpy())


@pytest.mark.parametrize("operator,torch_fn", [("maximum", torch.maximum), ("minimum", torch.minimum)])
def test_maximum_minimum_propagate_nan(operator, torch_fn):
    a = np.array([1.0, np.nan, 3.0, -0.0], np.float32)
    b = np.array([2.0, 0.0, np.nan, 0.0], np.float32)
    np.testing.assert_array_equal(aten(operator)(a, b), torch_fn(torch.from_numpy(a), torch.from_numpy(b)).numpy())


@pytest.mark.parametrize("operator", ["any", "all"])
def test_any_all_whole_and_along_a_dim(operator):
    x = np.array([[True, False, True], [True, True, True]])
    t = torch.from_numpy(x)
    torch_fn = getattr(torch, operator)
    np.testing.assert_array_equal(aten(operator)(x), torch_fn(t).numpy())
    np.testing.assert_array_equal(aten(operator)(x, np.array(1), np.array(True)),
                                  torch_fn(t, dim=1, keepdim=True).numpy())


def _sampler_inputs(seed=2):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    grid = rng.uniform(-1.2, 1.2, (2, 4, 5, 2)).astype(np.float32)
    return x, grid


def test_grid_sampler_2d_trt_reads_the_scaled_channels_first_grid():
    """BEVFormer_tensorrt's GridSampler2DTRT takes grid [N, 2, Ho, Wo] holding 10x the coordinates."""
    x, grid = _sampler_inputs()
    plugin_grid = np.ascontiguousarray(grid.transpose(0, 3, 1, 2)) * np.float32(10)
    fn = find_reference("GridSampler2DTRT", "")
    out = fn([x, plugin_grid], {"interpolation_mode": 0, "padding_mode": 1, "align_corners": 1})[0]
    expected = torch.nn.functional.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode="bilinear",
                                               padding_mode="border", align_corners=True).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_mmdeploy_grid_sampler():
    x, grid = _sampler_inputs(3)
    fn = find_reference("grid_sampler", "mmdeploy")
    out = fn([x, grid], {"interpolation_mode": 1, "padding_mode": 0, "align_corners": 0})[0]
    expected = torch.nn.functional.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode="nearest",
                                               padding_mode="zeros", align_corners=False).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


class _SampleBetweenConvs(torch.nn.Module):
    """Conv -> grid_sample -> Relu*2, so the reference runner needs ORT segments on both sides."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, grid):
        sampled = torch.nn.functional.grid_sample(self.conv(x), grid, mode="bilinear", padding_mode="zeros",
                                                  align_corners=False)
        return torch.relu(sampled) * 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is how users' graphs are made
def test_exported_aten_grid_sampler_runs_in_the_reference_runner():
    torch.manual_seed(0)
    module = _SampleBetweenConvs().eval()
    x, grid = _sampler_inputs(4)
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.from_numpy(x), torch.from_numpy(grid)), buffer, opset_version=11,
                      input_names=["x", "grid"], output_names=["y"], dynamo=False,
                      operator_export_type=torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK)
    model = onnx.load_from_string(buffer.getvalue())
    assert any(n.op_type == "ATen" for n in model.graph.node), "the export no longer produces ATen(grid_sampler)"
    outputs, segments = run_reference(model, {"x": x, "grid": grid})
    with torch.no_grad():
        expected = module(torch.from_numpy(x), torch.from_numpy(grid)).numpy()
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-5, atol=1e-5)
    assert [s.special for s in segments] == [False, True, False]


def test_hand_built_aten_graph_with_custom_and_plugin_nodes():
    """ATen(grid_sampler), mmdeploy::grid_sampler and GridSampler2DTRT side by side agree with torch."""
    x, grid = _sampler_inputs(5)
    nodes = [
        helper.make_node("ATen", ["x", "grid", "bilinear", "zeros", "no"], ["a"], name="aten_gs", domain=ATEN,
                         operator="grid_sampler", overload_name=""),
        helper.make_node("grid_sampler", ["x", "grid"], ["b"], name="mmdeploy_gs", domain="mmdeploy",
                         interpolation_mode=0, padding_mode=0, align_corners=0),
        helper.make_node("Transpose", ["grid"], ["grid_nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["grid_nchw", "ten"], ["grid10"], name="scale"),
        helper.make_node("GridSampler2DTRT", ["x", "grid10"], ["c"], name="trt_gs",
                         interpolation_mode=0, padding_mode=0, align_corners=0),
        helper.make_node("Sum", ["a", "b", "c"], ["y"], name="sum"),
    ]
    model = make_model(nodes, [("x", np.float32, x.shape), ("grid", np.float32, grid.shape)],
                       [("y", np.float32, None)],
                       initializers={"bilinear": np.array(0, np.int64), "zeros": np.array(0, np.int64),
                                     "no": np.array(False), "ten": np.array(10, np.float32)},
                       extra_opsets={ATEN: 1})
    outputs, segments = run_reference(model, {"x": x, "grid": grid})
    sampled = torch.nn.functional.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), align_corners=False)
    np.testing.assert_allclose(outputs["y"], 3 * sampled.numpy(), rtol=1e-5, atol=1e-5)
    # The standard Transpose/Mul run in one ORT session ahead of the three special nodes.
    assert [s.special for s in segments] == [False, True, True, True, False]


def test_unflatten():
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    out = aten("unflatten")(x, np.array(-1, np.int64), np.array([3, -1], np.int64))
    np.testing.assert_array_equal(out, torch.from_numpy(x).unflatten(-1, (3, -1)).numpy())

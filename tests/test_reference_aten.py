"""CPU references of ATen and custom grid-sampler nodes match PyTorch, alone and inside graphs run by
the reference runner (ONNX Runtime segments around the special nodes)."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.check import Settings, check_file
from surgeon.reference import find_reference
from surgeon.registry import get_pass
from surgeon.sampling import TRT_OPS
from surgeon.testing import make_model
from surgeon.validation.runners import ReferenceRunner, is_special

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


#: Operand pairs whose atan2 IEEE fixes exactly (signed zeros, infinities, NaN), among others that torch's CPU
#: kernel and NumPy's libm round differently.
ATAN2_EDGES = np.array([0.0, -0.0, 1.0, -1.0, 3.0, -2.5, 1e-30, -1e-30, 1e-45, -1e-45, 1e30, -1e30, np.inf, -np.inf,
                        np.nan], np.float32)
#: How far torch.atan2 is from the correctly rounded result, measured on 2,000,000 random pairs (torch 2.13).
ATAN2_ULPS = {np.float16: 1, np.float32: 3, np.float64: 1}
ATAN2_FORMS = [("ATen", ATEN, "atan2"), ("Atan2", "", None), ("Atan2", "mmdeploy", None), ("Atan2", "com.example", None)]


def _assert_atan2_matches_torch(got, y, x, dtype):
    """Equal, signed zeros included, where an operand is zero, infinite or NaN; within ATAN2_ULPS elsewhere."""
    expected = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    assert got.dtype == expected.dtype == dtype and got.shape == expected.shape
    exact = (y == 0) | (x == 0) | ~np.isfinite(y) | ~np.isfinite(x)
    np.testing.assert_array_equal(got[exact], expected[exact])  # NaN where torch has NaN (its sign means nothing)
    signed = exact & ~np.isnan(expected)
    np.testing.assert_array_equal(np.signbit(got[signed]), np.signbit(expected[signed]))
    ulps = np.abs(got[~exact].astype(np.float64) - expected[~exact]) / np.spacing(np.abs(expected[~exact]))
    assert ulps.max(initial=0) <= ATAN2_ULPS[dtype]


@pytest.mark.parametrize("op_type,domain,operator", ATAN2_FORMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_atan2_in_every_form_matches_torch_in_every_quadrant_on_the_axes_and_at_signed_zeros(op_type, domain,
                                                                                             operator, dtype):
    """ATen atan2 and a custom Atan2 in any domain (what the atan2 pass rewrites) have one reference."""
    fn = find_reference(op_type, domain, operator)
    with np.errstate(over="ignore"):  # 1e30 is inf in float16, as in torch
        y, x = (grid.astype(dtype) for grid in np.meshgrid(ATAN2_EDGES, ATAN2_EDGES))
    _assert_atan2_matches_torch(fn([y, x], {})[0], y, x, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_atan2_on_random_pairs_over_twenty_decades(dtype):
    rng = np.random.default_rng(3)
    y, x = ((rng.standard_normal(100_000) * 10.0 ** rng.integers(-10, 10, 100_000)).astype(dtype) for _ in range(2))
    _assert_atan2_matches_torch(find_reference("Atan2", "mmdeploy")([y, x], {})[0], y, x, dtype)


@pytest.mark.parametrize("y_type,x_type", [(np.int64, np.float32), (np.float16, np.float32), (np.float32, np.float16),
                                           (np.int32, np.int64), (np.bool_, np.float16), (np.float64, np.float32)])
def test_atan2_returns_torchs_result_type(y_type, x_type):
    """int64 with float32 is float32 in torch (NumPy would say float64); integers alone give float32."""
    y = (np.arange(12).reshape(3, 4) - 5).astype(y_type)
    x = (np.arange(12).reshape(3, 4)[::-1] - 6).astype(x_type)
    expected = torch.atan2(torch.from_numpy(y), torch.from_numpy(x)).numpy()
    got = find_reference("Atan2", "")([y, x], {})[0]
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=2 * np.finfo(got.dtype).eps, atol=0)
    zero_d = find_reference("Atan2", "")([np.array(1.0), np.ones(3, np.float32)], {})[0]  # a 0-d float64 counts less
    assert zero_d.dtype == np.float32


def test_a_graph_with_a_custom_atan2_validates_against_its_atan2_rewrite(tmp_path, capsys):
    """`surgeon compare` runs the mmdeploy::Atan2 graph on the reference runner and the atan2 pass's rewrite on
    ONNX Runtime: equal within 1e-6 on the edge grid (the rewrite is within 2.4e-7 of torch, 2 ulp of pi)."""
    from surgeon.cli import main
    from surgeon.testing import apply_pass

    node = helper.make_node("Atan2", ["y", "x"], ["angle"], name="atan2", domain="mmdeploy")
    shape = [len(ATAN2_EDGES), len(ATAN2_EDGES)]
    model = make_model([node], [("y", np.float32, shape), ("x", np.float32, shape)], [("angle", np.float32, shape)],
                       extra_opsets={"mmdeploy": 1})
    rewritten, step = apply_pass(model, "atan2")
    assert step.rewritten == ["atan2"]
    onnx.save(model, tmp_path / "custom.onnx")
    onnx.save(rewritten, tmp_path / "rewritten.onnx")
    y, x = np.meshgrid(ATAN2_EDGES, ATAN2_EDGES)
    np.savez(tmp_path / "edges.npz", y=y, x=x)
    argv = ["compare", str(tmp_path / "custom.onnx"), str(tmp_path / "rewritten.onnx"), "--data",
            str(tmp_path / "edges.npz"), "--atol", "1e-6", "--rtol", "0"]
    assert main(argv) == 0, capsys.readouterr()
    assert "original (reference) vs rewritten (onnxruntime)" in capsys.readouterr().out


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


def test_inverse_trt_is_the_same_reference():
    """BEVFormer_tensorrt's InverseTRT plugin computes torch.linalg.inv in its forward."""
    m = (np.random.default_rng(2).standard_normal((3, 4, 4)) + 4 * np.eye(4)).astype(np.float32)
    reference = find_reference("InverseTRT", "")
    [inverse] = reference([m], {})
    np.testing.assert_allclose(inverse, torch.linalg.inv(torch.from_numpy(m)).numpy(), rtol=1e-5, atol=1e-6)


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


#: (ATen operator, overload_name) -> the torch function it is.
MAX_MIN = {("maximum", ""): torch.maximum, ("minimum", ""): torch.minimum, ("fmax", ""): torch.fmax,
           ("fmin", ""): torch.fmin, ("max", "other"): torch.max, ("min", "other"): torch.min}
#: Operand pairs torch promotes differently from NumPy (int64 with float32 is float32, a 0-d int64 is cast
#: to the int32 of the other operand, wrapping), with NaN on each side and on both.
OPERAND_PAIRS = [
    (np.array([1.0, np.nan, 3.0, np.nan, -np.inf], np.float32), np.array([2.0, 0.0, np.nan, np.nan, 1.0], np.float32)),
    (np.array([2**40 + 1, -3, 7], np.int64), np.array([np.nan, -2.5, 1e10], np.float32)),
    (np.array([5, -7, 2**31 - 1], np.int32), np.array(2**33 + 4, np.int64)),
    (np.array([True, False, True]), np.array([0.5, np.nan, -1.0], np.float32)),
    (np.array([200, 3, 0], np.uint8), np.array([-100, 4, -1], np.int8)),
    (np.array([1.5, np.nan, 65504], np.float16), np.array([1.25, 2.0, np.nan], np.float32)),
    (np.array([True, False, False]), np.array([False, False, True])),
]


def _binary(operator, overload, a, b):
    return find_reference("ATen", ATEN, operator)([a, b], {"overload_name": overload})[0]


@pytest.mark.parametrize("a,b", OPERAND_PAIRS, ids=lambda v: f"{v.dtype}{list(v.shape)}")
@pytest.mark.parametrize("operator,overload", list(MAX_MIN))
def test_max_min_family_matches_torch_in_nan_handling_and_result_type(operator, overload, a, b):
    """fmax/fmin return the non-NaN operand, maximum/minimum and max/min.other propagate NaN; each computes
    in torch.result_type (surgeon/promotion.py), not in NumPy's promoted type."""
    expected = MAX_MIN[operator, overload](torch.from_numpy(a), torch.from_numpy(b)).numpy()
    got = _binary(operator, overload, a, b)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)  # exact, NaN positions included


@pytest.mark.parametrize("operator", ["fmax", "max"])
def test_max_min_refuse_a_pair_torch_does_not_promote(operator):
    a, b = np.array([1], np.uint16), np.array([1], np.int8)
    with pytest.raises(RuntimeError, match="not supported"):
        torch.fmax(torch.from_numpy(a), torch.from_numpy(b))
    with pytest.raises(ValueError, match="torch does not promote uint16 with int8"):
        _binary(operator, "other", a, b)


@pytest.mark.parametrize("operator,torch_fn", [("max", torch.max), ("min", torch.min)])
@pytest.mark.parametrize("x", [np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 2.0, -1.0, 0.0]], np.float32),
                               np.array([[1, 3, 3], [-4, -4, 0]], np.int64)], ids=["float32", "int64"])
def test_max_min_reductions_match_torch_with_nan_and_ties(operator, torch_fn, x):
    """The other overloads of the ATen max/min operators: a NaN wins and ties take the first index."""
    fn = find_reference("ATen", ATEN, operator)
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(fn([x], {"overload_name": ""})[0], torch_fn(t).numpy())
    for dim in (0, 1, -1):
        for keepdim in (False, True):
            values, indices = fn([x, np.array(dim), np.array(keepdim)], {"overload_name": "dim"})
            expected = torch_fn(t, dim, keepdim)
            np.testing.assert_array_equal(values, expected.values.numpy())
            np.testing.assert_array_equal(indices, expected.indices.numpy())
            assert values.dtype == x.dtype and indices.dtype == np.int64


def test_max_overload_without_a_reference_is_named():
    with pytest.raises(ValueError, match="ATen max overload 'names_dim' has no CPU reference"):
        find_reference("ATen", ATEN, "max")([np.zeros(2, np.float32)], {"overload_name": "names_dim"})


LOGICAL_OPERANDS = [np.array([np.nan, 0.0, -0.0, 2.5, 0.0], np.float32), np.array([1, 0, 3, 0, -2], np.int32),
                    np.array([True, True, False, False, True])]


@pytest.mark.parametrize("b", LOGICAL_OPERANDS, ids=lambda v: str(v.dtype))
@pytest.mark.parametrize("a", LOGICAL_OPERANDS, ids=lambda v: str(v.dtype))
@pytest.mark.parametrize("kind", ["and", "or", "xor"])
def test_logical_ops_read_operands_as_bool_and_return_bool(kind, a, b):
    """Non-zero (NaN included) is true, -0.0 false, whatever the two dtypes; the result is bool."""
    expected = getattr(torch, f"logical_{kind}")(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    got = aten(f"logical_{kind}")(a, b)
    assert got.dtype == expected.dtype == np.bool_
    np.testing.assert_array_equal(got, expected)


#: The passes whose every non-standard form (their `handles`) has a CPU reference.
PASSES_WITH_REFERENCES = ("any-all", "atan2", "bev-pool-plugin", "grid-sample", "grid-sample-3d", "inplace-and",
                          "inverse", "linspace", "maximum-minimum", "msda-plugin", "nan-to-num")


def _recognised_node(label: str, index: int) -> onnx.NodeProto:
    """A node of a `handles` label: `ATen:operator`, `domain::op_type` or a default-domain op type."""
    inputs, outputs = ["a", "b"], [f"y{index}"]
    if label.startswith("ATen:"):
        return helper.make_node("ATen", inputs, outputs, name=label, domain=ATEN, operator=label[len("ATen:"):])
    domain, _, op_type = label.rpartition("::")
    return helper.make_node(op_type, inputs, outputs, name=label, domain=domain)


def test_check_finds_a_reference_for_every_form_the_passes_recognise(tmp_path):
    """No SG002 (no CPU reference) on a node the passes rewrite, so validation can run the original."""
    labels = sorted({label for name in PASSES_WITH_REFERENCES for label in get_pass(name).handles})
    # the nodes validation hands to a reference (ONNX Runtime runs GridSample, com.microsoft::Inverse)
    nodes = [node for node in map(_recognised_node, labels, range(len(labels))) if is_special(node, 13)]
    # torch.max(a, b) / torch.min(a, b), which maximum-minimum rewrites too
    nodes += [helper.make_node("ATen", ["a", "b"], [f"{op}_other"], name=f"{op}.other", domain=ATEN, operator=op,
                               overload_name="other") for op in ("max", "min")]
    # the custom forms in another domain too (they are matched in any domain)
    nodes += [helper.make_node(op_type, ["a", "b"], [f"{op_type}_custom"], name=f"custom::{op_type}", domain="custom")
              for op_type in ("Atan2", "BEVPoolV2TRT", "bev_pool_v2")]
    assert {"GridSampler2DTRT2", "GridSampler3DTRT", "GridSampler3DTRT2", "ATen:grid_sampler_2d",
            "ATen:grid_sampler_3d", "ATen:fmax", "ATen:fmin", "ATen:logical_and", "ATen:logical_or",
            "ATen:logical_xor", "ATen:atan2", "Atan2", "BEVPoolV2TRT", "bev_pool_v2"} <= {node.name for node in nodes}
    outputs = [(o, np.float32, None) for n in nodes for o in n.output]
    model = make_model(nodes, [("a", np.float32, [2]), ("b", np.float32, [2])], outputs, opset=13)
    onnx.save(model, tmp_path / "forms.onnx")
    no_reference = [f.node for f in check_file(tmp_path / "forms.onnx", Settings()) if f.rule == "SG002"]
    assert no_reference == []


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


SAMPLING_TOL = dict(rtol=1e-5, atol=1e-5)  # bit-exactness is tests/test_reference_numpy_ops.py's to pin


def _sampling_inputs(spatial: int, seed: int):
    """x [2, 3, (4,) 5, 6] and a torch-layout grid [2, (2,) 3, 4, spatial] reaching past [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3) + (4, 5, 6)[3 - spatial:]).astype(np.float32)
    grid = rng.uniform(-1.2, 1.2, (2,) + (2, 3, 4)[3 - spatial:] + (spatial,)).astype(np.float32)
    return x, grid


@pytest.mark.parametrize("mode,padding,align", [(0, 0, 0), (1, 1, 1), (0, 2, 1), (1, 2, 0)])
@pytest.mark.parametrize("op_type", sorted(TRT_OPS))
def test_bevformer_trt_grid_samplers_run_as_their_pytorch_forward(op_type, mode, padding, align):
    """GridSampler2DTRT(2) / GridSampler3DTRT(2) take the grid channels first holding 10x the coordinates;
    BEVFormer_tensorrt's forward is grid.permute(0, 2, 3, 1) (3-D: (0, 2, 3, 4, 1)) / 10, then grid_sampler."""
    spatial = TRT_OPS[op_type]
    x, grid = _sampling_inputs(spatial, seed=7)
    channels_first = (0, spatial + 1, *range(1, spatial + 1))
    plugin_grid = np.ascontiguousarray(grid.transpose(channels_first)) * np.float32(10)
    node = helper.make_node(op_type, ["x", "g"], ["y"], name="s", interpolation_mode=mode, padding_mode=padding,
                            align_corners=align)
    model = make_model([node], [("x", np.float32, x.shape), ("g", np.float32, plugin_grid.shape)],
                       [("y", np.float32, None)], opset=13)
    outputs, _ = run_reference(model, {"x": x, "g": plugin_grid})
    channels_last = (0, *range(2, spatial + 2), 1)
    expected = torch.grid_sampler(torch.from_numpy(x), torch.from_numpy(plugin_grid).permute(channels_last) / 10,
                                  mode, padding, bool(align)).numpy()
    np.testing.assert_allclose(outputs["y"], expected, **SAMPLING_TOL)


@pytest.mark.parametrize("op_type,grid_rank", [("GridSampler3DTRT", 4), ("GridSampler2DTRT2", 5)])
def test_bevformer_trt_grid_sampler_refuses_a_grid_its_forward_cannot_permute(op_type, grid_rank):
    spatial = grid_rank - 2
    x, grid = _sampling_inputs(spatial, seed=10)
    plugin_grid = np.ascontiguousarray(grid.transpose(0, spatial + 1, *range(1, spatial + 1)))
    with pytest.raises(RuntimeError):  # the wrapper's permute has the other number of dims
        torch.from_numpy(plugin_grid).permute((0, 2, 3, 4, 1) if op_type.startswith("GridSampler3D") else (0, 2, 3, 1))
    with pytest.raises(ValueError, match=f"{op_type} needs a {7 - spatial}-D grid"):
        find_reference(op_type, "")([x, plugin_grid], {})


def _aten_sampler_model(operator, x, grid, mode, padding, align):
    node = helper.make_node("ATen", ["x", "grid", "mode", "padding", "align"], ["y"], name="gs", domain=ATEN,
                            operator=operator, overload_name="")
    return make_model([node], [("x", np.float32, x.shape), ("grid", np.float32, grid.shape)],
                      [("y", np.float32, None)],
                      initializers={"mode": np.array(mode, np.int64), "padding": np.array(padding, np.int64),
                                    "align": np.array(bool(align))}, extra_opsets={ATEN: 1})


@pytest.mark.parametrize("mode,padding,align", [(0, 0, 0), (1, 1, 1), (0, 2, 1)])
@pytest.mark.parametrize("operator,spatial", [("grid_sampler", 2), ("grid_sampler", 3), ("grid_sampler_2d", 2),
                                              ("grid_sampler_3d", 3)])
def test_aten_grid_samplers_match_torch(operator, spatial, mode, padding, align):
    """ATen grid_sampler_2d / grid_sampler_3d take grid_sampler's inputs (x, grid, mode, padding, align)."""
    x, grid = _sampling_inputs(spatial, seed=8)
    outputs, _ = run_reference(_aten_sampler_model(operator, x, grid, mode, padding, align), {"x": x, "grid": grid})
    expected = getattr(torch.ops.aten, operator)(torch.from_numpy(x), torch.from_numpy(grid), mode, padding,
                                                 bool(align)).numpy()
    np.testing.assert_allclose(outputs["y"], expected, **SAMPLING_TOL)


@pytest.mark.parametrize("operator,spatial", [("grid_sampler_2d", 3), ("grid_sampler_3d", 2)])
def test_aten_grid_sampler_of_the_other_rank_is_refused_as_torch_refuses_it(operator, spatial):
    x, grid = _sampling_inputs(spatial, seed=9)
    with pytest.raises(RuntimeError):
        getattr(torch.ops.aten, operator)(torch.from_numpy(x), torch.from_numpy(grid), 0, 0, False)
    with pytest.raises(ValueError, match=f"{operator} needs a {7 - spatial}-D input"):
        aten(operator)(x, grid, np.array(0), np.array(0), np.array(False))


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

"""inverse: the closed-form 2x2/3x3/4x4 inverse against a float64 inverse and torch.inverse.

Tolerance: per matrix, max |ours - exact| / max |exact| <= 2e-6 in float32 (exact = float64 inverse of
the same float32 matrix), on well-conditioned matrices (condition number <= 4) and lidar2img projections.
"""
from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, export_torch, make_model, op_types, run_ort

torch = pytest.importorskip("torch")

RTOL = {np.float32: 2e-6, np.float64: 1e-12}
OPSET_11_OPS = {"Reshape", "Gather", "Mul", "Sub", "Add", "MatMul", "Div"}


def export(fn, x, opset):
    return export_torch(fn, x, opset=opset)


def aten_model(shape, dtype=np.float32, operator="inverse", opset=11):
    node = helper.make_node("ATen", ["m"], ["y"], name=f"aten_{operator}", domain="org.pytorch.aten",
                            operator=operator, overload_name="")
    return make_model([node], [("m", dtype, shape)], [("y", dtype, shape)], opset=opset)


def relative_error(got, matrices):
    """Per matrix: max abs error over max abs entry of the float64 inverse."""
    exact = np.linalg.inv(matrices.astype(np.float64))
    error = np.abs(got.astype(np.float64) - exact).max(axis=(-2, -1))
    return error / np.abs(exact).max(axis=(-2, -1))


def well_conditioned(rng, leading, n, dtype):
    """Q1 diag(s) Q2 with singular values in [0.5, 2]: condition number at most 4."""
    q1 = np.linalg.qr(rng.normal(size=(*leading, n, n)))[0]
    q2 = np.linalg.qr(rng.normal(size=(*leading, n, n)))[0]
    s = rng.uniform(0.5, 2.0, size=(*leading, 1, n))
    return ((q1 * s) @ q2).astype(dtype)


def lidar2img(rng, cameras):
    """intrinsics @ lidar-to-camera extrinsics, as BEVFormer feeds its projections (focal ~1000 px)."""
    matrices = []
    for _ in range(cameras):
        intrinsic = np.eye(4)
        intrinsic[0, 0], intrinsic[1, 1] = rng.uniform(800, 1300, 2)
        intrinsic[0, 2], intrinsic[1, 2] = rng.uniform(600, 1000), rng.uniform(300, 600)
        rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        extrinsic = np.eye(4)
        extrinsic[:3, :3] = rotation * np.sign(np.linalg.det(rotation))
        extrinsic[:3, 3] = rng.uniform(-2.0, 2.0, 3)
        matrices.append(intrinsic @ extrinsic)
    return np.stack(matrices).astype(np.float32)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("leading", [[], [1], [7], [2, 1, 3], [0]])
def test_random_well_conditioned_matrices(n, dtype, leading):
    rng = np.random.default_rng(n * 100 + len(leading))
    matrices = well_conditioned(rng, leading, n, dtype)
    out, step = apply_pass(aten_model(leading + [n, n], dtype), "inverse")
    onnx.checker.check_model(out)
    assert step.rewritten == ["aten_inverse"] and set(op_types(out)) <= OPSET_11_OPS
    got = run_ort(out, {"m": matrices})[0]
    assert got.shape == matrices.shape and got.dtype == dtype
    assert (relative_error(got, matrices) <= RTOL[dtype]).all()


def test_dynamic_leading_dimensions():
    out, _ = apply_pass(aten_model(["batch", "cameras", 4, 4]), "inverse")
    rng = np.random.default_rng(1)
    for leading in ([1, 6], [3, 2]):
        matrices = well_conditioned(rng, leading, 4, np.float32)
        assert (relative_error(run_ort(out, {"m": matrices})[0], matrices) <= RTOL[np.float32]).all()


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("fn", [torch.inverse, torch.linalg.inv])
def test_real_export_of_lidar2img_inverse(opset, fn):
    rng = np.random.default_rng(opset)
    matrices = np.stack([lidar2img(rng, 6), lidar2img(rng, 6)])  # [batch 2, 6 cameras, 4, 4]
    model = export(fn, torch.from_numpy(matrices), opset)
    assert [n.op_type for n in model.graph.node] == ["ATen"]
    out, step = apply_pass(model, "inverse")
    onnx.checker.check_model(out)
    assert len(step.rewritten) == 1 and set(op_types(out)) <= OPSET_11_OPS
    got = run_ort(out, {out.graph.input[0].name: matrices})[0]
    ours = relative_error(got, matrices)
    torchs = relative_error(fn(torch.from_numpy(matrices)).numpy(), matrices)
    assert (ours <= RTOL[np.float32]).all(), (ours.max(), torchs.max())
    # Mapping an image point back to lidar coordinates: the use that matters, in metres.
    point = np.array([700.0 * 5.0, 400.0 * 5.0, 5.0, 1.0])
    metres = np.abs(got.astype(np.float64) @ point - np.linalg.inv(matrices.astype(np.float64)) @ point)
    assert metres.max() < 1e-4
    again, second = apply_pass(out, "inverse")
    assert second.rewritten == [] and op_types(again) == op_types(out)


def test_singular_matrix_gives_non_finite_values():
    out, _ = apply_pass(aten_model([3, 3]), "inverse")
    singular = np.array([[1, 2, 3], [2, 4, 6], [0, 1, 1]], np.float32)
    assert not np.isfinite(run_ort(out, {"m": singular})[0]).all()


@pytest.mark.parametrize("shape", [[5, 5], [2, 4, 3], [1, 1]])
def test_unsupported_sizes_name_the_node_and_shape(shape):
    with pytest.raises(SurgeonError, match=rf"'aten_linalg_inv'.*shape \[{', '.join(map(str, shape))}\]"):
        apply_pass(aten_model(shape, operator="linalg_inv"), "inverse")


def test_graph_without_inverse_is_unchanged():
    model = make_model([helper.make_node("Relu", ["m"], ["y"], name="relu")], [("m", np.float32, [4, 4])],
                       [("y", np.float32, [4, 4])])
    out, step = apply_pass(model, "inverse")
    assert step.rewritten == [] and op_types(out) == ["Relu"]


def test_onnxruntime_contrib_inverse_is_rewritten_and_agrees_with_it():
    node = helper.make_node("Inverse", ["m"], ["y"], name="ms_inverse", domain="com.microsoft")
    model = make_model([node], [("m", np.float32, [6, 4, 4])], [("y", np.float32, [6, 4, 4])])
    matrices = lidar2img(np.random.default_rng(7), 6)
    out, step = apply_pass(model, "inverse")
    assert step.rewritten == ["ms_inverse"] and set(op_types(out)) <= OPSET_11_OPS
    got, contrib = run_ort(out, {"m": matrices})[0], run_ort(model, {"m": matrices})[0]
    assert (relative_error(got, matrices) <= RTOL[np.float32]).all()
    assert (relative_error(contrib, matrices) <= RTOL[np.float32]).all()

"""inverse: the closed-form 2x2/3x3/4x4 inverse against a float64 inverse and torch.inverse.

Tolerance: per matrix, max |ours - exact| / max |exact| <= 2e-6 in float32 and 1e-12 in float64 (exact =
float64 inverse of the same matrix), on well-conditioned matrices (condition number <= 4) with entries
from 1e-30 to 1e30 (float64: 1e-300 to 1e300) and on lidar2img projections. Measured worst: 3.5e-7.
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
OPSET_11_OPS = {"Reshape", "Abs", "ReduceMax", "Log", "Floor", "Pow", "Gather", "Mul", "Sub", "Add", "MatMul", "Div"}


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


def contrib_model(shape, dtype=np.float32):
    node = helper.make_node("Inverse", ["m"], ["y"], name="ms_inverse", domain="com.microsoft")
    return make_model([node], [("m", dtype, shape)], [("y", dtype, shape)])


@pytest.mark.parametrize("target, mode", [("tensorrt-10", "auto"), ("opset-11", "auto"),
                                          ("onnxruntime", "closed-form")])
def test_contrib_inverse_is_rewritten_where_the_target_lacks_it_or_when_forced(target, mode):
    model = contrib_model([6, 4, 4])
    matrices = lidar2img(np.random.default_rng(7), 6)
    out, step = apply_pass(model, "inverse", target=target, mode=mode)
    assert step.rewritten == ["ms_inverse"] and set(op_types(out)) <= OPSET_11_OPS
    got, contrib = run_ort(out, {"m": matrices})[0], run_ort(model, {"m": matrices})[0]
    assert (relative_error(got, matrices) <= RTOL[np.float32]).all()
    assert (relative_error(contrib, matrices) <= RTOL[np.float32]).all()


@pytest.mark.parametrize("shape", [[6, 4, 4], [5, 5]])
def test_contrib_inverse_is_kept_on_onnxruntime(shape):
    """ORT runs com.microsoft::Inverse (any size, LU in Eigen): mode auto leaves it and says so."""
    model = contrib_model(shape)
    out, step = apply_pass(model, "inverse", target="onnxruntime")
    assert step.rewritten == [] and op_types(out) == ["Inverse"]
    assert any("ms_inverse" in note and "onnxruntime" in note for note in step.notes)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("dtype, scales", [
    (np.float32, [1e-30, 1e-20, 1e-12, 1e-10, 1e10, 1e12, 1e20, 1e30]),
    (np.float64, [1e-300, 1e-80, 1e80, 1e300]),
])
def test_accuracy_does_not_depend_on_the_magnitude(n, dtype, scales):
    """The determinant is a product of n entries: unscaled, 1e10 * I gave zeros and 1e-12 * I inf (float32)."""
    rng = np.random.default_rng(40 + n)
    base = np.concatenate([np.eye(n)[None], np.linalg.qr(rng.normal(size=(1, n, n)))[0],  # condition number 1
                           well_conditioned(rng, [200], n, np.float64)])
    matrices = np.concatenate([base * s for s in scales]).astype(dtype)
    out, _ = apply_pass(aten_model([len(matrices), n, n], dtype), "inverse")
    got = run_ort(out, {"m": matrices})[0]
    assert (relative_error(got, matrices) <= RTOL[dtype]).all(), relative_error(got, matrices).max()
    want = torch.linalg.inv(torch.from_numpy(matrices)).numpy()
    versus_torch = np.abs(got - want).max(axis=(-2, -1)) / np.abs(want).max(axis=(-2, -1))
    assert (versus_torch <= 2 * RTOL[dtype]).all()  # both within RTOL of the exact inverse


@pytest.mark.parametrize("largest", [np.finfo(np.float32).max, 2.0 ** 127])
def test_entries_at_the_top_of_the_float32_range(largest):
    """log2(3.4e38) rounds to 128 in float32: without the half-binade margin the scale 2**128 is inf."""
    rng = np.random.default_rng(3)
    q = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    matrices = (np.stack([np.eye(4), q / np.abs(q).max()]) * float(largest)).astype(np.float32)
    out, _ = apply_pass(aten_model([2, 4, 4]), "inverse")
    got = run_ort(out, {"m": matrices})[0]
    assert (relative_error(got, matrices) <= RTOL[np.float32]).all()


@pytest.mark.parametrize("entry", [np.nan, np.inf, -np.inf])
def test_a_non_finite_entry_gives_nan_everywhere_like_torch(entry):
    matrices = np.stack([np.eye(4), np.eye(4)]).astype(np.float32)
    matrices[0, 1, 2] = entry
    out, _ = apply_pass(aten_model([2, 4, 4]), "inverse")
    got = run_ort(out, {"m": matrices})[0]
    assert np.isnan(got[0]).all() and np.isnan(torch.linalg.inv(torch.from_numpy(matrices[:1])).numpy()).all()
    assert np.array_equal(got[1], np.eye(4))  # the other matrix of the batch is unaffected


def test_zero_matrix_gives_nan_where_torch_raises():
    out, _ = apply_pass(aten_model([3, 3]), "inverse")
    zero = np.zeros((3, 3), np.float32)
    assert np.isnan(run_ort(out, {"m": zero})[0]).all()
    with pytest.raises(RuntimeError, match="singular"):
        torch.linalg.inv(torch.from_numpy(zero))


def test_reduce_max_takes_its_axes_as_an_input_from_opset_18():
    out, _ = apply_pass(aten_model([5, 4, 4], opset=18), "inverse")
    onnx.checker.check_model(out)
    matrices = well_conditioned(np.random.default_rng(18), [5], 4, np.float32) * np.float32(1e20)
    assert (relative_error(run_ort(out, {"m": matrices})[0], matrices) <= RTOL[np.float32]).all()


class _InverseTRT(torch.autograd.Function):
    """BEVFormer_tensorrt's det2trt/models/functions/inverse.py: the plugin op on export, linalg.inv in PyTorch."""

    @staticmethod
    def symbolic(g, inputs):
        return g.op("InverseTRT", inputs)

    @staticmethod
    def forward(ctx, inputs):
        return torch.linalg.inv(inputs)


def trt_model(shape):
    node = helper.make_node("InverseTRT", ["m"], ["y"], name="inv_trt")
    return make_model([node], [("m", np.float32, shape)], [("y", np.float32, shape)])


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("target", ["opset-11", "tensorrt-8.6", "tensorrt-10", "onnxruntime"])
def test_bevformer_tensorrt_inverse_trt_is_rewritten_on_every_builtin_target(opset, target):
    """No built-in profile has BEVFormer_tensorrt's plugin library, so InverseTRT is rewritten everywhere."""
    rng = np.random.default_rng(opset)
    matrices = np.stack([lidar2img(rng, 6), lidar2img(rng, 6)])
    model = export(_InverseTRT.apply, torch.from_numpy(matrices), opset)
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("", "InverseTRT")]
    out, step = apply_pass(model, "inverse", target=target)
    onnx.checker.check_model(out)
    assert len(step.rewritten) == 1 and set(op_types(out)) <= OPSET_11_OPS
    got = run_ort(out, {out.graph.input[0].name: matrices})[0]
    assert (relative_error(got, matrices) <= RTOL[np.float32]).all()
    want = _InverseTRT.apply(torch.from_numpy(matrices)).numpy()  # torch.linalg.inv: LU, up to 1.5e-5 here
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()
    again, second = apply_pass(out, "inverse", target=target)
    assert second.rewritten == [] and op_types(again) == op_types(out)


def test_inverse_trt_is_kept_where_the_target_profile_lists_the_plugin(tmp_path):
    """A profile with BEVFormer_tensorrt's plugin library runs InverseTRT: mode auto keeps it, closed-form does not."""
    profile = tmp_path / "bevformer-trt.yaml"
    profile.write_text("extends: tensorrt-8.6\nname: bevformer-trt\nplugins:\n  InverseTRT: {plugin_version: '1'}\n")
    model = trt_model([6, 4, 4])
    kept, step = apply_pass(model, "inverse", target=str(profile))
    assert step.rewritten == [] and op_types(kept) == ["InverseTRT"]
    assert any("inv_trt" in note and "bevformer-trt" in note for note in step.notes)
    forced, step = apply_pass(model, "inverse", target=str(profile), mode="closed-form")
    assert step.rewritten == ["inv_trt"] and set(op_types(forced)) <= OPSET_11_OPS


def test_inverse_trt_cpu_reference_matches_torch():
    """Validation runs InverseTRT with NumPy's inverse (computed in float64, rounded to the input's float32):
    within RTOL of the exact inverse, and off torch.linalg.inv (float32 LU) by at most torch's own error + RTOL."""
    from surgeon.validation.runners import ReferenceRunner

    rng = np.random.default_rng(5)
    matrices = np.concatenate([well_conditioned(rng, [64], 4, np.float32), lidar2img(rng, 64)])
    with ReferenceRunner(trt_model(list(matrices.shape))) as runner:
        got = runner.infer({"m": matrices})["y"]
    want = torch.linalg.inv(torch.from_numpy(matrices)).numpy()
    assert got.dtype == np.float32 and (relative_error(got, matrices) <= RTOL[np.float32]).all()
    versus_torch = np.abs(got - want).max(axis=(-2, -1)) / np.abs(want).max(axis=(-2, -1))
    assert (versus_torch <= relative_error(want, matrices) + RTOL[np.float32]).all()


@pytest.mark.parametrize("target, opset", [("onnxruntime", 13), ("tensorrt-10", 13), ("tensorrt-10", 14)])
def test_bfloat16_matrices_are_inverted_in_float32(target, opset):
    """torch refuses bfloat16 matrices (linalg.inv: Low precision dtypes not supported); the graph asks for
    inv(M.float()).bfloat16(), which the rewrite computes in float32 (ONNX Runtime has no bfloat16; TensorRT 10
    has, but Pow-13 and -14 take no bfloat16 exponent: the full check refuses a bfloat16 one) and rounds once.
    Against torch in float32 rounded to bfloat16: within 1 bfloat16 ulp (2**-8 relative),
    the float32 closed form's 2e-6 moving a value across a rounding boundary at most."""
    rng = np.random.default_rng(0)
    matrices = (rng.normal(size=(64, 4, 4)) + 4 * np.eye(4)).astype(np.float32)
    matrices = torch.from_numpy(matrices).bfloat16().float().numpy()  # values bfloat16 holds
    bfloat16 = onnx.TensorProto.BFLOAT16
    nodes = [helper.make_node("Cast", ["m"], ["m_bf16"], name="to_bf16", to=bfloat16),
             helper.make_node("ATen", ["m_bf16"], ["inv_bf16"], name="inv", domain="org.pytorch.aten",
                              operator="linalg_inv", overload_name=""),
             helper.make_node("Cast", ["inv_bf16"], ["inv"], name="to_float", to=onnx.TensorProto.FLOAT)]
    model = make_model(nodes, [("m", np.float32, [64, 4, 4])], [("inv", np.float32, [64, 4, 4])], opset=opset)
    model.graph.value_info.append(helper.make_tensor_value_info("m_bf16", bfloat16, [64, 4, 4]))
    out, step = apply_pass(model, "inverse", target=target)
    onnx.checker.check_model(out, full_check=True)
    assert step.rewritten == ["inv"]
    got = run_ort(out, {"m": matrices})[0]
    want = torch.linalg.inv(torch.from_numpy(matrices)).bfloat16().float().numpy()
    ulps = np.abs(got.view(np.int32) - want.view(np.int32)) >> 16  # bfloat16 is float32's upper half
    assert ulps.max() <= 1

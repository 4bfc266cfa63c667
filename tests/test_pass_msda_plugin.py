"""msda-plugin on real torch 2.13 exports of mmcv's multi_scale_deformable_attn_pytorch and on BEVFormer-tiny.

Numerics: the fused graph runs through the validation reference runner (the plugin's NumPy
reference); it must match PyTorch within 2e-6 absolute on unit-scale inputs (bilinear float32 sums
in a different order), and the original graph within the same bound.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from surgeon.plugins.specs import PLUGIN_DOMAIN
from surgeon.testing import apply_pass, make_model, run_ort
from surgeon.validation.runners import ReferenceRunner

torch = pytest.importorskip("torch", reason="needs PyTorch (the zoo extra: pip install 'surgeon[zoo]')")
from surgeon.zoo.layers import multi_scale_deformable_attn_pytorch  # noqa: E402  (needs torch)

FIXTURE = Path(__file__).parent / "data" / "zoo" / "bevformer-tiny.fixture.opset11-aten.onnx"
ATOL = 2e-6


class _Block(torch.nn.Module):
    def __init__(self, shapes, permute=False, mode="bilinear"):
        super().__init__()
        self.shapes, self.permute, self.mode = shapes, permute, mode

    def forward(self, value, locations, weights):
        if self.mode != "bilinear":  # a grid sample the plugin must not take
            return torch.nn.functional.grid_sample(value, locations, mode=self.mode, align_corners=False)
        out = multi_scale_deformable_attn_pytorch(value, self.shapes, locations, weights)
        return out.permute(1, 2, 0) if self.permute else out  # BEVFormer's temporal self-attention does this


def _inputs(shapes, seed=0, batch=2, heads=2, dims=4, queries=5, points=3):
    g = torch.Generator().manual_seed(seed)
    keys = sum(h * w for h, w in shapes)
    return (torch.randn(batch, keys, heads, dims, generator=g),
            torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g) * 1.4 - 0.2,
            torch.rand(batch, queries, heads, len(shapes), points, generator=g))


def _export(module, args, opset, dynamic=False):
    buffer = io.BytesIO()
    axes = {"value": {0: "batch"}, "loc": {0: "batch", 1: "queries"}, "weights": {0: "batch", 1: "queries"}}
    fallback = torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK if opset == 11 else torch.onnx.OperatorExportTypes.ONNX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, opset_version=opset, dynamo=False, operator_export_type=fallback,
                          input_names=["value", "loc", "weights"], output_names=["out"],
                          dynamic_axes=axes if dynamic else None)
    return onnx.load_from_string(buffer.getvalue())


def _run_reference(model, feeds):
    with ReferenceRunner(model) as runner:
        return runner.infer(feeds)["out"]


@pytest.mark.parametrize("opset", [11, 16])
@pytest.mark.parametrize("shapes", [[(6, 8), (3, 4), (2, 2)], [(5, 7)]], ids=["3-levels", "1-level"])
def test_fuses_the_mmcv_fallback_and_keeps_its_outputs(opset, shapes):
    args = _inputs(shapes)
    model = _export(_Block(shapes), args, opset)
    fused, step = apply_pass(model, "msda-plugin")

    assert len(step.rewritten) == 1 and step.rewritten[0].startswith("/Transpose")
    (node,) = fused.graph.node
    assert (node.op_type, node.domain) == ("MultiScaleDeformableAttn", PLUGIN_DOMAIN)
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute} == {
        "plugin_version": b"1", "plugin_namespace": b"surgeon"}
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in fused.graph.initializer}
    assert [node.input[0], node.input[3], node.input[4]] == ["value", "loc", "weights"]
    np.testing.assert_array_equal(consts[node.input[1]], np.array(shapes, dtype=np.int64))
    np.testing.assert_array_equal(consts[node.input[2]], np.cumsum([0] + [h * w for h, w in shapes[:-1]]))
    onnx.checker.check_model(fused)

    feeds = {"value": args[0].numpy(), "loc": args[1].numpy(), "weights": args[2].numpy()}
    expected = _Block(shapes)(*args).numpy()
    got = _run_reference(fused, feeds)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    original = run_ort(model, feeds)[0] if opset == 16 else _run_reference(model, feeds)
    np.testing.assert_allclose(got, original, rtol=0, atol=ATOL)


@pytest.mark.parametrize("opset", [11, 16])
def test_dynamic_batch_exports_are_fused_and_run_at_other_sizes(opset):
    shapes = [(6, 8), (3, 4)]
    fused, step = apply_pass(_export(_Block(shapes), _inputs(shapes), opset, dynamic=True), "msda-plugin")
    assert [n.op_type for n in fused.graph.node] == ["MultiScaleDeformableAttn"]
    args = _inputs(shapes, seed=3, batch=3, queries=7)
    feeds = {"value": args[0].numpy(), "loc": args[1].numpy(), "weights": args[2].numpy()}
    np.testing.assert_allclose(_run_reference(fused, feeds), _Block(shapes)(*args).numpy(), rtol=0, atol=ATOL)


def test_a_merged_final_permute_stays_as_a_transpose_after_the_plugin():
    shapes = [(4, 6)]
    args = _inputs(shapes, seed=1)
    model = _export(_Block(shapes, permute=True), args, 16)
    fused, step = apply_pass(model, "msda-plugin", domain="")
    assert [(n.op_type, n.domain) for n in fused.graph.node] == [("MultiScaleDeformableAttn", ""), ("Transpose", "")]
    feeds = {"value": args[0].numpy(), "loc": args[1].numpy(), "weights": args[2].numpy()}
    np.testing.assert_allclose(_run_reference(fused, feeds), _Block(shapes, permute=True)(*args).numpy(),
                               rtol=0, atol=ATOL)


def test_leaves_other_grid_samples_alone_and_is_idempotent():
    image, grid = torch.randn(1, 3, 5, 5), torch.rand(1, 4, 4, 2) * 2 - 1
    model = _export(_Block(None, mode="nearest"), (image, grid, torch.zeros(1)), 16)
    untouched, step = apply_pass(model, "msda-plugin")
    assert step.rewritten == [] and [n.op_type for n in untouched.graph.node] == ["GridSample"]

    shapes = [(3, 4), (2, 2)]
    fused, _ = apply_pass(_export(_Block(shapes), _inputs(shapes), 11), "msda-plugin")
    again, step = apply_pass(fused, "msda-plugin")
    assert step.rewritten == [] and [n.op_type for n in again.graph.node] == ["MultiScaleDeformableAttn"]


def test_a_block_with_a_different_grid_is_reported_not_rewritten():
    shapes = [(3, 4), (2, 2)]
    model = _export(_Block(shapes), _inputs(shapes), 16)
    sub = next(n for n in model.graph.node if n.op_type == "Sub")
    sub.op_type = "Add"  # 2 * loc + 1: not mmcv's grid
    _, step = apply_pass(model, "msda-plugin")
    assert step.rewritten == []
    assert any("not a deformable-attention block (expected 2 * loc - 1 from a Sub, found Add)" in n for n in step.notes)



def _with_samplers_spelled(model, op_type, domain):
    """The opset-11 export with each ATen grid_sampler replaced by `domain::op_type`(x, grid) with the
    integer attributes of mmdeploy and BEVFormer_tensorrt (0: bilinear, zeros, align_corners=False)."""
    for node in model.graph.node:
        if node.op_type == "ATen":
            del node.input[2:], node.attribute[:]
            node.op_type, node.domain = op_type, domain
            node.attribute.extend(onnx.helper.make_attribute(name, 0)
                                  for name in ("interpolation_mode", "padding_mode", "align_corners"))
    if domain:
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    return model


class _ConstantLocations(torch.nn.Module):
    """mmcv's call on fixed sampling locations (a buffer), whose grid fold-constants turns into an initializer."""

    def __init__(self, shapes, locations):
        super().__init__()
        self.shapes = shapes
        self.register_buffer("locations", locations)

    def forward(self, value, weights):
        return multi_scale_deformable_attn_pytorch(value, self.shapes, self.locations, weights)


def test_a_folded_grid_is_reported_as_a_constant():
    shapes = [(3, 4), (2, 2)]
    value, locations, weights = _inputs(shapes)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ConstantLocations(shapes, locations), (value, weights), buffer, opset_version=16,
                          dynamo=False, input_names=["value", "weights"], output_names=["out"])
    folded, _ = apply_pass(onnx.load_from_string(buffer.getvalue()), "fold-constants")
    _, step = apply_pass(folded, "msda-plugin")
    assert step.rewritten == []
    assert any("expected the sampling grid from a Reshape, found a constant (initializer)" in n for n in step.notes)


def test_mmdeploy_grid_samplers_are_fused_too():
    """mmdeploy's spelling of the same bilinear sampler (read by surgeon.sampling, as grid-sample reads it)."""
    shapes = [(6, 8), (3, 4)]
    args = _inputs(shapes, seed=5)
    model = _with_samplers_spelled(_export(_Block(shapes), args, 11), "grid_sampler", "mmdeploy")
    fused, step = apply_pass(model, "msda-plugin")
    assert len(step.rewritten) == 1 and [n.op_type for n in fused.graph.node] == ["MultiScaleDeformableAttn"]
    feeds = {"value": args[0].numpy(), "loc": args[1].numpy(), "weights": args[2].numpy()}
    expected = _Block(shapes)(*args).numpy()
    np.testing.assert_allclose(_run_reference(model, feeds), expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(_run_reference(fused, feeds), expected, rtol=0, atol=ATOL)


def test_bevformer_tensorrt_grid_samplers_are_not_mmcvs():
    """GridSampler2DTRT reads its grid as [N, 2, Hg, Wg] * 10, which 2 * loc - 1 is not: fusing would be wrong."""
    shapes = [(6, 8), (3, 4)]
    model = _with_samplers_spelled(_export(_Block(shapes), _inputs(shapes), 11), "GridSampler2DTRT", "")
    kept, step = apply_pass(model, "msda-plugin")
    assert step.rewritten == [] and "MultiScaleDeformableAttn" not in [n.op_type for n in kept.graph.node]

class _StackedOnLastDim(torch.nn.Module):
    """mmcv's fallback with torch.stack(..., dim=-1): samples points-major, so each meets another weight."""

    def __init__(self, shapes):
        super().__init__()
        self.shapes = shapes

    def forward(self, value, locations, weights):
        batch, _, heads, dims = value.shape
        _, queries, _, levels, points, _ = locations.shape
        values = value.split([h * w for h, w in self.shapes], dim=1)
        grids = 2 * locations - 1
        samples = [torch.nn.functional.grid_sample(
            values[level].flatten(2).transpose(1, 2).reshape(batch * heads, dims, h, w),
            grids[:, :, :, level].transpose(1, 2).flatten(0, 1), mode="bilinear", padding_mode="zeros",
            align_corners=False) for level, (h, w) in enumerate(self.shapes)]
        weights = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
        out = (torch.stack(samples, dim=-1).flatten(-2) * weights).sum(-1)
        return out.view(batch, heads * dims, queries).transpose(1, 2).contiguous()


@pytest.mark.parametrize("opset", [11, 16])
def test_samples_stacked_on_another_axis_are_reported_not_fused(opset):
    shapes = [(6, 8), (3, 4)]
    args = _inputs(shapes)
    model = _export(_StackedOnLastDim(shapes), args, opset)
    kept, step = apply_pass(model, "msda-plugin")
    assert step.rewritten == []
    assert any("not stacked on dim -2" in n for n in step.notes), step.notes
    feeds = {"value": args[0].numpy(), "loc": args[1].numpy(), "weights": args[2].numpy()}
    # The fused plugin would be off by ~1.6 here; the kept graph is the module.
    np.testing.assert_allclose(_run_reference(kept, feeds), _StackedOnLastDim(shapes)(*args).numpy(),
                               rtol=0, atol=ATOL)


def test_a_concat_on_another_axis_is_reported_even_with_mmcv_unsqueezes():
    shapes = [(3, 4), (2, 2)]
    model = _export(_Block(shapes), _inputs(shapes), 16)
    stack = next(n for n in model.graph.node if n.op_type == "Concat" and
                 all(i.startswith("/Unsqueeze") for i in n.input))
    stack.attribute[0].i = 4  # [.., Q, 1, P] pieces concatenated on the points axis
    _, step = apply_pass(model, "msda-plugin")
    assert step.rewritten == [] and any("Concat axis 4" in n for n in step.notes), step.notes


class _ShapesBuffer(torch.nn.Module):
    """mmcv's call with value_spatial_shapes a registered buffer: torch neither folds the level sizes nor
    exports value.split(...) as a Split (one Slice per level)."""

    def __init__(self, shapes):
        super().__init__()
        self.register_buffer("shapes", torch.tensor(shapes, dtype=torch.long))

    def forward(self, value, locations, weights):
        return multi_scale_deformable_attn_pytorch(value, self.shapes, locations, weights)


@pytest.mark.parametrize("opset", [11, 16])
def test_level_sizes_from_a_buffer_are_fused_after_fold_constants(opset):
    shapes = [(6, 8), (3, 4)]
    args = _inputs(shapes, seed=4)
    model = _export(_ShapesBuffer(shapes), args, opset)
    _, step = apply_pass(model, "msda-plugin")
    assert step.rewritten == [] and "fold-constants first" in step.notes[0]
    folded, _ = apply_pass(model, "fold-constants")
    fused, step = apply_pass(folded, "msda-plugin")
    assert [n.op_type for n in fused.graph.node] == ["MultiScaleDeformableAttn"], step.notes
    feeds = {"value": args[0].numpy(), "loc": args[1].numpy(), "weights": args[2].numpy()}
    np.testing.assert_allclose(_run_reference(fused, feeds), _ShapesBuffer(shapes)(*args).numpy(), rtol=0, atol=ATOL)


def test_mmcv_custom_op_becomes_the_plugin_with_int64_indices():
    shapes = [(6, 8), (3, 4)]
    value, locations, weights = (t.numpy() for t in _inputs(shapes, seed=2))
    node = onnx.helper.make_node("MMCVMultiScaleDeformableAttention", ["value", "shapes", "starts", "loc", "weights"],
                                 ["out"], name="msda", domain="mmcv", im2col_step=64)
    model = make_model([node], inputs=[("value", np.float32, value.shape), ("loc", np.float32, locations.shape),
                                       ("weights", np.float32, weights.shape)],
                       outputs=[("out", np.float32, [2, 5, 8])],
                       initializers={"shapes": np.array(shapes, np.int32), "starts": np.array([0, 48], np.int32)})
    fused, step = apply_pass(model, "msda-plugin")
    assert step.rewritten == ["msda"]
    assert [n.op_type for n in fused.graph.node] == ["Cast", "Cast", "MultiScaleDeformableAttn"]
    expected = _Block(shapes)(*map(torch.from_numpy, (value, locations, weights))).numpy()
    got = _run_reference(fused, {"value": value, "loc": locations, "weights": weights})
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@pytest.mark.slow
@pytest.mark.skipif(not FIXTURE.exists(), reason=f"zoo fixture {FIXTURE.name} not generated")
def test_bevformer_tiny_every_deformable_attention_is_fused_and_outputs_are_unchanged():
    model = onnx.load(str(FIXTURE))
    fused, step = apply_pass(model, "msda-plugin")
    # 3 encoder layers x (temporal self-attention + spatial cross-attention) + 6 decoder cross-attentions.
    assert len(step.rewritten) == 3 * 2 + 6
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("MultiScaleDeformableAttn") == 12
    assert ops.count("ATen") == 1  # the previous BEV's nearest rotation is no deformable attention
    feeds = dict(np.load(str(FIXTURE).replace(".onnx", ".inputs.npz")))
    with ReferenceRunner(model) as runner:
        before = runner.infer(feeds)
    with ReferenceRunner(fused) as runner:
        after = runner.infer(feeds)
    for name, value in before.items():
        # Summation order differs inside the 12 fused blocks; relative to the outputs' scale.
        np.testing.assert_allclose(after[name], value, rtol=1e-5, atol=1e-5 * float(np.abs(value).max()),
                                   err_msg=name)

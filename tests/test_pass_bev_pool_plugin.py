"""bev-pool-plugin on torch exports of BEVFusion's bev_pool reference (surgeon.zoo.bevfusion) and on
custom bev_pool nodes. The fused graph runs through the reference runner (the plugin's NumPy reference)
and must equal PyTorch's bev_pool within 1e-5 (float32 sums of up to a few dozen products)."""
from __future__ import annotations

import io
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.plugins.specs import PLUGIN_DOMAIN
from surgeon.testing import apply_pass, make_model, run_ort
from surgeon.validation.runners import ReferenceRunner

torch = pytest.importorskip("torch", reason="needs PyTorch (the zoo extra: pip install 'surgeon[zoo]')")
from surgeon.zoo.bevfusion import bev_pool  # noqa: E402  (needs torch)

NAMES = ["depth", "feat", "ranks_depth", "ranks_feat", "ranks_bev", "interval_starts", "interval_lengths"]
BEV = (1, 8, 10)  # z, y, x


class _BevPool(torch.nn.Module):
    def forward(self, *inputs):
        return bev_pool(*inputs, bev_shape=BEV)


def _inputs(seed=0, points=120, cameras=(2,)):
    """cameras=(2,): BEVFusion's [N, ...] depth and feat; (1, 2): BEVDet's 5-D [B, N, ...]."""
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(*cameras, 3, 4, 5, generator=g)
    feat = torch.randn(*cameras, 4, 5, 6, generator=g)
    ranks_bev = torch.sort(torch.randint(0, BEV[1] * BEV[2], (points,), generator=g))[0].int()
    ranks_depth = torch.randint(0, depth.numel(), (points,), generator=g).int()
    ranks_feat = torch.randint(0, 2 * 4 * 5, (points,), generator=g).int()
    first = torch.ones(points, dtype=torch.bool)
    first[1:] = ranks_bev[1:] != ranks_bev[:-1]
    starts = torch.where(first)[0].int()
    lengths = torch.diff(starts, append=torch.tensor([points], dtype=torch.int32)).int()
    return depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths


def _export(args, opset, module=None):
    buffer = io.BytesIO()
    fallback = torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK if opset == 11 else torch.onnx.OperatorExportTypes.ONNX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module or _BevPool(), args, buffer, opset_version=opset, dynamo=False, operator_export_type=fallback,
                          input_names=NAMES, output_names=["bev"],
                          dynamic_axes={name: {0: "points"} for name in NAMES[2:]})
    return onnx.load_from_string(buffer.getvalue())


def _reference(model, feeds):
    with ReferenceRunner(model) as runner:
        return runner.infer(feeds)


@pytest.mark.parametrize("opset", [11, 16])
def test_exported_scatter_form_becomes_one_plugin_with_pytorch_sums(opset):
    args = _inputs()
    fused, step = apply_pass(_export(args, opset), "bev-pool-plugin")
    assert step.rewritten == ["/ScatterND"]
    plugin = next(n for n in fused.graph.node if n.op_type == "BEVPool")
    assert plugin.domain == PLUGIN_DOMAIN and list(plugin.input) == NAMES
    assert {a.name: helper.get_attribute_value(a) for a in plugin.attribute} == {
        "bev_h": 8, "bev_w": 10, "plugin_version": b"1", "plugin_namespace": b"surgeon"}
    assert not {"ScatterND", "ScatterElements", "Loop", "ATen"} & {n.op_type for n in fused.graph.node}
    feeds = {name: t.numpy() for name, t in zip(NAMES, args)}
    np.testing.assert_allclose(_reference(fused, feeds)["bev"], _BevPool()(*args).numpy(), rtol=1e-5, atol=1e-5)


def test_the_exported_graph_itself_overwrites_instead_of_summing():
    """Why the rewrite matters beyond speed: ONNX Runtime on torch's export drops all but one point per cell."""
    args = _inputs(seed=1)
    feeds = {name: t.numpy() for name, t in zip(NAMES, args)}
    exported = run_ort(_export(args, 16), feeds)[0]
    assert not np.allclose(exported, _BevPool()(*args).numpy(), atol=1e-3)


def _custom_model(output_shape, op_type="BEVPoolV2TRT", cameras=(2,), feat_type=np.float32, **attrs):
    node = helper.make_node(op_type, NAMES, ["bev"], name="bev_pool", domain="", **attrs)
    int32_inputs = [(name, np.int32, ["points"]) for name in NAMES[2:]]
    return make_model([node], inputs=[("depth", np.float32, [*cameras, 3, 4, 5]),
                                      ("feat", feat_type, [*cameras, 4, 5, 6]), *int32_inputs],
                      outputs=[("bev", np.float32, output_shape)])


def _plugin_input_shapes(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.input, *inferred.graph.value_info]}
    plugin = next(n for n in inferred.graph.node if n.op_type == "BEVPool")
    return shapes[plugin.input[0]], shapes[plugin.input[1]]


@pytest.mark.parametrize("channels_last", [False, True])
def test_custom_bev_pool_node_is_replaced_in_its_output_layout(channels_last):
    shape = [1, 8, 10, 6] if channels_last else [1, 6, 8, 10]
    fused, step = apply_pass(_custom_model(shape, output_height=8, output_width=10, output_z=1), "bev-pool-plugin",
                             domain="")
    assert step.rewritten == ["bev_pool"]
    assert [n.op_type for n in fused.graph.node] == (["BEVPool", "Transpose"] if channels_last else ["BEVPool"])
    args = _inputs(seed=2)
    feeds = {name: t.numpy() for name, t in zip(NAMES, args)}
    expected = _BevPool()(*args).numpy()
    got = _reference(fused, feeds)["bev"]
    np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1) if channels_last else expected, rtol=1e-5, atol=1e-5)


def test_custom_node_without_a_known_layout_or_with_height_slices_is_left_with_a_note():
    _, step = apply_pass(_custom_model(None, output_height=8, output_width=10), "bev-pool-plugin")
    assert step.rewritten == [] and "neither [1, C, H, W] nor [1, H, W, C]" in step.notes[0]
    _, step = apply_pass(_custom_model([1, 6, 8, 10], output_height=8, output_width=10, output_z=4), "bev-pool-plugin")
    assert step.rewritten == [] and "output_z != 1" in step.notes[0]


def test_other_scatters_are_untouched_and_the_pass_is_idempotent():
    scatter = helper.make_node("ScatterND", ["data", "indices", "updates"], ["out"], name="scatter")
    model = make_model([scatter], inputs=[("indices", np.int64, [2, 1]), ("updates", np.float32, [2, 3])],
                       outputs=[("out", np.float32, [4, 3])], initializers={"data": np.ones((4, 3), np.float32)})
    _, step = apply_pass(model, "bev-pool-plugin")
    assert step.rewritten == [] and step.notes == []
    fused, _ = apply_pass(_export(_inputs(), 16), "bev-pool-plugin")
    _, step = apply_pass(fused, "bev-pool-plugin")
    assert step.rewritten == []


@pytest.mark.parametrize("opset", [11, 16])
def test_bevdet_5d_depth_and_feat_are_reshaped_to_the_plugins_4d_layout(opset):
    """The TensorRT plugin reads C from feat's dim 3: [B, N, H, W, C] must reach it as [B*N, H, W, C]."""
    args = _inputs(seed=4, cameras=(1, 2))
    fused, step = apply_pass(_export(args, opset), "bev-pool-plugin")
    assert step.rewritten == ["/ScatterND"]
    assert _plugin_input_shapes(fused) == ([2, 3, 4, 5], [2, 4, 5, 6])
    onnx.checker.check_model(fused)
    feeds = {name: t.numpy() for name, t in zip(NAMES, args)}
    np.testing.assert_allclose(_reference(fused, feeds)["bev"], _BevPool()(*args).numpy(), rtol=1e-5, atol=1e-5)


class _HalfFeatures(torch.nn.Module):
    def forward(self, depth, feat, *indices):
        return bev_pool(depth, feat.float(), *indices, bev_shape=BEV)


def test_a_float_cast_on_the_feature_branch_does_not_hide_interval_lengths():
    """feat float16 promoted with .float(): a Cast of a graph input the segment ids' ancestry reaches too."""
    args = _inputs(seed=5)
    args = (args[0], args[1].half(), *args[2:])
    fused, step = apply_pass(_export(args, 16, _HalfFeatures()), "bev-pool-plugin")
    assert step.rewritten == ["/ScatterND"] and step.notes == []
    feeds = {name: t.numpy() for name, t in zip(NAMES, args)}
    np.testing.assert_allclose(_reference(fused, feeds)["bev"], _HalfFeatures()(*args).numpy(), rtol=1e-5, atol=1e-5)


def test_bevdet_out_height_out_width_and_5d_inputs_on_a_custom_node():
    """BEVDet's TRTBEVPoolv2.symbolic: out_height_i / out_width_i, no output_z, [1, H, W, C] out."""
    model = _custom_model([1, 8, 10, 6], op_type="bev_pool_v2", cameras=(1, 2), out_height=8, out_width=10)
    fused, step = apply_pass(model, "bev-pool-plugin")
    assert step.rewritten == ["bev_pool"]
    assert [n.op_type for n in fused.graph.node] == ["Reshape", "Reshape", "BEVPool", "Transpose"]
    assert _plugin_input_shapes(fused) == ([2, 3, 4, 5], [2, 4, 5, 6])
    args = _inputs(seed=6, cameras=(1, 2))
    feeds = {name: t.numpy() for name, t in zip(NAMES, args)}
    np.testing.assert_allclose(_reference(fused, feeds)["bev"], _BevPool()(*args).numpy().transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-5)


def test_an_output_shape_that_fits_both_layouts_is_left_with_a_note():
    """[1, 6, 6, 6] on a 6 x 6 grid with C = 6 may be NCHW or channels-last; guessing would transpose the BEV."""
    node = helper.make_node("bev_pool_v2", NAMES, ["bev"], name="bev_pool", domain="custom",
                            output_height=6, output_width=6)
    model = make_model([node], inputs=[("depth", np.float32, [2, 3, 4, 5]), ("feat", np.float32, [2, 4, 5, 6]),
                                       *[(name, np.int32, ["points"]) for name in NAMES[2:]]],
                       outputs=[("bev", np.float32, [1, 6, 6, 6])])
    _, step = apply_pass(model, "bev-pool-plugin")
    assert step.rewritten == [] and "fits both [1, C, H, W] and [1, H, W, C]" in step.notes[0]


def test_depth_and_feat_of_different_float_types_are_left_with_a_note():
    _, step = apply_pass(_custom_model([1, 6, 8, 10], feat_type=np.float16, output_height=8, output_width=10),
                         "bev-pool-plugin")
    assert step.rewritten == [] and "depth is float32 and feat float16" in step.notes[0]


def test_docstring_sketches_the_graph_before_and_after():
    """`surgeon explain bev-pool-plugin` shows the module docstring: both spellings and the plugin after."""
    from surgeon.registry import get_pass

    doc = sys.modules[get_pass("bev-pool-plugin").__module__].__doc__
    assert "2. The PyTorch reference" in doc and "After (both spellings)" in doc and "BEVPool plugin" in doc

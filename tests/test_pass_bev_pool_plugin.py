"""bev-pool-plugin on torch exports of BEVFusion's bev_pool reference (surgeon.zoo.bevfusion) and on
custom bev_pool nodes. The fused graph runs through the reference runner (the plugin's NumPy reference)
and must equal PyTorch's bev_pool within 1e-5 (float32 sums of up to a few dozen products)."""
from __future__ import annotations

import io
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


def _inputs(seed=0, points=120):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(2, 3, 4, 5, generator=g)
    feat = torch.randn(2, 4, 5, 6, generator=g)
    ranks_bev = torch.sort(torch.randint(0, BEV[1] * BEV[2], (points,), generator=g))[0].int()
    ranks_depth = torch.randint(0, depth.numel(), (points,), generator=g).int()
    ranks_feat = torch.randint(0, 2 * 4 * 5, (points,), generator=g).int()
    first = torch.ones(points, dtype=torch.bool)
    first[1:] = ranks_bev[1:] != ranks_bev[:-1]
    starts = torch.where(first)[0].int()
    lengths = torch.diff(starts, append=torch.tensor([points], dtype=torch.int32)).int()
    return depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths


def _export(args, opset):
    buffer = io.BytesIO()
    fallback = torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK if opset == 11 else torch.onnx.OperatorExportTypes.ONNX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_BevPool(), args, buffer, opset_version=opset, dynamo=False, operator_export_type=fallback,
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


def _custom_model(output_shape, op_type="BEVPoolV2TRT", **attrs):
    node = helper.make_node(op_type, NAMES, ["bev"], name="bev_pool", domain="", **attrs)
    int32_inputs = [(name, np.int32, ["points"]) for name in NAMES[2:]]
    return make_model([node], inputs=[("depth", np.float32, [2, 3, 4, 5]), ("feat", np.float32, [2, 4, 5, 6]),
                                      *int32_inputs], outputs=[("bev", np.float32, output_shape)])


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

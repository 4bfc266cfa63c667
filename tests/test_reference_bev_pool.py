"""The CPU reference of custom bev_pool nodes (BEVPoolV2TRT, bev_pool_v2 in any domain), so that a graph holding
one validates against its bev-pool-plugin rewrite. Checked against an independent torch computation (every
point's depth * feature accumulated into its cell with index_put_, no intervals) within 1e-5: float32 sums
of up to a few dozen products, added in another order."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.cli import main
from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model
from surgeon.validation.runners import ReferenceRunner

torch = pytest.importorskip("torch")

NAMES = ["depth", "feat", "ranks_depth", "ranks_feat", "ranks_bev", "interval_starts", "interval_lengths"]
BEV_H, BEV_W, CHANNELS = 8, 10, 6


def _inputs(seed=0, points=150, cameras=(2,), channels=CHANNELS, bev=(BEV_H, BEV_W)):
    """BEVPoolv2's index arrays: points sorted by cell, one interval per occupied cell."""
    rng = np.random.default_rng(seed)
    depth = rng.random((*cameras, 3, 4, 5), dtype=np.float32)
    feat = rng.standard_normal((*cameras, 4, 5, channels), dtype=np.float32)
    ranks_bev = np.sort(rng.integers(0, bev[0] * bev[1], points)).astype(np.int32)
    ranks_depth = rng.integers(0, depth.size, points).astype(np.int32)
    ranks_feat = rng.integers(0, feat.size // channels, points).astype(np.int32)
    starts = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]]).astype(np.int32)
    lengths = np.diff(np.r_[starts, points]).astype(np.int32)
    return dict(zip(NAMES, (depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths)))


def _torch_bev(feeds, bev=(BEV_H, BEV_W)) -> np.ndarray:
    """[1, C, H, W]: each point's depth * feature added into its cell, read from the ranks alone."""
    t = {name: torch.from_numpy(value) for name, value in feeds.items()}
    channels = t["feat"].shape[-1]
    products = t["depth"].reshape(-1)[t["ranks_depth"].long(), None] * t["feat"].reshape(-1, channels)[
        t["ranks_feat"].long()]
    cells = torch.zeros(bev[0] * bev[1], channels).index_put_((t["ranks_bev"].long(),), products, accumulate=True)
    return cells.T.reshape(1, channels, *bev).numpy()


def _custom_model(output_shape, op_type="BEVPoolV2TRT", domain="", cameras=(2,), channels=CHANNELS,
                  **attrs) -> onnx.ModelProto:
    node = helper.make_node(op_type, NAMES, ["bev"], name="bev_pool", domain=domain, **attrs)
    return make_model([node], inputs=[("depth", np.float32, [*cameras, 3, 4, 5]),
                                      ("feat", np.float32, [*cameras, 4, 5, channels]),
                                      *[(name, np.int32, ["points"]) for name in NAMES[2:]]],
                      outputs=[("bev", np.float32, output_shape)])


def _run(model, feeds) -> np.ndarray:
    with ReferenceRunner(model) as runner:
        return runner.infer(feeds)["bev"]


@pytest.mark.parametrize("op_type,domain,cameras,attrs", [
    ("BEVPoolV2TRT", "", (2,), {"output_height": BEV_H, "output_width": BEV_W, "output_z": 1}),
    ("BEVPoolV2TRT", "custom", (2,), {"output_height": BEV_H, "output_width": BEV_W}),
    ("bev_pool_v2", "mmdeploy", (1, 2), {"out_height": BEV_H, "out_width": BEV_W}),  # BEVDet: 5-D inputs
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_custom_bev_pool_writes_the_layout_its_output_shape_declares(op_type, domain, cameras, attrs, channels_last):
    shape = [1, BEV_H, BEV_W, CHANNELS] if channels_last else [1, CHANNELS, BEV_H, BEV_W]
    feeds = _inputs(seed=len(cameras), cameras=cameras)
    got = _run(_custom_model(shape, op_type, domain, cameras, **attrs), feeds)
    expected = _torch_bev(feeds)
    np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1) if channels_last else expected, rtol=1e-5,
                               atol=1e-5)


def test_a_dynamic_dimension_still_tells_the_layout():
    feeds = _inputs(seed=3)
    got = _run(_custom_model([1, "c", BEV_H, BEV_W], output_height=BEV_H, output_width=BEV_W), feeds)
    np.testing.assert_allclose(got, _torch_bev(feeds), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, words", [
    ([1, 6, 6, 6], "which fits both [1, C, H, W] and [1, H, W, C] (C 6, H 6, W 6): declared [1, 6, 6, 6]"),
    (None, "which is neither [1, C, H, W] nor [1, H, W, C] (C 6, H 6, W 6): declared unknown"),
    ([1, 6, 36], "which is neither"),
])
def test_an_output_shape_that_does_not_tell_the_layout_is_an_error_naming_the_node(shape, words):
    """C == H == W: no attribute says which layout the node writes, and guessing would transpose the BEV."""
    model = _custom_model(shape, "bev_pool_v2", "custom", output_height=6, output_width=6)
    with pytest.raises(SurgeonError, match="CPU reference of node 'bev_pool' \\(custom::bev_pool_v2\\) failed") as info:
        _run(model, _inputs(bev=(6, 6)))
    assert words in str(info.value)


def test_height_slices_are_refused_naming_the_node():
    model = _custom_model([1, CHANNELS, BEV_H, BEV_W], output_height=BEV_H, output_width=BEV_W, output_z=4)
    with pytest.raises(SurgeonError, match="node 'bev_pool' .*output_z 4: the reference pools into one height slice"):
        _run(model, _inputs())


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_recipe_replacing_a_custom_bev_pool_validates(tmp_path, capsys, channels_last):
    """The user's case: the original (BEVPoolV2TRT) runs on this reference, the rewrite (BEVPool plugin, plus a
    Transpose for [1, H, W, C]) on the plugin's; `surgeon run` validates them and `surgeon compare` agrees."""
    shape = [1, BEV_H, BEV_W, CHANNELS] if channels_last else [1, CHANNELS, BEV_H, BEV_W]
    onnx.save(_custom_model(shape, output_height=BEV_H, output_width=BEV_W), tmp_path / "custom.onnx")
    np.savez(tmp_path / "inputs.npz", **_inputs(seed=7))
    (tmp_path / "recipe.yaml").write_text("name: bev\nsteps:\n  - pass: bev-pool-plugin\n"
                                          "validate:\n  data: inputs.npz\n  atol: 1.0e-5\n  rtol: 1.0e-5\n")
    out = tmp_path / "out.onnx"
    assert main(["run", str(tmp_path / "recipe.yaml"), str(tmp_path / "custom.onnx"), "-o", str(out), "-q"]) == 0, \
        capsys.readouterr()
    assert "BEVPool" in {n.op_type for n in onnx.load(out).graph.node}
    assert main(["compare", str(tmp_path / "custom.onnx"), str(out), "--data", str(tmp_path / "inputs.npz")]) == 0
    assert "original (reference) vs rewritten (reference)" in capsys.readouterr().out


def test_the_reference_matches_the_rewrite_the_pass_makes():
    """Run before the pass (this reference) and after it (the BEVPool plugin's reference): the same BEV."""
    model = _custom_model([1, BEV_H, BEV_W, CHANNELS], "bev_pool_v2", "custom", (1, 2), out_height=BEV_H,
                          out_width=BEV_W)
    rewritten, step = apply_pass(model, "bev-pool-plugin")
    assert step.rewritten == ["bev_pool"]
    feeds = _inputs(seed=8, cameras=(1, 2))
    np.testing.assert_allclose(_run(model, feeds), _run(rewritten, feeds), rtol=1e-6, atol=1e-6)


def test_empty_channels_and_cameras_give_torchs_empty_shapes():
    """No -1 in the reshapes: it is undefined once a dimension is 0."""
    no_points = {name: np.zeros(0, np.int32) for name in NAMES[2:]}
    no_channels = {"depth": np.ones((1, 2, 3, 4, 5), np.float32), "feat": np.ones((1, 2, 4, 5, 0), np.float32)}
    model = _custom_model([1, 0, BEV_H, BEV_W], "bev_pool_v2", "mmdeploy", (1, 2), channels=0,
                          out_height=BEV_H, out_width=BEV_W)
    assert _run(model, {**no_channels, **no_points}).shape == (1, 0, BEV_H, BEV_W)
    no_cameras = {"depth": np.ones((1, 0, 3, 4, 5), np.float32), "feat": np.ones((1, 0, 4, 5, CHANNELS), np.float32)}
    model = _custom_model([1, CHANNELS, BEV_H, BEV_W], "bev_pool_v2", "mmdeploy", (1, 0),
                          out_height=BEV_H, out_width=BEV_W)
    np.testing.assert_array_equal(_run(model, {**no_cameras, **no_points}), np.zeros((1, CHANNELS, BEV_H, BEV_W)))

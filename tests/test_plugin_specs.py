"""The plugin specs' NumPy references against PyTorch, and the plugin nodes the specs emit.

Tolerances: float32 bilinear sums agree to atol 2e-6 (PyTorch's CPU kernel and ours round the same
way but may fuse differently); nearest-neighbour results must be identical.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from surgeon.errors import PassError
from surgeon.pass_api import Context
from surgeon.plugins.specs import PLUGIN_DOMAIN, get_spec, make_plugin_node, plugin_specs
from surgeon.reference import find_reference
from surgeon.rewrite import Rewrite

torch = pytest.importorskip("torch", reason="the references are checked against PyTorch (the zoo extra)")
F = torch.nn.functional
from surgeon.zoo.layers import multi_scale_deformable_attn_pytorch  # noqa: E402  (needs torch)

ATOL = 2e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


def _run(name, inputs, **attrs):
    return find_reference(name, PLUGIN_DOMAIN)(inputs, attrs)[0]


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_2d_matches_torch(mode, padding, align):
    rng = _rng(mode * 6 + padding * 2 + align)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    grid = rng.uniform(-1.6, 1.6, (2, 4, 6, 2)).astype(np.float32)
    expected = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=("bilinear", "nearest")[mode],
                             padding_mode=("zeros", "border", "reflection")[padding], align_corners=bool(align))
    got = _run("GridSample2D", [x, grid], interpolation_mode=mode, padding_mode=padding, align_corners=align)
    assert got.shape == (2, 3, 4, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=0 if mode == 1 else ATOL)


def test_grid_sample_2d_nearest_ties_round_half_to_even_like_torch():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    # Pixel coordinates 0.5, 1.5, 2.5: exact ties that PyTorch rounds to even.
    coords = np.float32([(2 * p + 1) / 4 - 1 for p in (0.5, 1.5, 2.5)])
    grid = np.stack(np.meshgrid(coords, coords), -1)[None].astype(np.float32)
    expected = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode="nearest", align_corners=False)
    np.testing.assert_array_equal(_run("GridSample2D", [x, grid], interpolation_mode=1), expected.numpy())


def test_grid_sample_2d_float16_is_sampled_in_float32_and_rounded_once():
    rng = _rng(3)
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float16)
    grid = rng.uniform(-1, 1, (1, 3, 3, 2)).astype(np.float16)
    expected = F.grid_sample(torch.from_numpy(x).float(), torch.from_numpy(grid).float(), align_corners=False)
    got = _run("GridSample2D", [x, grid])
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, expected.half().numpy())


def _msda_inputs(rng, shapes=((6, 8), (3, 4)), batch=2, heads=2, dims=4, queries=5, points=3):
    keys = sum(h * w for h, w in shapes)
    value = rng.standard_normal((batch, keys, heads, dims)).astype(np.float32)
    # Beyond [0, 1] too, so zero padding is exercised.
    locations = rng.uniform(-0.2, 1.2, (batch, queries, heads, len(shapes), points, 2)).astype(np.float32)
    weights = rng.uniform(0, 1, (batch, queries, heads, len(shapes), points)).astype(np.float32)
    spatial = np.array(shapes, dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(spatial.prod(1))[:-1]]).astype(np.int64)
    return value, spatial, start, locations, weights


def test_msda_matches_mmcv_pytorch_fallback():
    value, spatial, start, locations, weights = _msda_inputs(_rng(1))
    expected = multi_scale_deformable_attn_pytorch(torch.from_numpy(value), [tuple(s) for s in spatial.tolist()],
                                                   torch.from_numpy(locations), torch.from_numpy(weights))
    got = _run("MultiScaleDeformableAttn", [value, spatial, start, locations, weights])
    assert got.shape == (2, 5, 8)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=ATOL)


def _scatter_add_bev_pool(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_h, bev_w):
    """The plain PyTorch form: every point adds depth * feature into its BEV cell."""
    channels = feat.shape[-1]
    contributions = depth.reshape(-1)[ranks_depth.long(), None] * feat.reshape(-1, channels)[ranks_feat.long()]
    bev = torch.zeros(bev_h * bev_w, channels).index_add_(0, ranks_bev.long(), contributions)
    return bev.t().reshape(1, channels, bev_h, bev_w)


def test_bev_pool_matches_torch_scatter_add():
    rng = _rng(2)
    cams, bins, h, w, channels, bev_h, bev_w = 2, 4, 3, 5, 6, 7, 9
    depth = rng.uniform(0, 1, (cams, bins, h, w)).astype(np.float32)
    feat = rng.standard_normal((cams, h, w, channels)).astype(np.float32)
    count = 80
    ranks_depth = rng.integers(0, depth.size, count).astype(np.int32)
    ranks_feat = rng.integers(0, cams * h * w, count).astype(np.int32)
    ranks_bev = np.sort(rng.integers(0, bev_h * bev_w - 10, count)).astype(np.int32)  # some cells stay empty
    starts = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]]).astype(np.int32)
    lengths = np.diff(np.r_[starts, count]).astype(np.int32)
    expected = _scatter_add_bev_pool(*map(torch.from_numpy, (depth, feat, ranks_depth, ranks_feat, ranks_bev)),
                                     bev_h, bev_w)
    got = _run("BEVPool", [depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths], bev_h=bev_h, bev_w=bev_w)
    assert got.shape == (1, channels, bev_h, bev_w)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=ATOL)
    assert np.count_nonzero(got.sum(1)) == len(starts)


def _small_bev_pool_inputs(depth_shape=(2, 3, 2, 2), feat_shape=(2, 2, 2, 3)):
    rng = _rng(5)
    depth = rng.uniform(0, 1, depth_shape).astype(np.float32)
    feat = rng.standard_normal(feat_shape).astype(np.float32)
    indices = [np.array(v, np.int32) for v in ([0, 5], [1, 3], [0, 2], [0, 1], [1, 1])]
    return depth, feat, indices


def test_bev_pool_output_takes_the_one_float_type_and_mixed_types_are_refused():
    """The TensorRT plugins take depth and feat of one type (kSame), the output's; the reference agrees."""
    depth, feat, indices = _small_bev_pool_inputs()
    assert get_spec("BEVPool").inputs[get_spec("BEVPool").dtype_from] == "depth"
    got = _run("BEVPool", [depth.astype(np.float16), feat.astype(np.float16), *indices], bev_h=2, bev_w=2)
    assert got.dtype == np.float16
    with pytest.raises(ValueError, match=r"depth \(float16\) and feat \(float32\) must have one float type"):
        _run("BEVPool", [depth.astype(np.float16), feat, *indices], bev_h=2, bev_w=2)


def test_bev_pool_refuses_inputs_that_are_not_4d():
    """BEVDet's 5-D [B, N, ...] would be misread by the plugins (C from feat's dim 3): refused, not flattened."""
    depth, feat, indices = _small_bev_pool_inputs()
    with pytest.raises(PassError, match=r"depth \[N, D, H, W\] and feat \[N, H, W, C\] \(4-D\)"):
        _run("BEVPool", [depth[None], feat[None], *indices], bev_h=2, bev_w=2)
    with pytest.raises(PassError, match="4-D"):
        get_spec("BEVPool").output_shape([[1, 2, 3, 2, 2], [1, 2, 2, 2, 3]], {"bev_h": 2, "bev_w": 2})


def _torchvision_rotate(image, angle, center, mode):
    """torchvision.transforms.functional.rotate (tensor path) written out: inverse affine matrix,
    `_gen_affine_grid`, grid_sample with zero fill. No torchvision wheel is installable here."""
    h, w = image.shape[-2:]
    cx, cy = center[0] - w * 0.5, center[1] - h * 0.5
    rot = math.radians(-angle)
    a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    matrix = [a, b, a * -cx + b * -cy + cx, c, d, c * -cx + d * -cy + cy]
    theta = torch.tensor(matrix, dtype=torch.float32).reshape(1, 2, 3)
    base = torch.empty(1, h, w, 3)
    base[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w))
    base[..., 1].copy_(torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h).unsqueeze_(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h])
    grid = base.view(1, h * w, 3).bmm(rescaled).view(1, h, w, 2)
    batch = image if image.dim() == 4 else image[None]
    out = F.grid_sample(batch, grid.expand(batch.shape[0], h, w, 2), mode=mode, padding_mode="zeros",
                        align_corners=False)
    return out if image.dim() == 4 else out[0]


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("batched", [False, True])
def test_rotate_matches_torchvision_affine_grid_form(mode, batched):
    rng = _rng(4)
    image = rng.standard_normal((2, 3, 9, 11) if batched else (3, 9, 11)).astype(np.float32)
    for angle, center in ((17.3, (5.5, 4.5)), (-61.7, (3.0, 6.25)), (90.0, (5.5, 4.5))):
        expected = _torchvision_rotate(torch.from_numpy(image), angle, center, ("bilinear", "nearest")[mode])
        got = _run("Rotate", [image, np.float32([angle]), np.float32(center)], interpolation_mode=mode)
        assert got.shape == image.shape
        # theta is rounded to float32 from float64 (torchvision) vs computed in float32 (the plugin):
        # a few ulp in the grid.
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=2e-5 if mode == 0 else 0)


def _torch_deformable_aggregation(feat, spatial_shape, start, location, weights):
    """Sparse4D's deformable_aggregation with grid_sample: per camera and scale, sample, weight, sum."""
    batch, _, channels = feat.shape
    _, anchors, points, cams, _ = location.shape
    groups = weights.shape[-1]
    out = torch.zeros(batch, anchors, channels)
    for cam in range(cams):
        loc = location[:, :, :, cam]
        inside = ((loc > 0) & (loc < 1)).all(-1)
        for scale in range(spatial_shape.shape[1]):
            h, w = spatial_shape[cam, scale].tolist()
            s = int(start[cam, scale])
            image = feat[:, s:s + h * w].reshape(batch, h, w, channels).permute(0, 3, 1, 2)
            sampled = F.grid_sample(image, 2 * loc - 1, align_corners=False)  # [B, C, A, P]
            weight = weights[:, :, :, cam, scale].repeat_interleave(channels // groups, -1)  # [B, A, P, C]
            out += (sampled.permute(0, 2, 3, 1) * weight * inside[..., None]).sum(2)
    return out


def test_deformable_aggregation_matches_torch_grid_sample_form():
    rng = _rng(5)
    batch, cams, shapes, channels, anchors, points, groups = 2, 3, [(6, 8), (3, 4)], 8, 5, 4, 2
    spatial = np.array([shapes] * cams, dtype=np.int32)
    per_cam = sum(h * w for h, w in shapes)
    start = np.array([[c * per_cam, c * per_cam + 48] for c in range(cams)], dtype=np.int32)
    feat = rng.standard_normal((batch, cams * per_cam, channels)).astype(np.float32)
    location = rng.uniform(-0.1, 1.1, (batch, anchors, points, cams, 2)).astype(np.float32)
    weights = rng.uniform(0, 1, (batch, anchors, points, cams, len(shapes), groups)).astype(np.float32)
    expected = _torch_deformable_aggregation(*map(torch.from_numpy, (feat, spatial, start, location, weights)))
    got = _run("DeformableAggregation", [feat, spatial, start, location, weights])
    assert got.shape == (batch, anchors, channels)
    # (2 * loc - 1 + 1) * h / 2 - 0.5 (grid_sample) vs loc * h - 0.5 (the kernel): an ulp in the coordinate.
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_every_spec_names_its_cuda_source_and_registers_both_domains():
    from pathlib import Path

    import surgeon.plugins

    folder = Path(surgeon.plugins.__file__).parent
    assert set(plugin_specs()) == {"MultiScaleDeformableAttn", "GridSample2D", "BEVPool", "Rotate",
                                   "DeformableAggregation"}
    for spec in plugin_specs().values():
        assert (folder / spec.cuda_source).is_file(), spec.cuda_source
        reference = find_reference(spec.name, PLUGIN_DOMAIN)
        assert find_reference(spec.name, "") is reference and inspect.unwrap(reference) is spec.reference
        assert spec.shipped and spec.domains == (PLUGIN_DOMAIN, "")


def _one_node_graph():
    x = gs.Variable("x", dtype=np.float32, shape=[2, 3, 8, 8])
    grid = gs.Variable("grid", dtype=np.float32, shape=[2, 4, 5, 2])
    y = gs.Variable("y", dtype=np.float32)
    node = gs.Node("GridSample", name="gs", inputs=[x, grid], outputs=[y], attrs={"mode": "nearest"})
    return gs.Graph(nodes=[node], inputs=[x, grid], outputs=[y], opset=16), node


def test_make_plugin_node_carries_op_type_attributes_and_shape():
    graph, node = _one_node_graph()
    ctx = Context(target=None)
    ctx.begin(graph, "test")
    plugin = make_plugin_node(Rewrite(graph, ctx, node), "GridSample2D", node.inputs[:2], {"interpolation_mode": 1})
    assert [n.op for n in graph.nodes] == ["GridSample2D"]
    assert plugin.domain == PLUGIN_DOMAIN
    assert plugin.attrs == {"interpolation_mode": 1, "padding_mode": 0, "align_corners": 0,
                            "plugin_version": "1", "plugin_namespace": "surgeon"}
    assert plugin.outputs[0].name == "y" and list(plugin.outputs[0].shape) == [2, 3, 4, 5]


def test_make_plugin_node_refuses_a_domain_its_reference_does_not_answer_in():
    """The spec's plugin in a domain no reference answers in could not be validated: one PassError naming the
    plugin and the domain, before anything changes (it was emitted, and validation refused the graph after
    the run). Another plugin_namespace makes it a plugin of the user's own, accepted in any domain."""
    graph, node = _one_node_graph()
    ctx = Context(target=None)
    ctx.begin(graph, "test")
    with pytest.raises(PassError, match=r"plugin GridSample2D in domain 'acme': its spec's reference answers in "
                                        r"'surgeon' and the default domain only"):
        make_plugin_node(Rewrite(graph, ctx, node), "GridSample2D", node.inputs[:2], domain="acme")
    assert [n.op for n in graph.nodes] == ["GridSample"]
    plugin = make_plugin_node(Rewrite(graph, ctx, node), "GridSample2D", node.inputs[:2], domain="acme",
                              plugin_namespace="acme")
    assert (plugin.domain, plugin.attrs["plugin_namespace"]) == ("acme", "acme")


def test_make_plugin_node_takes_a_domain_a_reference_was_registered_for():
    from surgeon.reference import temporary_reference

    graph, node = _one_node_graph()
    ctx = Context(target=None)
    ctx.begin(graph, "test")
    with temporary_reference(lambda inputs, attrs: inputs[:1], "GridSample2D", domain="acme"):
        plugin = make_plugin_node(Rewrite(graph, ctx, node), "GridSample2D", node.inputs[:2], domain="acme")
    assert (plugin.domain, plugin.attrs["plugin_namespace"]) == ("acme", "surgeon")


def test_make_plugin_node_rejects_unknown_and_ill_typed_attributes():
    graph, node = _one_node_graph()
    ctx = Context(target=None)
    ctx.begin(graph, "test")
    with pytest.raises(PassError, match="no attribute 'mode'"):
        make_plugin_node(Rewrite(graph, ctx, node), "GridSample2D", node.inputs[:2], {"mode": 1})
    with pytest.raises(PassError, match="'padding_mode' must be one of"):
        make_plugin_node(Rewrite(graph, ctx, node), "GridSample2D", node.inputs[:2], {"padding_mode": 7})
    assert [n.op for n in graph.nodes] == ["GridSample"]  # nothing half-done
    with pytest.raises(PassError, match="unknown plugin"):
        get_spec("GridSample3D")

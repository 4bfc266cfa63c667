"""The NumPy kernels shared by CPU references match PyTorch to a few ulp."""
from __future__ import annotations

import numpy as np
import pytest

from surgeon.reference.numpy_ops import grid_sample, multi_scale_deformable_attention

torch = pytest.importorskip("torch")
F = torch.nn.functional
from surgeon.zoo.layers import multi_scale_deformable_attn_pytorch  # noqa: E402  (needs torch)

TOL = dict(rtol=1e-5, atol=1e-5)


def _grid(rng, shape):
    """Coordinates beyond [-1, 1] (padding modes) plus the exact corners and centre (rounding edges)."""
    grid = rng.uniform(-1.4, 1.4, shape).astype(np.float32)
    flat = grid.reshape(-1, shape[-1])
    flat[:3] = [[-1.0] * shape[-1], [1.0] * shape[-1], [0.0] * shape[-1]]
    return grid


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_grid_sample_4d_matches_torch(mode, padding_mode, align_corners):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    grid = _grid(rng, (2, 4, 6, 2))
    expected = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners).numpy()
    np.testing.assert_allclose(grid_sample(x, grid, mode, padding_mode, align_corners), expected, **TOL)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_grid_sample_5d_matches_torch(mode, padding_mode, align_corners):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 4, 5, 6)).astype(np.float32)
    grid = _grid(rng, (1, 3, 2, 4, 3))
    expected = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners).numpy()
    np.testing.assert_allclose(grid_sample(x, grid, mode, padding_mode, align_corners), expected, **TOL)


AVX = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.mark.skipif(not AVX, reason="bit-exactness is claimed for PyTorch's AVX2/AVX512 CPU kernels; this CPU "
                                    f"runs {torch.backends.cpu.get_cpu_capability()}")
@pytest.mark.parametrize("spatial", [2, 3])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_grid_sample_is_bit_identical_to_torch(mode, spatial):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4) + (6,) * (spatial - 1) + (9,)).astype(np.float32)
    grid = _grid(rng, (2, 30) + (3,) * (spatial - 2) + (5, spatial))
    for padding_mode in ("zeros", "border", "reflection"):
        for align_corners in (False, True):
            expected = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=mode,
                                     padding_mode=padding_mode, align_corners=align_corners).numpy()
            np.testing.assert_array_equal(grid_sample(x, grid, mode, padding_mode, align_corners), expected,
                                          err_msg=f"{padding_mode}, align_corners={align_corners}")


EXTREME = [1e30, -1e30, 1e10, -1e7, np.inf, -np.inf, np.nan]


def _extreme_grid(spatial: int) -> np.ndarray:
    """One point per extreme value on the x axis, paired with an ordinary coordinate on the other axes;
    then one point with every axis at that value."""
    points = []
    for value in EXTREME:
        points.append([value] + [0.1] * (spatial - 1))
        points.append([value] * spatial)
    return np.array(points, np.float32).reshape((1, len(points)) + (1,) * (spatial - 1) + (spatial,))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("mode,spatial", [("bilinear", 2), ("nearest", 2), ("bicubic", 2), ("bilinear", 3),
                                          ("nearest", 3)])
def test_grid_sample_matches_torch_at_far_out_infinite_and_nan_coordinates(mode, spatial, padding_mode,
                                                                           align_corners):
    """Huge coordinates reflect as torch's rounded arithmetic does, NaN clips to torch's bound, and NaN
    results (bilinear zero padding at a non-finite 2-D coordinate) sit where torch's do."""
    sizes = (3, 5) if spatial == 2 else (2, 3, 5)
    x = np.arange(np.prod(sizes), dtype=np.float32).reshape((1, 1) + sizes)
    grid = _extreme_grid(spatial)
    expected = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=mode, padding_mode=padding_mode,
                             align_corners=align_corners).numpy()
    got = grid_sample(x, grid, mode, padding_mode, align_corners)
    if mode == "bicubic":  # a few ulp apart in general (module docstring); NaN where torch has NaN
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    else:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif(not AVX, reason="torch's fused multiply-adds are claimed for its AVX2/AVX512 CPU kernels; this "
                                    f"CPU runs {torch.backends.cpu.get_cpu_capability()}")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_grid_sample_reflects_far_out_coordinates_with_torchs_fused_remainder(mode, align_corners):
    """Hundreds to millions of images away, torch's |p| - flips * twice_span is one fused multiply-add;
    rounding the product first moves the reflected point by whole pixels."""
    far = [326.68997, 1309.7401, -5000.123, 20000.5, 3e6, -3e6, 4.9123095e6, -3.2461672e6, -2.26e7, -22565508.0]
    grid = np.stack([np.array(far, np.float32), np.zeros(len(far), np.float32)], -1).reshape(1, 1, -1, 2)
    x = np.random.default_rng(4).standard_normal((1, 1, 4, 100)).astype(np.float32)
    expected = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=mode, padding_mode="reflection",
                             align_corners=align_corners).numpy()
    np.testing.assert_array_equal(grid_sample(x, grid, mode, "reflection", align_corners), expected)


@pytest.mark.parametrize("padding_mode,x_coord,expected", [("reflection", 1e30, 5.0), ("border", np.nan, 5.0),
                                                            ("reflection", np.nan, 5.0)])
def test_grid_sample_reflects_and_clips_like_torch_on_the_issue_example(padding_mode, x_coord, expected):
    """The reported cases: image arange(15) as 3x5, y at the centre row; torch reads column 0 (value 5)."""
    x = np.arange(15, dtype=np.float32).reshape(1, 1, 3, 5)
    grid = np.array([x_coord, 0.0], np.float32).reshape(1, 1, 1, 2)
    torch_out = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode="bilinear",
                              padding_mode=padding_mode, align_corners=False)
    assert torch_out.item() == expected
    assert grid_sample(x, grid, "bilinear", padding_mode, False).item() == expected


@pytest.mark.parametrize("x_shape, grid_shape", [((0, 2, 3, 4), (0, 2, 2, 2)), ((1, 0, 3, 4), (1, 2, 2, 2)),
                                                  ((0, 0, 3, 4), (0, 2, 2, 2)), ((0, 2, 3, 4), (0, 0, 2, 2)),
                                                  ((0, 2, 2, 3, 4), (0, 2, 2, 2, 3)),
                                                  ((1, 0, 2, 3, 4), (1, 2, 2, 2, 3))])
def test_grid_sample_of_an_empty_batch_or_channel_axis_gives_torchs_empty_output(x_shape, grid_shape):
    """A batch or channel count of 0 (an empty detection batch) samples nothing, as in torch: no error."""
    x, grid = np.zeros(x_shape, np.float32), np.zeros(grid_shape, np.float32)
    for mode in ("bilinear", "nearest") + (("bicubic",) if x.ndim == 4 else ()):  # bicubic is 4-D only
        expected = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=mode, align_corners=False).numpy()
        got = grid_sample(x, grid, mode)
        assert got.shape == expected.shape and got.dtype == expected.dtype, mode


@pytest.mark.parametrize("batch, queries, heads, dim", [(0, 3, 2, 4), (1, 0, 2, 4), (1, 3, 0, 4), (1, 3, 2, 0)])
def test_multi_scale_deformable_attention_of_an_empty_axis_matches_mmcv_pytorch(batch, queries, heads, dim):
    shapes = [(3, 4), (2, 2)]
    value = np.zeros((batch, sum(h * w for h, w in shapes), heads, dim), np.float32)
    locations = np.zeros((batch, queries, heads, len(shapes), 2, 2), np.float32)
    weights = np.zeros((batch, queries, heads, len(shapes), 2), np.float32)
    expected = multi_scale_deformable_attn_pytorch(torch.from_numpy(value), shapes, torch.from_numpy(locations),
                                                   torch.from_numpy(weights))
    assert multi_scale_deformable_attention(value, np.array(shapes, np.int64), locations, weights).shape == \
        tuple(expected.shape)


def test_grid_sample_accepts_torch_integer_codes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    grid = _grid(rng, (1, 2, 2, 2))
    np.testing.assert_array_equal(grid_sample(x, grid, 1, 2, True), grid_sample(x, grid, "nearest", "reflection", True))


def test_grid_sample_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not fit"):
        grid_sample(np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 2, 2, 3), np.float32))


def test_multi_scale_deformable_attention_matches_mmcv_pytorch():
    rng = np.random.default_rng(3)
    shapes = [(6, 8), (3, 4)]
    value = rng.standard_normal((2, sum(h * w for h, w in shapes), 2, 4)).astype(np.float32)
    locations = rng.uniform(-0.1, 1.1, (2, 5, 2, 2, 3, 2)).astype(np.float32)
    weights = rng.uniform(0, 1, (2, 5, 2, 2, 3)).astype(np.float32)
    expected = multi_scale_deformable_attn_pytorch(torch.from_numpy(value), shapes, torch.from_numpy(locations),
                                                   torch.from_numpy(weights))
    out = multi_scale_deformable_attention(value, np.array(shapes, np.int64), locations, weights)
    np.testing.assert_allclose(out, expected.numpy(), **TOL)

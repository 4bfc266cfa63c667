"""NumPy kernels that match PyTorch, shared by the CPU references of ATen, custom and plugin nodes.

The signatures here are stable: the plugin specs (`surgeon/plugins/specs.py`) build their references
on them.

    grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        == torch.nn.functional.grid_sample(x, grid, mode, padding_mode, align_corners)
    multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights)
        == mmcv's multi_scale_deformable_attn_pytorch

Arithmetic follows PyTorch's CPU kernels step by step, in the input's float type and with their fused
multiply-adds, so bilinear and nearest sampling of float32 are bit-identical to PyTorch 2.13 on an
x86-64 (AVX2) CPU, but for the rare double roundings `_fma` names; bicubic agrees to a few ulp.
"""
from __future__ import annotations

import numpy as np

#: torch's integer codes for grid_sampler's `interpolation_mode` and `padding_mode`.
INTERPOLATION_MODES = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")
_CUBIC_A = -0.75  # the bicubic convolution coefficient PyTorch uses


def grid_sample(x: np.ndarray, grid: np.ndarray, mode: str | int = "bilinear", padding_mode: str | int = "zeros",
                align_corners: bool = False) -> np.ndarray:
    """`torch.nn.functional.grid_sample` for 4-D ([N,C,H,W], grid [N,Ho,Wo,2]) and 5-D inputs
    ([N,C,D,H,W], grid [N,Do,Ho,Wo,3]); grid's last axis is (x, y[, z]) in [-1, 1].

    `mode` and `padding_mode` are names or torch's integer codes (as ATen `grid_sampler` receives
    them). Bicubic is 4-D only, as in PyTorch.
    """
    mode = INTERPOLATION_MODES[mode] if isinstance(mode, (int, np.integer)) else mode
    padding_mode = PADDING_MODES[padding_mode] if isinstance(padding_mode, (int, np.integer)) else padding_mode
    if mode not in INTERPOLATION_MODES or padding_mode not in PADDING_MODES:
        raise ValueError(f"grid_sample: unknown mode {mode!r} or padding_mode {padding_mode!r}")
    x = np.asarray(x)
    grid = np.asarray(grid, dtype=x.dtype)
    spatial = x.ndim - 2
    if spatial not in (2, 3) or grid.ndim != x.ndim or grid.shape[-1] != spatial or grid.shape[0] != x.shape[0]:
        raise ValueError(f"grid_sample: input {x.shape} and grid {grid.shape} do not fit "
                         "([N,C,H,W] with [N,Ho,Wo,2], or [N,C,D,H,W] with [N,Do,Ho,Wo,3])")
    if mode == "bicubic" and spatial != 2:
        raise ValueError("grid_sample: bicubic interpolation needs a 4-D input")
    sizes = x.shape[2:]  # (H, W) or (D, H, W)
    # grid's last axis is ordered x, y, z: the reverse of the spatial axes.
    coords = [grid[..., spatial - 1 - axis] for axis in range(spatial)]
    # PyTorch samples 4-D inputs with a vectorised kernel and 5-D ones with a scalar kernel whose
    # arithmetic differs; each is followed to the last rounding.
    vectorised = spatial == 2
    unnormalize = _unnormalize if vectorised else _unnormalize_scalar
    coords = [unnormalize(c, size, align_corners) for c, size in zip(coords, sizes)]
    sampler = _Sampler(x, padding_mode, align_corners)
    if mode == "bicubic":
        return sampler.bicubic(*coords)
    coords = [_apply_padding(c, size, padding_mode, align_corners, vectorised) for c, size in zip(coords, sizes)]
    if mode == "nearest":
        return sampler.gather([_index(np.rint(c), size, reach=1) for c, size in zip(coords, sizes)])
    return sampler.linear(coords, vectorised)


def _unnormalize(coord: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    """PyTorch's vectorised CPU kernel: (c + 1) * scale - offset with one rounding (a fused multiply-add)."""
    shifted = coord + coord.dtype.type(1)
    if align_corners:
        return _fma(shifted, (size - 1) / 2, 0.0)
    return _fma(shifted, size / 2, -0.5)


def _fma(a: np.ndarray, b, c) -> np.ndarray:
    """a * b + c rounded to a's float type; for float32 `a`, once, as an FMA instruction rounds it.

    The product of two float32 values (or of a float32 and a small integer or half-integer) is exact in
    float64. The float64 sum is exact in the coordinate math: the unnormalise (g + 1) * (size / 2) - 0.5
    as long as |(g + 1) * size / 2| < 2**52 (sizes below 2**29), the reflection remainder always (twice
    the size below 2**29). Where the sum is inexact (beyond that bound, or in the bilinear blend, whose
    terms are arbitrary) it is rounded twice, to float64 and then to float32, which differs from the
    FMA's one rounding only when the float64 sum lands exactly halfway between two float32 values.
    For float64 `a` this is a multiply and an add, two roundings."""
    return (a.astype(np.float64) * b + c).astype(a.dtype)


def _unnormalize_scalar(coord: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    """PyTorch's scalar kernel (5-D inputs): ((c + 1) / 2) * (size - 1), or ((c + 1) * size - 1) / 2."""
    one, two = coord.dtype.type(1), coord.dtype.type(2)
    if align_corners:
        return ((coord + one) / two) * coord.dtype.type(size - 1)
    return ((coord + one) * coord.dtype.type(size) - one) / two


def _apply_padding(coord, size: int, padding_mode: str, align_corners: bool, vectorised: bool):
    """Border and reflection padding as PyTorch's vectorised 2-D kernel (GridSamplerKernel.cpp,
    `ComputeLocation`) or its scalar 3-D one (GridSampler.h, `compute_coordinates`) computes them."""
    if padding_mode == "zeros":
        return coord
    if padding_mode == "reflection":
        if vectorised:
            coord = _reflect_vectorised(coord, size, align_corners)
        elif align_corners:
            coord = _reflect_scalar(coord, 0, 2 * (size - 1))
        else:
            coord = _reflect_scalar(coord, -1, 2 * size - 1)
    # The vectorised clip, max(in, 0) first, turns NaN into 0; the scalar std::min(size - 1, std::max(in, 0))
    # keeps NaN through std::max and returns size - 1 from std::min.
    return _clip(coord, size, nan_to=0 if vectorised else size - 1)


def _clip(coord, size: int, nan_to: int):
    defined = np.where(np.isnan(coord), coord.dtype.type(nan_to), coord)
    return np.clip(defined, 0, size - 1).astype(coord.dtype, copy=False)


def _reflect_vectorised(coord, size: int, align_corners: bool):
    """The vectorised `reflect_coordinates`: with twice_span = 2(size-1) and low = 0 (align_corners) or
    twice_span = 2 size and low = -0.5, d = |coord - low|, extra = d - trunc(d / twice_span) * twice_span
    (a fused multiply-add, rounded once: exact in float64 for float32 d, as twice_span < 2**29), then
    min(extra, twice_span - extra) + low. On huge d the rounded quotient makes extra differ from fmod's
    exact remainder, and torch returns what this returns. ±inf and NaN give NaN."""
    dtype = coord.dtype.type
    if align_corners and size <= 1:  # torch's `empty` span: everything reflects to 0
        return np.zeros_like(coord)
    twice_span = dtype(2 * (size - 1) if align_corners else 2 * size)
    low = dtype(0 if align_corners else -0.5)
    with np.errstate(invalid="ignore"):  # inf - inf
        distance = np.abs(coord - low)
        extra = _fma(-np.trunc(distance / twice_span), float(twice_span), distance)
        return (np.minimum(extra, twice_span - extra) + low).astype(coord.dtype, copy=False)


def _reflect_scalar(coord, twice_low: int, twice_high: int):
    """The scalar `reflect_coordinates` (GridSampler.h) with fmod; torch's int `flips` is INT_MIN (even)
    beyond int's range, as fmod(flips, 2) == 0 is for any float that large."""
    dtype = coord.dtype.type
    if twice_low == twice_high:
        return np.zeros_like(coord)
    low = dtype(twice_low / 2)
    span = dtype((twice_high - twice_low) / 2)
    coord = np.abs(coord - low)
    with np.errstate(invalid="ignore"):  # fmod(inf, span)
        extra = np.fmod(coord, span)
        flips = np.floor(coord / span)
        return np.where(np.fmod(flips, 2) == 0, extra + low, span - extra + low).astype(coord.dtype, copy=False)


def _index(position: np.ndarray, size: int, reach: int) -> np.ndarray:
    """int64 of a whole-number float `position`, clipped to [-reach, size] first so that far-out, infinite
    or NaN positions (zero padding) become an index that is still outside the image, not an undefined
    conversion; `reach` is 2 for a lower corner, whose upper neighbour must stay outside too."""
    inside_or_near = np.clip(np.where(np.isnan(position), -reach, position), -reach, size)
    return inside_or_near.astype(np.int64)


class _Sampler:
    """Reads x at integer positions with zero outside, per batch: x[n, :, i, j] for every grid point."""

    def __init__(self, x: np.ndarray, padding_mode: str, align_corners: bool):
        self.x = x
        self.sizes = x.shape[2:]
        self.padding_mode = padding_mode
        self.align_corners = align_corners
        n, c = x.shape[:2]
        # Sizes named, not -1: NumPy cannot infer -1 in an empty array (a batch or channel count of 0).
        self.flat = x.reshape(n, c, int(np.prod(self.sizes)))

    def gather(self, indices: list[np.ndarray]) -> np.ndarray:
        """x at integer `indices` (one array per spatial axis, each shaped like the output grid)."""
        n, c = self.x.shape[:2]
        out_shape = indices[0].shape[1:]
        inside = np.ones(indices[0].shape, dtype=bool)
        flat_index = np.zeros(indices[0].shape, dtype=np.int64)
        for index, size in zip(indices, self.sizes):
            inside &= (index >= 0) & (index < size)
            flat_index = flat_index * size + np.clip(index, 0, size - 1)
        points = int(np.prod(out_shape))
        flat_index = flat_index.reshape(n, 1, points)
        values = np.take_along_axis(self.flat, np.broadcast_to(flat_index, (n, c, points)), axis=2)
        values = values * inside.reshape(n, 1, points).astype(self.x.dtype)
        return values.reshape((n, c) + out_shape)

    def linear(self, coords: list[np.ndarray], vectorised: bool) -> np.ndarray:
        """(Bi/tri)linear interpolation at float source coordinates, corner by corner, in the order and
        with the rounding of PyTorch's 2-D vectorised kernel or its scalar 3-D one."""
        finite = np.ones(coords[0].shape, dtype=bool)
        for coord in coords:
            finite &= np.isfinite(coord)
        # A non-finite coordinate (zero padding only; the others are clipped) samples nothing.
        samples = [np.where(finite, c, c.dtype.type(-10)) for c in coords]
        lows = [np.floor(c) for c in samples]
        if vectorised:  # weights (1 - t) and t, y factor first; corners summed by fused multiply-adds
            # from the coordinates as given: torch's weights there are NaN (inf - inf), and so is its result
            with np.errstate(invalid="ignore"):
                fracs = [c - np.floor(c) for c in coords]
            factors = [(self.x.dtype.type(1) - frac, frac) for frac in fracs]
            order = range(len(coords))
        else:  # weights (high - c) and (c - low), x factor first; corners summed plainly
            factors = [(low + 1 - c, c - low) for c, low in zip(samples, lows)]
            order = reversed(range(len(coords)))
        order = list(order)
        lows = [_index(low, size, reach=2) for low, size in zip(lows, self.sizes)]
        result = None
        for corner in range(2 ** len(coords)):
            offsets = [(corner >> (len(coords) - 1 - axis)) & 1 for axis in range(len(coords))]
            weight = None
            for axis in order:
                factor = factors[axis][offsets[axis]]
                weight = factor if weight is None else weight * factor
            values = self.gather([low + offset for low, offset in zip(lows, offsets)])
            if result is None:
                result = values * weight[:, None]
            elif vectorised:
                result = _fma(values, weight[:, None], result)
            else:
                result = result + values * weight[:, None]
        return result

    def bicubic(self, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        y0, x0 = np.floor(iy), np.floor(ix)
        with np.errstate(invalid="ignore"):  # inf - inf: NaN weights, as torch's
            ty, tx = iy - y0, ix - x0
        wy, wx = _cubic_weights(ty), _cubic_weights(tx)
        result = None
        for i in range(4):
            row = None
            for j in range(4):
                term = self._bounded(y0 + (i - 1), x0 + (j - 1)) * wx[j][:, None]
                row = term if row is None else row + term
            term = row * wy[i][:, None]
            result = term if result is None else result + term
        return result

    def _bounded(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        # Bicubic applies the padding mode to each whole-number tap (floats, as in PyTorch's get_value_bounded).
        h, w = self.sizes
        y = _apply_padding(y, h, self.padding_mode, self.align_corners, vectorised=True)
        x = _apply_padding(x, w, self.padding_mode, self.align_corners, vectorised=True)
        return self.gather([_index(y, h, reach=1), _index(x, w, reach=1)])


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    a = t.dtype.type(_CUBIC_A)
    one, two = t.dtype.type(1), t.dtype.type(2)

    def near(s):  # |s| <= 1
        return ((a + two) * s - (a + t.dtype.type(3))) * s * s + one

    def far(s):  # 1 < |s| < 2
        return ((a * s - t.dtype.type(5) * a) * s + t.dtype.type(8) * a) * s - t.dtype.type(4) * a

    return [far(t + one), near(t), near(one - t), far(two - t)]


def multi_scale_deformable_attention(value: np.ndarray, spatial_shapes: np.ndarray, sampling_locations: np.ndarray,
                                     attention_weights: np.ndarray) -> np.ndarray:
    """mmcv's `multi_scale_deformable_attn_pytorch`: bilinear samples of every level, weighted and summed.

    value [B, S, heads, D] (S = sum of H*W over levels), spatial_shapes [L, 2] as (H, W),
    sampling_locations [B, Q, heads, L, P, 2] in [0, 1] as (x, y), attention_weights [B, Q, heads, L, P];
    returns [B, Q, heads * D].
    """
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in np.asarray(spatial_shapes).reshape(-1, 2)]
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    grids = sampling_locations.astype(value.dtype) * value.dtype.type(2) - value.dtype.type(1)
    sampled = []
    for level, (h, w) in enumerate(shapes):
        level_value = value[:, starts[level]:starts[level + 1]]  # [B, H*W, heads, D]
        level_value = level_value.transpose(0, 2, 3, 1).reshape(batch * heads, dim, h, w)
        level_grid = grids[:, :, :, level].transpose(0, 2, 1, 3, 4).reshape(batch * heads, queries, points, 2)
        sampled.append(grid_sample(level_value, level_grid, "bilinear", "zeros", False))  # [B*heads, D, Q, P]
    stacked = np.stack(sampled, axis=-2).reshape(batch * heads, dim, queries, levels * points)
    weights = attention_weights.transpose(0, 2, 1, 3, 4).reshape(batch * heads, 1, queries, levels * points)
    out = (stacked * weights.astype(value.dtype)).sum(-1).reshape(batch, heads * dim, queries)
    return out.transpose(0, 2, 1)

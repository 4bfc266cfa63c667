"""CPU references of spconv's sparse convolution and scatter-to-dense, as exported in the `standard` flavour.

    spconv::SparseConvolution(features [N,Cin], indices [N,1+ndim] int32, weight [Cout,k..,Cin], bias [Cout]
                              [, rulebook_indices]) -> (features [M,Cout], indices [M,1+ndim])
    spconv::ScatterDense(features [N,C], indices [N,1+ndim]) -> dense [B, C, *input_spatial_shape]

Indices rows are (batch, z, y, x) in `input_spatial_shape`. The rule book is built from the
coordinates, vectorised: each coordinate is hashed to an int64 key (batch-major linear index), and
for each kernel offset the matching input of every output is found with `np.searchsorted` on the
sorted keys; the pairs fill a neighbour table [outputs, kernel offsets], and each chunk of outputs
is one gather and one GEMM over (offset, input channel). Output coordinates of a regular or
transposed convolution come sorted by key; submanifold convolutions keep the input's rows; an
inverse convolution outputs the rows of `rulebook_indices`, the input coordinates of the forward
convolution that made its rule book (`rulebook_kernel_size/stride/padding/dilation` describe that
convolution). Accumulation is float32, like spconv's CPU kernels.
"""
from __future__ import annotations

import itertools

import numpy as np

from surgeon.reference import reference_op

DOMAIN = "spconv"
IM2COL_ELEMENTS = 1 << 22  # floats gathered per GEMM: 16 MB, whatever the layer width


def _keys(indices: np.ndarray, spatial_shape) -> np.ndarray:
    """Batch-major linear index of each (batch, z, y, x) row, as int64."""
    keys = indices[:, 0].astype(np.int64)
    for axis, size in enumerate(spatial_shape):
        keys = keys * int(size) + indices[:, axis + 1]
    return keys


def _decode(keys: np.ndarray, spatial_shape) -> np.ndarray:
    columns = []
    for size in reversed([int(s) for s in spatial_shape]):
        columns.append(keys % size)
        keys = keys // size
    columns.append(keys)
    return np.stack(columns[::-1], axis=1).astype(np.int32)


def _offsets(kernel_size):
    """Kernel offsets in the C order of the weight's kernel axes."""
    return list(itertools.product(*[range(int(k)) for k in kernel_size]))


class _KeyIndex:
    """Rows of a coordinate set, looked up by key with a binary search."""

    def __init__(self, keys: np.ndarray):
        self.order = np.argsort(keys, kind="stable")
        self.sorted = keys[self.order]

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `keys` that exist here, their rows here)."""
        pos = np.searchsorted(self.sorted, keys)
        pos_clipped = np.minimum(pos, len(self.sorted) - 1)
        found = (pos < len(self.sorted)) & (self.sorted[pos_clipped] == keys) if len(self.sorted) else pos < 0
        return np.nonzero(found)[0], self.order[pos_clipped[found]]


def _strided_targets(coords: np.ndarray, offset, stride, padding, dilation, shape):
    """Rows of `coords` (spatial part) that land on a grid point t = (c + p - k*d) / s inside `shape`."""
    t = coords + np.asarray(padding) - np.asarray(offset) * np.asarray(dilation)
    stride = np.asarray(stride)
    valid = np.all(t % stride == 0, axis=1)
    t = t // stride
    valid &= np.all((t >= 0) & (t < np.asarray(shape)), axis=1)
    return valid, t


def _transposed_targets(coords, offset, stride, padding, dilation, shape):
    """Rows of `coords` whose transposed-conv output t = c*s - p + k*d lies inside `shape`."""
    t = coords * np.asarray(stride) - np.asarray(padding) + np.asarray(offset) * np.asarray(dilation)
    valid = np.all((t >= 0) & (t < np.asarray(shape)), axis=1)
    return valid, t


def rule_book(indices: np.ndarray, attrs: dict, rulebook_indices: np.ndarray | None = None):
    """(output indices, [(input rows, output rows) per kernel offset]) of a sparse convolution."""
    ndim = int(attrs["ndim"])
    in_shape = [int(s) for s in attrs["input_spatial_shape"]]
    out_shape = [int(s) for s in attrs["output_spatial_shape"]]
    kernel = [int(k) for k in attrs["kernel_size"]]
    offsets = _offsets(kernel)
    batch, coords = indices[:, :1].astype(np.int64), indices[:, 1:].astype(np.int64)

    if int(attrs.get("subm", 0)):
        # Work on key-sorted voxels: a kernel offset shifts every key by one constant, so the needles of
        # each binary search come sorted and the gathers below walk memory almost in order.
        dilation = np.asarray(attrs.get("dilation", [1] * ndim))
        center = np.asarray(kernel) // 2
        keys = _keys(indices, in_shape)
        order = np.argsort(keys, kind="stable")
        sorted_keys, sorted_coords = keys[order], coords[order]
        key_steps = np.cumprod([1] + in_shape[::-1])[:-1][::-1]
        pairs = []
        for offset in offsets:
            delta = (np.asarray(offset) - center) * dilation
            shifted = sorted_coords + delta
            inside = np.all((shifted >= 0) & (shifted < np.asarray(in_shape)), axis=1)
            needles = sorted_keys + int(delta @ key_steps)
            pos = np.minimum(np.searchsorted(sorted_keys, needles), len(sorted_keys) - 1)
            hit = inside & (sorted_keys[pos] == needles)
            pairs.append((order[pos[hit]], order[hit]))
        return indices.astype(np.int32), pairs

    if int(attrs.get("inverse", 0)):
        if rulebook_indices is None:
            raise ValueError("an inverse SparseConvolution needs its rule book's input indices (input 4)")
        geometry = {k: [int(v) for v in attrs[f"rulebook_{k}"]] for k in ("kernel_size", "stride", "padding",
                                                                           "dilation")}
        index = _KeyIndex(_keys(indices, in_shape))
        r_batch, r_coords = rulebook_indices[:, :1].astype(np.int64), rulebook_indices[:, 1:].astype(np.int64)
        pairs = []
        for offset in _offsets(geometry["kernel_size"]):
            valid, t = _strided_targets(r_coords, offset, geometry["stride"], geometry["padding"],
                                        geometry["dilation"], in_shape)
            out_rows = np.nonzero(valid)[0]
            hit, in_rows = index.find(_keys(np.concatenate([r_batch[valid], t[valid]], axis=1), in_shape))
            pairs.append((in_rows, out_rows[hit]))
        return rulebook_indices.astype(np.int32), pairs

    targets = _transposed_targets if int(attrs.get("transposed", 0)) else _strided_targets
    per_offset = []
    for offset in offsets:
        valid, t = targets(coords, offset, attrs["stride"], attrs["padding"], attrs["dilation"], out_shape)
        per_offset.append((np.nonzero(valid)[0], _keys(np.concatenate([batch[valid], t[valid]], axis=1), out_shape)))
    out_keys = np.unique(np.concatenate([keys for _, keys in per_offset]))
    pairs = [(in_rows, np.searchsorted(out_keys, keys)) for in_rows, keys in per_offset]
    return _decode(out_keys, out_shape), pairs


@reference_op("SparseConvolution", domain=DOMAIN)
def sparse_convolution(inputs, attrs):
    features, indices, weight = inputs[0], inputs[1], inputs[2]
    bias = inputs[3] if len(inputs) > 3 else None
    rulebook_indices = inputs[4] if len(inputs) > 4 else None
    if int(attrs.get("groups", 1)) != 1:
        raise NotImplementedError("SparseConvolution reference: groups != 1")
    out_indices, pairs = rule_book(np.asarray(indices), attrs, rulebook_indices)
    x = np.asarray(features, dtype=np.float32)
    out_channels, in_channels = weight.shape[0], weight.shape[-1]
    # Neighbour table [M, K]: the input row feeding each output through each kernel offset, or the
    # zero row appended at index N. Then every chunk of outputs is one gather and one GEMM with a
    # K*Cin reduction (im2col), much faster than K gather/scatter-add rounds on thin rows.
    neighbours = np.full((len(out_indices), len(pairs)), len(x), np.int64)
    for k, (in_rows, out_rows) in enumerate(pairs):
        neighbours[out_rows, k] = in_rows
    padded = np.concatenate([x, np.zeros((1, in_channels), np.float32)])
    # [Cout, k.., Cin] -> [K*Cin, Cout], matching the (offset, channel) order of a gathered row
    kernel = np.ascontiguousarray(weight.reshape(out_channels, -1).T, dtype=np.float32)
    out = np.empty((len(out_indices), out_channels), np.float32)
    chunk = max(256, IM2COL_ELEMENTS // kernel.shape[0])
    for start in range(0, len(out), chunk):
        columns = np.take(padded, neighbours[start:start + chunk], axis=0)
        out[start:start + chunk] = columns.reshape(len(columns), -1) @ kernel
    if bias is not None:
        out += np.asarray(bias, np.float32)
    activation = attrs.get("activation", "None")
    if activation == "ReLU":
        np.maximum(out, 0, out=out)
    elif activation != "None":
        raise NotImplementedError(f"SparseConvolution reference: activation '{activation}'")
    return [out.astype(features.dtype), out_indices]


@reference_op("ScatterDense", domain=DOMAIN)
def scatter_dense(inputs, attrs):
    features, indices = np.asarray(inputs[0]), np.asarray(inputs[1])
    if attrs.get("format", "zyx") != "zyx":
        raise NotImplementedError(f"ScatterDense reference: format '{attrs['format']}'")
    output_shape = [int(d) for d in attrs["output_shape"]]
    batch, channels, spatial = output_shape[0], output_shape[1], output_shape[2:]
    channels_last = np.zeros([batch, *spatial, channels], features.dtype)
    channels_last[tuple(indices.astype(np.int64).T)] = features
    return [np.ascontiguousarray(np.moveaxis(channels_last, -1, 1))]

"""CPU reference of the custom bev_pool nodes of BEVDet / BEVFusion exports (`BEVPoolV2TRT`, `bev_pool_v2`,
in any domain): BEVPoolv2's interval form, the computation of surgeon's `BEVPool` plugin.

    depth [N, D, H, W] or [B, N, D, H, W], feat [N, H, W, C] or [B, N, H, W, C],
    ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths (int)
    attributes output_height / output_width (BEVDet: out_height / out_width), output_z (1 if absent)
    -> [1, C, H, W] or [1, H, W, C]: interval i sums depth * feat over its points into cell ranks_bev[start]

The attributes do not say which layout the node writes; its declared output shape does, as the
bev-pool-plugin pass reads it. A shape that fits both (C == H == W), or none, is an error.
"""
from __future__ import annotations

import numpy as np

from surgeon.plugins.specs import bev_pool
from surgeon.reference import ANY_DOMAIN, reference_op

OP_TYPES = ("BEVPoolV2TRT", "bev_pool_v2")
#: The BEV size attributes: CUDA-BEVFusion's spelling, then BEVDet's TRTBEVPoolv2.symbolic.
SIZE_ATTRS = (("output_height", "output_width"), ("out_height", "out_width"))


def custom_bev_pool(inputs, attrs, output_shapes):
    if len(inputs) != 7:
        raise ValueError(f"takes 7 inputs (depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, "
                         f"interval_lengths), got {len(inputs)}")
    if int(attrs.get("output_z", 1)) != 1:
        raise ValueError(f"output_z {attrs['output_z']}: the reference pools into one height slice")
    size = next(((attrs[h], attrs[w]) for h, w in SIZE_ATTRS if h in attrs and w in attrs), None)
    if size is None:
        raise ValueError("no output_height / output_width (or out_height / out_width) attributes")
    bev_h, bev_w = int(size[0]), int(size[1])
    depth, feat = np.asarray(inputs[0]), np.asarray(inputs[1])
    channels = feat.shape[-1]
    channels_last = _channels_last(output_shapes[0], channels, bev_h, bev_w)
    # BEVDet's 5-D [B, N, ...] is [B*N, ...] to the kernel: the flat order the ranks index is the same.
    def leading_flattened(array):  # not -1: an empty trailing dim leaves -1 undefined
        return array.reshape(int(np.prod(array.shape[:-3])), *array.shape[-3:])

    pooled = bev_pool(leading_flattened(depth), leading_flattened(feat),
                      *(np.asarray(index) for index in inputs[2:]), bev_h=bev_h, bev_w=bev_w)
    return [np.ascontiguousarray(pooled.transpose(0, 2, 3, 1)) if channels_last else pooled]


def _channels_last(shape, channels: int, bev_h: int, bev_w: int) -> bool:
    """Whether the declared output `shape` is [1, H, W, C] (else [1, C, H, W]); dynamic dims fit anything."""
    def fits(expected):
        return shape is not None and len(shape) == 4 and all(d is None or d == e for d, e in zip(shape, expected))

    nchw, nhwc = fits([1, channels, bev_h, bev_w]), fits([1, bev_h, bev_w, channels])
    shown = "unknown" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    if nchw == nhwc:
        which = "fits both [1, C, H, W] and" if nchw else "is neither [1, C, H, W] nor"
        raise ValueError(f"the output layout is read from the declared output shape, which {which} [1, H, W, C] "
                         f"(C {channels}, H {bev_h}, W {bev_w}): declared {shown}")
    return nhwc


for _op_type in OP_TYPES:
    reference_op(_op_type, domain=ANY_DOMAIN, output_shapes=True)(custom_bev_pool)

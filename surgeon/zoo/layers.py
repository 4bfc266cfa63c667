"""Building blocks shared by the zoo models, written after their upstream sources.

- `ResNet50`: torchvision's ResNet-50 (Bottleneck v1.5, stride on the 3x3 conv) written by hand,
  because no torchvision wheel is installable here; `width` scales every channel count so the
  fixtures keep the topology with narrow channels.
- `multi_scale_deformable_attn_pytorch`: mmcv's PyTorch fallback of multi-scale deformable
  attention, the code path users export when the CUDA op is not available; it is what puts
  `grid_sampler` into BEVFormer graphs.
- `inverse_sigmoid`, `linear_relu_ln`: the mmdet / Sparse4D helpers with their clamps and norms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """mmcv's ConvModule(conv, BN, ReLU) with `bias=False` and 'same' padding."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: 1x1 reduce, 3x3 (strided), 1x1 expand (x4), identity or projection."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv_bn_relu(cin, planes, 1)
        self.conv2 = conv_bn_relu(planes, planes, 3, stride)
        self.conv3 = conv_bn_relu(planes, cout, 1, relu=False)
        self.downsample = conv_bn_relu(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


class ResNet50(nn.Module):
    """ResNet-50 without the classifier; returns the outputs of the stages in `out_indices` (0..3).

    `width` is the stem width (64 upstream); stage i ends with `width * 2**i * 4` channels.
    """

    depths = (3, 4, 6, 3)

    def __init__(self, width: int = 64, out_indices: tuple[int, ...] = (3,)):
        super().__init__()
        self.out_indices = out_indices
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], width
        for i, depth in enumerate(self.depths):
            planes = width * 2 ** i
            blocks = []
            for j in range(depth):
                blocks.append(Bottleneck(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

    def stage_channels(self) -> list[int]:
        """Output channels of the stages listed in `out_indices`."""
        return [self.stages[i][-1].conv3[0].out_channels for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """mmdet's inverse_sigmoid: clamp to [0, 1], clamp away from 0 and 1 by eps, log-odds."""
    x = x.clamp(min=0, max=1)
    x1 = x.clamp(min=eps)
    x2 = (1 - x).clamp(min=eps)
    return torch.log(x1 / x2)


def multi_scale_deformable_attn_pytorch(value: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                                        sampling_locations: torch.Tensor,
                                        attention_weights: torch.Tensor) -> torch.Tensor:
    """mmcv's `multi_scale_deformable_attn_pytorch`, line for line.

    value [bs, num_keys, heads, dims]; sampling_locations [bs, queries, heads, levels, points, 2]
    in [0, 1]; attention_weights [bs, queries, heads, levels, points]. Returns [bs, queries, heads*dims].
    """
    bs, _, num_heads, embed_dims = value.shape
    _, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(bs * num_heads, embed_dims, h, w)
        sampling_grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampling_value_list.append(F.grid_sample(value_l, sampling_grid_l, mode="bilinear",
                                                 padding_mode="zeros", align_corners=False))
    attention_weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries,
                                                                  num_levels * num_points)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1)
    return output.view(bs, num_heads * embed_dims, num_queries).transpose(1, 2).contiguous()


def linear_relu_ln(embed_dims: int, in_loops: int, out_loops: int, input_dims: int | None = None) -> list[nn.Module]:
    """Sparse4D's `linear_relu_ln`: out_loops x (in_loops x (Linear, ReLU), LayerNorm)."""
    input_dims = embed_dims if input_dims is None else input_dims
    layers: list[nn.Module] = []
    for _ in range(out_loops):
        for _ in range(in_loops):
            layers += [nn.Linear(input_dims, embed_dims), nn.ReLU(inplace=True)]
            input_dims = embed_dims
        layers.append(nn.LayerNorm(embed_dims))
    return layers


def ffn(embed_dims: int, hidden: int) -> nn.Sequential:
    """mmcv's FFN body (Linear, ReLU, Linear); callers add the identity."""
    return nn.Sequential(nn.Linear(embed_dims, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embed_dims))

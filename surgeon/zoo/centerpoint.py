"""CenterPoint's sparse lidar backbone: OpenPCDet's `VoxelResBackBone8x` plus its height compression.

Written after OpenPCDet `pcdet/models/backbones_3d/spconv_backbone.py` (VoxelResBackBone8x,
SparseBasicBlock, post_act_block) and `map_to_bev/height_compression.py`, module for module, so
a CenterPoint checkpoint's `backbone_3d.*` keys load into `CenterPointSCN.backbone`:

    voxels [N,5] ─ conv_input (SubM 5→16, BN, ReLU)                         41 x 1440 x 1440
           ─ conv1: 2 x SparseBasicBlock(16)                                 41 x 1440 x 1440
           ─ conv2: SparseConv 16→32 s2 p1, BN, ReLU; 2 x SparseBasicBlock   21 x  720 x  720
           ─ conv3: SparseConv 32→64 s2 p1, ...                              11 x  360 x  360
           ─ conv4: SparseConv 64→128 s2 p(0,1,1), ...                        5 x  180 x  180
           ─ conv_out: SparseConv 128→128 k(3,1,1) s(2,1,1), BN, ReLU         2 x  180 x  180
           ─ dense() [1,128,2,180,180] ─ view ─► [1, 256, 180, 180]

`build_centerpoint_scn()` gives the model with seeded random weights and non-trivial BatchNorm
statistics (so folding BN into the convolutions is exercised), in eval mode.
"""
from __future__ import annotations

from functools import partial

import spconv.pytorch as spconv
import torch
from torch import nn

SEED = 8
NUSCENES_GRID_ZYX = (41, 1440, 1440)  # OpenPCDet's grid_size[::-1] + [1, 0, 0] for nuScenes 0.075 m voxels


def post_act_block(in_channels, out_channels, kernel_size, indice_key=None, stride=1, padding=0,
                   conv_type="subm", norm_fn=None):
    if conv_type == "subm":
        conv = spconv.SubMConv3d(in_channels, out_channels, kernel_size, bias=False, indice_key=indice_key)
    elif conv_type == "spconv":
        conv = spconv.SparseConv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                   bias=False, indice_key=indice_key)
    elif conv_type == "inverseconv":
        conv = spconv.SparseInverseConv3d(in_channels, out_channels, kernel_size, indice_key=indice_key, bias=False)
    else:
        raise NotImplementedError(conv_type)
    return spconv.SparseSequential(conv, norm_fn(out_channels), nn.ReLU())


class SparseBasicBlock(spconv.SparseModule):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, bias=None, norm_fn=None, downsample=None, indice_key=None):
        super().__init__()
        if bias is None:
            bias = norm_fn is not None  # OpenPCDet keeps a conv bias in front of the BatchNorm
        self.conv1 = spconv.SubMConv3d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=bias,
                                       indice_key=indice_key)
        self.bn1 = norm_fn(planes)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=bias,
                                       indice_key=indice_key)
        self.bn2 = norm_fn(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = out.replace_feature(self.bn1(out.features))
        out = out.replace_feature(self.relu(out.features))
        out = self.conv2(out)
        out = out.replace_feature(self.bn2(out.features))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out.replace_feature(out.features + identity.features)
        out = out.replace_feature(self.relu(out.features))
        return out


class VoxelResBackBone8x(nn.Module):
    """OpenPCDet's VoxelResBackBone8x; `forward` returns the `encoded_spconv_tensor` (conv_out)."""

    def __init__(self, input_channels: int = 5, sparse_shape=NUSCENES_GRID_ZYX, use_bias=None, last_pad: int = 0):
        super().__init__()
        norm_fn = partial(nn.BatchNorm1d, eps=1e-3, momentum=0.01)
        self.sparse_shape = list(sparse_shape)
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(input_channels, 16, 3, padding=1, bias=False, indice_key="subm1"),
            norm_fn(16),
            nn.ReLU(),
        )
        block = post_act_block
        self.conv1 = spconv.SparseSequential(
            SparseBasicBlock(16, 16, bias=use_bias, norm_fn=norm_fn, indice_key="res1"),
            SparseBasicBlock(16, 16, bias=use_bias, norm_fn=norm_fn, indice_key="res1"),
        )
        self.conv2 = spconv.SparseSequential(
            block(16, 32, 3, norm_fn=norm_fn, stride=2, padding=1, indice_key="spconv2", conv_type="spconv"),
            SparseBasicBlock(32, 32, bias=use_bias, norm_fn=norm_fn, indice_key="res2"),
            SparseBasicBlock(32, 32, bias=use_bias, norm_fn=norm_fn, indice_key="res2"),
        )
        self.conv3 = spconv.SparseSequential(
            block(32, 64, 3, norm_fn=norm_fn, stride=2, padding=1, indice_key="spconv3", conv_type="spconv"),
            SparseBasicBlock(64, 64, bias=use_bias, norm_fn=norm_fn, indice_key="res3"),
            SparseBasicBlock(64, 64, bias=use_bias, norm_fn=norm_fn, indice_key="res3"),
        )
        self.conv4 = spconv.SparseSequential(
            block(64, 128, 3, norm_fn=norm_fn, stride=2, padding=(0, 1, 1), indice_key="spconv4",
                  conv_type="spconv"),
            SparseBasicBlock(128, 128, bias=use_bias, norm_fn=norm_fn, indice_key="res4"),
            SparseBasicBlock(128, 128, bias=use_bias, norm_fn=norm_fn, indice_key="res4"),
        )
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv3d(128, 128, (3, 1, 1), stride=(2, 1, 1), padding=last_pad, bias=False,
                                indice_key="spconv_down2"),
            norm_fn(128),
            nn.ReLU(),
        )
        self.num_point_features = 128

    def forward(self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor, batch_size: int = 1):
        x = spconv.SparseConvTensor(features=voxel_features, indices=voxel_coords.int(),
                                    spatial_shape=self.sparse_shape, batch_size=batch_size)
        x = self.conv_input(x)
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.conv3(x)
        x = self.conv4(x)
        return self.conv_out(x)


class CenterPointSCN(nn.Module):
    """The backbone followed by OpenPCDet's HeightCompression: dense() then view to [N, C*D, H, W]."""

    def __init__(self, input_channels: int = 5, sparse_shape=NUSCENES_GRID_ZYX):
        super().__init__()
        self.backbone = VoxelResBackBone8x(input_channels, sparse_shape)

    def forward(self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor, batch_size: int = 1):
        spatial_features = self.backbone(voxel_features, voxel_coords, batch_size).dense()
        n, c, d, h, w = spatial_features.shape
        return spatial_features.view(n, c * d, h, w)


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            c = module.num_features
            module.weight.data = 0.5 + torch.rand(c, generator=generator)
            module.bias.data = 0.2 * torch.randn(c, generator=generator)
            module.running_mean.data = 0.1 * torch.randn(c, generator=generator)
            module.running_var.data = 0.5 + torch.rand(c, generator=generator)


def build_centerpoint_scn(input_channels: int = 5, sparse_shape=NUSCENES_GRID_ZYX, seed: int = SEED) -> CenterPointSCN:
    """The CenterPoint sparse backbone in eval mode with seeded random weights."""
    torch.manual_seed(seed)
    model = CenterPointSCN(input_channels, sparse_shape)
    randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def load_backbone_checkpoint(model: CenterPointSCN, state: dict) -> None:
    """Load an OpenPCDet checkpoint's `backbone_3d.*` weights into `model.backbone`.

    `state` is what `torch.load` returns: a checkpoint with `model_state` (OpenPCDet) or
    `state_dict`, or a bare state dict; keys may carry the `backbone_3d.` prefix. Convolution weights
    saved by spconv 1.x ([k, k, k, Cin, Cout]) are permuted to spconv 2.x's [Cout, k, k, k, Cin].
    Missing or unexpected keys raise SurgeonError naming them.
    """
    from surgeon.errors import SurgeonError

    for key in ("model_state", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    prefix = "backbone_3d."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    expected = model.backbone.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SurgeonError(f"checkpoint does not fit VoxelResBackBone8x: {len(missing)} missing keys "
                           f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}")
    converted = {}
    for key, value in state.items():
        target = expected[key].shape
        if value.ndim == 5 and value.shape != target and value.permute(4, 0, 1, 2, 3).shape == target:
            value = value.permute(4, 0, 1, 2, 3).contiguous()  # spconv 1.x layout
        if value.shape != target:
            raise SurgeonError(f"checkpoint '{key}' has shape {list(value.shape)}, the model needs {list(target)}")
        converted[key] = value
    model.backbone.load_state_dict(converted)

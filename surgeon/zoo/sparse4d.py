"""Sparse4D v2 head (HorizonRobotics/Sparse4D) with the grid_sample fallback of feature aggregation.

`DeformableFeatureAggregation` with `use_deformable_func=False` is the path users export when the
custom CUDA op is disabled: box keypoints (fixed and learned offsets, rotated by yaw) are projected
through each camera's `projection_mat` with the depth clamped, normalised by the image size, and
sampled with `F.grid_sample` on every feature level; softmax weights over cameras x levels x points
(conditioned on a camera embedding) fuse them. Around it: the anchor encoder, the instance graph
attention (`nn.MultiheadAttention`), the asymmetric FFN and the box refinement module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import rig
from .layers import linear_relu_ln

X, Y, Z, W, L, H, SIN_YAW, COS_YAW, VX, VY, VZ = range(11)
FIX_SCALE = ((0.0, 0.0, 0.0), (0.45, 0.0, 0.0), (-0.45, 0.0, 0.0), (0.0, 0.45, 0.0), (0.0, -0.45, 0.0),
             (0.0, 0.0, 0.45), (0.0, 0.0, -0.45))
STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class Sparse4DConfig:
    """Dimensions of one size of the Sparse4D head."""

    image_hw: tuple[int, int]
    embed_dims: int
    num_anchor: int
    num_cams: int = 6
    num_groups: int = 8
    num_learnable_pts: int = 6
    num_decoder: int = 6
    num_classes: int = 10

    @property
    def level_hw(self) -> list[tuple[int, int]]:
        return [(math.ceil(self.image_hw[0] / s), math.ceil(self.image_hw[1] / s)) for s in STRIDES]

    @property
    def encoder_dims(self) -> tuple[int, int, int, int]:
        """SparseBox3DEncoder's [pos, size, yaw, vel] widths: [128, 32, 32, 64] at 256 channels."""
        c = self.embed_dims
        return c // 2, c // 8, c // 8, c // 4


SIZES = {
    "full": Sparse4DConfig(image_hw=(256, 704), embed_dims=256, num_anchor=900),
    "fixture": Sparse4DConfig(image_hw=(64, 176), embed_dims=32, num_anchor=20),
}


class SparseBox3DEncoder(nn.Module):
    """Anchor embedding: separate MLPs for position, size, yaw and velocity, concatenated."""

    def __init__(self, cfg: Sparse4DConfig):
        super().__init__()
        pos, size, yaw, vel = cfg.encoder_dims
        self.pos_fc = nn.Sequential(*linear_relu_ln(pos, 1, 2, 3))
        self.size_fc = nn.Sequential(*linear_relu_ln(size, 1, 2, 3))
        self.yaw_fc = nn.Sequential(*linear_relu_ln(yaw, 1, 2, 2))
        self.vel_fc = nn.Sequential(*linear_relu_ln(vel, 1, 2, 3))

    def forward(self, box_3d: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pos_fc(box_3d[..., [X, Y, Z]]), self.size_fc(box_3d[..., [W, L, H]]),
                          self.yaw_fc(box_3d[..., [SIN_YAW, COS_YAW]]), self.vel_fc(box_3d[..., VX:VX + 3])], dim=-1)


class SparseBox3DKeyPointsGenerator(nn.Module):
    """Box keypoints: 7 fixed (centre, face centres) and 6 learned, scaled by size, rotated by yaw."""

    def __init__(self, embed_dims: int, num_learnable_pts: int):
        super().__init__()
        self.num_learnable_pts = num_learnable_pts
        self.num_pts = len(FIX_SCALE) + num_learnable_pts
        self.register_buffer("fix_scale", torch.tensor(FIX_SCALE), persistent=False)
        self.learnable_fc = nn.Linear(embed_dims, num_learnable_pts * 3)

    def forward(self, anchor: torch.Tensor, instance_feature: torch.Tensor) -> torch.Tensor:
        bs, num_anchor = anchor.shape[:2]
        size = anchor[..., None, [W, L, H]].exp()
        key_points = self.fix_scale * size
        learnable_scale = self.learnable_fc(instance_feature).reshape(bs, num_anchor, self.num_learnable_pts, 3)
        key_points = torch.cat([key_points, (learnable_scale.sigmoid() - 0.5) * size], dim=-2)
        rotation_mat = anchor.new_zeros([bs, num_anchor, 3, 3])
        rotation_mat[:, :, 0, 0] = anchor[:, :, COS_YAW]
        rotation_mat[:, :, 0, 1] = -anchor[:, :, SIN_YAW]
        rotation_mat[:, :, 1, 0] = anchor[:, :, SIN_YAW]
        rotation_mat[:, :, 1, 1] = anchor[:, :, COS_YAW]
        rotation_mat[:, :, 2, 2] = 1
        key_points = torch.matmul(rotation_mat[:, :, None], key_points[..., None]).squeeze(-1)
        return key_points + anchor[..., None, [X, Y, Z]]


class DeformableFeatureAggregation(nn.Module):
    """Sparse4D's DeformableFeatureAggregation, use_deformable_func=False, residual_mode='cat'."""

    def __init__(self, cfg: Sparse4DConfig):
        super().__init__()
        c = cfg.embed_dims
        self.cfg = cfg
        self.kps_generator = SparseBox3DKeyPointsGenerator(c, cfg.num_learnable_pts)
        self.num_pts = self.kps_generator.num_pts
        self.camera_encoder = nn.Sequential(*linear_relu_ln(c, 1, 2, 12))
        self.weights_fc = nn.Linear(c, cfg.num_groups * len(STRIDES) * self.num_pts)
        self.output_proj = nn.Linear(c, c)

    def _get_weights(self, instance_feature, anchor_embed, projection_mat):
        cfg = self.cfg
        bs, num_anchor = instance_feature.shape[:2]
        camera_embed = self.camera_encoder(projection_mat[:, :, :3].reshape(bs, cfg.num_cams, -1))
        feature = (instance_feature + anchor_embed)[:, :, None] + camera_embed[:, None]
        weights = self.weights_fc(feature).reshape(bs, num_anchor, -1, cfg.num_groups).softmax(dim=-2)
        return weights.reshape(bs, num_anchor, cfg.num_cams, len(STRIDES), self.num_pts, cfg.num_groups)

    @staticmethod
    def project_points(key_points, projection_mat, image_wh):
        pts_extend = torch.cat([key_points, torch.ones_like(key_points[..., :1])], dim=-1)
        points_2d = torch.matmul(projection_mat[:, :, None, None], pts_extend[:, None, ..., None]).squeeze(-1)
        points_2d = points_2d[..., :2] / torch.clamp(points_2d[..., 2:3], min=1e-5)
        return points_2d / image_wh[:, :, None, None]

    @staticmethod
    def feature_sampling(feature_maps, key_points, projection_mat, image_wh):
        num_levels, num_cams = len(feature_maps), feature_maps[0].shape[1]
        bs, num_anchor, num_pts = key_points.shape[:3]
        points_2d = DeformableFeatureAggregation.project_points(key_points, projection_mat, image_wh)
        points_2d = (points_2d * 2 - 1).flatten(end_dim=1)
        features = [F.grid_sample(fm.flatten(end_dim=1), points_2d) for fm in feature_maps]
        features = torch.stack(features, dim=1)
        return features.reshape(bs, num_cams, num_levels, -1, num_anchor, num_pts).permute(0, 4, 1, 2, 5, 3)

    def forward(self, instance_feature, anchor, anchor_embed, feature_maps, projection_mat, image_wh):
        bs, num_anchor = instance_feature.shape[:2]
        key_points = self.kps_generator(anchor, instance_feature)
        weights = self._get_weights(instance_feature, anchor_embed, projection_mat)
        features = self.feature_sampling(feature_maps, key_points, projection_mat, image_wh)
        groups = self.cfg.num_groups
        features = weights[..., None] * features.reshape(features.shape[:-1] + (groups, -1))
        features = features.sum(dim=2).sum(dim=2).reshape(bs, num_anchor, self.num_pts, -1).sum(dim=2)
        return torch.cat([self.output_proj(features), instance_feature], dim=-1)


class AsymmetricFFN(nn.Module):
    """Sparse4D's AsymmetricFFN: pre-LayerNorm on 2C, Linear-ReLU-Linear to C, plus a Linear identity."""

    def __init__(self, in_channels: int, embed_dims: int, feedforward_channels: int):
        super().__init__()
        self.pre_norm = nn.LayerNorm(in_channels)
        self.layers = nn.Sequential(nn.Linear(in_channels, feedforward_channels), nn.ReLU(inplace=True),
                                    nn.Linear(feedforward_channels, embed_dims))
        self.identity_fc = nn.Linear(in_channels, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        return self.identity_fc(x) + self.layers(x)


class SparseBox3DRefinementModule(nn.Module):
    """Box refinement: residual on position and size, normalised yaw, velocity over the time interval.

    Upstream assigns in place through list indices (`output[..., [X, Y, Z, W, L, H]] = ...`); torch
    2.13's TorchScript exporter turns that into an invalid graph (Add and Expand nodes with empty
    inputs, refused by onnx.checker and ONNX Runtime), so this writes the same values with slices and
    a concat, as Sparse4D's deployment forks do.
    """

    def __init__(self, embed_dims: int, num_classes: int):
        super().__init__()
        self.layers = nn.Sequential(*linear_relu_ln(embed_dims, 2, 2), nn.Linear(embed_dims, 11))
        self.scale = nn.Parameter(torch.ones(11))
        self.cls_layers = nn.Sequential(*linear_relu_ln(embed_dims, 1, 2), nn.Linear(embed_dims, num_classes))

    def forward(self, instance_feature, anchor, anchor_embed, time_interval: float = 0.5):
        output = self.layers(instance_feature + anchor_embed) * self.scale
        refined = output[..., X:H + 1] + anchor[..., X:H + 1]
        yaw = F.normalize(output[..., SIN_YAW:COS_YAW + 1], dim=-1)
        translation = torch.transpose(output[..., VX:], 0, -1)
        velocity = torch.transpose(translation / instance_feature.new_tensor(time_interval), 0, -1)
        output = torch.cat([refined, yaw, velocity + anchor[..., VX:]], dim=-1)
        return output, self.cls_layers(instance_feature)


class DecoderLayer(nn.Module):
    """One Sparse4D layer: [gnn, norm,] deformable, ffn, norm, refine (the first layer has no gnn)."""

    def __init__(self, cfg: Sparse4DConfig, with_gnn: bool):
        super().__init__()
        c = cfg.embed_dims
        self.gnn = nn.MultiheadAttention(c, 8, batch_first=True) if with_gnn else None
        self.gnn_norm = nn.LayerNorm(c) if with_gnn else None
        self.deformable = DeformableFeatureAggregation(cfg)
        self.ffn = AsymmetricFFN(2 * c, c, 4 * c)
        self.norm = nn.LayerNorm(c)
        self.refine = SparseBox3DRefinementModule(c, cfg.num_classes)

    def forward(self, instance_feature, anchor, anchor_embed, feature_maps, projection_mat, image_wh):
        if self.gnn is not None:
            query = instance_feature + anchor_embed
            attn = self.gnn(query, instance_feature + anchor_embed, instance_feature)[0]
            instance_feature = self.gnn_norm(instance_feature + attn)
        instance_feature = self.deformable(instance_feature, anchor, anchor_embed, feature_maps, projection_mat, image_wh)
        instance_feature = self.norm(self.ffn(instance_feature))
        anchor, cls = self.refine(instance_feature, anchor, anchor_embed)
        return instance_feature, anchor, cls


class Sparse4DHead(nn.Module):
    """Anchor encoder and the decoder layers, re-encoding the refined anchors between layers.

    Inputs: four feature maps [1, cams, C, h, w], instance_feature [1, A, C], anchor [1, A, 11],
    projection_mat [1, cams, 4, 4], image_wh [1, cams, 2]. Outputs: instance_feature, anchor, cls.
    """

    def __init__(self, cfg: Sparse4DConfig):
        super().__init__()
        self.anchor_encoder = SparseBox3DEncoder(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg, with_gnn=i > 0) for i in range(cfg.num_decoder))

    def forward(self, feature_map_0, feature_map_1, feature_map_2, feature_map_3, instance_feature, anchor,
                projection_mat, image_wh):
        feature_maps = [feature_map_0, feature_map_1, feature_map_2, feature_map_3]
        cls = None
        for layer in self.layers:
            anchor_embed = self.anchor_encoder(anchor)
            instance_feature, anchor, cls = layer(instance_feature, anchor, anchor_embed, feature_maps,
                                                  projection_mat, image_wh)
        return instance_feature, anchor, cls


def head_example(size: str, generator: torch.Generator):
    """Sparse4DHead with random features and anchors spread around the ego car, the rig's projections."""
    cfg = SIZES[size]
    inputs = {f"feature_map_{i}": torch.randn(1, cfg.num_cams, cfg.embed_dims, h, w, generator=generator)
              for i, (h, w) in enumerate(cfg.level_hw)}
    anchor = torch.zeros(1, cfg.num_anchor, 11)
    anchor[..., X:Z + 1] = (torch.rand(1, cfg.num_anchor, 3, generator=generator) - 0.5) * torch.tensor([80.0, 80.0, 4.0])
    anchor[..., W:H + 1] = torch.rand(1, cfg.num_anchor, 3, generator=generator) * 1.5
    yaw = torch.rand(1, cfg.num_anchor, generator=generator) * 2 * math.pi
    anchor[..., SIN_YAW], anchor[..., COS_YAW] = torch.sin(yaw), torch.cos(yaw)
    anchor[..., VX:] = torch.randn(1, cfg.num_anchor, 3, generator=generator)
    h, w = cfg.image_hw
    inputs.update({
        "instance_feature": torch.randn(1, cfg.num_anchor, cfg.embed_dims, generator=generator),
        "anchor": anchor,
        "projection_mat": rig.lidar2img(cfg.image_hw)[None],
        "image_wh": torch.tensor([float(w), float(h)]).expand(1, cfg.num_cams, 2).contiguous(),
    })
    return Sparse4DHead(cfg), inputs, ["instance_feature_out", "anchor_out", "cls"]

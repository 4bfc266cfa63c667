"""BEVFormer-tiny (fundamentalvision/BEVFormer, `bevformer_tiny.py`) and its NMS-free box coder.

The modules follow the upstream code closely enough that the export has the op patterns users
meet: ResNet-50 + FPN on 6 cameras, the can-bus MLP and ego-motion shift (`atan2`), the rotation
of the previous BEV (torchvision's rotate = affine grid + nearest `grid_sample`), reference points
from `linspace`, point sampling through `lidar2img` with `maximum`, `&` masks and `nan_to_num`,
3 encoder layers of temporal self-attention and spatial cross-attention on mmcv's PyTorch fallback
of multi-scale deformable attention, 6 decoder layers with `nn.MultiheadAttention` self-attention,
box refinement with `inverse_sigmoid`, and `NMSFreeCoder` (`topk`, in-place `&=`, `all`, `atan2`,
`torch.inverse` of `lidar2img`).

One deliberate deployment change, the one every TensorRT port makes: spatial cross-attention runs
every BEV query through every camera and masks the result instead of gathering the queries that
hit a camera with `nonzero` (a data-dependent shape no exporter keeps). One addition: upstream
applies `nan_to_num` only to the boolean `bev_mask`, which exports to nothing; it is also applied
to the projected points here, so the graph has the IsNaN/IsInf/Where cluster users meet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ResNet50, ffn, inverse_sigmoid, multi_scale_deformable_attn_pytorch
from . import rig

PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
POST_CENTER_RANGE = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
CAN_BUS_DIMS = 18


@dataclass(frozen=True)
class BEVFormerConfig:
    """Dimensions of one size of BEVFormer-tiny."""

    image_hw: tuple[int, int]
    resnet_width: int
    embed_dims: int
    ffn_dims: int
    bev_hw: tuple[int, int]
    num_query: int
    max_num: int
    num_heads: int = 8
    num_cams: int = 6
    num_classes: int = 10
    code_size: int = 10
    encoder_layers: int = 3
    decoder_layers: int = 6
    pillar_points: int = 4
    sca_points: int = 8
    tsa_points: int = 4
    decoder_points: int = 4

    def feature_hw(self) -> tuple[int, int]:
        """Size of the stride-32 feature map the FPN passes on."""
        return math.ceil(self.image_hw[0] / 32), math.ceil(self.image_hw[1] / 32)


SIZES = {
    "full": BEVFormerConfig(image_hw=(480, 800), resnet_width=64, embed_dims=256, ffn_dims=512,
                            bev_hw=(50, 50), num_query=900, max_num=300),
    "fixture": BEVFormerConfig(image_hw=(64, 96), resnet_width=8, embed_dims=32, ffn_dims=64,
                               bev_hw=(10, 10), num_query=30, max_num=20),
}


def offset_normalizer(spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
    """`torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)` as upstream: (w, h) per level."""
    shapes = torch.tensor(spatial_shapes, dtype=torch.float32)
    return torch.stack([shapes[..., 1], shapes[..., 0]], -1)


class DeformableAttention(nn.Module):
    """The projections shared by BEVFormer's three deformable attentions.

    `queue` > 1 is temporal self-attention (offsets predicted from [prev, current] queries);
    `anchors` > 1 is spatial cross-attention's points split over the pillar's Z anchors.
    """

    def __init__(self, embed_dims: int, num_heads: int, num_points: int, queue: int = 1, anchors: int = 1):
        super().__init__()
        self.num_heads, self.num_points, self.queue, self.anchors = num_heads, num_points, queue, anchors
        self.sampling_offsets = nn.Linear(embed_dims * queue, queue * num_heads * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims * queue, queue * num_heads * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)

    def sample(self, query: torch.Tensor, value: torch.Tensor, reference_points: torch.Tensor,
               spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        """Offsets and weights from `query` [bs, nq, C*queue], sampled around `reference_points`.

        reference_points: [bs*queue, nq, levels, 2] (or [bs, nq, anchors, 2] for spatial cross-attention).
        Returns [bs*queue, nq, C].
        """
        bs, nq, _ = query.shape
        heads, points, queue, levels = self.num_heads, self.num_points, self.queue, len(spatial_shapes)
        value = self.value_proj(value)
        value = value.reshape(value.shape[0], value.shape[1], heads, -1)
        sampling_offsets = self.sampling_offsets(query).view(bs, nq, heads, queue, levels, points, 2)
        attention_weights = self.attention_weights(query).view(bs, nq, heads, queue, levels * points)
        attention_weights = attention_weights.softmax(-1).view(bs, nq, heads, queue, levels, points)
        attention_weights = attention_weights.permute(0, 3, 1, 2, 4, 5).reshape(
            bs * queue, nq, heads, levels, points).contiguous()
        sampling_offsets = sampling_offsets.permute(0, 3, 1, 2, 4, 5, 6).reshape(
            bs * queue, nq, heads, levels, points, 2)
        normalizer = offset_normalizer(spatial_shapes)
        if self.anchors > 1:
            sampling_offsets = sampling_offsets / normalizer[None, None, None, :, None, :]
            sampling_offsets = sampling_offsets.view(bs, nq, heads, levels, points // self.anchors, self.anchors, 2)
            sampling_locations = reference_points[:, :, None, None, None, :, :] + sampling_offsets
            sampling_locations = sampling_locations.view(bs, nq, heads, levels, points, 2)
        else:
            sampling_locations = (reference_points[:, :, None, :, None, :]
                                  + sampling_offsets / normalizer[None, None, None, :, None, :])
        return multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)


class TemporalSelfAttention(nn.Module):
    """BEVFormer's TemporalSelfAttention (batch first, one BEV level, queue of 2)."""

    def __init__(self, embed_dims: int, num_heads: int, num_points: int):
        super().__init__()
        self.attn = DeformableAttention(embed_dims, num_heads, num_points, queue=2)
        self.output_proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, query, query_pos, prev_bev, reference_points, bev_hw):
        identity = query
        bs, num_query, embed_dims = query.shape
        query = query + query_pos
        query = torch.cat([prev_bev[:bs], query], -1)
        output = self.attn.sample(query, prev_bev, reference_points, [bev_hw])
        output = output.permute(1, 2, 0)
        output = output.view(num_query, embed_dims, bs, 2).mean(-1).permute(2, 0, 1)
        return self.output_proj(output) + identity


class SpatialCrossAttention(nn.Module):
    """BEVFormer's SpatialCrossAttention with MSDeformableAttention3D, in the dense (masked) form."""

    def __init__(self, cfg: BEVFormerConfig):
        super().__init__()
        self.num_cams = cfg.num_cams
        self.attn = DeformableAttention(cfg.embed_dims, cfg.num_heads, cfg.sca_points, anchors=cfg.pillar_points)
        self.output_proj = nn.Linear(cfg.embed_dims, cfg.embed_dims)

    def forward(self, query, query_pos, feats, reference_points_cam, bev_mask, spatial_shapes):
        """feats [num_cams, hw, bs, C]; reference_points_cam [num_cams, bs, nq, D, 2]; bev_mask [num_cams, bs, nq, D]."""
        inp_residual = query
        query = query + query_pos
        bs, num_query, embed_dims = query.shape
        num_cams, length = feats.shape[0], feats.shape[1]
        queries_rebatch = query.unsqueeze(1).repeat(1, num_cams, 1, 1).view(bs * num_cams, num_query, embed_dims)
        reference_points_rebatch = reference_points_cam.permute(1, 0, 2, 3, 4).reshape(
            bs * num_cams, num_query, reference_points_cam.shape[3], 2)
        value = feats.permute(2, 0, 1, 3).reshape(bs * num_cams, length, embed_dims)
        queries = self.attn.sample(queries_rebatch, value, reference_points_rebatch, spatial_shapes)
        queries = queries.view(bs, num_cams, num_query, embed_dims)
        hit = bev_mask.sum(-1) > 0
        slots = (queries * hit.permute(1, 0, 2)[..., None].to(queries.dtype)).sum(1)
        count = torch.clamp(hit.permute(1, 2, 0).sum(-1), min=1)
        slots = slots / count[..., None]
        return self.output_proj(slots) + inp_residual


class EncoderLayer(nn.Module):
    """BEVFormerLayer: self_attn, norm, cross_attn, norm, ffn, norm."""

    def __init__(self, cfg: BEVFormerConfig):
        super().__init__()
        self.self_attn = TemporalSelfAttention(cfg.embed_dims, cfg.num_heads, cfg.tsa_points)
        self.cross_attn = SpatialCrossAttention(cfg)
        self.ffn = ffn(cfg.embed_dims, cfg.ffn_dims)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.embed_dims) for _ in range(3))

    def forward(self, query, bev_pos, prev_bev, ref_2d, bev_hw, feats, reference_points_cam, bev_mask, spatial_shapes):
        query = self.norms[0](self.self_attn(query, bev_pos, prev_bev, ref_2d, bev_hw))
        query = self.norms[1](self.cross_attn(query, bev_pos, feats, reference_points_cam, bev_mask, spatial_shapes))
        return self.norms[2](query + self.ffn(query))


def get_reference_points(bev_h: int, bev_w: int, z: float, num_points_in_pillar: int, bs: int):
    """BEVFormerEncoder.get_reference_points for '3d' [bs, D, hw, 3] and '2d' [bs, hw, 1, 2]."""
    zs = torch.linspace(0.5, z - 0.5, num_points_in_pillar).view(-1, 1, 1).expand(num_points_in_pillar, bev_h, bev_w) / z
    xs = torch.linspace(0.5, bev_w - 0.5, bev_w).view(1, 1, bev_w).expand(num_points_in_pillar, bev_h, bev_w) / bev_w
    ys = torch.linspace(0.5, bev_h - 0.5, bev_h).view(1, bev_h, 1).expand(num_points_in_pillar, bev_h, bev_w) / bev_h
    ref_3d = torch.stack((xs, ys, zs), -1).permute(0, 3, 1, 2).flatten(2).permute(0, 2, 1)
    ref_3d = ref_3d[None].repeat(bs, 1, 1, 1)
    ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, bev_h - 0.5, bev_h), torch.linspace(0.5, bev_w - 0.5, bev_w),
                                  indexing="ij")
    ref_2d = torch.stack((ref_x.reshape(-1)[None] / bev_w, ref_y.reshape(-1)[None] / bev_h), -1)
    return ref_3d, ref_2d.repeat(bs, 1, 1).unsqueeze(2)


def point_sampling(reference_points: torch.Tensor, lidar2img: torch.Tensor, image_hw: tuple[int, int]):
    """BEVFormerEncoder.point_sampling: project pillar points into every camera.

    Returns reference_points_cam [num_cams, bs, hw, D, 2] and bev_mask [num_cams, bs, hw, D].
    """
    pc = PC_RANGE
    reference_points = reference_points.clone()
    reference_points[..., 0:1] = reference_points[..., 0:1] * (pc[3] - pc[0]) + pc[0]
    reference_points[..., 1:2] = reference_points[..., 1:2] * (pc[4] - pc[1]) + pc[1]
    reference_points[..., 2:3] = reference_points[..., 2:3] * (pc[5] - pc[2]) + pc[2]
    reference_points = torch.cat((reference_points, torch.ones_like(reference_points[..., :1])), -1)
    reference_points = reference_points.permute(1, 0, 2, 3)
    depth, bs, num_query = reference_points.shape[:3]
    num_cam = lidar2img.shape[1]
    reference_points = reference_points.view(depth, bs, 1, num_query, 4).repeat(1, 1, num_cam, 1, 1).unsqueeze(-1)
    lidar2img = lidar2img.view(1, bs, num_cam, 1, 4, 4).repeat(depth, 1, 1, num_query, 1, 1)
    reference_points_cam = torch.matmul(lidar2img.to(torch.float32), reference_points.to(torch.float32)).squeeze(-1)
    eps = 1e-5
    bev_mask = reference_points_cam[..., 2:3] > eps
    reference_points_cam = reference_points_cam[..., 0:2] / torch.maximum(
        reference_points_cam[..., 2:3], torch.ones_like(reference_points_cam[..., 2:3]) * eps)
    reference_points_cam = torch.nan_to_num(reference_points_cam)
    reference_points_cam[..., 0] /= image_hw[1]
    reference_points_cam[..., 1] /= image_hw[0]
    bev_mask = (bev_mask & (reference_points_cam[..., 1:2] > 0.0) & (reference_points_cam[..., 1:2] < 1.0)
                & (reference_points_cam[..., 0:1] < 1.0) & (reference_points_cam[..., 0:1] > 0.0))
    bev_mask = torch.nan_to_num(bev_mask)
    return reference_points_cam.permute(2, 1, 3, 0, 4), bev_mask.permute(2, 1, 3, 0, 4).squeeze(-1)


def rotate_bev(bev: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """torchvision's `rotate(img, angle)` on a [C, H, W] map: `_gen_affine_grid` + nearest grid_sample.

    Rotates about the map centre (upstream's fixed `rotate_center=[100, 100]` assumes a 200x200 BEV).
    """
    _, h, w = bev.shape
    rot = -angle_deg * math.pi / 180
    cos, sin = torch.cos(rot), torch.sin(rot)
    zero = torch.zeros_like(cos)
    theta = torch.stack([cos, -sin, zero, sin, cos, zero]).reshape(1, 2, 3)
    base_grid = torch.empty(1, h, w, 3, dtype=theta.dtype)
    base_grid[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w))
    base_grid[..., 1].copy_(torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h).unsqueeze_(-1))
    base_grid[..., 2].fill_(1)
    rescaled_theta = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], dtype=theta.dtype)
    grid = base_grid.view(1, h * w, 3).bmm(rescaled_theta).view(1, h, w, 2)
    return F.grid_sample(bev[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]


class PerceptionTransformer(nn.Module):
    """BEVFormer's PerceptionTransformer: BEV encoder (get_bev_features) and the object decoder."""

    def __init__(self, cfg: BEVFormerConfig):
        super().__init__()
        c = cfg.embed_dims
        self.cfg = cfg
        self.level_embeds = nn.Parameter(torch.randn(1, c))
        self.cams_embeds = nn.Parameter(torch.randn(cfg.num_cams, c))
        self.can_bus_mlp = nn.Sequential(nn.Linear(CAN_BUS_DIMS, c // 2), nn.ReLU(inplace=True),
                                         nn.Linear(c // 2, c), nn.ReLU(inplace=True), nn.LayerNorm(c))
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.reference_points = nn.Linear(c, 3)

    def ego_shift(self, can_bus: torch.Tensor) -> torch.Tensor:
        """The BEV shift [1, 2] from the can-bus ego motion (delta x, delta y, ego yaw)."""
        bev_h, bev_w = self.cfg.bev_hw
        delta_x, delta_y = can_bus[0:1], can_bus[1:2]
        ego_angle = can_bus[-2:-1] / math.pi * 180
        grid_length_y = (PC_RANGE[4] - PC_RANGE[1]) / bev_h
        grid_length_x = (PC_RANGE[3] - PC_RANGE[0]) / bev_w
        translation_length = torch.sqrt(delta_x ** 2 + delta_y ** 2)
        translation_angle = torch.atan2(delta_y, delta_x) / math.pi * 180
        bev_angle = ego_angle - translation_angle
        shift_y = translation_length * torch.cos(bev_angle / 180 * math.pi) / grid_length_y / bev_h
        shift_x = translation_length * torch.sin(bev_angle / 180 * math.pi) / grid_length_x / bev_w
        return torch.stack([shift_x, shift_y]).permute(1, 0)

    def get_bev_features(self, feats, bev_queries, bev_pos, prev_bev, can_bus, lidar2img):
        """feats [bs, cams, C, h, w]; bev_queries / bev_pos / prev_bev [hw, bs, C]. Returns [bs, hw, C]."""
        cfg = self.cfg
        bev_h, bev_w = cfg.bev_hw
        bs = feats.shape[0]
        shift = self.ego_shift(can_bus)
        prev_bev = rotate_bev(prev_bev[:, 0].reshape(bev_h, bev_w, -1).permute(2, 0, 1), can_bus[-1])
        prev_bev = prev_bev.permute(1, 2, 0).reshape(bev_h * bev_w, 1, -1)
        bev_queries = bev_queries + self.can_bus_mlp(can_bus[None])[None, :, :]
        spatial_shapes = [tuple(feats.shape[-2:])]
        feat_flatten = feats.flatten(3).permute(1, 0, 3, 2)
        feat_flatten = feat_flatten + self.cams_embeds[:, None, None, :] + self.level_embeds[None, None, 0:1, :]
        feat_flatten = feat_flatten.permute(0, 2, 1, 3)

        ref_3d, ref_2d = get_reference_points(bev_h, bev_w, PC_RANGE[5] - PC_RANGE[2], cfg.pillar_points, bs)
        reference_points_cam, bev_mask = point_sampling(ref_3d, lidar2img, cfg.image_hw)
        shift_ref_2d = ref_2d.clone()
        shift_ref_2d += shift[:, None, None, :]
        query, bev_pos, prev_bev = bev_queries.permute(1, 0, 2), bev_pos.permute(1, 0, 2), prev_bev.permute(1, 0, 2)
        len_bev = ref_2d.shape[1]
        prev_bev = torch.stack([prev_bev, query], 1).reshape(bs * 2, len_bev, -1)
        hybrid_ref_2d = torch.stack([shift_ref_2d, ref_2d], 1).reshape(bs * 2, len_bev, 1, 2)
        for layer in self.encoder:
            query = layer(query, bev_pos, prev_bev, hybrid_ref_2d, (bev_h, bev_w), feat_flatten,
                          reference_points_cam, bev_mask, spatial_shapes)
        return query


class DecoderCrossAttention(nn.Module):
    """BEVFormer's CustomMSDeformableAttention over the BEV (sequence first)."""

    def __init__(self, cfg: BEVFormerConfig):
        super().__init__()
        self.attn = DeformableAttention(cfg.embed_dims, cfg.num_heads, cfg.decoder_points)
        self.output_proj = nn.Linear(cfg.embed_dims, cfg.embed_dims)

    def forward(self, query, query_pos, bev_embed, reference_points, bev_hw):
        identity = query
        query = (query + query_pos).permute(1, 0, 2)
        output = self.attn.sample(query, bev_embed, reference_points, [bev_hw])
        return self.output_proj(output).permute(1, 0, 2) + identity


class DecoderLayer(nn.Module):
    """DetrTransformerDecoderLayer: self_attn (nn.MultiheadAttention), norm, cross_attn, norm, ffn, norm."""

    def __init__(self, cfg: BEVFormerConfig):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(cfg.embed_dims, cfg.num_heads)
        self.cross_attn = DecoderCrossAttention(cfg)
        self.ffn = ffn(cfg.embed_dims, cfg.ffn_dims)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.embed_dims) for _ in range(3))

    def forward(self, query, query_pos, bev_embed, reference_points, bev_hw):
        # mmcv's MultiheadAttention wrapper: key = query + pos, value = the query without pos.
        attn = self.self_attn(query=query + query_pos, key=query + query_pos, value=query)[0]
        query = self.norms[0](query + attn)
        query = self.norms[1](self.cross_attn(query, query_pos, bev_embed, reference_points, bev_hw))
        return self.norms[2](query + self.ffn(query))


def _cls_branch(c: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c, c), nn.LayerNorm(c), nn.ReLU(inplace=True),
                         nn.Linear(c, c), nn.LayerNorm(c), nn.ReLU(inplace=True), nn.Linear(c, num_classes))


def _reg_branch(c: int, code_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, c), nn.ReLU(inplace=True),
                         nn.Linear(c, code_size))


class BEVFormerTiny(nn.Module):
    """Image backbone + BEVFormerHead, exported as one graph (as BEVFormer_tensorrt does).

    Inputs: image [1, cams, 3, H, W], prev_bev [hw, 1, C], can_bus [18], lidar2img [1, cams, 4, 4].
    Outputs: bev_embed [hw, 1, C], all_cls_scores [layers, 1, Q, classes], all_bbox_preds [layers, 1, Q, 10].
    """

    def __init__(self, cfg: BEVFormerConfig):
        super().__init__()
        c = cfg.embed_dims
        self.cfg = cfg
        self.backbone = ResNet50(cfg.resnet_width, out_indices=(3,))
        self.lateral_conv = nn.Conv2d(self.backbone.stage_channels()[0], c, 1)
        self.fpn_conv = nn.Conv2d(c, c, 3, padding=1)
        bev_h, bev_w = cfg.bev_hw
        self.bev_embedding = nn.Embedding(bev_h * bev_w, c)
        self.row_embed = nn.Embedding(bev_h, c // 2)
        self.col_embed = nn.Embedding(bev_w, c // 2)
        self.query_embedding = nn.Embedding(cfg.num_query, c * 2)
        self.transformer = PerceptionTransformer(cfg)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.cls_branches = nn.ModuleList(_cls_branch(c, cfg.num_classes) for _ in range(cfg.decoder_layers))
        self.reg_branches = nn.ModuleList(_reg_branch(c, cfg.code_size) for _ in range(cfg.decoder_layers))

    def extract_feat(self, image: torch.Tensor) -> torch.Tensor:
        bs, n, c, h, w = image.shape
        x = self.backbone(image.reshape(bs * n, c, h, w))[0]
        x = self.fpn_conv(self.lateral_conv(x))
        return x.view(bs, n, *x.shape[1:])

    def bev_pos(self) -> torch.Tensor:
        """LearnedPositionalEncoding on an all-zero mask: [hw, 1, C]."""
        bev_h, bev_w = self.cfg.bev_hw
        x_embed = self.col_embed(torch.arange(bev_w))
        y_embed = self.row_embed(torch.arange(bev_h))
        pos = torch.cat((x_embed.unsqueeze(0).repeat(bev_h, 1, 1), y_embed.unsqueeze(1).repeat(1, bev_w, 1)), -1)
        return pos.permute(2, 0, 1).unsqueeze(0).flatten(2).permute(2, 0, 1)

    def decode(self, bev_embed: torch.Tensor):
        """DetectionTransformerDecoder with box refinement: per-layer states [bs, Q, C] and reference points."""
        c = self.cfg.embed_dims
        query_pos, query = torch.split(self.query_embedding.weight, c, dim=1)
        query_pos, query = query_pos.unsqueeze(0), query.unsqueeze(0)
        reference_points = self.transformer.reference_points(query_pos).sigmoid()
        query, query_pos = query.permute(1, 0, 2), query_pos.permute(1, 0, 2)
        references, states = [reference_points], []
        for lid, layer in enumerate(self.decoder):
            query = layer(query, query_pos, bev_embed, reference_points[..., :2].unsqueeze(2), self.cfg.bev_hw)
            tmp = self.reg_branches[lid](query.permute(1, 0, 2))
            new_reference_points = torch.zeros_like(reference_points)
            new_reference_points[..., :2] = tmp[..., :2] + inverse_sigmoid(reference_points[..., :2])
            new_reference_points[..., 2:3] = tmp[..., 4:5] + inverse_sigmoid(reference_points[..., 2:3])
            reference_points = new_reference_points.sigmoid().detach()
            references.append(reference_points)
            states.append(query.permute(1, 0, 2))
        return states, references

    def forward(self, image, prev_bev, can_bus, lidar2img):
        feats = self.extract_feat(image)
        bev_queries = self.bev_embedding.weight.unsqueeze(1)
        bev_embed = self.transformer.get_bev_features(feats, bev_queries, self.bev_pos(), prev_bev, can_bus, lidar2img)
        states, references = self.decode(bev_embed)
        pc = PC_RANGE
        classes, coords = [], []
        for lvl, hs in enumerate(states):
            reference = inverse_sigmoid(references[lvl])
            outputs_class = self.cls_branches[lvl](hs)
            tmp = self.reg_branches[lvl](hs)
            tmp[..., 0:2] += reference[..., 0:2]
            tmp[..., 0:2] = tmp[..., 0:2].sigmoid()
            tmp[..., 4:5] += reference[..., 2:3]
            tmp[..., 4:5] = tmp[..., 4:5].sigmoid()
            tmp[..., 0:1] = tmp[..., 0:1] * (pc[3] - pc[0]) + pc[0]
            tmp[..., 1:2] = tmp[..., 1:2] * (pc[4] - pc[1]) + pc[1]
            tmp[..., 4:5] = tmp[..., 4:5] * (pc[5] - pc[2]) + pc[2]
            classes.append(outputs_class)
            coords.append(tmp)
        return bev_embed.permute(1, 0, 2), torch.stack(classes), torch.stack(coords)


def denormalize_bbox(normalized_bboxes: torch.Tensor) -> torch.Tensor:
    """BEVFormer's denormalize_bbox: exp of log sizes, yaw from atan2(sin, cos)."""
    rot = torch.atan2(normalized_bboxes[..., 6:7], normalized_bboxes[..., 7:8])
    cx, cy, cz = normalized_bboxes[..., 0:1], normalized_bboxes[..., 1:2], normalized_bboxes[..., 4:5]
    w, l, h = normalized_bboxes[..., 2:3].exp(), normalized_bboxes[..., 3:4].exp(), normalized_bboxes[..., 5:6].exp()
    vx, vy = normalized_bboxes[..., 8:9], normalized_bboxes[..., 9:10]
    return torch.cat([cx, cy, cz, w, l, h, rot, vx, vy], dim=-1)


class NMSFreeCoder(nn.Module):
    """BEVFormer's NMSFreeCoder.decode_single on the last decoder layer, batch 0, in a static shape.

    Instead of `boxes[mask]` (a data-dependent shape) it returns the mask. It also measures each
    box's distance to every camera centre, taken from `torch.inverse(lidar2img)` (the camera centre
    is the point lidar2img sends to the origin).
    Outputs: boxes [max_num, 9], scores [max_num], labels [max_num], mask [max_num] (bool),
    camera_distance [max_num, cams].
    """

    def __init__(self, cfg: BEVFormerConfig, score_threshold: float = 0.1):
        super().__init__()
        self.max_num, self.num_classes, self.score_threshold = cfg.max_num, cfg.num_classes, score_threshold

    def forward(self, all_cls_scores, all_bbox_preds, lidar2img):
        cls_scores, bbox_preds = all_cls_scores[-1, 0], all_bbox_preds[-1, 0]
        cls_scores = cls_scores.sigmoid()
        scores, indexs = cls_scores.view(-1).topk(self.max_num)
        labels = indexs % self.num_classes
        bbox_index = torch.div(indexs, self.num_classes, rounding_mode="floor")
        final_box_preds = denormalize_bbox(bbox_preds[bbox_index])
        thresh_mask = scores > self.score_threshold
        post_center_range = torch.tensor(POST_CENTER_RANGE)
        mask = (final_box_preds[..., :3] >= post_center_range[:3]).all(1)
        mask &= (final_box_preds[..., :3] <= post_center_range[3:]).all(1)
        mask &= thresh_mask
        cam_centers = torch.inverse(lidar2img[0])[:, :3, 3]
        camera_distance = torch.linalg.norm(final_box_preds[:, None, :3] - cam_centers[None], dim=-1)
        return final_box_preds, scores, labels, mask, camera_distance


def tiny_example(size: str, generator: torch.Generator):
    """BEVFormerTiny with sample inputs: random images and previous BEV, a small ego motion, the rig."""
    cfg = SIZES[size]
    bev_h, bev_w = cfg.bev_hw
    can_bus = torch.zeros(CAN_BUS_DIMS)
    can_bus[:3] = torch.tensor([0.8, 0.3, 0.0])
    can_bus[-2:] = torch.tensor([0.4, 2.5])  # ego yaw (rad), yaw change since the previous frame (deg)
    inputs = {
        "image": torch.randn(1, cfg.num_cams, 3, *cfg.image_hw, generator=generator),
        "prev_bev": torch.randn(bev_h * bev_w, 1, cfg.embed_dims, generator=generator),
        "can_bus": can_bus,
        "lidar2img": rig.lidar2img(cfg.image_hw)[None],
    }
    return BEVFormerTiny(cfg), inputs, ["bev_embed", "all_cls_scores", "all_bbox_preds"]


def nmsfree_example(size: str, generator: torch.Generator):
    """NMSFreeCoder with head outputs shaped like BEVFormerTiny's (centres spread over the BEV range)."""
    cfg = SIZES[size]
    shape = (cfg.decoder_layers, 1, cfg.num_query)
    bbox_preds = torch.randn(*shape, cfg.code_size, generator=generator)
    bbox_preds[..., 0:2] *= 40.0
    inputs = {
        "all_cls_scores": torch.randn(*shape, cfg.num_classes, generator=generator) * 3,
        "all_bbox_preds": bbox_preds,
        "lidar2img": rig.lidar2img(cfg.image_hw)[None],
    }
    return NMSFreeCoder(cfg), inputs, ["boxes", "scores", "labels", "mask", "camera_distance"]

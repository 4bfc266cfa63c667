"""BEVFusion (mit-han-lab/bevfusion, ResNet-50 camera config) split where CUDA-BEVFusion splits it.

- `camera.backbone`: ResNet-50, GeneralizedLSSFPN, DepthLSSTransform's dtransform (lidar depth
  image) and depthnet; outputs the depth distribution and the context features separately.
- `bev_pool` (BEVPoolv2's interval form) runs between the graphs, as CUDA-BEVFusion's own kernel;
  `bev_pool` here is its PyTorch reference and `bev_pool_indices` precomputes its index arrays.
- `camera.vtransform`: the downsampling convs on the pooled camera BEV.
- `Camera`: the three above in one module (backbone -> bev_pool -> vtransform) with the index arrays
  as graph inputs, as a user exports the whole camera branch before splitting it. Built from the
  same seed as the two split modules, so its backbone and vtransform weights equal theirs.
- fuser + head: ConvFuser of camera and lidar BEV, SECOND + SECONDFPN, TransFusion head (heatmap
  peaks by max-pool, `argsort`, `one_hot`, decoder with `nn.MultiheadAttention` and LayerNorm).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import rig
from .layers import ResNet50, conv_bn_relu


@dataclass(frozen=True)
class BEVFusionConfig:
    """Dimensions of one size of BEVFusion."""

    image_hw: tuple[int, int]
    resnet_width: int
    neck_channels: int
    dbound: tuple[float, float, float]
    xbound: tuple[float, float, float]
    camera_channels: int
    lidar_channels: int
    fuser_channels: int
    second_channels: tuple[int, int]
    hidden_channels: int
    head_conv: int
    ffn_channels: int
    num_proposals: int
    num_cams: int = 6
    num_classes: int = 10
    num_heads: int = 8
    dtransform_channels: tuple[int, int, int] = (8, 32, 64)
    zbound: tuple[float, float, float] = (-10.0, 10.0, 20.0)

    @property
    def feature_hw(self) -> tuple[int, int]:
        """The stride-8 feature map the LSS transform lifts."""
        return self.image_hw[0] // 8, self.image_hw[1] // 8

    @property
    def depth_bins(self) -> int:
        start, stop, step = self.dbound
        return len(torch.arange(start, stop, step))

    @property
    def bev_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) cells of the pooled BEV grid (y uses the x bounds, as in the nuScenes configs)."""
        cells = round((self.xbound[1] - self.xbound[0]) / self.xbound[2])
        return round((self.zbound[1] - self.zbound[0]) / self.zbound[2]), cells, cells


SIZES = {
    "full": BEVFusionConfig(image_hw=(256, 704), resnet_width=64, neck_channels=256, dbound=(1.0, 60.0, 0.5),
                            xbound=(-54.0, 54.0, 0.3), camera_channels=80, lidar_channels=256,
                            fuser_channels=256, second_channels=(128, 256), hidden_channels=128, head_conv=64,
                            ffn_channels=256, num_proposals=200),
    "fixture": BEVFusionConfig(image_hw=(64, 176), resnet_width=8, neck_channels=16, dbound=(1.0, 60.0, 4.0),
                               xbound=(-54.0, 54.0, 2.7), camera_channels=8, lidar_channels=16,
                               fuser_channels=16, second_channels=(8, 16), hidden_channels=16, head_conv=8,
                               ffn_channels=32, num_proposals=20, dtransform_channels=(4, 8, 8)),
}


class GeneralizedLSSFPN(nn.Module):
    """BEVFusion's GeneralizedLSSFPN: top-down upsample, concat, 1x1 lateral conv, 3x3 conv."""

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        last = len(in_channels) - 1
        self.lateral_convs = nn.ModuleList(
            conv_bn_relu(in_channels[i] + (in_channels[i + 1] if i == last - 1 else out_channels), out_channels, 1)
            for i in range(last))
        self.fpn_convs = nn.ModuleList(conv_bn_relu(out_channels, out_channels, 3) for _ in range(last))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Returns the finest output (the only one the LSS transform uses)."""
        laterals = list(inputs)
        for i in range(len(laterals) - 1, 0, -1):
            x = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="bilinear", align_corners=False)
            laterals[i - 1] = self.fpn_convs[i - 1](self.lateral_convs[i - 1](torch.cat([laterals[i - 1], x], dim=1)))
        return laterals[0]


class CameraBackbone(nn.Module):
    """camera.backbone: image and lidar depth image in, depth weights and context features out.

    Inputs: img [1, cams, 3, H, W], depth [1, cams, 1, H, W].
    Outputs: camera_depth_weights [cams, D, fH, fW] (softmax over D), camera_feature [cams, fH, fW, C].
    """

    def __init__(self, cfg: BEVFusionConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet50(cfg.resnet_width, out_indices=(1, 2, 3))
        self.neck = GeneralizedLSSFPN(self.backbone.stage_channels(), cfg.neck_channels)
        d1, d2, d3 = cfg.dtransform_channels
        self.dtransform = nn.Sequential(
            nn.Conv2d(1, d1, 1), nn.BatchNorm2d(d1), nn.ReLU(True),
            nn.Conv2d(d1, d2, 5, stride=4, padding=2), nn.BatchNorm2d(d2), nn.ReLU(True),
            nn.Conv2d(d2, d3, 5, stride=2, padding=2), nn.BatchNorm2d(d3), nn.ReLU(True))
        c = cfg.neck_channels
        self.depthnet = nn.Sequential(
            nn.Conv2d(c + d3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True),
            nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True),
            nn.Conv2d(c, cfg.depth_bins + cfg.camera_channels, 1))

    def forward(self, img: torch.Tensor, depth: torch.Tensor):
        b, n, c, h, w = img.shape
        x = self.neck(self.backbone(img.view(b * n, c, h, w)))
        d = self.dtransform(depth.view(b * n, *depth.shape[2:]))
        x = self.depthnet(torch.cat([d, x], dim=1))
        bins = self.cfg.depth_bins
        return x[:, :bins].softmax(dim=1), x[:, bins:].permute(0, 2, 3, 1)


def frustum_points(cfg: BEVFusionConfig, camera2lidar: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """LSSTransform.create_frustum + get_geometry (no image augmentation): [cams, D, fH, fW, 3] in lidar frame."""
    (ih, iw), (fh, fw) = cfg.image_hw, cfg.feature_hw
    ds = torch.arange(*cfg.dbound, dtype=torch.float).view(-1, 1, 1).expand(-1, fh, fw)
    d = ds.shape[0]
    xs = torch.linspace(0, iw - 1, fw).view(1, 1, fw).expand(d, fh, fw)
    ys = torch.linspace(0, ih - 1, fh).view(1, fh, 1).expand(d, fh, fw)
    points = torch.stack((xs, ys, ds), -1)
    points = torch.cat((points[..., :2] * points[..., 2:3], points[..., 2:3]), -1)
    combine = camera2lidar[:, :3, :3].matmul(torch.inverse(intrinsics))
    points = combine.view(-1, 1, 1, 1, 3, 3).matmul(points.unsqueeze(-1)).squeeze(-1)
    return points + camera2lidar[:, :3, 3].view(-1, 1, 1, 1, 3)


BEV_POOL_INDICES = ("ranks_depth", "ranks_feat", "ranks_bev", "interval_starts", "interval_lengths")


def bev_pool_indices(cfg: BEVFusionConfig, camera2lidar: torch.Tensor, intrinsics: torch.Tensor):
    """BEVPoolv2's voxel_pooling_prepare_v2 on the frustum geometry.

    Returns int32 (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths): points sorted
    by BEV cell, points outside the grid dropped, one interval per occupied cell.
    """
    coor = frustum_points(cfg, camera2lidar, intrinsics)
    n, d, h, w, _ = coor.shape
    num_points = n * d * h * w
    ranks_depth = torch.arange(num_points)
    ranks_feat = torch.arange(num_points // d).reshape(n, 1, h, w).expand(n, d, h, w).flatten()
    z_cells, y_cells, x_cells = cfg.bev_shape
    lower = torch.tensor([cfg.xbound[0], cfg.xbound[0], cfg.zbound[0]])
    step = torch.tensor([cfg.xbound[2], cfg.xbound[2], cfg.zbound[2]])
    coor = torch.floor((coor.view(num_points, 3) - lower) / step).long()
    kept = ((coor[:, 0] >= 0) & (coor[:, 0] < x_cells) & (coor[:, 1] >= 0) & (coor[:, 1] < y_cells)
            & (coor[:, 2] >= 0) & (coor[:, 2] < z_cells))
    coor, ranks_depth, ranks_feat = coor[kept], ranks_depth[kept], ranks_feat[kept]
    ranks_bev = coor[:, 2] * (y_cells * x_cells) + coor[:, 1] * x_cells + coor[:, 0]
    order = torch.argsort(ranks_bev, stable=True)
    ranks_bev, ranks_depth, ranks_feat = ranks_bev[order], ranks_depth[order], ranks_feat[order]
    starts = torch.ones_like(ranks_bev, dtype=torch.bool)
    starts[1:] = ranks_bev[1:] != ranks_bev[:-1]
    interval_starts = torch.where(starts)[0]
    interval_lengths = torch.diff(interval_starts, append=torch.tensor([len(ranks_bev)]))
    return tuple(t.int() for t in (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths))


def bev_pool(depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths,
             bev_shape: tuple[int, int, int]) -> torch.Tensor:
    """Reference BEVPoolv2: per interval, sum depth[ranks_depth] * feat[ranks_feat] into cell ranks_bev.

    depth [cams, D, fH, fW], feat [cams, fH, fW, C]. Returns [1, C*Z, Y, X] (Z folded into channels
    as BEVFusion's `torch.cat(x.unbind(dim=2), 1)` does).
    """
    c = feat.shape[-1]
    z, y, x = bev_shape
    contributions = depth.reshape(-1)[ranks_depth.long(), None] * feat.reshape(-1, c)[ranks_feat.long()]
    segment = torch.repeat_interleave(torch.arange(len(interval_starts)), interval_lengths.long())
    sums = torch.zeros(len(interval_starts), c, dtype=feat.dtype).index_add_(0, segment, contributions)
    out = torch.zeros(z * y * x, c, dtype=feat.dtype)
    out[ranks_bev[interval_starts.long()].long()] = sums
    out = out.view(z, y, x, c).permute(3, 0, 1, 2)
    return torch.cat(out.unbind(1), 0)[None]


class CameraVTransform(nn.Module):
    """camera.vtransform: DepthLSSTransform's downsample convs on the pooled BEV [1, C, Y, X]."""

    def __init__(self, cfg: BEVFusionConfig):
        super().__init__()
        c = cfg.camera_channels
        self.downsample = nn.Sequential(conv_bn_relu(c, c, 3), conv_bn_relu(c, c, 3, stride=2), conv_bn_relu(c, c, 3))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.downsample(pooled)


class Camera(nn.Module):
    """The whole camera branch: CameraBackbone -> bev_pool -> CameraVTransform.

    Inputs: img, depth (as CameraBackbone) and bev_pool's five int32 index arrays, precomputed from
    the frustum geometry as deploy code does (`bev_pool_indices`). Output: camera_bev [1, C, Y/2, X/2].
    How many points fall inside the grid depends on the camera calibration, so the index arrays are
    exported with dynamic lengths (`dynamic_axes`, read by the exporter); fixed lengths would let
    the tracer unroll repeat_interleave into one branch per interval.
    """

    dynamic_axes = {**{name: {0: "points"} for name in ("ranks_depth", "ranks_feat", "ranks_bev")},
                    **{name: {0: "intervals"} for name in ("interval_starts", "interval_lengths")}}

    def __init__(self, backbone: CameraBackbone, vtransform: CameraVTransform):
        super().__init__()
        self.cfg = backbone.cfg
        self.backbone, self.vtransform = backbone, vtransform

    def forward(self, img, depth, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths):
        depth_weights, feature = self.backbone(img, depth)
        pooled = bev_pool(depth_weights, feature, ranks_depth, ranks_feat, ranks_bev, interval_starts,
                          interval_lengths, bev_shape=self.cfg.bev_shape)
        return self.vtransform(pooled)


class SECOND(nn.Module):
    """mmdet3d SECOND: two stages of strided 3x3 conv plus 5 more 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: tuple[int, int], layer_nums=(5, 5), strides=(1, 2)):
        super().__init__()
        blocks, cin = [], in_channels
        for cout, layers, stride in zip(out_channels, layer_nums, strides):
            blocks.append(nn.Sequential(conv_bn_relu(cin, cout, 3, stride),
                                        *(conv_bn_relu(cout, cout, 3) for _ in range(layers))))
            cin = cout
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class SECONDFPN(nn.Module):
    """mmdet3d SECONDFPN (use_conv_for_no_stride): 1x1 conv and 2x2/2 transposed conv, BN, ReLU, concat."""

    def __init__(self, in_channels: tuple[int, int], out_channels: int):
        super().__init__()
        self.deblocks = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_channels[0], out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                          nn.ReLU(inplace=True)),
            nn.Sequential(nn.ConvTranspose2d(in_channels[1], out_channels, 2, stride=2, bias=False),
                          nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))])

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([deblock(x) for deblock, x in zip(self.deblocks, xs)], dim=1)


class PositionEmbeddingLearned(nn.Module):
    """TransFusion's learned position embedding: Conv1d, BN1d, ReLU, Conv1d on (x, y)."""

    def __init__(self, channels: int):
        super().__init__()
        self.position_embedding_head = nn.Sequential(nn.Conv1d(2, channels, 1), nn.BatchNorm1d(channels),
                                                     nn.ReLU(inplace=True), nn.Conv1d(channels, channels, 1))

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.position_embedding_head(xyz.transpose(1, 2).contiguous())


class TransFusionDecoderLayer(nn.Module):
    """TransFusion's TransformerDecoderLayer: self-attn, cross-attn to the BEV, FFN; post-LayerNorm."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_posembed = PositionEmbeddingLearned(d_model)
        self.cross_posembed = PositionEmbeddingLearned(d_model)

    def forward(self, query, key, query_pos, key_pos):
        query_pos_embed = self.self_posembed(query_pos).permute(2, 0, 1)
        key_pos_embed = self.cross_posembed(key_pos).permute(2, 0, 1)
        query, key = query.permute(2, 0, 1), key.permute(2, 0, 1)
        q = k = v = query + query_pos_embed
        query = self.norm1(query + self.self_attn(q, k, value=v)[0])
        query2 = self.multihead_attn(query=query + query_pos_embed, key=key + key_pos_embed,
                                     value=key + key_pos_embed)[0]
        query = self.norm2(query + query2)
        query = self.norm3(query + self.linear2(F.relu(self.linear1(query))))
        return query.permute(1, 2, 0)


HEADS = {"center": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}


class FuserHead(nn.Module):
    """ConvFuser, SECOND, SECONDFPN and TransFusionHead (one decoder layer) on camera and lidar BEV."""

    def __init__(self, cfg: BEVFusionConfig):
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden_channels
        self.fuser = conv_bn_relu(cfg.camera_channels + cfg.lidar_channels, cfg.fuser_channels, 3)
        self.second = SECOND(cfg.fuser_channels, cfg.second_channels)
        self.second_fpn = SECONDFPN(cfg.second_channels, cfg.second_channels[1])
        self.shared_conv = nn.Conv2d(2 * cfg.second_channels[1], hidden, 3, padding=1)
        self.heatmap_head = nn.Sequential(conv_bn_relu(hidden, hidden, 3), nn.Conv2d(hidden, cfg.num_classes, 3, padding=1))
        self.class_encoding = nn.Conv1d(cfg.num_classes, hidden, 1)
        self.decoder = TransFusionDecoderLayer(hidden, cfg.num_heads, cfg.ffn_channels)
        self.prediction_heads = nn.ModuleDict({
            name: nn.Sequential(nn.Conv1d(hidden, cfg.head_conv, 1, bias=False), nn.BatchNorm1d(cfg.head_conv),
                                nn.ReLU(inplace=True), nn.Conv1d(cfg.head_conv, out, 1))
            for name, out in {**HEADS, "heatmap": cfg.num_classes}.items()})
        cells = cfg.bev_shape[1] // 2
        ys, xs = torch.meshgrid(torch.linspace(0, cells - 1, cells), torch.linspace(0, cells - 1, cells), indexing="ij")
        coord_base = torch.cat([xs[None] + 0.5, ys[None] + 0.5], dim=0)[None]
        self.register_buffer("bev_pos", coord_base.view(1, 2, -1).permute(0, 2, 1), persistent=False)

    def forward(self, camera_bev: torch.Tensor, lidar_bev: torch.Tensor):
        x = self.fuser(torch.cat([camera_bev, lidar_bev], dim=1))
        lidar_feat = self.shared_conv(self.second_fpn(self.second(x)))
        batch_size, num_classes = lidar_feat.shape[0], self.cfg.num_classes
        lidar_feat_flatten = lidar_feat.view(batch_size, lidar_feat.shape[1], -1)
        bev_pos = self.bev_pos.repeat(batch_size, 1, 1)
        dense_heatmap = self.heatmap_head(lidar_feat)
        heatmap = dense_heatmap.detach().sigmoid()
        local_max = torch.zeros_like(heatmap)
        local_max[:, :, 1:-1, 1:-1] = F.max_pool2d(heatmap, kernel_size=3, stride=1, padding=0)
        local_max[:, 8] = F.max_pool2d(heatmap[:, 8], kernel_size=1, stride=1, padding=0)
        local_max[:, 9] = F.max_pool2d(heatmap[:, 9], kernel_size=1, stride=1, padding=0)
        heatmap = (heatmap * (heatmap == local_max)).view(batch_size, num_classes, -1)
        top_proposals = heatmap.view(batch_size, -1).argsort(dim=-1, descending=True)[..., :self.cfg.num_proposals]
        top_proposals_class = top_proposals // heatmap.shape[-1]
        top_proposals_index = top_proposals % heatmap.shape[-1]
        query_feat = lidar_feat_flatten.gather(
            index=top_proposals_index[:, None, :].expand(-1, lidar_feat_flatten.shape[1], -1), dim=-1)
        one_hot = F.one_hot(top_proposals_class, num_classes=num_classes).permute(0, 2, 1)
        query_feat = query_feat + self.class_encoding(one_hot.float())
        query_pos = bev_pos.gather(index=top_proposals_index[:, None, :].permute(0, 2, 1).expand(-1, -1, 2), dim=1)
        query_feat = self.decoder(query_feat, lidar_feat_flatten, query_pos, bev_pos)
        res = {name: head(query_feat) for name, head in self.prediction_heads.items()}
        res["center"] = res["center"] + query_pos.permute(0, 2, 1)
        query_heatmap_score = heatmap.gather(index=top_proposals_index[:, None, :].expand(-1, num_classes, -1), dim=-1)
        return (*(res[name] for name in HEADS), res["heatmap"], query_heatmap_score, top_proposals_class,
                dense_heatmap)


FUSER_HEAD_OUTPUTS = [*HEADS, "heatmap", "query_heatmap_score", "query_labels", "dense_heatmap"]


def backbone_example(size: str, generator: torch.Generator):
    """CameraBackbone with random images and a sparse lidar depth image (5% of pixels, 1..60 m)."""
    cfg = SIZES[size]
    shape = (1, cfg.num_cams, 1, *cfg.image_hw)
    depth = torch.rand(shape, generator=generator) * 59 + 1
    depth = depth * (torch.rand(shape, generator=generator) < 0.05)
    inputs = {"img": torch.randn(1, cfg.num_cams, 3, *cfg.image_hw, generator=generator), "depth": depth}
    return CameraBackbone(cfg), inputs, ["camera_depth_weights", "camera_feature"]


def pooled_camera_bev(cfg: BEVFusionConfig, generator: torch.Generator) -> torch.Tensor:
    """A realistic vtransform input: random depth weights and features pooled through the rig's frustums."""
    fh, fw = cfg.feature_hw
    depth = torch.randn(cfg.num_cams, cfg.depth_bins, fh, fw, generator=generator).softmax(1)
    feat = torch.randn(cfg.num_cams, fh, fw, cfg.camera_channels, generator=generator)
    indices = bev_pool_indices(cfg, rig.camera2lidar(), rig.intrinsics(cfg.image_hw).expand(cfg.num_cams, 3, 3))
    return bev_pool(depth, feat, *indices, bev_shape=cfg.bev_shape)


def vtransform_example(size: str, generator: torch.Generator):
    cfg = SIZES[size]
    return CameraVTransform(cfg), {"pooled": pooled_camera_bev(cfg, generator)}, ["camera_bev"]


def camera_example(size: str, generator: torch.Generator):
    """Camera on backbone_example's inputs plus the rig's bev_pool indices.

    The vtransform is built after re-seeding torch with the seed the exporter set, so its weights are
    those of vtransform_example's module (the backbone's already are: it is built first in both).
    """
    cfg = SIZES[size]
    backbone, inputs, _ = backbone_example(size, generator)
    with torch.random.fork_rng():
        torch.manual_seed(torch.initial_seed())
        vtransform = CameraVTransform(cfg)
    indices = bev_pool_indices(cfg, rig.camera2lidar(), rig.intrinsics(cfg.image_hw).expand(cfg.num_cams, 3, 3))
    inputs.update(zip(BEV_POOL_INDICES, indices))
    return Camera(backbone, vtransform), inputs, ["camera_bev"]


def fuser_head_example(size: str, generator: torch.Generator):
    cfg = SIZES[size]
    cells = cfg.bev_shape[1] // 2
    inputs = {"camera_bev": torch.rand(1, cfg.camera_channels, cells, cells, generator=generator),
              "lidar_bev": torch.rand(1, cfg.lidar_channels, cells, cells, generator=generator)}
    return FuserHead(cfg), inputs, FUSER_HEAD_OUTPUTS

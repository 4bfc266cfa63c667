"""A plausible nuScenes-like rig of six cameras, so sample inputs project BEV points into images.

Random 4x4 matrices would put every reference point behind the cameras and leave the masks,
depth clamps and sampling grids untested; this rig puts the cameras on a ring looking outwards.
"""
from __future__ import annotations

import math

import torch

CAMERA_YAWS_DEG = (0.0, -55.0, 55.0, 180.0, -110.0, 110.0)  # front, front-right, front-left, back, ...


def intrinsics(image_hw: tuple[int, int]) -> torch.Tensor:
    """A 3x3 pinhole matrix with a ~70 degree horizontal field of view for this image size."""
    h, w = image_hw
    focal = 0.5 * w / math.tan(math.radians(35.0))
    return torch.tensor([[focal, 0.0, w / 2], [0.0, focal, h / 2], [0.0, 0.0, 1.0]])


def camera2lidar() -> torch.Tensor:
    """[6, 4, 4] poses: camera frame (x right, y down, z forward) to lidar frame (x forward, z up)."""
    poses = []
    for yaw in CAMERA_YAWS_DEG:
        c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        forward, left, up = (c, s, 0.0), (-s, c, 0.0), (0.0, 0.0, 1.0)
        rot = torch.tensor([[-left[i], -up[i], forward[i]] for i in range(3)])
        pose = torch.eye(4)
        pose[:3, :3] = rot
        pose[:3, 3] = torch.tensor([1.0 * c, 1.0 * s, 1.6])
        poses.append(pose)
    return torch.stack(poses)


def lidar2img(image_hw: tuple[int, int]) -> torch.Tensor:
    """[6, 4, 4] projection matrices as BEVFormer's img_metas carry them (intrinsics padded to 4x4)."""
    k = torch.eye(4)
    k[:3, :3] = intrinsics(image_hw)
    return k @ torch.inverse(camera2lidar())

"""The CUDA kernels against the plugin specs' NumPy references, through the C API (ctypes + torch CUDA tensors).

GPU only: these skip without a CUDA GPU (select them with `pytest -m gpu`); they need nvcc (the library is built for
the device's architecture unless $SURGEON_PLUGINS_DIR already holds one). Tolerances: float32 within
1e-5 (fused multiply-adds and summation order differ from NumPy); float16 within 1e-2 of the
reference computed from the same float16 inputs (one rounding of the result plus half-precision
loads of the locations).
"""
from __future__ import annotations

import numpy as np
import pytest

from surgeon.plugins.build_lib import DTYPES, build_library, default_dir, load_library, missing_tools, LIBRARY_NAME
from surgeon.plugins.specs import get_spec

torch = pytest.importorskip("torch", reason="needs PyTorch (the zoo extra: pip install 'surgeon[zoo]')")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
    pytest.mark.skipif(missing_tools() is not None, reason=f"cannot build the kernels: {missing_tools()}"),
]
TOLERANCE = {"float32": 1e-5, "float16": 1e-2}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if (default_dir() / LIBRARY_NAME).is_file():
        return load_library(default_dir() / LIBRARY_NAME)
    major, minor = torch.cuda.get_device_capability()
    built = build_library(tmp_path_factory.mktemp("plugins"), cuda_architectures=f"{major}{minor}")
    return load_library(built.library)


def _cuda(array):
    return torch.from_numpy(np.ascontiguousarray(array)).cuda()


def _launch(lib, function: str, dtype: str, *args):
    status = getattr(lib, function)(DTYPES[dtype], *args, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert status == 0, f"{function} returned cudaError {status}"


def _ptr(tensor):
    return tensor.data_ptr()


def _check(name, inputs, got, dtype, **attrs):
    expected = get_spec(name).run_reference(inputs, attrs)[0].astype(np.float32)
    np.testing.assert_allclose(got.float().cpu().numpy(), expected, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_msda(lib, dtype):
    rng = np.random.default_rng(0)
    shapes = np.array([[12, 20], [6, 10], [3, 5]], dtype=np.int64)
    batch, heads, channels, queries, points = 2, 4, 32, 50, 4
    keys = int(shapes.prod(1).sum())
    value = rng.standard_normal((batch, keys, heads, channels)).astype(dtype)
    starts = np.concatenate([[0], np.cumsum(shapes.prod(1))[:-1]]).astype(np.int64)
    locations = rng.uniform(-0.1, 1.1, (batch, queries, heads, len(shapes), points, 2)).astype(dtype)
    weights = rng.uniform(0, 1, (batch, queries, heads, len(shapes), points)).astype(dtype)
    tensors = [_cuda(a) for a in (value, shapes, starts, locations, weights)]
    out = torch.empty(batch, queries, heads * channels, dtype=getattr(torch, dtype), device="cuda")
    _launch(lib, "surgeon_msda", dtype, *map(_ptr, tensors), _ptr(out), batch, keys, heads, channels, len(shapes),
            queries, points)
    _check("MultiScaleDeformableAttn", [value, shapes, starts, locations, weights], out, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode, padding, align", [(0, 0, 0), (1, 0, 0), (0, 1, 1), (0, 2, 0), (1, 2, 1)])
def test_grid_sample_2d(lib, dtype, mode, padding, align):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 15, 25)).astype(dtype)
    grid = rng.uniform(-1.2, 1.2, (2, 40, 8, 2)).astype(dtype)
    out = torch.empty(2, 8, 40, 8, dtype=getattr(torch, dtype), device="cuda")
    _launch(lib, "surgeon_grid_sample_2d", dtype, _ptr(_cuda(x)), _ptr(_cuda(grid)), _ptr(out), 2, 8, 15, 25, 40, 8,
            mode, padding, align)
    _check("GridSample2D", [x, grid], out, dtype, interpolation_mode=mode, padding_mode=padding, align_corners=align)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bev_pool(lib, dtype):
    rng = np.random.default_rng(2)
    cams, bins, h, w, channels, bev_h, bev_w, count = 6, 8, 4, 11, 16, 32, 32, 3000
    depth = rng.uniform(0, 1, (cams, bins, h, w)).astype(dtype)
    feat = rng.standard_normal((cams, h, w, channels)).astype(dtype)
    ranks_depth = rng.integers(0, depth.size, count).astype(np.int32)
    ranks_feat = rng.integers(0, cams * h * w, count).astype(np.int32)
    ranks_bev = np.sort(rng.integers(0, bev_h * bev_w, count)).astype(np.int32)
    starts = np.flatnonzero(np.r_[True, ranks_bev[1:] != ranks_bev[:-1]]).astype(np.int32)
    lengths = np.diff(np.r_[starts, count]).astype(np.int32)
    inputs = [depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths]
    out = torch.full((1, channels, bev_h, bev_w), 7.0, dtype=getattr(torch, dtype), device="cuda")  # must be cleared
    _launch(lib, "surgeon_bev_pool", dtype, *[_ptr(_cuda(a)) for a in inputs], _ptr(out), len(starts), channels,
            bev_h, bev_w)
    _check("BEVPool", inputs, out, dtype, bev_h=bev_h, bev_w=bev_w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", [0, 1])
def test_rotate(lib, dtype, mode):
    rng = np.random.default_rng(3)
    image = rng.standard_normal((2, 16, 50, 50)).astype(dtype)
    angle, center = np.float32([23.7]), np.float32([25.0, 25.0])
    out = torch.empty(image.shape, dtype=getattr(torch, dtype), device="cuda")
    _launch(lib, "surgeon_rotate", dtype, _ptr(_cuda(image)), _ptr(_cuda(angle)), _ptr(_cuda(center)), _ptr(out),
            *image.shape, mode)
    _check("Rotate", [image, angle, center], out, dtype, interpolation_mode=mode)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deformable_aggregation(lib, dtype):
    rng = np.random.default_rng(4)
    batch, cams, shapes, channels, anchors, points, groups = 1, 6, [(16, 44), (8, 22), (4, 11)], 64, 30, 13, 8
    per_cam = sum(h * w for h, w in shapes)
    spatial = np.array([shapes] * cams, dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum([h * w for h, w in shapes])[:-1]])
    start = np.array([[c * per_cam + o for o in offsets] for c in range(cams)], dtype=np.int32)
    feat = rng.standard_normal((batch, cams * per_cam, channels)).astype(dtype)
    location = rng.uniform(-0.1, 1.1, (batch, anchors, points, cams, 2)).astype(dtype)
    weights = rng.uniform(0, 0.1, (batch, anchors, points, cams, len(shapes), groups)).astype(dtype)
    inputs = [feat, spatial, start, location, weights]
    out = torch.empty(batch, anchors, channels, dtype=getattr(torch, dtype), device="cuda")
    _launch(lib, "surgeon_deformable_aggregation", dtype, *[_ptr(_cuda(a)) for a in inputs], _ptr(out), batch,
            cams * per_cam, channels, cams, len(shapes), anchors, points, groups)
    _check("DeformableAggregation", inputs, out, dtype)

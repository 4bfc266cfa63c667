"""libspconv tensor files: round trip, the real files NVIDIA ships, and clear errors for bad files."""
from pathlib import Path

import numpy as np
import pytest

from surgeon.errors import SurgeonError
from surgeon.export.tensor_file import DTYPE_CODES, MAGIC, read_tensor, write_tensor

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WINDOW = Path(__file__).resolve().parent / "data" / "spconv"


@pytest.mark.parametrize("dtype", sorted(DTYPE_CODES, key=str))
def test_round_trip_every_dtype(tmp_path, dtype):
    array = (np.arange(24) - 7).astype(dtype).reshape(2, 3, 4)
    read = read_tensor(write_tensor(tmp_path / "t.tensor", array))
    assert read.dtype == dtype
    np.testing.assert_array_equal(read, array)


def test_header_layout_matches_libspconv(tmp_path):
    path = write_tensor(tmp_path / "t.tensor", np.zeros((3, 5), np.float16))
    header = np.frombuffer(path.read_bytes()[:20], "<i4")
    assert header.tolist() == [MAGIC, 2, 2, 3, 5]  # magic, ndim, dtype code 2 = float16, dims
    assert path.stat().st_size == 20 + 3 * 5 * 2


def test_reads_the_committed_real_window():
    features = read_tensor(WINDOW / "window_features.fp16.tensor")
    indices = read_tensor(WINDOW / "window_indices_zyx.int32.tensor")
    assert features.dtype == np.float16 and features.shape == (3011, 5)
    assert indices.dtype == np.int32 and indices.shape == (3011, 4)
    assert indices[:, 1].max() < 41 and indices[:, 2:].min() >= 660 and indices[:, 2:].max() < 740


@pytest.mark.skipif(not (SHARED / "centerpoint_voxels_indices_zyx.int32.tensor").exists(),
                    reason="../shared/data/centerpoint_voxels_indices_zyx.int32.tensor (NVIDIA's file) is absent")
def test_reads_nvidias_file():
    indices = read_tensor(SHARED / "centerpoint_voxels_indices_zyx.int32.tensor")
    assert indices.shape == (79745, 4) and indices.dtype == np.int32
    assert (indices[:, 0] == 0).all() and indices[:, 1].max() < 41 and indices[:, 2:].max() < 1440


@pytest.mark.parametrize("content, message", [
    (b"\x00" * 4, "shorter than the header"),
    (np.array([0x12345678, 1, 2, 4], "<i4").tobytes(), "magic 0x12345678"),
    (np.array([MAGIC, 1, 42, 4], "<i4").tobytes(), "unknown dtype code 42"),
    (np.array([MAGIC, 1, 2, 4], "<i4").tobytes() + b"\x00" * 6, "holds 6 data bytes"),
    (np.array([MAGIC, 2, 2, -2, -2], "<i4").tobytes() + b"\x00" * 16, "negative dimension in \\(-2, -2\\)"),
])
def test_bad_files_name_the_problem_and_the_file(tmp_path, content, message):
    path = tmp_path / "bad.tensor"
    path.write_bytes(content)
    with pytest.raises(SurgeonError, match=message) as info:
        read_tensor(path)
    assert str(path) in str(info.value)


def test_unsupported_dtype_is_refused(tmp_path):
    with pytest.raises(SurgeonError, match="cannot hold dtype float64"):
        write_tensor(tmp_path / "t.tensor", np.zeros(3))


@pytest.mark.skipif(not (SHARED / "centerpoint_voxels_features.fp16.tensor").exists(),
                    reason="../shared/data/centerpoint_voxels_features.fp16.tensor (NVIDIA's file) is absent")
@pytest.mark.parametrize("name", ["centerpoint_voxels_features.fp16.tensor",
                                  "centerpoint_voxels_indices_zyx.int32.tensor"])
def test_rewriting_nvidias_files_gives_the_same_bytes(tmp_path, name):
    original = SHARED / name
    rewritten = write_tensor(tmp_path / name, read_tensor(original))
    assert rewritten.read_bytes() == original.read_bytes()

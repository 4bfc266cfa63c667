"""libspconv's tensor files: what its C++ demo reads as input voxels and compares its output against.

Layout (3DSparseConvolution `tensor.hpp` / `tool/*/tensor.py`): a little-endian int32 header
`magic=0x33ff1101, ndim, dtype code, dims[ndim]`, then the raw little-endian array in C order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from surgeon.errors import SurgeonError
from surgeon.modelio import write_bytes_atomic

MAGIC = 0x33FF1101
DTYPE_CODES = {
    np.dtype("int32"): 1, np.dtype("float16"): 2, np.dtype("float32"): 3, np.dtype("int64"): 4,
    np.dtype("uint64"): 5, np.dtype("uint32"): 6, np.dtype("int8"): 7, np.dtype("uint8"): 8,
}
DTYPES_BY_CODE = {code: dtype for dtype, code in DTYPE_CODES.items()}


def write_tensor(path, array) -> Path:
    """Write `array` (NumPy or torch) as a libspconv tensor file; return the path."""
    array = _as_numpy(array)
    code = DTYPE_CODES.get(array.dtype)
    if code is None:
        raise SurgeonError(f"libspconv tensor files cannot hold dtype {array.dtype} "
                           f"(supported: {', '.join(d.name for d in DTYPE_CODES)})", file=path)
    header = np.array([MAGIC, array.ndim, code, *array.shape], dtype="<i4")
    body = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return write_bytes_atomic(path, header.tobytes() + body.tobytes())


def read_tensor(path) -> np.ndarray:
    """Read a libspconv tensor file; a wrong magic, dtype code or size raises SurgeonError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SurgeonError(f"cannot read tensor file: {exc.strerror or exc}", file=path) from None
    if len(data) < 12:
        raise SurgeonError(f"not a libspconv tensor file: {len(data)} bytes, shorter than the header", file=path)
    magic, ndim, code = np.frombuffer(data, dtype="<i4", count=3)
    if magic != MAGIC:
        raise SurgeonError(f"not a libspconv tensor file: magic {int(magic) & 0xFFFFFFFF:#x}, expected {MAGIC:#x}",
                           file=path)
    if code not in DTYPES_BY_CODE:
        raise SurgeonError(f"unknown dtype code {int(code)} (known: {sorted(DTYPES_BY_CODE)})", file=path)
    if not 0 <= ndim <= 16 or len(data) < 12 + 4 * ndim:
        raise SurgeonError(f"corrupt tensor header: ndim {int(ndim)}", file=path)
    dims = tuple(int(d) for d in np.frombuffer(data, dtype="<i4", count=ndim, offset=12))
    if any(d < 0 for d in dims):
        raise SurgeonError(f"corrupt tensor header: negative dimension in {dims}", file=path)
    dtype = DTYPES_BY_CODE[int(code)].newbyteorder("<")
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = data[12 + 4 * ndim:]
    if len(body) != expected:
        raise SurgeonError(f"tensor file holds {len(body)} data bytes, header {dims} {dtype.name} needs {expected}",
                           file=path)
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)

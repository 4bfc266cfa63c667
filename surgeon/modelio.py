"""Reading and writing models: clear errors for bad files, atomic writes, external data over 2 GB."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from surgeon.errors import ModelError

TWO_GB = 2**31 - 1


def load_model(path, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (its external data too); a missing or malformed file raises ModelError."""
    path = Path(path)
    if not path.exists():
        raise ModelError("model file not found", file=path)
    if path.is_dir():
        raise ModelError("expected an .onnx file, got a folder", file=path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise ModelError(f"not a valid ONNX model ({type(exc).__name__}: {exc})", file=path) from None
    except OSError as exc:
        raise ModelError(f"cannot read model: {exc.strerror or exc}", file=path) from None
    if not model.HasField("graph") or not model.opset_import:
        raise ModelError("not a valid ONNX model (no graph or no opset import)", file=path)
    if load_external_data and _has_external_data(model):
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the model's external data: {exc}", file=path) from None
    return model


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def serialize_model(model: onnx.ModelProto) -> bytes | None:
    """The model's bytes, or None for a model over protobuf's 2 GB limit (saved with external data)."""
    try:
        data = model.SerializeToString()
    except ValueError:  # protobuf refuses messages over 2 GB
        if model.ByteSize() > TWO_GB:
            return None
        raise
    return None if len(data) > TWO_GB else data


def save_model_atomic(model: onnx.ModelProto, path, external_data: bool | None = None,
                      serialized: bytes | None = None) -> list[Path]:
    """Write `model` to `path` through a temporary file beside it, then rename; return the files written.

    Models over 2 GB (protobuf's limit) are written with external data in `<name>.data`. `serialized`:
    the model's bytes from `serialize_model`, when the caller has them already (the checker read them).
    """
    path = Path(path)
    if serialized is not None and not external_data and not _has_external_data(model):
        # What onnx.save_model writes for such a model, without its walk over every tensor for
        # external data (a third of a save on 20,000 nodes).
        return [write_bytes_atomic(path, serialized)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model.ByteSize() > TWO_GB
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        tmp_model = Path(tmp) / path.name
        if external_data:
            data_name = f"{path.name}.data"
            onnx.save_model(model, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            os.replace(Path(tmp) / data_name, path.parent / data_name)
            os.replace(tmp_model, path)
            return [path, path.parent / data_name]
        onnx.save_model(model, str(tmp_model))
        os.replace(tmp_model, path)
    return [path]


def write_text_atomic(path, text: str) -> Path:
    """Write a text file through a temporary file beside it."""
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write a file through a temporary file beside it, then rename: readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode of a new file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

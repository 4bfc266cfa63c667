"""Reading and writing models: clear errors for bad files, atomic writes, external data over 2 GB, and the
guard every command runs on its output paths before any work (`guard_outputs`)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError

from surgeon.errors import ModelError, SurgeonError, first_line
from surgeon.graphinfo import tensor_bytes

TWO_GB = 2**31 - 1


def load_model(path, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (its external data too); a missing or malformed file raises ModelError."""
    return read_model(path, load_external_data)[0]


def read_model(path, load_external_data: bool = True) -> tuple[onnx.ModelProto, list[Path]]:
    """`load_model`, and the files the model is made of: its path, then its external-data files.

    Models are read as binary protobuf whatever the extension: onnx would pick its JSON or text formats
    from `.json`, `.textproto` or `.onnxtxt`, which surgeon neither reads nor writes. External data must be
    regular files inside the model's folder (as `surgeon check` SG012 and onnx.checker require).
    """
    path = Path(path)
    if not path.exists():
        raise ModelError("model file not found", file=path)
    if path.is_dir():
        raise ModelError("expected an .onnx file, got a folder", file=path)
    try:
        model = onnx.load(str(path), format="protobuf", load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        _refuse_text_format(path)
        raise ModelError(f"not a valid ONNX model ({type(exc).__name__}: {exc})", file=path) from None
    except OSError as exc:
        raise ModelError(f"cannot read model: {exc.strerror or exc}", file=path) from None
    if not model.HasField("graph") or not model.opset_import:
        _refuse_text_format(path)
        raise ModelError("not a valid ONNX model (no graph or no opset import)", file=path)
    data_files = _external_data_files(model, path, check=load_external_data)
    if load_external_data and data_files:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelError(f"cannot read the model's external data: {first_line(exc)}", file=path) from None
    return model, [path, *data_files]


#: onnx's text formats, which it picks from these extensions (surgeon reads binary protobuf only).
_TEXT_FORMATS = {".json": "JSON", ".textproto": "textproto", ".pbtxt": "textproto", ".prototxt": "textproto",
                 ".txtpb": "textproto", ".onnxtxt": "onnxtxt"}


def _refuse_text_format(path: Path) -> None:
    kind = _TEXT_FORMATS.get(path.suffix.lower())
    if kind is not None:
        raise ModelError(f"not a binary ONNX model: surgeon reads binary protobuf models only, not onnx's {kind} "
                         "text format", file=path,
                         hint=f"convert it with onnx.save(onnx.load('{path.name}'), '{path.stem}.onnx')")


def _external_data_files(model: onnx.ModelProto, path: Path, check: bool = True) -> list[Path]:
    """The external-data files of `model` (read from `path`); `check`: each must be a regular file inside the
    model's folder (else ModelError, in the words of `surgeon check` SG012, which reports them without it)."""
    if not _has_external_data(model):
        # Attribute tensors (Constant values) are walked only beside external initializers, as onnx's
        # converter writes them: a walk over every node's attributes costs 0.1 s on 20,000 nodes.
        return []
    folder = path.resolve().parent
    files: dict[Path, None] = {}
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not check:
            files[Path(os.path.normpath(path.parent / location))] = None
            continue
        if not location:
            raise ModelError(f"tensor '{tensor.name}' is marked external but names no data file", file=path)
        resolved = Path(os.path.normpath(folder / location))
        if Path(location).is_absolute() or not resolved.is_relative_to(folder):
            raise ModelError(f"initializer '{tensor.name}' reads external data from '{location}', outside "
                             f"{folder.name}/; keep data files beside the model", file=path)
        data_file = path.parent / location
        if not data_file.is_file():
            why = "which does not exist" if not data_file.exists() else "which is not a regular file"
            raise ModelError(f"cannot read the model's external data: initializer '{tensor.name}' is stored in "
                             f"'{location}', {why}", file=path)
        files[Path(os.path.normpath(data_file))] = None
    return list(files)


def _all_tensors(graph: onnx.GraphProto):
    """The initializers and attribute tensors of `graph` and its subgraphs (where onnx keeps external data)."""
    yield from graph.initializer
    yield from _tensors_below_the_top(graph)


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def over_two_gb(model: onnx.ModelProto) -> bool:
    """Whether the model is over protobuf's 2 GB limit (so it can only be saved with external data).

    The weights it holds decide without protobuf where they alone are past the limit: the upb backend
    sizes a message by serializing it (17 s and 4 GB more for a 2.25 GB model), then refuses."""
    if _held_tensor_bytes(model) > TWO_GB:
        return True
    try:
        return model.ByteSize() > TWO_GB
    except EncodeError:  # the upb backend refuses even to size a message past the limit
        return True


def _held_tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_bytes(t) for t in _all_tensors(model.graph) if t.data_location != onnx.TensorProto.EXTERNAL)


def serialize_model(model: onnx.ModelProto) -> bytes | None:
    """The model's bytes, or None for a model over protobuf's 2 GB limit (saved with external data).

    Serialized once: asking protobuf for the size first would serialize it twice under upb."""
    if _held_tensor_bytes(model) > TWO_GB:  # a serialization past the limit allocates it all, then fails
        return None
    try:
        data = model.SerializeToString()
    except (ValueError, EncodeError):  # protobuf refuses messages over 2 GB (EncodeError: upb backend)
        if over_two_gb(model):
            return None
        raise
    return None if len(data) > TWO_GB else data


def save_model_atomic(model: onnx.ModelProto, path, external_data: bool | None = None,
                      serialized: bytes | None = None, check=None) -> list[Path]:
    """Write `model` to `path` through a temporary file beside it, then rename; return the files written.

    Models over 2 GB (protobuf's limit) are written with external data in `<name>.data`; `model` is left
    as it was. `serialized`: the model's bytes from `serialize_model`, when the caller has them already
    (the checker read them). `check(path)`: called on the written temporary file before the rename (how
    onnx.checker reads a model over 2 GB); if it raises, nothing is written.
    """
    path = Path(path)
    if serialized is not None and not external_data and not _has_external_data(model):
        # What onnx.save_model writes for such a model, without its walk over every tensor for
        # external data (a third of a save on 20,000 nodes).
        return [write_bytes_atomic(path, serialized)]
    if external_data is None:
        external_data = over_two_gb(model)
    _last_guard(path, *([path.with_name(f"{path.name}.data")] if external_data else []))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        tmp_model = Path(tmp) / path.name
        if external_data:
            data_name = f"{path.name}.data"
            write_with_external_data(model, tmp_model, data_name)
            if check is not None:
                check(tmp_model)
            os.replace(Path(tmp) / data_name, path.parent / data_name)
            os.replace(tmp_model, path)
            return [path, path.parent / data_name]
        onnx.save_model(model, str(tmp_model), format="protobuf")  # whatever the extension, as when serialized
        if check is not None:
            check(tmp_model)
        os.replace(tmp_model, path)
    return [path]


def write_with_external_data(model: onnx.ModelProto, path: Path, data_name: str, size_threshold: int = 1024,
                             ir_version: int | None = None) -> None:
    """Write `model` to `path`, the raw data of its tensors of `size_threshold` bytes or more in the file
    `data_name` beside it, without changing `model`.

    Not `onnx.save_model(save_as_external_data=True)` where it can be helped: that moves the data out of
    the model, and reading it back for the caller (validation reads the in-memory result) leaves the
    model's memory (a upb arena) holding both copies. Here each top-level initializer's bytes are
    written as they are and the model file gets a header copy without them. Large tensors inside If/Loop
    bodies or node attributes, rare, go through onnx's saver after all. `ir_version`: the one the file
    declares, if not the model's.
    """
    if any(_large(t, size_threshold) for t in _tensors_below_the_top(model.graph)):
        declared = model.ir_version
        model.ir_version = ir_version or declared
        try:
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=size_threshold)
        finally:
            model.ir_version = declared
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        return
    header = model_header(model)
    if ir_version is not None:
        header.ir_version = ir_version
    with open(path.parent / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            if not _large(tensor, size_threshold):
                header.graph.initializer.append(tensor)  # external already, typed fields, or small
                continue
            moved = header.graph.initializer.add()
            _copy_fields(tensor, moved, skip=("raw_data", "data_location", "external_data"))
            moved.data_location = onnx.TensorProto.EXTERNAL
            raw = tensor.raw_data
            for key, value in (("location", data_name), ("offset", str(data.tell())), ("length", str(len(raw)))):
                moved.external_data.add(key=key, value=value)
            data.write(raw)
    path.write_bytes(header.SerializeToString())


def model_header(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without the graph's initializers: all but its weights, in a few kilobytes."""
    header = onnx.ModelProto()
    _copy_fields(model, header, skip=("graph",))
    _copy_fields(model.graph, header.graph, skip=("initializer",))
    return header


def take_header(model: onnx.ModelProto, header: onnx.ModelProto) -> None:
    """Make `model`, in place, `header` (from `model_header`) with `model`'s own initializers: how a tool
    that works on the header reaches a model past 2 GB without a second copy of its weights."""
    for field, _ in model.ListFields():
        if field.name != "graph":
            model.ClearField(field.name)
    for field, _ in model.graph.ListFields():
        if field.name != "initializer":
            model.graph.ClearField(field.name)
    _copy_fields(header, model, skip=("graph",))
    _copy_fields(header.graph, model.graph, skip=("initializer",))


def _large(tensor: onnx.TensorProto, size_threshold: int) -> bool:
    return tensor.HasField("raw_data") and tensor_bytes(tensor) >= size_threshold


def _tensors_below_the_top(graph: onnx.GraphProto):
    """The tensors of node attributes and of If/Loop bodies (not the graph's own initializers)."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for body in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _all_tensors(body)


def _copy_fields(source, target, skip: tuple[str, ...]) -> None:
    """Every set field of protobuf message `source` but those in `skip` into `target` (same type)."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        current = getattr(target, field.name)
        if hasattr(current, "extend"):  # a repeated field
            current.extend(value)
        elif hasattr(current, "CopyFrom"):  # a message
            current.CopyFrom(value)
        else:
            setattr(target, field.name, value)


def write_text_atomic(path, text: str) -> Path:
    """Write a text file through a temporary file beside it."""
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write a file through a temporary file beside it, then rename: readers never see half of it."""
    path = Path(path)
    _last_guard(path)
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


def _last_guard(*paths: Path) -> None:
    """The rename would replace a device or fail on a folder: refuse here too, for writers that ran no guard."""
    guard_outputs([(path, "this output", None) for path in paths])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def guard_outputs(outputs, inputs=(), models=(), discard: str | None = None) -> None:
    """Refuse, before any work starts, an output path that would destroy something or cannot be written.

    Every write goes through a temporary file renamed over the path, which replaces whatever the path
    names. `outputs`: (path, what, option) for every file a command will write, sidecars and reports
    included; `what` names the file in messages ("the run report"), `option` is how to choose another
    path ("-o"). `inputs`: (path, what) for every file the command reads (recipes, data files, a model
    already read with its data files by `read_model`); `models`: (path, what) of models not read yet,
    whose external-data files count too (read, without the data, only when some output exists).
    Raises SurgeonError (exit 2) naming the path when an output
    - names a folder (an existing one, or written with a trailing slash) or lies below a file;
    - exists and is not a regular file (a device such as /dev/null, a pipe, a socket): `discard` says
      how to drop the result instead;
    - is one of the inputs, under any spelling or link, or another of the outputs.
    """
    planned = []
    written: dict[str, tuple[str, str]] = {}
    for path, what, option in outputs:
        raw = os.fspath(path)
        hint = f"choose another {option}" if option else None
        if not raw or raw.endswith(("/", os.sep)) or (os.altsep and raw.endswith(os.altsep)):
            raise SurgeonError(f"names a folder; {what} needs a file name", file=raw or "''", hint=hint)
        path = Path(raw)
        _check_folder(path, what, hint)
        try:
            status = os.stat(path)
        except OSError:  # not there (or a dangling link, which the rename replaces): nothing to lose
            status = None
        if status is not None and stat.S_ISDIR(status.st_mode):
            raise SurgeonError(f"is a folder; cannot write {what} there", file=path, hint=hint)
        if status is not None and not stat.S_ISREG(status.st_mode):
            raise SurgeonError(f"is {_kind(status.st_mode)}, not a regular file: refusing to replace it with {what}",
                               file=path, hint=discard or hint)
        key = os.path.realpath(path)
        if key in written:
            other, other_option = written[key]
            raise SurgeonError(f"{other} and {what} would both be written to {path}",
                               hint=f"choose another {other_option}" if other_option else hint)
        written[key] = (what, option)
        planned.append((path, what, hint, (key, (status.st_dev, status.st_ino) if status is not None else None)))
    sources = [(p, what) for p, what in inputs if p is not None]
    existing = any(identity[1] is not None for *_, identity in planned)
    for model, what in models:  # data files are read from the model: only worth it when an output exists
        if model is not None:
            sources += model_inputs(model_files(model) if existing else [Path(model)], what)
    sources = [(Path(p), what, _identity(p)) for p, what in sources]
    for path, what, hint, identity in planned:
        for source, source_what, source_identity in sources:
            if _same(identity, source_identity):
                shown = "" if os.path.normpath(path) == os.path.normpath(source) else f" {path}"
                raise SurgeonError(f"refusing to overwrite {source_what} {source} with {what}{shown}", hint=hint)


def _check_folder(path: Path, what: str, hint: str | None) -> None:
    """The nearest existing folder above `path` must be a folder (not a file) that this user can write to."""
    for folder in path.parents:
        try:
            status = os.stat(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue  # created on writing (or a file further up, found on the next round)
        except OSError:
            return  # unreadable: let the write report it
        if not stat.S_ISDIR(status.st_mode):
            raise SurgeonError(f"cannot write {what} there: {folder} is a file, not a folder", file=path, hint=hint)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SurgeonError(f"cannot write {what} there: folder {folder} is not writable", file=path, hint=hint)
        return


def _identity(path):
    path = Path(path)
    try:
        status = os.stat(path)
    except OSError:
        return os.path.realpath(path), None
    return os.path.realpath(path), (status.st_dev, status.st_ino)


def _same(a, b) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def model_files(path) -> list[Path]:
    """A model's files (itself, then its external data) without loading the data; just `path` if unreadable."""
    try:
        return read_model(path, load_external_data=False)[1]
    except ModelError:
        return [Path(path)]


def model_inputs(files, what: str = "the input model") -> list[tuple[Path, str]]:
    """`guard_outputs` inputs for a model's files as `read_model` lists them: the model, then its data files."""
    if not files:
        return []
    model, *data = files
    return [(model, what)] + [(f, f"{what}'s external data") for f in data]


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def stdout_to_stderr():
    """Send what native code prints on file descriptor 1 to 2 while the block runs: onnx.checker's C++
    prints "Warning: Model contains experimental ops: ..." on stdout, which would corrupt a JSON or
    SARIF report printed there (`surgeon check --format json`, `surgeon run --json`)."""
    import sys

    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no usable fd 1 (closed, or replaced by an object without one)
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        _flush_native_stdout()
        os.dup2(saved, 1)
        os.close(saved)


def _flush_native_stdout() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass

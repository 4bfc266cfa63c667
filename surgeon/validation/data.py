"""Validation inputs: recorded feeds (.npz, Polygraphy JSON, or named libspconv tensor files) or seeded
random ones, the values Polygraphy's DataLoader draws.

Random inputs honour per-input shapes, dtypes and value ranges, given in a recipe as

    validate:
      inputs:
        img: {shape: [1, 6, 3, 224, 224], range: [-2.5, 2.5]}
        grid: {range: [-1.2, 1.2]}          # beyond [-1, 1] exercises the padding mode
        mask: {dtype: bool}

or on the command line as `--input-shape img:1x6x3x224x224 --input-range grid:-1.2,1.2`. Random sets
are drawn when a model runs on them (`RandomFeeds`), the same set from the same seed every time, so
every model of a comparison (and every bisection step) sees the same data while one set at a time
is held.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from surgeon.errors import SurgeonError, suggest
from surgeon.export.tensor_file import MAGIC, read_tensor
from surgeon.validation.polygraphy_log import G_LOGGER
from surgeon.graphinfo import declared_dims
from surgeon.modelio import is_git_lfs_pointer
from surgeon.validation.runners import declared_dtype, graph_inputs
from surgeon.validation.settings import MAX_SEED, check_dtype_name, check_validate_value

Feeds = Sequence[dict[str, np.ndarray]]  # a list of recorded sets, or `RandomFeeds`
#: dtype kinds recorded arrays may have: booleans, integers, floats, complex numbers.
ARRAY_KINDS = "biufc"


@dataclass(frozen=True)
class NamedTensorFiles:
    """Recorded arrays one per libspconv tensor file (what `surgeon export spconv --save-tensors` and
    libspconv's demo write: one array, no name), named on the command line as NAME=FILE."""

    files: tuple[tuple[str, Path], ...]

    def __str__(self) -> str:
        return ", ".join(f"{name}={path}" for name, path in self.files)

    def file_of(self, name: str) -> Path | None:
        return next((path for given, path in self.files if given == name), None)


def parse_array_files(values: list[str] | None, option: str) -> str | NamedTensorFiles | None:
    """An option's values as `load_arrays` reads them: one .npz or Polygraphy JSON file, or NAME=FILE for
    each array, FILE a libspconv tensor file. A path that exists is a path, even with '=' in it."""
    if not values:
        return None
    named, plain = [], []
    for text in values:
        name, _, file = text.partition("=")
        if name and file and not Path(text).exists():
            named.append((name, Path(file)))
        else:
            plain.append(text)
    if plain and (named or len(plain) > 1):
        raise SurgeonError(f"{option} takes one .npz or Polygraphy JSON file, or NAME=FILE for each array of a "
                           f"libspconv tensor file; got {' and '.join(values)}")
    if plain:
        return plain[0]
    names = [name for name, _ in named]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        raise SurgeonError(f"{option} names '{repeated}' twice")
    for name, file in named:
        if file.suffix in (".npz", ".json"):
            raise SurgeonError(f"{option} {name}={file}: an .npz or JSON file names its own arrays: give it alone, "
                               f"{option} {file}")
    return NamedTensorFiles(tuple(named))


def array_files(source: str | Path | NamedTensorFiles | None) -> list:
    """The files recorded arrays are read from."""
    if isinstance(source, NamedTensorFiles):
        return [path for _, path in source.files]
    return [] if source is None else [source]


def load_arrays(path: str | Path | NamedTensorFiles, what: str = "inputs") -> Feeds:
    """Recorded arrays: an .npz (one set), Polygraphy JSON (a list of dicts, or one dict), or named libspconv
    tensor files (one set).

    Anything that cannot be read, or holds arrays that are not numbers or booleans, is a SurgeonError
    naming the file."""
    if isinstance(path, NamedTensorFiles):
        for _, file in path.files:
            _check_is_file(file, what)
        return [{name: read_tensor(file) for name, file in path.files}]
    path = Path(path)
    _check_is_file(path, what)
    if path.suffix == ".npz":
        _check_npz(path, what)
        try:
            with np.load(path, allow_pickle=False) as data:
                feeds = [{name: data[name] for name in data.files}]
        except Exception as exc:  # zipfile, zlib, NumPy's format errors: all mean a damaged or foreign file
            if "pickle" in str(exc):
                raise SurgeonError(f"{what} .npz holds Python objects (pickled), which are not loaded: save "
                                   "numeric arrays", file=path) from None
            raise SurgeonError(f"cannot read {what} .npz: {type(exc).__name__}: {exc}", file=path) from None
    elif path.suffix == ".json":
        from polygraphy.json import load_json

        try:
            with G_LOGGER.verbosity(G_LOGGER.ERROR):  # no "Loading inputs from ..." line
                loaded = load_json(str(path), description=what)
        except Exception as exc:  # polygraphy raises its own PolygraphyException
            raise SurgeonError(f"cannot read {what} JSON: {exc}", file=path) from None
        feeds = [loaded] if isinstance(loaded, dict) else list(loaded) if isinstance(loaded, list) else [None]
        if not all(isinstance(f, dict) for f in feeds):
            raise SurgeonError(f"{what} JSON must hold a list of {{name: array}} mappings", file=path)
        try:
            feeds = [{k: np.asarray(v) for k, v in f.items()} for f in feeds]
        except (TypeError, ValueError) as exc:
            raise SurgeonError(f"{what} JSON holds a value that is not an array: {exc}", file=path) from None
    elif path.suffix == ".tensor" or _starts_with_tensor_magic(path):
        raise SurgeonError(f"{what} file is a libspconv tensor file, one array without a name: surgeon compare "
                           "reads it named, --data NAME=FILE or --expected NAME=FILE (once per array); elsewhere "
                           "save the arrays in an .npz", file=path)
    else:
        raise SurgeonError(f"{what} must be an .npz or a Polygraphy .json file", file=path)
    if not feeds or not any(feeds[0]):
        raise SurgeonError(f"{what} file holds no arrays", file=path)
    for i, feed in enumerate(feeds, start=1):
        for name, array in feed.items():
            if array.dtype.kind not in ARRAY_KINDS:
                where = f"set {i}: " if len(feeds) > 1 else ""
                raise SurgeonError(f"{where}{name} holds {array.dtype} data; {what} must be numbers or booleans",
                                   file=path)
    return feeds


def _check_is_file(path: Path, what: str) -> None:
    if not path.exists():
        raise SurgeonError(f"{what} file not found", file=path)
    if path.is_dir():
        raise SurgeonError(f"expected an {what} file, got a folder", file=path)


def _starts_with_tensor_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return False
    return len(head) == 4 and int.from_bytes(head, "little") == MAGIC


def _check_npz(path: Path, what: str) -> None:
    """Refuse a file named .npz that is not a zip archive, saying what it is: np.load would read a Git
    LFS pointer as a pickle and return a bare array for an .npy."""
    import zipfile

    if zipfile.is_zipfile(path):
        return
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        raise SurgeonError(f"cannot read {what} file: {exc.strerror or exc}", file=path) from None
    if is_git_lfs_pointer(head):
        why = "is a Git LFS pointer, not the arrays: fetch the file (git lfs pull)"
    elif head.startswith(b"\x93NUMPY"):
        why = "is a single .npy array, not an .npz archive: save it with np.savez(path, name=array)"
    else:
        why = "is not an .npz (a zip archive of .npy arrays): damaged, cut short, or another format"
    raise SurgeonError(f"{what} file {why}", file=path)


def make_feeds(model: onnx.ModelProto, data: str | NamedTensorFiles | None = None, inputs: dict | None = None,
               iterations: int = 1, seed: int = 0, model_name: str | None = None) -> Feeds:
    """The input sets to run: recorded `data` when given, else seeded random ones shaped by `inputs`.

    Recorded data must be what `model` (called `model_name` in errors) takes: every input, by name,
    with its dtype (a float16 tensor file may feed a wider float input) and a shape its static
    dimensions allow."""
    if data:
        feeds = load_arrays(data, "inputs")
        if isinstance(data, NamedTensorFiles):
            feeds = [_widened(feed, model) for feed in feeds]
        check_recorded(feeds, model, model_name, data)
        return feeds
    meta = {name: (dtype, dims) for name, dtype, dims in model_inputs(model)}
    specs = inputs or {}
    for key, value in (("inputs", specs), ("iterations", iterations), ("seed", seed)):
        try:
            check_validate_value(key, value)
        except ValueError as exc:
            raise SurgeonError(f"validate.{key}: {exc}") from None
    for name in specs:
        if name not in meta:
            raise SurgeonError(f"validate.inputs names '{name}', which is not an input of the model"
                               + (f" {model_name}" if model_name else ""),
                               hint=suggest(name, meta) or f"inputs: {', '.join(meta)}")
    model_name = model_name or "the model"
    resolved = []
    ranges = {}
    for name, (dtype, shape) in meta.items():
        spec = specs.get(name) or {}
        if spec.get("shape") is not None:
            if not shape_fits(spec["shape"], shape):  # only dynamic dimensions are free to choose
                raise SurgeonError(f"validate.inputs.{name}.shape / --input-shape {name}: "
                                   f"{_shape_text(spec['shape'])} does not fit input {name} of "
                                   f"{model_name}, {_shape_text(shape)}: only its dynamic "
                                   "dimensions can be chosen")
            shape = list(spec["shape"])
        if spec.get("dtype") is not None:
            dtype = np.dtype(spec["dtype"])  # a dtype random inputs can have: checked above
        if shape is None or any(d is None for d in shape):
            raise SurgeonError(f"input '{name}' of {model_name} has a dynamic or unknown shape {_shape_text(shape)}: "
                               f"give validate.inputs.{name}.shape in the recipe or --input-shape {name}:1x3x224x224")
        try:
            check_dtype_name(None if dtype is None else "string" if dtype.kind == "O" else dtype.name,
                             f"input '{name}' of {model_name}")
        except ValueError as exc:
            raise SurgeonError(f"{exc}; surgeon validates on numbers and booleans only") from None
        resolved.append((name, dtype, shape))
        if spec.get("range") is not None:
            ranges[name] = (float(spec["range"][0]), float(spec["range"][1]))
    _check_room(model, resolved, iterations, model_name, specs)
    if seed + iterations - 1 > MAX_SEED:  # NumPy's limit, and input set i is drawn with seed + i
        raise SurgeonError(f"validate.seed / --seed {seed} with validate.iterations / --iterations {iterations}: input "
                           f"set i is drawn with seed + i, which may be at most {MAX_SEED} (2**32 - 1)")
    return RandomFeeds(resolved, ranges, seed, iterations)


class RandomFeeds(Sequence):
    """Seeded random input sets drawn when asked for (set i from seed + i, by `_random_feed`), not held:
    a validation over many sets holds one at a time. The set drawn last is kept, so that one set
    (the usual case) is drawn once for both models and the report."""

    def __init__(self, inputs: list[tuple[str, np.dtype, list[int]]], ranges: dict, seed: int, count: int):
        self._inputs, self._ranges, self._seed, self._count = inputs, ranges, seed, count
        self._last: tuple[int, dict] | None = None

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = range(self._count)[index]
        if self._last is None or self._last[0] != index:
            self._last = None  # let the set drawn before go first: one set at a time
            self._last = (index, _random_feed(self._inputs, self._ranges, self._seed + index))
        return self._last[1]

    def layout(self) -> dict[str, np.ndarray]:
        """Every set's names, dtypes and shapes (they are alike), as arrays taking no memory."""
        return {name: np.broadcast_to(np.zeros((), dtype), shape) for name, dtype, shape in self._inputs}


def feed_layouts(feeds: Feeds) -> Sequence[dict[str, np.ndarray]]:
    """The input sets to check names, dtypes and shapes on, drawing nothing: every recorded set, or one
    standing for all random sets."""
    return [feeds.layout()] if isinstance(feeds, RandomFeeds) else feeds


#: Bytes a validation holds per output element, beyond one input set: both models' outputs, and the
#: float64 errors judging them makes (absolute and relative, and the float64 copies cosine similarity
#: takes). Measured when every set was held: 27 MB per set for 4.2 MB of inputs and 337,152 float32
#: output elements (CenterPoint's PFE), the estimate 28.5 MB; judged an output at a time, one set
#: holds less.
HELD_BYTES_PER_OUTPUT_ELEMENT = 64
#: Python objects for an input set (the feeds, both runners' results, error arrays), whatever their size.
HELD_BYTES_PER_SET = 4096
#: Bytes kept per output element and input set when there is more than one set, on disk past
#: `spill.MEMORY_BUDGET` (not deducted: the estimate is for the worst case): the float64
#: absolute and relative errors and the two float64 copies cosine similarity takes (`spill.Column`),
#: besides the outputs themselves of up to three models (original, rewritten, a bisected step).
SPILLED_BYTES_PER_OUTPUT_ELEMENT = 32
#: Random floats are drawn this many at a time (as float64, 8 MiB) and cast into their input's dtype.
DRAW_CHUNK = 1 << 20


def _random_feed(inputs: list[tuple[str, np.dtype, list[int]]], ranges: dict, seed: int) -> dict[str, np.ndarray]:
    """One input set, equal to the one Polygraphy's DataLoader makes with `seed` (reports made before stay
    the same): one RandomState for the set, drawn from input by input. Floats go straight into their
    dtype a chunk at a time: the DataLoader draws a whole input as float64 first, 8 bytes per element
    (12.5 TiB for a float32 input of 1.7e12 elements)."""
    rng = np.random.RandomState(seed)
    feed = {}
    for name, dtype, shape in inputs:
        low, high = ranges.get(name, (0.0, 1.0))
        if dtype.kind in "iu" and shape == [1]:
            feed[name] = np.array(shape, dtype)  # the DataLoader takes this for a shape tensor: its value is [1]
        elif dtype.kind in "iu":
            feed[name] = rng.randint(int(low), int(high) + 1, size=shape, dtype=dtype)
        elif dtype.kind == "b":
            feed[name] = rng.randint(bool(low), bool(high) + 1, size=shape, dtype=dtype)
        else:
            feed[name] = array = np.empty(shape, dtype)
            flat = array.reshape(-1)
            for start in range(0, flat.size, DRAW_CHUNK):
                stop = min(start + DRAW_CHUNK, flat.size)
                flat[start:stop] = rng.random_sample(stop - start) * (high - low) + low
    return feed


def _check_room(model: onnx.ModelProto, inputs: list, iterations: int, model_name: str, specs: dict) -> None:
    """Refuse random inputs the validation could not hold: one input set at a time, with both models'
    outputs and their errors, in memory; with more than one set, what is kept of every set (`spill.py`)
    on the disk of the temp directory. Estimated from the inputs and the model's declared outputs (a
    dynamic dimension counted as 1, so outputs that grow with their data can need more), against the
    machine's memory and that disk's free space."""
    memory = physical_memory()
    sizes = {name: math.prod(shape) * dtype.itemsize for name, dtype, shape in inputs}
    largest = max(sizes, key=sizes.get, default=None)
    if largest is not None and sizes[largest] > memory:
        dtype, shape = next((d, s) for n, d, s in inputs if n == largest)
        chosen = (specs.get(largest) or {}).get("shape") is not None
        raise SurgeonError(f"random data for input '{largest}' of {model_name}, {dtype} {_shape_text(shape)}, would "
                           f"take {_size_text(sizes[largest])}, more than this machine's {_size_text(memory)} of "
                           "memory: give recorded inputs (validate.data / --data)"
                           + (f" or a smaller validate.inputs.{largest}.shape / --input-shape" if chosen else ""))
    held, spilled = sum(sizes.values()) + HELD_BYTES_PER_SET, 0
    for value in model.graph.output:
        dtype, dims = declared_dtype(value), declared_dims(value)
        if dtype is not None and dims is not None:
            elements = math.prod(d or 1 for d in dims)
            held += elements * (2 * dtype.itemsize + HELD_BYTES_PER_OUTPUT_ELEMENT)
            spilled += elements * (3 * dtype.itemsize + SPILLED_BYTES_PER_OUTPUT_ELEMENT)
    if held > memory:
        raise SurgeonError(f"random inputs for {model_name}: one input set, held with both models' outputs and their "
                           f"errors, would take about {_size_text(held)}, more than this machine's "
                           f"{_size_text(memory)} of memory: give smaller dynamic dimensions (validate.inputs / "
                           "--input-shape) where the model has them")
    folder = tempfile.gettempdir()
    free = free_disk(folder)
    total = spilled * iterations
    if iterations > 1 and total > free:
        raise SurgeonError(f"validate.iterations / --iterations {iterations}: every input set's outputs and errors "
                           f"are kept on disk, about {_size_text(spilled)} each here, {_size_text(total)} "
                           f"in all, more than the {_size_text(free)} free in the temp directory {folder}; at most "
                           f"{max(1, free // max(spilled, 1))} fit (or set TMPDIR to a folder with more room)")


def physical_memory() -> int:
    """The machine's memory in bytes (os.sysconf: Linux and macOS)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def free_disk(folder: str) -> int:
    """Bytes free to this user on the disk of `folder`."""
    return shutil.disk_usage(folder).free


def _size_text(size: int) -> str:
    for unit, power in (("GiB", 30), ("MiB", 20)):
        if size >= 2**power:
            return f"{size / 2**power:,.1f} {unit}"
    return f"{size / 2**10:.1f} KiB"


@contextlib.contextmanager
def out_of_memory_named(iterations: int):
    """A MemoryError while validating as a SurgeonError saying what sets its size: one input set, not
    their number (they are held one at a time)."""
    try:
        yield
    except MemoryError:
        raise SurgeonError(f"out of memory validating on {iterations} input set(s), one at a time: validate on "
                           "smaller inputs") from None


def _widened(feed: dict[str, np.ndarray], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """`feed` with float arrays cast to the wider float type of the model's input of their name: libspconv's
    tensor files hold voxel features as float16 (its demo's format), which a float32 input takes exactly."""
    dtypes = {name: dtype for name, dtype, _ in model_inputs(model)}
    return {name: array.astype(dtypes[name]) if _exact_float_widening(array.dtype, dtypes.get(name)) else array
            for name, array in feed.items()}


def _exact_float_widening(given: np.dtype, wanted: np.dtype | None) -> bool:
    return wanted is not None and given.kind == wanted.kind == "f" and wanted.itemsize > given.itemsize


def feeds_for(model: onnx.ModelProto, config: dict, model_name: str | None = None) -> tuple[Feeds, str]:
    """The feeds a validate section (or the same keys from the command line) asks for, and their
    description for reports. Expected outputs need the recorded inputs they were computed from."""
    data, seed = config.get("data"), config.get("seed") or 0
    if config.get("expected") and not data:
        raise SurgeonError("expected outputs can only be compared on the inputs they came from: "
                           "give them as validate.data / --data")
    feeds = make_feeds(model, data, config.get("inputs"), config.get("iterations") or 1, seed, model_name)
    return feeds, str(data) if data else f"a seeded random loader (seed {seed})"


def model_inputs(model: onnx.ModelProto) -> list[tuple[str, np.dtype | None, list | None]]:
    """(name, dtype or None when untyped, dims with None for dynamic ones, or None for an unknown rank)."""
    return [(value.name, declared_dtype(value), declared_dims(value)) for value in graph_inputs(model)]


def check_recorded(feeds: Feeds, model: onnx.ModelProto, model_name: str | None, path) -> None:
    """Recorded inputs must be exactly what `model` takes (they were recorded for it): each input by name,
    of its dtype, of its rank, and equal to it in every static dimension. One error names the file, the
    input set, the input and what differs."""
    inputs = model_inputs(model)
    model_name = model_name or "the model"
    for i, feed in enumerate(feeds, start=1):
        missing = [name for name, _, _ in inputs if name not in feed]
        if missing:
            raise SurgeonError(f"input set {i} lacks model input(s) {', '.join(missing)} of {model_name}", file=path,
                               hint=f"it holds {', '.join(feed) or 'nothing'}")
        for name, dtype, dims in inputs:
            array = feed[name]
            if (dtype is not None and array.dtype != dtype) or not shape_fits(array.shape, dims):
                raise SurgeonError(f"input set {i}: {name} is {_array_text(array)}, but input {name} of "
                                   f"{model_name} is {_meta_text(dtype, dims)}", file=_file_of(path, name))


def check_fits(feeds: Feeds, model: onnx.ModelProto, model_name: str, source: str, path=None) -> None:
    """Feeds made for one model (recorded in `path`, or random for the model `source`) must also fit `model`,
    the one compared with it, as Polygraphy feeds them: by name, else by position; cast to its dtypes
    (noted in the result); their shapes as they are."""
    from polygraphy.util import find_str_in_iterable

    for i, feed in enumerate(feed_layouts(feeds), start=1):
        for index, (name, dtype, dims) in enumerate(model_inputs(model)):
            matched = find_str_in_iterable(name, list(feed), index)
            if matched is None:
                where = f"input set {i} holds" if path else f"{source} takes"
                raise SurgeonError(f"{model_name} takes input {name}, which {where} no data for "
                                   f"(inputs: {', '.join(feed)})", file=path)
            array = feed[matched]
            castable = dtype is None or (array.dtype.kind in ARRAY_KINDS and dtype.kind in ARRAY_KINDS)
            if castable and shape_fits(array.shape, dims):
                continue
            given = f"{matched} is {_array_text(array)}"
            if path:
                raise SurgeonError(f"input set {i}: {given}, but input {name} of {model_name} is "
                                   f"{_meta_text(dtype, dims)}", file=_file_of(path, matched))
            raise SurgeonError(f"{source} and {model_name} take different inputs: {given} in {source}, "
                               f"{name} is {_meta_text(dtype, dims)} in {model_name}; both run on the same inputs")


def _file_of(path, name: str):
    """The file array `name` was read from: its own with named tensor files, else the one file."""
    return path.file_of(name) if isinstance(path, NamedTensorFiles) else path


def shape_fits(shape, dims) -> bool:
    """Whether an array of `shape` fits an input of `dims` (None: dynamic dimension; dims None: unknown rank)."""
    if dims is None:
        return True
    return len(shape) == len(dims) and all(d is None or d == s for s, d in zip(shape, dims))


def _array_text(array: np.ndarray) -> str:
    return f"{array.dtype} {list(array.shape)}"


def _meta_text(dtype, dims) -> str:
    return f"{dtype if dtype is not None else 'untyped'} {_shape_text(dims)}"


def _shape_text(shape) -> str:
    if shape is None:
        return "(unknown rank)"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def parse_input_options(shapes: list[str], ranges: list[str]) -> dict:
    """`--input-shape NAME:1x3x224x224` and `--input-range NAME:LO,HI` as a validate.inputs mapping."""
    specs: dict[str, dict] = {}
    for text in shapes:
        name, _, dims = text.rpartition(":")
        try:
            shape = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            shape = None
        if not name or not shape or any(d < 0 for d in shape):
            raise SurgeonError(f"--input-shape expects NAME:1x3x224x224 (dimensions >= 0), got '{text}'")
        specs.setdefault(name, {})["shape"] = shape
    for text in ranges:
        name, _, bounds = text.rpartition(":")
        try:
            low, high = (float(b) for b in bounds.split(","))
        except ValueError:
            name = ""
        if not name or not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise SurgeonError(f"--input-range expects NAME:LOW,HIGH (finite, LOW <= HIGH), got '{text}'")
        specs.setdefault(name, {})["range"] = [low, high]
    return specs

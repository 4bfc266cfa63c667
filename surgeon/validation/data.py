"""Validation inputs: recorded feeds (.npz or Polygraphy JSON) or a seeded Polygraphy DataLoader.

Random inputs honour per-input shapes, dtypes and value ranges, given in a recipe as

    validate:
      inputs:
        img: {shape: [1, 6, 3, 224, 224], range: [-2.5, 2.5]}
        grid: {range: [-1.2, 1.2]}          # beyond [-1, 1] exercises the padding mode
        mask: {dtype: bool}

or on the command line as `--input-shape img:1x6x3x224x224 --input-range grid:-1.2,1.2`. The feeds are
materialised once, so every model of a comparison (and every bisection step) sees the same data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from polygraphy.comparator import DataLoader
from polygraphy.common import TensorMetadata
from polygraphy.logger import G_LOGGER

from surgeon.errors import SurgeonError, suggest
from surgeon.validation.runners import input_metadata

Feeds = list[dict[str, np.ndarray]]
INPUT_KEYS = ("shape", "dtype", "range")


def load_arrays(path: str | Path, what: str = "inputs") -> Feeds:
    """Recorded arrays: an .npz (one set) or Polygraphy JSON (a list of dicts, or one dict)."""
    path = Path(path)
    if not path.exists():
        raise SurgeonError(f"{what} file not found", file=path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return [{name: data[name] for name in data.files}]
        except (OSError, ValueError) as exc:
            raise SurgeonError(f"cannot read {what} .npz: {exc}", file=path) from None
    if path.suffix == ".json":
        from polygraphy.json import load_json

        try:
            loaded = load_json(str(path), description=what)
        except Exception as exc:  # polygraphy raises its own PolygraphyException
            raise SurgeonError(f"cannot read {what} JSON: {exc}", file=path) from None
        feeds = [loaded] if isinstance(loaded, dict) else list(loaded)
        if not all(isinstance(f, dict) for f in feeds):
            raise SurgeonError(f"{what} JSON must hold a list of {{name: array}} mappings", file=path)
        return [{k: np.asarray(v) for k, v in f.items()} for f in feeds]
    raise SurgeonError(f"{what} must be an .npz or a Polygraphy .json file", file=path)


def make_feeds(model: onnx.ModelProto, data: str | None = None, inputs: dict | None = None, iterations: int = 1,
               seed: int = 0) -> Feeds:
    """The input sets to run: recorded `data` when given, else seeded random ones shaped by `inputs`."""
    meta = input_metadata(model)
    if data:
        feeds = load_arrays(data, "inputs")
        _check_recorded(feeds, meta, data)
        return feeds
    specs = inputs or {}
    for name in specs:
        if name not in meta:
            raise SurgeonError(f"validate.inputs names '{name}', which is not an input of the model",
                               hint=suggest(name, meta) or f"inputs: {', '.join(meta)}")
    resolved = TensorMetadata()
    ranges = {}
    for name, (dtype, shape) in meta.items():
        spec = specs.get(name) or {}
        if not isinstance(spec, dict) or any(k not in INPUT_KEYS for k in spec):
            bad = next((k for k in spec if k not in INPUT_KEYS), None) if isinstance(spec, dict) else None
            raise SurgeonError(f"validate.inputs.{name} must be a mapping with keys {', '.join(INPUT_KEYS)}"
                               + (f"; unknown key '{bad}'" if bad else ""), hint=suggest(bad, INPUT_KEYS) if bad else None)
        dtype = _dtype(spec.get("dtype"), name) or dtype
        shape = list(spec["shape"]) if spec.get("shape") is not None else shape
        if shape is None or any(d is None or not isinstance(d, int) or d < 0 for d in shape):
            raise SurgeonError(f"input '{name}' has a dynamic or unknown shape {_shape_text(shape)}: give "
                               f"validate.inputs.{name}.shape in the recipe or --input-shape {name}:1x3x224x224")
        resolved.add(name, dtype, shape)
        if spec.get("range") is not None:
            ranges[name] = _range(spec["range"], name)
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        loader = DataLoader(seed=seed, iterations=iterations, input_metadata=resolved, val_range=ranges or None)
        return [{name: np.array(value) for name, value in feed.items()} for feed in loader]


def feeds_for(model: onnx.ModelProto, config: dict) -> tuple[Feeds, str]:
    """The feeds a validate section (or the same keys from the command line) asks for, and their
    description for reports. Expected outputs need the recorded inputs they were computed from."""
    data, seed = config.get("data"), config.get("seed") or 0
    if config.get("expected") and not data:
        raise SurgeonError("expected outputs can only be compared on the inputs they came from: "
                           "give them as validate.data / --data")
    feeds = make_feeds(model, data, config.get("inputs"), config.get("iterations") or 1, seed)
    return feeds, data or f"a seeded random loader (seed {seed})"


def _check_recorded(feeds: Feeds, meta: TensorMetadata, path) -> None:
    for i, feed in enumerate(feeds, start=1):
        missing = [name for name in meta if name not in feed]
        if missing:
            raise SurgeonError(f"input set {i} lacks model input(s) {', '.join(missing)}", file=path)


def _dtype(value, name: str):
    if value is None:
        return None
    try:
        return np.dtype(value)
    except TypeError:
        raise SurgeonError(f"validate.inputs.{name}.dtype: unknown dtype {value!r}") from None


def _range(value, name: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) or value[0] > value[1]:
        raise SurgeonError(f"validate.inputs.{name}.range must be [low, high] with low <= high, got {value!r}")
    return float(value[0]), float(value[1])


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
        if not name or not shape:
            raise SurgeonError(f"--input-shape expects NAME:1x3x224x224, got '{text}'")
        specs.setdefault(name, {})["shape"] = shape
    for text in ranges:
        name, _, bounds = text.rpartition(":")
        try:
            low, high = (float(b) for b in bounds.split(","))
        except ValueError:
            name = ""
        if not name:
            raise SurgeonError(f"--input-range expects NAME:LOW,HIGH, got '{text}'")
        specs.setdefault(name, {})["range"] = [low, high]
    return specs

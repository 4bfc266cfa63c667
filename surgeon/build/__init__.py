"""TensorRT engine builds on Polygraphy's TensorRT backend: `surgeon build` and a recipe's `build:` section.

    network = LoadPlugins([libsurgeon_plugins.so, ...], NetworkFromOnnxPath(model, strongly_typed=...))
    config  = CreateConfig(fp16=..., int8=..., profiles=[Profile().add(name, min, opt, max)], calibrator=...,
                           memory_pool_limits={WORKSPACE: bytes}, builder_optimization_level=...,
                           load_timing_cache=..., profiling_verbosity=DETAILED)
    engine bytes = EngineBytesFromNetwork(network, config, save_timing_cache=...)

Beside the engine goes `<engine stem>.build.json`: every layer with its type and precision and the
plugins used (from the engine inspector), build seconds, engine size.

Without TensorRT (`import tensorrt` fails: CPU machines, CI) `build_engine` raises a SurgeonError
saying how to install it, and `build_run` (the pipeline's stage) returns `built=False` with that
reason, so a recipe's other stages still run and its report says the build was skipped.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgeon.errors import SurgeonError, suggest
from surgeon.modelio import write_bytes_atomic

INSTALL_HINT = ("install TensorRT on a machine with an NVIDIA GPU: pip install 'surgeon[trt]', or NVIDIA's wheels "
                "(pip install tensorrt --extra-index-url https://pypi.nvidia.com)")
PRECISIONS = ("fp32", "fp16", "int8", "best")
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9}


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot be used here, or None when `import tensorrt` works."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # the PyPI stub raises at import when its download failed
        return f"TensorRT is not installed (import tensorrt: {type(exc).__name__}: {exc}); {INSTALL_HINT}"
    return None


@dataclass
class BuildResult:
    """What a build did; `built` is False with `skipped_reason` when there was nothing to build with."""

    built: bool
    skipped_reason: str | None = None
    engine: Path | None = None
    report: Path | None = None
    seconds: float = 0.0
    engine_bytes: int = 0
    precision: str = "fp32"
    tensorrt_version: str | None = None
    plugin_libraries: list[str] = field(default_factory=list)
    plugins_used: list[str] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if not self.built:
            return f"TensorRT build skipped: {self.skipped_reason}"
        plugins = f", plugins {', '.join(self.plugins_used)}" if self.plugins_used else ""
        return (f"built {self.engine} ({self.engine_bytes / 2**20:.1f} MiB, {self.precision}, {len(self.layers)} "
                f"layers{plugins}) in {self.seconds:.1f}s; report {self.report}")

    def to_dict(self) -> dict[str, Any]:
        return {"built": self.built, "skipped_reason": self.skipped_reason,
                "engine": str(self.engine) if self.engine else None, "report": str(self.report) if self.report else None,
                "seconds": round(self.seconds, 3), "engine_bytes": self.engine_bytes, "precision": self.precision,
                "tensorrt_version": self.tensorrt_version, "plugin_libraries": self.plugin_libraries,
                "plugins_used": self.plugins_used, "layers": self.layers}


def build_options(section: dict[str, Any] | None = None, **overrides) -> dict[str, Any]:
    """A build section with every BUILD_FIELDS key: defaults, then `section`, then non-None `overrides`;
    checked as a recipe's is, with the workspace in bytes and the profiles as plain lists."""
    from surgeon.recipe import BUILD_FIELDS

    options = {key: param.default for key, param in BUILD_FIELDS.items()}
    options.update(section or {})
    options.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(options) - set(BUILD_FIELDS))
    if unknown:
        raise SurgeonError(f"unknown build option '{unknown[0]}'")
    for key, param in BUILD_FIELDS.items():
        try:
            options[key] = param.coerce(options[key])
            check_build_value(key, options[key])
        except ValueError as exc:
            raise SurgeonError(f"build.{key}: {exc}") from None
    check_build_combination(options)
    options["workspace"] = parse_bytes(options["workspace"])
    options["profiles"] = parse_profiles(options["profiles"])
    return options


def check_build_value(key: str, value) -> None:
    """Raise ValueError when `value` (already of the declared type) is no use to TensorRT as build.`key`."""
    check = _CHECKS.get(key)
    if check is not None and value is not None:
        check(value)


def check_build_combination(options: dict[str, Any]) -> None:
    """Raise SurgeonError for options TensorRT refuses together."""
    precision = options.get("precision") or "fp32"
    if options.get("strongly_typed") and precision != "fp32":
        # TensorRT 10 fails the build: "Parameter check failed, condition: !config.getFlag(BuilderFlag::kFP16)"
        # (NVIDIA/TensorRT#4253).
        raise SurgeonError(f"build.strongly_typed: a strongly typed network takes its precisions from the model's "
                           f"types, and TensorRT refuses precision {precision!r} with it: leave precision at fp32 "
                           "(convert the model to fp16, or give it Q/DQ nodes for int8) or drop strongly_typed")


def parse_bytes(value: int | str | None) -> int | None:
    """4096, '4GiB', '512 MiB', '1.5GB' -> bytes; ValueError for anything else, or less than one whole byte."""
    if value is None:
        return None
    size = value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]i?b|b)?\s*", value, re.IGNORECASE)
        if not match:
            raise ValueError(f"cannot read {value!r} as a size (e.g. 4096, '512MiB', '4GiB')")
        size = float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]
        if not size.is_integer():
            raise ValueError(f"{value!r} is not a whole number of bytes")
    if size < 1:
        raise ValueError(f"needs at least one byte, got {value!r}")
    return int(size)


def parse_profiles(profiles: list | None) -> list[dict[str, dict[str, list[int]]]]:
    """Check `[{input: {min: [...], opt: [...], max: [...]}}]`; raise ValueError naming the bad entry."""
    checked = []
    for index, profile in enumerate(profiles or [], start=1):
        if not isinstance(profile, dict) or not profile:
            raise ValueError(f"item {index} must map input names to {{min, opt, max}}")
        shapes = {}
        for name, bounds in profile.items():
            where = f"item {index}, input '{name}'"
            if not isinstance(bounds, dict) or sorted(bounds) != ["max", "min", "opt"]:
                raise ValueError(f"{where}: give exactly min, opt and max shapes")
            dims = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in bounds.items()}
            if not all(isinstance(v, list) and all(type(d) is int and d > 0 for d in v) for v in dims.values()):
                raise ValueError(f"{where}: shapes must be lists of positive integers")
            if not len(dims["min"]) == len(dims["opt"]) == len(dims["max"]) or any(
                    not lo <= mid <= hi for lo, mid, hi in zip(dims["min"], dims["opt"], dims["max"])):
                raise ValueError(f"{where}: needs min <= opt <= max in every dimension, same ranks")
            shapes[str(name)] = dims
        checked.append(shapes)
    return checked


def _optimization_level(level: int) -> None:
    if not 0 <= level <= 5:
        raise ValueError(f"TensorRT's builder optimization levels are 0 to 5, got {level}")


_CALIBRATION_KEYS = ("data", "cache")


def _calibration(calibration: dict) -> None:
    for key, value in calibration.items():
        if key not in _CALIBRATION_KEYS:
            hint = suggest(str(key), _CALIBRATION_KEYS)
            raise ValueError(f"unknown key '{key}': calibration takes data and cache" + (f"; {hint}" if hint else ""))
        if not isinstance(value, str):
            raise ValueError(f"'{key}' must be a path, got {type(value).__name__} {value!r}")
    if "data" not in calibration:
        raise ValueError("needs 'data': an .npz or Polygraphy JSON of calibration inputs")


_CHECKS = {"workspace": parse_bytes, "profiles": parse_profiles, "optimization_level": _optimization_level,
           "calibration": _calibration}


def plugin_libraries(plugins: list[str], model=None) -> list[str]:
    """Library paths for the `plugins` option: 'builtin' is surgeon's libsurgeon_plugins.so, which must have
    the TensorRT plugins. 'builtin' is left out when `model` (an ONNX file) has no surgeon plugin node:
    nothing in it needs the library, which may not be built at all."""
    from surgeon.plugins.build_lib import tensorrt_library

    paths = []
    for entry in plugins:
        if entry == "builtin" and model is not None and not _has_plugin_nodes(model):
            continue
        path = tensorrt_library() if entry == "builtin" else Path(entry)
        if not path.is_file():
            raise SurgeonError(f"plugin library not found: {path}")
        paths.append(str(path))
    return paths


def _has_plugin_nodes(model_path) -> bool:
    from surgeon.graphinfo import all_nodes
    from surgeon.modelio import load_model
    from surgeon.plugins.specs import plugin_specs

    # Only surgeon's own plugins live in libsurgeon_plugins.so; a user's spec names a library of its own.
    specs = plugin_specs()
    return any((spec := specs.get(node.op_type)) is not None and spec.shipped and node.domain in spec.domains
               for node in all_nodes(load_model(model_path, load_external_data=False).graph))


def build_engine(model_path, engine_path, options: dict[str, Any] | None = None, progress=None) -> BuildResult:
    """Build `model_path` into `engine_path` with TensorRT; write the JSON build report beside it."""
    reason = tensorrt_missing()
    if reason:
        raise SurgeonError(reason)
    import tensorrt as trt
    from polygraphy.backend.trt import (Calibrator, CreateConfig, EngineBytesFromNetwork, EngineFromBytes, LoadPlugins,
                                        NetworkFromOnnxPath, Profile)

    from surgeon.modelio import write_text_atomic

    options = build_options(options)
    model_path, engine_path = Path(model_path), Path(engine_path)
    if not model_path.is_file():
        raise SurgeonError(f"model not found: {model_path}")
    libraries = plugin_libraries(options["plugins"], model_path)
    network = LoadPlugins(plugins=libraries, obj=NetworkFromOnnxPath(str(model_path),
                                                                     strongly_typed=options["strongly_typed"] or None))
    precision = options["precision"]
    calibrator = None
    if precision in ("int8", "best") and options["calibration"]:
        calibrator = _calibrator(options["calibration"], Calibrator)
    pools = {trt.MemoryPoolType.WORKSPACE: options["workspace"]} if options["workspace"] else None
    profiles = [_profile(Profile(), p) for p in options["profiles"]] or None
    config = CreateConfig(tf32=precision == "best" or None, fp16=precision in ("fp16", "best") or None,
                          int8=precision in ("int8", "best") or None, calibrator=calibrator, profiles=profiles,
                          memory_pool_limits=pools, builder_optimization_level=options["optimization_level"],
                          load_timing_cache=options["timing_cache"], profiling_verbosity=trt.ProfilingVerbosity.DETAILED)
    if progress is not None:
        progress.message(f"building {engine_path.name} ({precision}) with TensorRT {trt.__version__}")
    started = time.perf_counter()
    try:
        serialized = EngineBytesFromNetwork(network, config, save_timing_cache=options["timing_cache"])()
    except Exception as exc:  # Polygraphy raises PolygraphyException with TensorRT's log above it
        raise SurgeonError(f"TensorRT could not build {model_path}: {exc}") from exc
    seconds = time.perf_counter() - started
    data = bytes(serialized)
    write_bytes_atomic(engine_path, data)
    layers = engine_layers(EngineFromBytes(data)())
    result = BuildResult(built=True, engine=engine_path, seconds=seconds, engine_bytes=len(data), precision=precision,
                         tensorrt_version=trt.__version__, plugin_libraries=libraries,
                         plugins_used=sorted({l["plugin"] for l in layers if l.get("plugin")}), layers=layers)
    result.report = build_report_path(engine_path)
    write_text_atomic(result.report, json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    return result


def _profile(profile, shapes: dict[str, dict[str, list[int]]]):
    for name, bounds in shapes.items():
        profile.add(name, min=bounds["min"], opt=bounds["opt"], max=bounds["max"])
    return profile


def _calibrator(calibration: dict[str, Any], calibrator_class):
    from surgeon.validation.data import load_arrays

    return calibrator_class(data_loader=load_arrays(calibration["data"], "calibration data"),
                            cache=calibration.get("cache"))


def engine_layers(engine) -> list[dict[str, Any]]:
    """Each layer's name, type and output precision (and plugin name) from TensorRT's engine inspector."""
    import tensorrt as trt

    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # inspectors built without DETAILED verbosity give names only
            layers.append({"name": layer})
            continue
        outputs = layer.get("Outputs") or [{}]
        row = {"name": layer.get("Name"), "type": layer.get("LayerType"),
               "precision": layer.get("Precision") or outputs[0].get("Format/Datatype")}
        plugin = layer.get("PluginType") or layer.get("Plugin")
        if plugin or "plugin" in str(layer.get("LayerType", "")).lower():
            row["plugin"] = str(plugin or layer.get("Name"))
        layers.append(row)
    return layers


def default_engine_path(model_path) -> Path:
    return Path(model_path).with_suffix(".engine")


def build_report_path(engine_path) -> Path:
    return Path(engine_path).with_name(Path(engine_path).stem + ".build.json")


def build_files(section: dict[str, Any], engine, option: str, where: str = "the recipe's build."):
    """(outputs, inputs) of a build, as `modelio.guard_outputs` takes them: the engine and its build report
    (chosen with `option`), and the timing cache, calibration files and plugin libraries of `section`
    (named `where` + key in messages)."""
    outputs = [(Path(engine), "the engine", option), (build_report_path(engine), "the engine's build report", option)]
    calibration = section.get("calibration") or {}
    named = ((section.get("timing_cache"), f"{where}timing_cache"), (calibration.get("data"), f"{where}calibration.data"),
             (calibration.get("cache"), f"{where}calibration.cache"),
             *((p, f"{where}plugins library") for p in section.get("plugins") or () if p != "builtin"))
    return outputs, [(path, what) for path, what in named if path]


def build_run(recipe, output_model_path, progress=None) -> BuildResult:
    """The pipeline's build stage: build the recipe's `build:` section, or say why it was skipped."""
    options = build_options(recipe.build)
    engine = Path(options["engine"]) if options["engine"] else default_engine_path(output_model_path)
    reason = tensorrt_missing()
    if reason:  # the run's summary and report say so; the other stages have run
        return BuildResult(built=False, skipped_reason=reason, precision=options["precision"])
    return build_engine(output_model_path, engine, options, progress)


def trt_runner(engine_or_model_path, plugins=("builtin",)):
    """A Polygraphy TrtRunner for an engine file (.engine/.plan) or an ONNX model (built in memory, fp32)."""
    reason = tensorrt_missing()
    if reason:
        raise SurgeonError(reason)
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import (CreateConfig, EngineFromBytes, EngineFromNetwork, LoadPlugins,
                                        NetworkFromOnnxPath, TrtRunner)

    path = Path(engine_or_model_path)
    libraries = plugin_libraries(list(plugins), path if path.suffix == ".onnx" else None)
    if path.suffix == ".onnx":
        engine = EngineFromNetwork(LoadPlugins(plugins=libraries, obj=NetworkFromOnnxPath(str(path))), CreateConfig())
    else:
        engine = LoadPlugins(plugins=libraries, obj=EngineFromBytes(BytesFromPath(str(path))))
    return TrtRunner(engine, name=f"trt:{path.name}")


__all__ = ["BuildResult", "build_engine", "build_run", "build_options", "trt_runner", "tensorrt_missing",
           "engine_layers", "parse_bytes", "parse_profiles", "check_build_value", "check_build_combination",
           "INSTALL_HINT"]

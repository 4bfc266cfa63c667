"""Target profiles: which ops, opsets and dtypes a runtime accepts.

Profiles are data (`surgeon/targets/<name>.yaml`), not code. The same profile drives `surgeon check`,
the pre-commit hook and the default rewrite form a pass picks (`ctx.target`). A profile may `extends`
another (a built-in name, or a file relative to the profile that names it); keys of the child replace the
parent's, `ops` entries are merged op by op. A recipe's `target` file is relative to the recipe's folder
(`resolve_target`). A malformed profile is an error naming its file, line and key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from surgeon.errors import SurgeonError, suggest

PROFILE_DIR = Path(__file__).resolve().parent / "targets"
PROFILE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Target:
    """A loaded target profile. `ops` maps a standard op type to its rule (since/until opset, dtypes of
    input `dtype_input`)."""

    name: str
    runtime: str
    version: str | None
    opset: int
    max_ir_version: int | None = None
    #: The newest ai.onnx opset the runtime loads (None: no limit known).
    max_opset: int | None = None
    description: str = ""
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    domains: dict[str, list[str]] = field(default_factory=dict)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    static_shapes: bool = False
    #: False where the runtime reads non-standard attributes by design (libspconv's Reshape(dims=)).
    onnx_checker: bool = True
    #: False where graphs cannot run node by node on the CPU (libspconv passes coordinates implicitly).
    cpu_references: bool = True
    #: False where the runtime does not run a call of a model-local function (TensorRT's parser before 9.0;
    #: converters that read IR versions before 8, which has no functions).
    local_functions: bool = True
    #: How the runtime holds int64: `native`, or `int32` (TensorRT before 10 casts INT64 down, clamping).
    int64: str = "native"
    sources: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_tensorrt(self) -> bool:
        return self.runtime == "tensorrt"

    def computes_in(self, dtype: str) -> str:
        """The dtype (a name: "float16") the runtime computes an op of `dtype` in where it has no kernel for it:
        float32 for float16 on ONNX Runtime (its InsertCastTransformer) and for float64 on TensorRT (which casts
        DOUBLE down: SG007 warns); `dtype` itself otherwise. `surgeon check` and the passes' target-driven
        choices take an op as runnable where the runtime runs it so."""
        if (dtype == "float16" and self.runtime == "onnxruntime") or (dtype == "float64" and self.is_tensorrt):
            return "float32"
        return dtype

    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in str(self.version or "0").split(".") if p.isdigit())

    def supports(self, op_type: str, domain: str = "", dtype=None, opset: int | None = None) -> bool:
        """Whether the runtime runs `domain::op_type` (with its typed input of `dtype`, at `opset`).

        `dtype` is the type of the input the op's dtype rule describes (`dtype_input`: Where's data, not its
        bool condition). A profile that lists no ops at all accepts every standard op (and no custom one).
        """
        domain = domain or ""
        if domain not in ("", "ai.onnx"):
            return op_type in self.domains.get(domain, ()) or op_type in self.plugins
        if op_type in self.plugins:
            return True
        if not self.ops:
            return True
        rule = self.ops.get(op_type)
        if rule is None:
            return False
        opset = self.opset if opset is None else opset
        # The op's definition in effect at `opset`; where none is (GridSample at 11), the opset itself.
        version = _op_version(op_type, opset) or opset
        if version is not None:
            if rule.get("since") and version < int(rule["since"]):
                return False
            if rule.get("until") and version > int(rule["until"]):
                return False
        if dtype is not None:
            allowed = rule_dtypes(rule, version)
            if allowed:
                return _dtype_name(dtype) in allowed
        return True

    def dtypes_for(self, op_type: str, version: int | None) -> list[str] | None:
        """The dtypes the profile accepts for a standard op's typed input (`dtype_input`) at op version
        `version` (None: no dtype rule, every type the ONNX schema allows)."""
        return rule_dtypes(self.ops.get(op_type) or {}, version)

    def dtype_input(self, op_type: str) -> int:
        """The index of the node input a standard op's `dtypes` describe: the rule's `dtype_input`, else 0."""
        return int((self.ops.get(op_type) or {}).get("dtype_input", 0))


def rule_dtypes(rule: dict, version: int | None) -> list[str] | None:
    """An op rule's `dtypes` at op version `version`: the list itself, or, where `dtypes` maps op versions to
    lists ({6: [float32], 12: [float32, int64]}), the list of the highest version not above `version`
    (the newest list when the version is unknown; None before the first)."""
    dtypes = rule.get("dtypes")
    if not isinstance(dtypes, dict):
        return dtypes or None
    starts = sorted(int(k) for k in dtypes)
    if version is not None:
        starts = [start for start in starts if start <= version]
    return (dtypes.get(starts[-1]) or dtypes.get(str(starts[-1]))) if starts else None


def _op_version(op_type: str, opset: int | None) -> int | None:
    """The version of a standard op's definition in effect at `opset` (what since/until compare)."""
    if opset is None:
        return None
    import onnx

    try:
        return onnx.defs.get_schema(op_type, int(opset)).since_version
    except onnx.defs.SchemaError:
        return None


def _dtype_name(dtype) -> str:
    """`float32` for np.float32 / 'float32'; names NumPy lacks (bfloat16, float8e4m3fn) pass as they are."""
    if isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def available_targets() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def is_profile_path(name: str) -> bool:
    """Whether a target is written as a profile file (`.yaml`/`.yml`, or a path) rather than a built-in name."""
    return (Path(name).suffix.lower() in PROFILE_SUFFIXES or "/" in name
            or any(sep and sep in name for sep in (os.sep, os.altsep)))


def resolve_target(name: str, base=None) -> str:
    """A built-in target name as it is, or a profile file joined to `base` (the folder of the file that names
    it; the working directory when None). An unknown name or a missing file raises a SurgeonError."""
    if not is_profile_path(name):
        if name not in available_targets():
            raise SurgeonError(f"unknown target '{name}'; built-in targets: {', '.join(available_targets())}, "
                               "or a profile file (.yaml)", hint=suggest(name, available_targets()))
        return name
    path = Path(os.path.normpath(Path(base) / name)) if base is not None else Path(name)
    if not path.is_file():
        hint = None
        if Path(name).stem in available_targets():
            hint = f"did you mean the built-in target '{Path(name).stem}'?"
        elif base is not None and Path(name).is_file():
            hint = (f"paths are relative to the file that names them, in {base}: did you mean "
                    f"'{os.path.relpath(Path(name).resolve(), Path(base).resolve())}'?")
        raise SurgeonError(f"target profile {'is not a file' if path.exists() else 'not found'}: {path}", hint=hint)
    return str(path)


def load_target(name: str) -> Target:
    """Load a profile by name, or from a YAML file (a path relative to the working directory).

    A malformed profile raises a SurgeonError naming the profile file, the line and the key."""
    resolved = resolve_target(name)
    return _load_target(name, str(Path(resolved).resolve()) if is_profile_path(name) else resolved)


def profile_files(name: str, base=None) -> list[Path]:
    """The files loading target `name` reads: the profile file and the profiles it `extends` (built-in ones
    included); none for a built-in name. Stops quietly where the chain is broken (loading reports that)."""
    files: list[Path] = []
    if not is_profile_path(name):
        return files
    try:
        path = Path(resolve_target(name, base))
        while path not in files:
            files.append(path)
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            parent = data.get("extends") if isinstance(data, dict) else None
            if not isinstance(parent, str) or not parent:
                break
            path = _profile_file(resolve_target(parent, path.parent))
    except (SurgeonError, OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    return files


@lru_cache(maxsize=None)
def _load_target(name: str, key: str) -> Target:
    data = _load_raw(Path(name) if is_profile_path(name) else _profile_file(key), seen=())
    return Target(
        name=data.get("name", name), runtime=data.get("runtime", "onnxruntime"),
        version=str(data["version"]) if data.get("version") is not None else None,
        opset=int(data.get("opset", 17)), max_ir_version=data.get("max_ir_version"),
        max_opset=data.get("max_opset"),
        description=data.get("description") or "", ops=dict(data.get("ops") or {}),
        domains={k: list(v) for k, v in (data.get("domains") or {}).items()},
        plugins=dict(data.get("plugins") or {}), static_shapes=bool(data.get("static_shapes", False)),
        onnx_checker=bool(data.get("onnx_checker", True)), cpu_references=bool(data.get("cpu_references", True)),
        local_functions=bool(data.get("local_functions", True)), int64=data.get("int64", "native"),
        sources=tuple(data.get("sources") or ()), raw=data)


def _profile_file(resolved: str) -> Path:
    return Path(resolved) if is_profile_path(resolved) else PROFILE_DIR / f"{resolved}.yaml"


#: What each key of a profile holds: (accepted types, what to call them, whether null is accepted).
_INT = ((int,), "an integer")
_KEYS: dict[str, tuple[tuple[type, ...], str, bool]] = {
    "name": ((str,), "a string", False),
    "runtime": ((str,), "a string such as 'tensorrt' or 'onnxruntime'", False),
    "version": ((str, int, float), "a version string such as '8.6'", True),
    "opset": (*_INT, False),
    "max_ir_version": (*_INT, True),
    "max_opset": (*_INT, True),
    "description": ((str,), "a string", True),
    "extends": ((str,), "a target name or profile file", True),
    "ops": ((dict,), "a mapping of op types to rules ({since: 1, dtypes: [float32]})", True),
    "domains": ((dict,), "a mapping of domains to lists of op types", True),
    "plugins": ((dict,), "a mapping of op types to plugin fields", True),
    "static_shapes": ((bool,), "true or false", False),
    "onnx_checker": ((bool,), "true or false", False),
    "cpu_references": ((bool,), "true or false", False),
    "local_functions": ((bool,), "true or false", False),
    "int64": ((str,), "'native' or 'int32'", False),
    "sources": ((list,), "a list of strings", True),
    "notes": ((list,), "a list of strings", True),
}
INT64_FORMS = ("native", "int32")
_OP_RULE_KEYS = ("since", "until", "dtype_input", "dtypes", "notes")


def _load_raw(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    from surgeon.recipe import decode_text, load_yaml_text

    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in seen + (resolved,))
        raise SurgeonError(f"target profile extends itself through {chain}", file=path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SurgeonError(f"cannot read target profile: {exc.strerror}", file=path) from None
    text = decode_text(raw, path, "target profile", SurgeonError)
    # libyaml's loader where PyYAML has it: the generated onnxruntime profile takes 0.16 s in pure Python
    data = load_yaml_text(text, path, getattr(yaml, "CSafeLoader", yaml.SafeLoader), SurgeonError)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SurgeonError("a target profile must be a mapping of keys (name, runtime, opset, ops, ...)",
                           file=path, line=1)
    _check_profile(data, path, text)
    parent_name = data.pop("extends", None)
    if not parent_name:
        return data
    try:
        parent_path = _profile_file(resolve_target(parent_name, path.parent))
    except SurgeonError as exc:
        line, column = _locate(text, ("extends",))
        raise SurgeonError(exc.message, file=path, line=line, column=column, hint=exc.hint) from None
    parent = _load_raw(parent_path, seen + (resolved,))
    merged = {**parent, **data}
    for key in ("ops", "domains", "plugins"):
        merged[key] = {**(parent.get(key) or {}), **(data.get(key) or {})}
    return merged


def _check_profile(data: dict, path: Path, text: str) -> None:
    """Raise a SurgeonError at the profile's file:line:col for an unknown key or a value of the wrong type."""
    def fail(message: str, keys: tuple, hint: str | None = None, at_key: bool = False):
        line, column = _locate(text, keys, at_key)
        raise SurgeonError(message, file=path, line=line, column=column, hint=hint)

    def expect(value, types, what: str, keys: tuple) -> None:
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            fail(f"target profile key '{'.'.join(map(str, keys))}' must be {what}, got {type(value).__name__} "
                 f"{value!r}", keys)

    for key, value in data.items():
        if key not in _KEYS:
            fail(f"unknown key '{key}' in target profile", (key,),
                 suggest(str(key), _KEYS) or f"allowed: {', '.join(_KEYS)}", at_key=True)
        types, what, nullable = _KEYS[key]
        if value is None and nullable:
            continue
        expect(value, types, what, (key,))
    known_dtypes = _dtype_names()
    if isinstance(data.get("opset"), int) and data["opset"] < 1:
        fail(f"target profile key 'opset' must be an opset number (1 or more), got {data['opset']}", ("opset",))
    if isinstance(data.get("int64"), str) and data["int64"] not in INT64_FORMS:
        fail(f"target profile key 'int64' must be 'native' or 'int32', got {data['int64']!r}", ("int64",),
             suggest(data["int64"], INT64_FORMS))
    for op, rule in (data.get("ops") or {}).items():
        expect(rule, (dict,), "a mapping such as {since: 1, dtypes: [float32]}", ("ops", op))
        for field_name, value in rule.items():
            keys = ("ops", op, field_name)
            if field_name not in _OP_RULE_KEYS:
                fail(f"unknown key '{field_name}' in the rule of op '{op}' in target profile", keys,
                     suggest(str(field_name), _OP_RULE_KEYS) or f"allowed: {', '.join(_OP_RULE_KEYS)}", at_key=True)
            if field_name in ("since", "until"):
                expect(value, (int,), "an op version (an integer)", keys)
            elif field_name == "dtype_input":
                what = "the index of the input `dtypes` describe (an integer, 0 or more)"
                expect(value, (int,), what, keys)
                if value < 0:
                    fail(f"target profile key '{'.'.join(map(str, keys))}' must be {what}, got {value}", keys)
            elif field_name == "dtypes":
                what = "a list of dtype names such as [float32, int64]"  # or {op version: list} (docs/targets.md)
                expect(value, (list, dict), what, keys)
                for version, names in (value.items() if isinstance(value, dict) else [(None, value)]):
                    if version is not None:
                        expect(version, (int,), "a mapping of op versions (integers) to lists of dtype names, "
                               "such as {6: [float32], 12: [float32, int64]}", keys)
                    expect(names, (list,), what, keys)
                    for dtype in names:
                        expect(dtype, (str,), what, keys)
                        if dtype not in known_dtypes:
                            fail(f"unknown dtype '{dtype}' in target profile key '{'.'.join(map(str, keys))}'", keys,
                                 suggest(dtype, known_dtypes) or f"known: {', '.join(sorted(known_dtypes))}")
    for domain, op_types in (data.get("domains") or {}).items():
        expect(op_types, (list,), "a list of op types", ("domains", domain))
    for op, plugin in (data.get("plugins") or {}).items():
        if plugin is not None:
            expect(plugin, (dict,), "a mapping of plugin fields such as {plugin_version: '1'}", ("plugins", op))


@lru_cache(maxsize=None)
def _dtype_names() -> frozenset[str]:
    """Every ONNX element type as profiles spell it (float32, bfloat16, float8e4m3fn, ...)."""
    from onnx import TensorProto

    from surgeon.check.facts import dtype_name

    return frozenset(dtype_name(value) for value in TensorProto.DataType.values() if value != TensorProto.UNDEFINED)


def _locate(text: str, keys: tuple, at_key: bool = False) -> tuple[int | None, int | None]:
    """1-based line and column of the value (or the key) at `keys` in YAML `text`; (None, None) if not found."""
    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None, None
    key_node = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None, None
        found = next(((k, v) for k, v in node.value if k.value == str(key)), None)
        if found is None:
            return None, None
        key_node, node = found
    mark = (key_node if at_key and key_node is not None else node).start_mark
    return mark.line + 1, mark.column + 1

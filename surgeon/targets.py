"""Target profiles: which ops, opsets and dtypes a runtime accepts.

Profiles are data (`surgeon/targets/<name>.yaml`), not code. The same profile drives `surgeon check`,
the pre-commit hook and the default rewrite form a pass picks (`ctx.target`). A profile may `extends`
another; keys of the child replace the parent's, `ops` entries are merged op by op.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from surgeon.errors import SurgeonError, suggest

PROFILE_DIR = Path(__file__).resolve().parent / "targets"


@dataclass(frozen=True)
class Target:
    """A loaded target profile. `ops` maps a standard op type to its rule (since/until opset, dtypes)."""

    name: str
    runtime: str
    version: str | None
    opset: int
    max_ir_version: int | None = None
    description: str = ""
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    domains: dict[str, list[str]] = field(default_factory=dict)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    static_shapes: bool = False
    #: False where the runtime reads non-standard attributes by design (libspconv's Reshape(dims=)).
    onnx_checker: bool = True
    #: False where graphs cannot run node by node on the CPU (libspconv passes coordinates implicitly).
    cpu_references: bool = True
    sources: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_tensorrt(self) -> bool:
        return self.runtime == "tensorrt"

    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in str(self.version or "0").split(".") if p.isdigit())

    def supports(self, op_type: str, domain: str = "", dtype=None, opset: int | None = None) -> bool:
        """Whether the runtime runs `domain::op_type` (with inputs of `dtype`, at `opset`).

        A profile that lists no ops at all accepts every standard op (and no custom one).
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
        if dtype is not None and rule.get("dtypes"):
            return _dtype_name(dtype) in rule["dtypes"]
        return True


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


@lru_cache(maxsize=None)
def load_target(name: str) -> Target:
    """Load a profile by name (or by path to a YAML file)."""
    data = _load_raw(name, seen=())
    known = {"name", "runtime", "version", "opset", "max_ir_version", "description", "ops", "domains", "plugins",
             "static_shapes", "sources", "extends", "notes", "onnx_checker", "cpu_references"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SurgeonError(f"target profile '{name}': unknown key '{unknown[0]}'", hint=suggest(unknown[0], known))
    return Target(
        name=data.get("name", name), runtime=data.get("runtime", "onnxruntime"),
        version=str(data["version"]) if data.get("version") is not None else None,
        opset=int(data.get("opset", 17)), max_ir_version=data.get("max_ir_version"),
        description=data.get("description", ""), ops=dict(data.get("ops") or {}),
        domains={k: list(v) for k, v in (data.get("domains") or {}).items()},
        plugins=dict(data.get("plugins") or {}), static_shapes=bool(data.get("static_shapes", False)),
        onnx_checker=bool(data.get("onnx_checker", True)), cpu_references=bool(data.get("cpu_references", True)),
        sources=tuple(data.get("sources") or ()), raw=data)


def _profile_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = PROFILE_DIR / f"{name}.yaml"
    if not candidate.exists():
        raise SurgeonError(f"unknown target '{name}'; known targets: {', '.join(available_targets())}",
                           hint=suggest(name, available_targets()))
    return candidate


def _load_raw(name: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if name in seen:
        raise SurgeonError(f"target profile '{name}' extends itself through {' -> '.join(seen + (name,))}")
    path = _profile_path(name)
    try:
        # libyaml's loader where PyYAML has it: the generated onnxruntime profile takes 0.16 s in pure Python
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as exc:
        raise SurgeonError(f"target profile is not valid YAML: {exc}", file=path) from None
    parent_name = data.pop("extends", None)
    if not parent_name:
        return data
    parent = _load_raw(parent_name, seen + (name,))
    merged = {**parent, **data}
    for key in ("ops", "domains", "plugins"):
        merged[key] = {**(parent.get(key) or {}), **(data.get(key) or {})}
    return merged

"""CPU reference implementations of ops ONNX Runtime cannot run (ATen, custom-domain, plugin nodes).

Registering one is a few lines, anywhere in surgeon or in a user's plugin file::

    @reference_op("ATen", domain="org.pytorch.aten", operator="grid_sampler")
    def grid_sampler(inputs, attrs):
        x, grid, mode, padding, align = inputs
        return [...]

`inputs` are NumPy arrays (None for an omitted optional input), `attrs` the node's attributes as
Python values (bytes decoded to str); the function returns a list of arrays, one per node output.
The modules of this package register themselves when `load_references()` imports them, so there is
no hand-kept list.
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil
from typing import Callable

import numpy as np

ReferenceFn = Callable[[list, dict], list]
_REFERENCES: dict[tuple[str, str, str | None], ReferenceFn] = {}
_ALIASES = {"ai.onnx": "", "org.pytorch.aten": "org.pytorch.aten"}


def _key(op_type: str, domain: str | None, operator: str | None) -> tuple[str, str, str | None]:
    domain = _ALIASES.get(domain or "", domain or "")
    return (domain, op_type, operator)


def reference_op(op_type: str, domain: str = "", operator: str | None = None):
    """Register the decorated function as the CPU reference of `domain::op_type` (ATen: with `operator`)."""

    def decorate(fn: ReferenceFn) -> ReferenceFn:
        key = _key(op_type, domain, operator)
        existing = _REFERENCES.get(key)
        if existing is not None and _origin(existing) != _origin(fn):
            raise ValueError(f"two references for {key}: {_origin(existing)} and {_origin(fn)}")
        _REFERENCES[key] = fn
        return fn

    return decorate


def _origin(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


@contextlib.contextmanager
def temporary_reference(fn: ReferenceFn, op_type: str, domain: str = "", operator: str | None = None):
    """Use `fn` as the reference of an op inside a `with` block (tests, experiments), then restore."""
    load_references()
    key = _key(op_type, domain, operator)
    previous = _REFERENCES.get(key)
    _REFERENCES[key] = fn
    try:
        yield fn
    finally:
        if previous is None:
            _REFERENCES.pop(key, None)
        else:
            _REFERENCES[key] = previous


def find_reference(op_type: str, domain: str | None = "", operator: str | None = None) -> ReferenceFn | None:
    """The registered reference for a node's (op_type, domain, ATen operator), or None."""
    load_references()
    fn = _REFERENCES.get(_key(op_type, domain, operator))
    if fn is None and operator is not None:
        # An ATen node exported in the default domain by older exporters.
        fn = _REFERENCES.get(_key(op_type, "org.pytorch.aten", operator))
    return fn


def registered_references() -> list[tuple[str, str, str | None]]:
    load_references()
    return sorted(_REFERENCES, key=lambda k: (k[0], k[1], k[2] or ""))


_loaded = False


def load_references() -> None:
    """Import every module of this package (and the plugin specs) so their references register."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    try:
        importlib.import_module("surgeon.plugins.specs")
    except ModuleNotFoundError as exc:
        if exc.name not in ("surgeon.plugins", "surgeon.plugins.specs"):
            raise


def as_outputs(value) -> list[np.ndarray]:
    """Normalise what a reference returned to a list of arrays."""
    if isinstance(value, (list, tuple)):
        return [np.asarray(v) for v in value]
    return [np.asarray(value)]

"""CPU reference implementations of ops ONNX Runtime cannot run (ATen, custom-domain, plugin nodes).

Registering one is a few lines, anywhere in surgeon or in a user's plugin file::

    @reference_op("ATen", domain="org.pytorch.aten", operator="grid_sampler")
    def grid_sampler(inputs, attrs):
        x, grid, mode, padding, align = inputs
        return [...]

`inputs` are NumPy arrays (None for an omitted optional input), `attrs` the node's attributes as
Python values (bytes decoded to str); the function returns a list of arrays, one per node output.
The modules of this package register themselves when `load_references()` imports them, so there is
no hand-kept list. `domain=ANY_DOMAIN` answers for an op type in every domain without a reference of
its own (a custom `Atan2` is `mmdeploy::Atan2` in one export and `Atan2` in another). An op whose result
layout only its declared output shape tells registers with `output_shapes=True` and is called as
`fn(inputs, attrs, output_shapes)`; `call_reference` passes them.

An op has one reference: registering a second function for it is an error naming both files, so a
plugin file cannot replace surgeon's reference (`temporary_reference` swaps one in for a `with` block).
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Callable

import numpy as np

from surgeon.graphinfo import declared_dims

ReferenceFn = Callable[[list, dict], list]
_REFERENCES: dict[tuple[str, str, str | None], ReferenceFn] = {}
_ALIASES = {"ai.onnx": "", "org.pytorch.aten": "org.pytorch.aten"}
#: The domain of a reference that answers for its op type in every domain.
ANY_DOMAIN = "*"
#: The attribute `reference_op(..., output_shapes=True)` sets on a reference that reads them.
_READS_OUTPUT_SHAPES = "reads_output_shapes"


def _key(op_type: str, domain: str | None, operator: str | None) -> tuple[str, str, str | None]:
    domain = _ALIASES.get(domain or "", domain or "")
    return (domain, op_type, operator)


def reference_op(op_type: str, domain: str = "", operator: str | None = None, *, output_shapes: bool = False):
    """Register the decorated function as the CPU reference of `domain::op_type` (ATen: with `operator`;
    every domain: ANY_DOMAIN). With `output_shapes` it also receives the node's declared output shapes."""

    def decorate(fn: ReferenceFn) -> ReferenceFn:
        refuse_second_reference(fn, op_type, domain, operator)
        if output_shapes:
            setattr(fn, _READS_OUTPUT_SHAPES, True)
        _REFERENCES[_key(op_type, domain, operator)] = fn
        return fn

    return decorate


def refuse_second_reference(fn: ReferenceFn, op_type: str, domain: str = "", operator: str | None = None) -> None:
    """Raise a ValueError naming both files if a function defined elsewhere already is the reference of that
    op (the same function registering again, a reload, is not a second one)."""
    key = _key(op_type, domain, operator)
    existing = _REFERENCES.get(key)
    if existing is not None and defined_where(existing) != defined_where(fn):
        raise ValueError(f"two references for {_label(key)}: {defined_where(existing)} and {defined_where(fn)}")


def defined_where(fn) -> str:
    """`file (qualified name)` of the function behind `fn` (through `functools.wraps`): what makes two
    registrations the same function, and how an error names it."""
    fn = inspect.unwrap(fn)
    name = getattr(fn, "__qualname__", repr(fn))
    code = getattr(fn, "__code__", None)
    if code is None:  # a builtin or a callable object: no file to tell
        return f"{getattr(fn, '__module__', '?')}.{name}"
    return f"{Path(code.co_filename).resolve()} ({name})"


def _label(key: tuple[str, str, str | None]) -> str:
    domain, op_type, operator = key
    return (f"{domain}::" if domain else "") + op_type + (f" (operator {operator})" if operator else "")


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
    if fn is None:
        fn = _REFERENCES.get(_key(op_type, ANY_DOMAIN, operator))
    return fn


def call_reference(fn: ReferenceFn, inputs: list, attrs: dict, node, model) -> list[np.ndarray]:
    """Run reference `fn` on a node's inputs and attributes (`node`, an onnx.NodeProto of `model`); one
    registered with `output_shapes=True` also gets the shapes `model` declares for the node's outputs."""
    if getattr(fn, _READS_OUTPUT_SHAPES, False):
        return as_outputs(fn(inputs, attrs, declared_shapes(model, node.output)))
    return as_outputs(fn(inputs, attrs))


def declared_shapes(model, names) -> list[list | None]:
    """The shapes `model` declares (graph outputs, value_info) for tensors `names`: a list of dims (int, or
    None for a dynamic one) per tensor, None where the graph gives no shape."""
    wanted = set(names)
    declared = {value.name: declared_dims(value) for value in (*model.graph.value_info, *model.graph.output)
                if value.name in wanted}
    return [declared.get(name) for name in names]


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

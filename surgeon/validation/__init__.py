"""Numerical validation of rewritten models through Polygraphy (see docs/validation.md).

`validate_run` is what `surgeon run` calls for a recipe's `validate:` section; `validate_models`
compares two in-memory models; `bisect_steps` finds the recipe step that broke the outputs.

The names below are imported on first use, so `surgeon.validation.settings` (what a validate
section's values may be, checked when a recipe loads) does not import Polygraphy.
"""
from __future__ import annotations

_API = {
    "validate_run": "surgeon.validation.validate",
    "validate_models": "surgeon.validation.validate",
    "prepare_validation": "surgeon.validation.validate",
    "ValidationInputs": "surgeon.validation.validate",
    "ValidationResult": "surgeon.validation.validate",
    "bisect_steps": "surgeon.validation.bisect",
    "Bisection": "surgeon.validation.bisect",
    "OutputReport": "surgeon.validation.compare",
    "Tolerance": "surgeon.validation.compare",
    "make_feeds": "surgeon.validation.data",
    "make_runner": "surgeon.validation.runners",
    "ReferenceRunner": "surgeon.validation.runners",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'surgeon.validation' has no attribute {name!r}")

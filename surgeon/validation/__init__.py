"""Numerical validation of rewritten models through Polygraphy (see docs/validation.md).

`validate_run` is what `surgeon run` calls for a recipe's `validate:` section; `validate_models`
compares two in-memory models; `bisect_steps` finds the recipe step that broke the outputs.
"""
from surgeon.validation.bisect import Bisection, bisect_steps
from surgeon.validation.compare import OutputReport, Tolerance
from surgeon.validation.data import make_feeds
from surgeon.validation.runners import ReferenceRunner, make_runner
from surgeon.validation.validate import ValidationResult, validate_models, validate_run

__all__ = ["validate_run", "validate_models", "bisect_steps", "Bisection", "ValidationResult", "OutputReport",
           "Tolerance", "make_feeds", "make_runner", "ReferenceRunner"]

"""Polygraphy as surgeon configures it: every module here imports `G_LOGGER` from this one.

Its logger: Polygraphy prints its messages below CRITICAL to stdout, and the first time it logs
anything without the optional `colored` package it prints a notice about that to stdout as well.
stdout is surgeon's own (`--json` documents, summaries), so its messages go to stderr instead,
uncoloured: through Python's `logging` (logger "Polygraphy"), with a handler that writes to the
`sys.stderr` of the moment. An application that wants them elsewhere can replace that handler.

Its torch probe: to tell whether an array is a torch tensor (and whether to register torch's JSON and
dtype converters), Polygraphy imports torch if it is installed — 2 s on every validated run, inside a
bare `except:` that swallows Ctrl-C, after which the next probe re-imports a half-initialised torch
and the process segfaults. An object can only be a torch tensor once torch is imported, so surgeon
answers the probe from `sys.modules`: torch is used when someone imported it, and never imported here.
"""
from __future__ import annotations

import logging
import sys

from polygraphy.logger import G_LOGGER

__all__ = ["G_LOGGER"]


class _StderrHandler(logging.Handler):
    """Writes each record to `sys.stderr` as it is when the record arrives (tests and callers may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


def _configure() -> None:
    logger = logging.getLogger("Polygraphy")
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    G_LOGGER.colors = False
    G_LOGGER.use_python_logging_system = True
    logger.addHandler(_StderrHandler())
    logger.setLevel(1)  # Polygraphy filters by its own severity first; pass on whatever it lets through
    logger.propagate = False  # printed once, here, as Polygraphy would have printed it


class _TorchIfImported:
    """Polygraphy's lazy `torch` module, importable only once something else has imported torch."""

    def __init__(self, lazy):
        object.__setattr__(self, "_lazy", lazy)

    def is_installed(self) -> bool:
        return "torch" in sys.modules

    is_importable = is_installed

    def __getattr__(self, name):
        return getattr(self._lazy, name)


def _probe_torch_without_importing_it() -> None:
    import importlib

    for name in ("polygraphy.util.array", "polygraphy.json.serde", "polygraphy.datatype.torch"):
        namespace = vars(importlib.import_module(name))
        if type(namespace["torch"]) is not _TorchIfImported:  # isinstance would import torch (its __getattr__)
            namespace["torch"] = _TorchIfImported(namespace["torch"])


_configure()
_probe_torch_without_importing_it()

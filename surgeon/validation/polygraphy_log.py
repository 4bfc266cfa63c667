"""Polygraphy's logger, as surgeon configures it: every module here imports `G_LOGGER` from this one.

Polygraphy prints its messages below CRITICAL to stdout, and the first time it logs anything without
the optional `colored` package it prints a notice about that to stdout as well. stdout is surgeon's
own (`--json` documents, summaries), so its messages go to stderr instead, uncoloured: through
Python's `logging` (logger "Polygraphy"), with a handler that writes to the `sys.stderr` of the moment.
An application that wants them elsewhere can replace that handler.
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


_configure()

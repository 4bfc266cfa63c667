"""The errors surgeon raises on purpose.

Every error meant for a user carries where the problem is (file, line, column, step, node, parameter)
so the command line can print one clear line instead of a traceback.
"""
from __future__ import annotations


class SurgeonError(Exception):
    """Bad input or bad usage: the CLI prints the message and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str, *, file=None, line: int | None = None, column: int | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.column = column
        self.hint = hint

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        text = where + self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class RecipeError(SurgeonError):
    """A recipe that cannot be loaded: wrong key, unknown pass, ill-typed parameter, missing file."""


class ModelError(SurgeonError):
    """A model file that is missing, malformed or otherwise unusable."""


class PassError(SurgeonError):
    """A pass that cannot do its job on this graph (for example an unsupported attribute value)."""


class CheckFailed(SurgeonError):
    """A check or a numerical validation did not pass: exit code 1."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a library's multi-line dump made one line), or its
    type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def suggest(word: str, candidates) -> str | None:
    """The closest valid spelling of `word`, phrased as a hint, or None."""
    import difflib

    close = difflib.get_close_matches(str(word), sorted(map(str, candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None

"""What a validation keeps of every input set, held one set at a time.

A comparison over many input sets needs each model's outputs for every set (the reports save them,
bisection compares each step with the original's) and statistics over all sets' errors (mean,
quantile, cosine similarity, all of them at once). Held in memory, these grow with the number of
sets until the machine runs out; here, with more than one set, they go to files in a temporary
folder of the system's temp directory (`TMPDIR`), read back an output at a time or memory-mapped,
so a validation holds about one input set and the two models' outputs for it whatever the number of
sets. One set stays in memory: it is what would be held anyway, and no file costs its time.
"""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from surgeon.errors import SurgeonError


def _temporary_folder() -> tempfile.TemporaryDirectory:
    # Removed by close(), or when its owner is collected or the interpreter exits.
    return tempfile.TemporaryDirectory(prefix="surgeon-validation-")


@contextlib.contextmanager
def _writing(folder):
    """An OSError writing in `folder` (a full disk, mostly) as one error saying where and what to do."""
    try:
        yield
    except OSError as exc:
        raise SurgeonError(f"cannot keep validation data in the temporary folder {folder}: {exc.strerror or exc}; "
                           "set TMPDIR to a folder with more room, or validate on fewer input sets") from None


class RunOutputs(Sequence):
    """One runner's outputs for each input set, in order ({output name: array} per set), with the
    runtime of each inference: in memory when `on_disk` is false, else one .npy file per output and
    set, read back when asked for."""

    def __init__(self, name: str, on_disk: bool = False):
        self.name = name
        self.runtimes: list[float | None] = []
        self._folder = _temporary_folder() if on_disk else None
        self._sets: list[dict] = []  # in memory: {name: array}; on disk: {name: position}

    def append(self, outputs: dict, runtime: float | None = None) -> None:
        if self._folder is None:
            self._sets.append(dict(outputs))
        else:
            with _writing(self._folder.name):
                for position, array in enumerate(outputs.values()):
                    # np.save writes Polygraphy's encoding of the array (its JSON is that file in base64).
                    np.save(self._file(len(self._sets), position), np.asarray(array), allow_pickle=False)
            self._sets.append({name: position for position, name in enumerate(outputs)})
        self.runtimes.append(runtime)

    def __len__(self) -> int:
        return len(self._sets)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {name: self.array(index, name) for name in self._sets[index]}

    def array(self, index: int, name: str) -> np.ndarray:
        """Output `name` of set `index` alone."""
        kept = self._sets[index][name]
        return kept if self._folder is None else np.load(self._file(index, kept))

    def sources(self, index: int) -> dict[str, np.ndarray | Path]:
        """Set `index` as the arrays, or as the .npy files holding them (for writing them unread)."""
        kept = self._sets[index]
        if self._folder is None:
            return kept
        return {name: self._file(index, position) for name, position in kept.items()}

    def close(self) -> None:
        """Delete the files (the outputs cannot be read after)."""
        if self._folder is not None:
            self._folder.cleanup()

    def _file(self, index: int, position: int) -> Path:
        # Positions, not names: an output name may hold any character.
        return Path(self._folder.name) / f"{index}-{position}.npy"


class Column:
    """float64 values appended a set at a time and read back as one array, equal to their concatenation:
    in memory when `folder` is None, else written to a file there and memory-mapped (pages the system can
    drop, not memory the validation holds)."""

    def __init__(self, folder: Path | None, name: str):
        self._pieces: list[np.ndarray] = []
        self._path = None if folder is None else Path(folder) / f"{name}.f8"
        self._size = 0

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float64).ravel()
        if self._path is None:
            self._pieces.append(values)
        else:
            with _writing(self._path.parent), open(self._path, "ab") as handle:
                values.tofile(handle)
        self._size += values.size

    def discard(self) -> None:
        """Let the values go (delete their file)."""
        self._pieces, self._size = [], 0
        if self._path is not None:
            self._path.unlink(missing_ok=True)

    def values(self) -> np.ndarray:
        """Every value appended, one array the caller may reorder (a writable memory map on disk)."""
        if self._path is None:
            return self._pieces[0] if len(self._pieces) == 1 else np.concatenate(self._pieces or [np.empty(0)])
        if self._size == 0:  # an empty file cannot be mapped
            return np.empty(0)
        return np.memmap(self._path, np.float64, mode="r+", shape=(self._size,))


def column_folder(sets: int) -> tempfile.TemporaryDirectory | None:
    """A temporary folder for the `Column`s of a comparison of `sets` input sets; None for one set."""
    return _temporary_folder() if sets > 1 else None

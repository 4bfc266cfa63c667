"""What a validation keeps of every input set, held one set at a time.

A comparison over many input sets needs each model's outputs for every set (the reports save them,
bisection compares each step with the original's) and statistics over all sets' errors (mean,
quantile, cosine similarity, all of them at once). Held in memory, these grow with the number of
sets until the machine runs out. So, with more than one set, what is kept stays in memory only while
all of it together fits in `MEMORY_BUDGET`; past that, what comes next goes to files in a temporary
folder of the system's temp directory (`TMPDIR`), read back an output at a time or memory-mapped,
and a validation holds about the budget, one input set and the two models' outputs for it, whatever
the number of sets. Files cost time per file (300 small outputs of 50 sets: 11-12 s on disk, 3-4 s
held, docs/validation.md), which small outputs need not pay. One set always stays in memory: it is what
would be held anyway.
"""
from __future__ import annotations

import contextlib
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from surgeon.errors import SurgeonError

#: Bytes of outputs and errors that every `RunOutputs` and `Column` alive hold in memory together, at
#: most, before what they are given next goes to disk.
MEMORY_BUDGET = 256 << 20

_holders: weakref.WeakSet = weakref.WeakSet()  # every RunOutputs and Column alive: their `held` bytes


def held() -> int:
    """Bytes every `RunOutputs` and `Column` alive hold in memory."""
    return sum(holder.held for holder in _holders)


def _fits(size: int) -> bool:
    return held() + size <= MEMORY_BUDGET


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


def _tensor(run: str, name: str, value) -> np.ndarray:
    """`value`, output `name` of `run`, as an array if it is a tensor validation can judge: errors are
    numbers."""
    if isinstance(value, np.generic):  # a NumPy scalar, as a CPU reference may return for a 0-d output
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):  # ONNX Runtime gives a sequence as a list, a map as a dict
        kind = {list: "sequence", dict: "map"}.get(type(value), type(value).__name__)
        raise SurgeonError(f"output '{name}' of {run} is a {kind}, not a tensor: validation compares tensor "
                           "outputs only")
    if value.dtype.kind in "OSU":
        raise SurgeonError(f"output '{name}' of {run} is a string tensor: validation compares numeric and bool "
                           "tensors only")
    return value


class RunOutputs(Sequence):
    """One runner's outputs for each input set, in order ({output name: array} per set), with the
    runtime of each inference: in memory when `on_disk` is false; else in memory within
    `MEMORY_BUDGET`, past it one .npy file per output and set, read back when asked for."""

    def __init__(self, name: str, on_disk: bool = False):
        self.name = name
        self.runtimes: list[float | None] = []
        self.held = 0
        self._folder = _temporary_folder() if on_disk else None
        self._sets: list[dict] = []  # {name: array} held, or {name: position} written
        _holders.add(self)

    def append(self, outputs: dict, runtime: float | None = None) -> None:
        outputs = {name: _tensor(self.name, name, array) for name, array in outputs.items()}
        size = sum(array.nbytes for array in outputs.values())
        if self._folder is None:
            self._sets.append(outputs)
            self.held += size
        elif _fits(size):
            # Copies: Polygraphy's runners may reuse their output buffers for the next set.
            self._sets.append({name: array.copy() for name, array in outputs.items()})
            self.held += size
        else:
            with _writing(self._folder.name):
                for position, array in enumerate(outputs.values()):
                    # np.save writes Polygraphy's encoding of the array (its JSON is that file in base64).
                    np.save(self._file(len(self._sets), position), array, allow_pickle=False)
            self._sets.append({name: position for position, name in enumerate(outputs)})
        self.runtimes.append(runtime)

    def __len__(self) -> int:
        return len(self._sets)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {name: self.array(index, name) for name in self._sets[index]}

    def array(self, index: int, name: str) -> np.ndarray:
        """Output `name` of set `index` alone."""
        kept = self._sets[index][name]
        return kept if isinstance(kept, np.ndarray) else np.load(self._file(index, kept))

    def sources(self, index: int) -> dict[str, np.ndarray | Path]:
        """Set `index` as the arrays, or as the .npy files holding them (for writing them unread)."""
        return {name: kept if isinstance(kept, np.ndarray) else self._file(index, kept)
                for name, kept in self._sets[index].items()}

    def close(self) -> None:
        """Let the outputs go and delete their files (they cannot be read after)."""
        self._sets, self.held = [], 0
        if self._folder is not None:
            self._folder.cleanup()

    def _file(self, index: int, position: int) -> Path:
        # Positions, not names: an output name may hold any character.
        return Path(self._folder.name) / f"{index}-{position}.npy"


class Column:
    """float64 values appended a set at a time and read back as one array, equal to their concatenation:
    in memory when `folder` is None; else in memory within `MEMORY_BUDGET`, past it all written to a file
    there and memory-mapped (pages the system can drop, not memory the validation holds)."""

    def __init__(self, folder: Path | None, name: str):
        self.held = 0
        self._pieces: list[np.ndarray] = []
        self._path = None if folder is None else Path(folder) / f"{name}.f8"
        self._on_disk = False
        self._size = 0
        _holders.add(self)

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float64).ravel()
        if self._path is None or (not self._on_disk and _fits(values.nbytes)):
            self._pieces.append(values)
            self.held += values.nbytes
        else:  # the values held so far go first: one file, in order
            with _writing(self._path.parent), open(self._path, "ab") as handle:
                for piece in (*self._pieces, values):
                    piece.tofile(handle)
            self._pieces, self.held, self._on_disk = [], 0, True
        self._size += values.size

    def discard(self) -> None:
        """Let the values go (delete their file, where they went to one)."""
        if self._on_disk:
            self._path.unlink(missing_ok=True)
        self._pieces, self.held, self._size, self._on_disk = [], 0, 0, False

    def values(self) -> np.ndarray:
        """Every value appended, one array the caller may reorder (a writable memory map on disk)."""
        if self._on_disk and self._size:  # an empty file cannot be mapped
            return np.memmap(self._path, np.float64, mode="r+", shape=(self._size,))
        return self._pieces[0] if len(self._pieces) == 1 else np.concatenate(self._pieces or [np.empty(0)])


def column_folder(sets: int) -> tempfile.TemporaryDirectory | None:
    """A temporary folder for the `Column`s of a comparison of `sets` input sets; None for one set."""
    return _temporary_folder() if sets > 1 else None

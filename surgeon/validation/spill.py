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

A `RunOutputs` keeps its outputs, and their files, until it is closed or collected: a validation's
result gives them to its caller (`ValidationResult.runs`), so they last as long as the result. An
output's error columns go as soon as it is judged.
"""
from __future__ import annotations

import contextlib
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from surgeon.errors import SurgeonError

#: Bytes of outputs and errors that every `RunOutputs` and `Column` alive hold in memory together, at
#: most, before what they are given next goes to disk.
MEMORY_BUDGET = 256 << 20

# The bytes all holders alive hold, a running total: summing the holders on every append took 0.1 s of
# a compare of 2,000 outputs. A holder collected while it holds some (a result dropped) queues them from
# its finalizer, which can run in the middle of an update of the total; held() subtracts them. The lock
# keeps updates from several threads (validations side by side) from losing one another.
_held = 0
_collected: list[int] = []
_lock = threading.Lock()


def held() -> int:
    """Bytes every `RunOutputs` and `Column` alive hold in memory."""
    global _held
    with _lock:
        while _collected:
            _held -= _collected.pop()
        return _held


def _fits(size: int) -> bool:
    return held() + size <= MEMORY_BUDGET


def _collect(held_bytes: list[int]) -> None:
    _collected.append(held_bytes[0])


class _Holder:
    """Holds outputs or errors in memory: their bytes, `held`, counted in `held()` as they change, and
    let go of there when the holder is collected."""

    def __init__(self):
        self._bytes = [0]  # shared with the finalizer, which must not hold the holder
        weakref.finalize(self, _collect, self._bytes).atexit = False

    @property
    def held(self) -> int:
        """Bytes this holds in memory."""
        return self._bytes[0]

    def _hold(self, size: int) -> None:
        """Count `size` bytes more held (fewer where negative)."""
        global _held
        with _lock:
            _held += size
        self._bytes[0] += size


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


class RunOutputs(_Holder, Sequence):
    """One runner's outputs for each input set, in order ({output name: array} per set), with the
    runtime of each inference: in memory when `on_disk` is false; else in memory within
    `MEMORY_BUDGET`, past it one .npy file per output and set, read back when asked for."""

    def __init__(self, name: str, on_disk: bool = False):
        super().__init__()
        self.name = name
        self.runtimes: list[float | None] = []
        self._folder = _temporary_folder() if on_disk else None
        self._sets: list[dict] = []  # {name: array} held, or {name: position} written

    def append(self, outputs: dict, runtime: float | None = None) -> None:
        outputs = {name: _tensor(self.name, name, array) for name, array in outputs.items()}
        size = sum(array.nbytes for array in outputs.values())
        if self._folder is None:
            self._sets.append(outputs)
            self._hold(size)
        elif _fits(size):
            # Copies: Polygraphy's runners may reuse their output buffers for the next set.
            self._sets.append({name: array.copy() for name, array in outputs.items()})
            self._hold(size)
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
        self._sets = []
        self._hold(-self.held)
        if self._folder is not None:
            self._folder.cleanup()

    def _file(self, index: int, position: int) -> Path:
        # Positions, not names: an output name may hold any character.
        return Path(self._folder.name) / f"{index}-{position}.npy"


class Column(_Holder):
    """float64 values appended a set at a time and read back as one array, equal to their concatenation:
    in memory when `folder` is None; else in memory within `MEMORY_BUDGET`, past it all written to a file
    there and memory-mapped (pages the system can drop, not memory the validation holds).

    Held, the values are copied into one array as they come, made with room for the `appends` expected
    (the input sets) as large as the first, and made again larger where a set needs more: reading them
    back joins no copies, so judging an output holds its errors once, not twice."""

    def __init__(self, folder: Path | None, name: str, appends: int = 1):
        super().__init__()
        self._appends_left = appends
        self._buffer = np.empty(0)  # held: its first `_size` elements are the values
        self._path = None if folder is None else Path(folder) / f"{name}.f8"
        self._on_disk = False
        self._size = 0

    def append(self, values: np.ndarray) -> None:
        """Add `values` after those before; where they are all that is expected, the array given is kept, not
        copied (the caller lets go of it)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        end = self._size + values.size
        if self._on_disk or not self._held_in_memory(values, end):
            with _writing(self._path.parent), open(self._path, "ab") as handle:
                if not self._on_disk:  # the values held so far go first: one file, in order
                    self._buffer[:self._size].tofile(handle)
                    self._buffer, self._on_disk = np.empty(0), True
                    self._hold(-self.held)
                values.tofile(handle)
        self._size = end
        self._appends_left -= 1

    def _held_in_memory(self, values: np.ndarray, end: int) -> bool:
        """Put `values` after those held, in room made where there is none (for as many values per append
        still expected) if the budget has it; False where it has not."""
        if end > self._buffer.size:
            room = max(end, self._size + values.size * self._appends_left)
            if self._path is not None and not _fits((room - self._buffer.size) * values.itemsize):
                return False
            if room == values.size:  # the only values expected: kept as they are, not copied
                self._hold(values.nbytes - self._buffer.nbytes)
                self._buffer = values
                return True
            buffer = np.empty(room)
            buffer[:self._size] = self._buffer[:self._size]
            self._hold(buffer.nbytes - self._buffer.nbytes)
            self._buffer = buffer
        self._buffer[self._size:end] = values
        return True

    def discard(self) -> None:
        """Let the values go (delete their file, where they went to one)."""
        if self._on_disk:
            self._path.unlink(missing_ok=True)
        self._buffer, self._size, self._on_disk = np.empty(0), 0, False
        self._hold(-self.held)

    def values(self) -> np.ndarray:
        """Every value appended, one array the caller may reorder (a writable memory map on disk)."""
        if self._on_disk and self._size:  # an empty file cannot be mapped
            return np.memmap(self._path, np.float64, mode="r+", shape=(self._size,))
        return self._buffer[:self._size]


def column_folder(sets: int) -> tempfile.TemporaryDirectory | None:
    """A temporary folder for the `Column`s of a comparison of `sets` input sets; None for one set."""
    return _temporary_folder() if sets > 1 else None

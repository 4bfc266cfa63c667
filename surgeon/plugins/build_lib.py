"""Build and load `libsurgeon_plugins.so`: the plugins' CUDA kernels (and TensorRT wrappers) via CMake.

    build_library(out_dir, tensorrt_root=None, cuda_architectures="80")  # cmake configure + build
    builtin_library()        # the built library's path, or a SurgeonError saying how to build it
    load_library()           # ctypes handle with the C API of surgeon_plugins.h declared

The library goes to `$SURGEON_PLUGINS_DIR` or `~/.cache/surgeon/plugins` unless told otherwise; the
TensorRT IPluginV3 wrappers are compiled in only when CMake finds `NvInfer.h` (`--tensorrt-root`).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from surgeon.errors import SurgeonError

SOURCE_DIR = Path(__file__).resolve().parent
LIBRARY_NAME = "libsurgeon_plugins.so"
_NVCC_FALLBACKS = ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc")


def default_dir() -> Path:
    return Path(os.environ.get("SURGEON_PLUGINS_DIR") or Path.home() / ".cache" / "surgeon" / "plugins")


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    return found or next((p for p in _NVCC_FALLBACKS if Path(p).is_file()), None)


def missing_tools() -> str | None:
    """Why the library cannot be built here (no CMake, no nvcc), or None."""
    if shutil.which("cmake") is None:
        return "CMake is not on PATH (apt-get install cmake or pip install cmake)"
    if find_nvcc() is None:
        return "CUDA's nvcc was not found (on PATH or in /usr/local/cuda/bin); install the CUDA toolkit"
    return None


@dataclass
class LibraryBuild:
    library: Path
    with_tensorrt: bool
    seconds: float
    log: Path

    def summary(self) -> str:
        plugins = "with the TensorRT plugins" if self.with_tensorrt else \
            "kernels and C API only (TensorRT headers not found; pass --tensorrt-root)"
        return f"built {self.library} in {self.seconds:.1f}s, {plugins}"


def build_library(out_dir=None, tensorrt_root=None, cuda_architectures: str | None = None,
                  jobs: int | None = None) -> LibraryBuild:
    """Configure and build with CMake into `out_dir`; raise SurgeonError with the log's tail on failure."""
    reason = missing_tools()
    if reason:
        raise SurgeonError(f"cannot build the plugin library: {reason}")
    out_dir = Path(out_dir) if out_dir is not None else default_dir()
    build_dir = out_dir / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "build.log"
    configure = ["cmake", "-S", str(SOURCE_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CUDA_COMPILER={find_nvcc()}"]
    if tensorrt_root:
        if not (Path(tensorrt_root) / "include" / "NvInfer.h").is_file():
            raise SurgeonError(f"--tensorrt-root {tensorrt_root} has no include/NvInfer.h")
        configure.append(f"-DTENSORRT_ROOT={Path(tensorrt_root).resolve()}")
    if cuda_architectures:
        configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures.replace(',', ';')}")
    started = time.perf_counter()
    with log.open("w") as sink:
        for command in (configure, ["cmake", "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 1)]):
            sink.write("$ " + " ".join(command) + "\n")
            sink.flush()
            if subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT).returncode != 0:
                tail = "\n".join(log.read_text().splitlines()[-15:])
                raise SurgeonError(f"building the plugin library failed (full log: {log}):\n{tail}")
    library = out_dir / LIBRARY_NAME
    shutil.copy2(build_dir / LIBRARY_NAME, library)
    cache = (build_dir / "CMakeCache.txt").read_text()
    with_tensorrt = "TENSORRT_INCLUDE_DIR:PATH=" in cache and "TENSORRT_INCLUDE_DIR:PATH=TENSORRT_INCLUDE_DIR-NOTFOUND" \
        not in cache and "TENSORRT_LIBRARY:FILEPATH=TENSORRT_LIBRARY-NOTFOUND" not in cache
    return LibraryBuild(library, with_tensorrt, time.perf_counter() - started, log)


def builtin_library(directory=None) -> Path:
    """The built library (`surgeon plugins build`), or a SurgeonError saying how to build it."""
    library = Path(directory or default_dir()) / LIBRARY_NAME
    if not library.is_file():
        raise SurgeonError(f"surgeon's plugin library is not built ({library} does not exist): run "
                           "'surgeon plugins build' (needs CMake, the CUDA toolkit and, for TensorRT, "
                           "--tensorrt-root)")
    return library


_FLOAT, _INT = ctypes.c_void_p, ctypes.c_int
#: The C API of surgeon_plugins.h: every argument after `dtype` (pointers as void*, sizes as int, the stream).
C_API = {
    "surgeon_msda": [_FLOAT] * 6 + [_INT] * 7 + [_FLOAT],
    "surgeon_grid_sample_2d": [_FLOAT] * 3 + [_INT] * 9 + [_FLOAT],
    "surgeon_bev_pool": [_FLOAT] * 8 + [_INT] * 4 + [_FLOAT],
    "surgeon_rotate": [_FLOAT] * 4 + [_INT] * 5 + [_FLOAT],
    "surgeon_deformable_aggregation": [_FLOAT] * 6 + [_INT] * 8 + [_FLOAT],
}
DTYPES = {"float32": 0, "float16": 1}


def load_library(path=None) -> ctypes.CDLL:
    """The library with its launch functions' signatures declared (each returns a cudaError_t)."""
    library = ctypes.CDLL(str(path or builtin_library()))
    for name, argtypes in C_API.items():
        function = getattr(library, name)
        function.argtypes = [ctypes.c_int] + argtypes
        function.restype = ctypes.c_int
    return library

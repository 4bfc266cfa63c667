"""Build and load `libsurgeon_plugins.so`: the plugins' CUDA kernels (and TensorRT wrappers) via CMake.

    build_library(out_dir, tensorrt_root=None, cuda_architectures="80")  # cmake configure + build
    builtin_library()        # the built library's path, or a SurgeonError saying how to build it
    tensorrt_library()       # the same, refused when it was built without the TensorRT plugins
    load_library()           # ctypes handle with the C API of surgeon_plugins.h declared

The library goes to `$SURGEON_PLUGINS_DIR` or `~/.cache/surgeon/plugins` unless told otherwise; the
TensorRT IPluginV3 wrappers are compiled in only when CMake finds TensorRT 10+ headers
(`--tensorrt-root`). Beside the library, `libsurgeon_plugins.json` records whether they were and why not.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from surgeon.errors import SurgeonError

SOURCE_DIR = Path(__file__).resolve().parent
LIBRARY_NAME = "libsurgeon_plugins.so"
RECORD_NAME = "libsurgeon_plugins.json"
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
    #: Which TensorRT the wrappers were built against, or why they were not (CMake's words).
    tensorrt: str
    seconds: float
    log: Path

    def summary(self) -> str:
        plugins = "with the TensorRT plugins" if self.with_tensorrt else "kernels and C API only, no TensorRT plugins"
        return f"built {self.library} in {self.seconds:.1f}s, {plugins}: {self.tensorrt}"


def configure_command(build_dir, tensorrt_root=None, cuda_architectures: str | None = None) -> list[str]:
    """The `cmake` configure command of a build in `build_dir`."""
    # A reused build folder's cache keeps the last build's choices: each build is made from its own arguments
    # (and TensorRT looked for again, where it is now).
    command = ["cmake", "-S", str(SOURCE_DIR), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
               f"-DCMAKE_CUDA_COMPILER={find_nvcc()}", "-UTENSORRT_INCLUDE_DIR", "-UTENSORRT_LIBRARY"]
    if tensorrt_root:
        if not (Path(tensorrt_root) / "include" / "NvInfer.h").is_file():
            raise SurgeonError(f"--tensorrt-root {tensorrt_root} has no include/NvInfer.h")
        command.append(f"-DTENSORRT_ROOT={Path(tensorrt_root).resolve()}")
    else:
        command.append("-UTENSORRT_ROOT")
    if cuda_architectures:
        command.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures.replace(',', ';')}")
    else:  # CMakeLists.txt's default
        command.append("-UCMAKE_CUDA_ARCHITECTURES")
    return command


def configured(build_dir) -> dict[str, str]:
    """CMakeCache.txt of `build_dir` as {NAME: value}."""
    entries = {}
    for line in (Path(build_dir) / "CMakeCache.txt").read_text().splitlines():
        name, colon, rest = line.partition(":")
        if colon and "=" in rest and not line.startswith(("#", "//")):
            entries[name] = rest.split("=", 1)[1]
    return entries


def build_library(out_dir=None, tensorrt_root=None, cuda_architectures: str | None = None,
                  jobs: int | None = None) -> LibraryBuild:
    """Configure and build with CMake into `out_dir`; raise SurgeonError with the log's tail on failure.

    The library replaces the old one by a rename, so a process that has it loaded keeps its own copy."""
    from surgeon.modelio import guard_outputs, write_bytes_atomic, write_text_atomic

    out_dir = Path(out_dir) if out_dir is not None else default_dir()
    build_dir, library, record, log = out_dir / "build", out_dir / LIBRARY_NAME, out_dir / RECORD_NAME, \
        out_dir / "build.log"
    guard_outputs([(library, "the plugin library", "--out"), (record, "the plugin library's build record", "--out"),
                   (log, "the build log", "--out"), (build_dir / "CMakeCache.txt", "CMake's cache", "--out")])
    reason = missing_tools()
    if reason:
        raise SurgeonError(f"cannot build the plugin library: {reason}")
    configure = configure_command(build_dir, tensorrt_root, cuda_architectures)
    build_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as sink:
        for command in (configure, ["cmake", "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 1)]):
            sink.write("$ " + " ".join(command) + "\n")
            sink.flush()
            if subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT).returncode != 0:
                tail = "\n".join(log.read_text().splitlines()[-15:])
                raise SurgeonError(f"building the plugin library failed (full log: {log}):\n{tail}")
    cache = configured(build_dir)
    result = LibraryBuild(library, cache.get("SURGEON_WITH_TENSORRT") == "ON", cache.get("SURGEON_TENSORRT_NOTE", ""),
                          time.perf_counter() - started, log)
    write_bytes_atomic(library, (build_dir / LIBRARY_NAME).read_bytes())
    write_text_atomic(record, json.dumps({"with_tensorrt": result.with_tensorrt, "tensorrt": result.tensorrt,
                                          "cuda_architectures": cache.get("CMAKE_CUDA_ARCHITECTURES")},
                                         indent=2, sort_keys=True) + "\n")
    return result


def builtin_library(directory=None) -> Path:
    """The built library (`surgeon plugins build`), or a SurgeonError saying how to build it."""
    library = Path(directory or default_dir()) / LIBRARY_NAME
    if not library.is_file():
        raise SurgeonError(f"surgeon's plugin library is not built ({library} does not exist): run "
                           "'surgeon plugins build' (needs CMake, the CUDA toolkit and, for TensorRT, "
                           "--tensorrt-root)")
    return library


def tensorrt_library(directory=None) -> Path:
    """The built library for TensorRT to load: a SurgeonError unless its build record says it has the
    TensorRT plugins (a kernels-only library registers none, and TensorRT would only say it cannot find them)."""
    library = builtin_library(directory)
    try:
        record = json.loads((library.parent / RECORD_NAME).read_text())
    except (OSError, ValueError):
        record = {"tensorrt": f"no readable build record {library.parent / RECORD_NAME} beside it"}
    if record.get("with_tensorrt") is not True:
        raise SurgeonError(f"{library} has the kernels and their C API only, no TensorRT plugins: "
                           f"{record.get('tensorrt') or 'built without TensorRT'}",
                           hint="rebuild it with TensorRT 10 or newer: surgeon plugins build --tensorrt-root DIR")
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

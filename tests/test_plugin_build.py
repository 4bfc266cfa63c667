"""libsurgeon_plugins.so compiles with CMake + nvcc (one CUDA architecture, to stay near a minute) and
exports the C API of surgeon_plugins.h; `surgeon plugins build` drives the same build. The CMake
configure step alone (seconds) shows the default architectures and which TensorRT headers it builds
against; stand-in TensorRT installs are header files with the version macros, nothing that runs."""
from __future__ import annotations

import ctypes
import json
import re
import subprocess
from pathlib import Path

import pytest

from surgeon.cli import main
from surgeon.plugins.build_lib import (C_API, LIBRARY_NAME, RECORD_NAME, SOURCE_DIR, configure_command, configured,
                                       load_library, missing_tools)

MISSING = missing_tools()
needs_tools = pytest.mark.skipif(MISSING is not None, reason=f"cannot compile the CUDA kernels here: {MISSING}")


def fake_tensorrt(root: Path, version_lines: str, header: str = "NvInferVersion.h") -> Path:
    """A TensorRT install as CMake sees it: include/NvInfer.h, the version macros, lib/libnvinfer.so."""
    (root / "include").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "lib" / "libnvinfer.so").write_bytes(b"")
    (root / "include" / "NvInfer.h").write_text('#include "NvInferVersion.h"\n')
    (root / "include" / header).write_text(version_lines)
    return root


def configure(build_dir: Path, tensorrt_root=None, cuda_architectures=None) -> dict[str, str]:
    subprocess.run(configure_command(build_dir, tensorrt_root, cuda_architectures), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return configured(build_dir)


@pytest.mark.slow
@needs_tools
def test_plugins_build_compiles_the_kernels_against_tensorrt_8_headers_and_says_why_no_plugins(tmp_path, capsys):
    """TensorRT 8.x has no IPluginV3: trt_plugins.cpp is left out, the kernels and C API still build, and the
    report and the record beside the library say why."""
    root = fake_tensorrt(tmp_path / "trt8", "#define NV_TENSORRT_MAJOR 8\n#define NV_TENSORRT_MINOR 6\n")
    out = tmp_path / "lib"
    args = ["plugins", "build", "--out", str(out), "--cuda-arch", "80", "--tensorrt-root", str(root), "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    library = out / LIBRARY_NAME
    assert library.is_file() and report["library"] == str(library) and report["with_tensorrt"] is False
    assert report["tensorrt"] == (f"TensorRT 8 found at {root.resolve()}/include, but the IPluginV3 wrappers "
                                  "need TensorRT 10 or newer")
    assert json.loads((out / RECORD_NAME).read_text()) == {"with_tensorrt": False, "tensorrt": report["tensorrt"],
                                                           "cuda_architectures": "80"}
    assert "trt_plugins.cpp" not in (out / "build.log").read_text()
    handle = load_library(library)
    for name in C_API:
        assert isinstance(getattr(handle, name), ctypes._CFuncPtr)
    # A rebuild renames a new file over the library: a process that has the old one loaded keeps its inode.
    inode = library.stat().st_ino
    assert main(args) == 0
    assert library.stat().st_ino != inode


@pytest.mark.slow
@needs_tools
def test_the_default_cuda_architectures_are_the_documented_ones(tmp_path):
    """project(... CUDA) would set nvcc's own default (sm_75 for nvcc 13) before CMakeLists.txt could; and a
    build folder reused from a --cuda-arch build goes back to the default when no list is given."""
    build = tmp_path / "build"
    assert configure(build, cuda_architectures="80")["CMAKE_CUDA_ARCHITECTURES"] == "80"
    assert configure(build)["CMAKE_CUDA_ARCHITECTURES"] == "80;86;87;89;90"
    flags = (build / "CMakeFiles" / "surgeon_plugins.dir" / "flags.make").read_text()
    assert re.findall(r"code=\[compute_\d+,sm_(\d+)\]", flags) == ["80", "86", "87", "89", "90"]


@pytest.mark.slow
@needs_tools
def test_the_ipluginv3_wrappers_are_built_for_tensorrt_10_and_newer_only(tmp_path):
    versions = {  # header, contents -> (compiled in?, note)
        "trt8": ("NvInferVersion.h", "#define NV_TENSORRT_MAJOR 8\n", False, "TensorRT 8 found at {include}, but"),
        # TensorRT 10.11 and later spell the major version through another macro
        "trt10": ("NvInferVersion.h", "#define TRT_MAJOR_ENTERPRISE 10\n#define NV_TENSORRT_MAJOR "
                  "TRT_MAJOR_ENTERPRISE //!< TensorRT major version.\n", True, "TensorRT 10 at {include}"),
        "trt8-in-nvinfer": ("NvInfer.h", "#define NV_TENSORRT_MAJOR 8\n", False, "TensorRT 8 found at {include}"),
        "unversioned": ("NvInferVersion.h", "// no version\n", False, "TensorRT at {include}, but no NV_TENSORRT_MAJOR"),
    }
    build = tmp_path / "build"
    for name, (header, text, with_tensorrt, note) in versions.items():
        root = fake_tensorrt(tmp_path / name, text, header)
        cache = configure(build, root, "80")  # the same build folder: TensorRT is looked for again each time
        assert (cache["SURGEON_WITH_TENSORRT"] == "ON") == with_tensorrt, name
        assert cache["SURGEON_TENSORRT_NOTE"].startswith(note.format(include=root.resolve() / "include")), name
        sources = (build / "CMakeFiles" / "surgeon_plugins.dir" / "build.make").read_text()
        assert ("trt_plugins.cpp" in sources) == with_tensorrt, name
    cache = configure(build)
    assert cache["SURGEON_WITH_TENSORRT"] == "OFF" and cache["SURGEON_TENSORRT_NOTE"].startswith(
        "TensorRT headers not found")


@pytest.mark.parametrize("below", ["", "sub"])
def test_plugins_build_into_a_file_names_out(tmp_path, capsys, below):
    (tmp_path / "file").write_text("mine")
    out = tmp_path / "file" / below
    assert main(["plugins", "build", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"surgeon: error: {out / LIBRARY_NAME}: cannot write the plugin library there: "
                     f"{tmp_path / 'file'} is a file, not a folder (choose another --out)")
    assert (tmp_path / "file").read_text() == "mine"


def test_c_api_declarations_match_the_header():
    """build_lib's ctypes signatures and surgeon_plugins.h declare the same functions and arity."""
    header = (SOURCE_DIR / "surgeon_plugins.h").read_text()
    declared = {name: args for name, args in re.findall(r"cudaError_t (surgeon_\w+)\(([^;]*)\);", header)}
    assert set(declared) == set(C_API)
    for name, args in declared.items():
        assert len(args.split(",")) == 1 + len(C_API[name]), name


def test_every_kernel_source_is_in_the_cmake_library():
    cmake = (SOURCE_DIR / "CMakeLists.txt").read_text()
    for source in sorted(Path(SOURCE_DIR).glob("*.cu")):
        assert source.name in cmake, source.name

"""libsurgeon_plugins.so compiles with CMake + nvcc (one CUDA architecture, to stay near a minute) and
exports the C API of surgeon_plugins.h; `surgeon plugins build` drives the same build."""
from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path

import pytest

from surgeon.cli import main
from surgeon.plugins.build_lib import C_API, LIBRARY_NAME, SOURCE_DIR, load_library, missing_tools

MISSING = missing_tools()


@pytest.mark.slow
@pytest.mark.skipif(MISSING is not None, reason=f"cannot compile the CUDA kernels here: {MISSING}")
def test_plugins_build_compiles_the_library_with_the_c_api(tmp_path, capsys):
    assert main(["plugins", "build", "--out", str(tmp_path), "--cuda-arch", "80", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    library = tmp_path / LIBRARY_NAME
    assert library.is_file() and report["library"] == str(library)
    # The report says whether CMake found TensorRT (and so compiled the IPluginV3 wrappers), as CMake did.
    log = (tmp_path / "build.log").read_text()
    assert ("TensorRT found" in log) == report["with_tensorrt"]
    assert ("TensorRT headers not found" in log) == (not report["with_tensorrt"])
    handle = load_library(library)
    for name in C_API:
        assert isinstance(getattr(handle, name), ctypes._CFuncPtr)


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

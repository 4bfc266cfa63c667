"""The installed package must carry the engine, the built-in passes, recipes, profiles and plugin sources."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile

import pytest

from conftest import REPO


def declared_packages() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_every_python_package_in_the_tree_is_declared():
    found = {"surgeon." + ".".join(p.parent.relative_to(REPO / "surgeon").parts)
             for p in (REPO / "surgeon").rglob("__init__.py")}
    # passes/ and recipes/ live outside surgeon/; the two targets folders hold YAML only (data packages)
    data_packages = {"surgeon.passes", "surgeon.recipes", "surgeon.recipes.targets", "surgeon.targets"}
    found = {name.rstrip(".") for name in found} | data_packages
    assert sorted(found) == sorted(declared_packages())


@pytest.mark.slow
def test_wheel_contains_passes_recipes_and_profiles(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("surgeon-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "surgeon/passes/toposort.py" in names and "surgeon/passes/__init__.py" in names
    assert "surgeon/recipes/centerpoint-pfe-repair.yaml" in names
    assert "surgeon/targets/tensorrt-8.6.yaml" in names
    assert not any(n.startswith(("passes/", "recipes/", "tests/")) for n in names)

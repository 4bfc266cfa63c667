"""The pre-commit hooks of .pre-commit-hooks.yaml, run for real by pre-commit on a throwaway repository.

pre-commit installs surgeon from the committed HEAD of this repository (pip, with dependencies from
PyPI) into its own environment, so these tests see committed files only and take a minute or more:
`try-repo` always installs into a fresh temporary store; the pinned-config test keeps its environment
in ~/.cache/surgeon-tests/pre-commit, reused while HEAD stays the same.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.testing import make_model

REPO = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "surgeon-tests" / "pre-commit"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("pre_commit") is None,
                       reason="pre-commit is not installed (pip install 'surgeon[dev]')"),
    pytest.mark.skipif(shutil.which("git") is None, reason="git is not on PATH; pre-commit needs it"),
]


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def project(tmp_path):
    """A git repository with good.onnx (a Relu) and bad.onnx (an ATen grid_sampler ONNX Runtime cannot run)."""
    good = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2])],
                      [("y", np.float32, [2])])
    aten = helper.make_node("ATen", ["x", "g"], ["y"], name="/ATen_12", domain="org.pytorch.aten",
                            operator="grid_sampler")
    bad = make_model([aten], [("x", np.float32, [1, 2, 3, 3]), ("g", np.float32, [1, 3, 3, 2])],
                     [("y", np.float32, [1, 2, 3, 3])])
    onnx.save(good, tmp_path / "good.onnx")
    onnx.save(bad, tmp_path / "bad.onnx")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "typo.yaml").write_text("name: typo\nsteps:\n  - pass: toposrot\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    return tmp_path


def _pre_commit(project, *args, home=None):
    env = {**os.environ, "PRE_COMMIT_HOME": str(home or CACHE), "PRE_COMMIT_COLOR": "never"}
    done = subprocess.run([sys.executable, "-m", "pre_commit", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr


def test_try_repo_fails_on_the_bad_model_only(project, tmp_path_factory):
    code, output = _pre_commit(project, "try-repo", str(REPO), "surgeon-check", "--verbose",
                               "--files", "good.onnx", "bad.onnx", home=tmp_path_factory.mktemp("home"))
    assert code == 1, output
    assert "bad.onnx: SG001 error node /ATen_12 (ATen:grid_sampler) not runnable on onnxruntime" in output
    assert "good.onnx:" not in output
    assert "1 error in 2 files" in output


@pytest.fixture
def pinned(project):
    """The project with a .pre-commit-config.yaml using both hooks at this repository's HEAD."""
    head = _git(REPO, "rev-parse", "HEAD")
    (project / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {REPO}\n    rev: {head}\n    hooks:\n"
        "      - id: surgeon-check\n        args: [--target, tensorrt-8.6]\n"
        "      - id: surgeon-recipe-lint\n")
    return project


def test_pinned_model_hook_passes_good_and_fails_bad(pinned):
    code, output = _pre_commit(pinned, "run", "surgeon-check", "--files", "good.onnx")
    assert code == 0, output
    assert "Passed" in output
    code, output = _pre_commit(pinned, "run", "surgeon-check", "--files", "bad.onnx")
    assert code == 1, output
    assert ("bad.onnx: SG001 error node /ATen_12 (ATen:grid_sampler) not runnable on tensorrt-8.6 "
            "— fix: pass grid-sample (native GridSample), or mode=plugin or mode=decompose") in output


def test_pinned_recipe_hook_reports_the_recipe_line(pinned):
    code, output = _pre_commit(pinned, "run", "surgeon-recipe-lint", "--files", "recipes/typo.yaml")
    assert code == 1, output
    assert "recipes/typo.yaml:3:" in output and "SR001 error unknown pass 'toposrot'" in output

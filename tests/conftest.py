"""Shared fixtures: small models and paths to the bundled data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from surgeon.testing import make_model

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def relu_model():
    """x -> Relu -> Neg -> y, with a dead branch and an unused initializer."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Neg", ["r"], ["y"], name="neg"),
             helper.make_node("Abs", ["x"], ["dead"], name="dead_abs")]
    return make_model(nodes, [("x", np.float32, [2, 3])], [("y", np.float32, [2, 3])],
                      initializers={"unused_w": np.ones(3, np.float32)})


@pytest.fixture
def model_file(tmp_path, relu_model):
    import onnx

    path = tmp_path / "model.onnx"
    onnx.save(relu_model, path)
    return path

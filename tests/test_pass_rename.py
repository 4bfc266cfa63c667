import numpy as np
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model, run_ort


def model():
    nodes = [helper.make_node("Relu", ["input.1"], ["12"], name="Relu_0"),
             helper.make_node("Neg", ["12"], ["47"], name="Neg_1")]
    return make_model(nodes, [("input.1", np.float32, [3])], [("47", np.float32, [3])])


def test_rename_inputs_outputs_tensors_nodes():
    out, step = apply_pass(model(), "rename", inputs={"input.1": "voxels"}, outputs={"47": "features"},
                           tensors={"12": "relu_out"}, nodes={"Relu_0": "relu"})
    assert out.graph.input[0].name == "voxels" and out.graph.output[0].name == "features"
    assert out.graph.node[0].name == "relu" and out.graph.node[0].output[0] == "relu_out"
    x = np.array([-1, 0, 2], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"voxels": x})[0], -np.maximum(x, 0))
    assert len(step.rewritten) == 4


def test_rename_errors():
    with pytest.raises(SurgeonError, match="no input named 'input1'.*input.1"):
        apply_pass(model(), "rename", inputs={"input1": "x"})
    with pytest.raises(SurgeonError, match="'12' is already used"):
        apply_pass(model(), "rename", outputs={"47": "12"})

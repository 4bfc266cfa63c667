import numpy as np
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model, run_ort


def model():
    nodes = [helper.make_node("Identity", ["x"], ["a"], name="id"),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Dropout", ["b"], ["y"], name="drop")]
    return make_model(nodes, [("x", np.float32, [3])], [("y", np.float32, [3])], opset=13)


def test_remove_by_op_type_and_name_keeps_output_name():
    out, step = apply_pass(model(), "remove-node", op_types=["Identity"], names=["drop"])
    assert [n.op_type for n in out.graph.node] == ["Relu", "Identity"]
    assert out.graph.output[0].name == "y" and sorted(step.rewritten) == ["drop", "id"]
    x = np.array([-1, 0, 2], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], np.maximum(x, 0))


def test_remove_is_idempotent():
    once, _ = apply_pass(model(), "remove-node", op_types=["Identity", "Dropout"])
    twice, step = apply_pass(once, "remove-node", op_types=["Identity", "Dropout"])
    assert step.rewritten == [] and twice.graph == once.graph


def test_unknown_name_is_an_error():
    with pytest.raises(SurgeonError, match="no node named 'dropp'.*drop"):
        apply_pass(model(), "remove-node", names=["dropp"])

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


def batchnorm_model():
    """x -> BatchNormalization(scale 2, bias 1, mean 0, var 1) -> y"""
    nodes = [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], name="bn",
                              epsilon=0.0)]
    params = {"scale": np.full(3, 2, np.float32), "bias": np.ones(3, np.float32),
              "mean": np.zeros(3, np.float32), "var": np.ones(3, np.float32)}
    return make_model(nodes, [("x", np.float32, [1, 3])], [("y", np.float32, [1, 3])], params, opset=13)


def test_op_types_refuses_a_node_that_reads_more_than_its_first_input():
    with pytest.raises(SurgeonError, match="'bn' \\(BatchNormalization\\) also reads scale, bias, mean, var.*"
                                           "name it in 'names'"):
        apply_pass(batchnorm_model(), "remove-node", op_types=["BatchNormalization"])


def test_names_removes_it_wiring_the_first_input_through_and_says_so():
    out, step = apply_pass(batchnorm_model(), "remove-node", names=["bn"])
    assert step.rewritten == ["bn"]
    assert step.notes == ["bn (BatchNormalization): 'x' took its output's place; no longer read by it: "
                          "scale, bias, mean, var"]
    x = np.array([[-1, 0, 2]], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], x)


def test_op_types_removes_dropout_with_its_ratio_and_training_mode_inputs():
    nodes = [helper.make_node("Dropout", ["x", "ratio", "training"], ["d"], name="drop"),
             helper.make_node("Relu", ["d"], ["y"], name="relu")]
    model = make_model(nodes, [("x", np.float32, [3])], [("y", np.float32, [3])],
                       {"ratio": np.float32(0.5), "training": np.bool_(False)}, opset=13)
    out, step = apply_pass(model, "remove-node", op_types=["Dropout"])
    assert [n.op_type for n in out.graph.node] == ["Relu"] and step.notes == []
    x = np.array([-1, 0, 2], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], np.maximum(x, 0))

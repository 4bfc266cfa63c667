import numpy as np
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model


def dynamic_model():
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="relu"), helper.make_node("Neg", ["t"], ["y"], name="neg")]
    return make_model(nodes, [("x", np.float32, ["batch", 5])], [("y", np.float32, ["batch", 5])])


def dims(value_info):
    return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]


def test_set_input_shapes_makes_dims_static_downstream():
    out, step = apply_pass(dynamic_model(), "set-input-shapes", shapes={"x": [4, 5]})
    assert dims(out.graph.input[0]) == [4, 5] and dims(out.graph.output[0]) == [4, 5]
    assert step.rewritten == ["input:x"]


def test_set_input_shapes_errors_name_the_input():
    with pytest.raises(SurgeonError, match="no graph input named 'X'"):
        apply_pass(dynamic_model(), "set-input-shapes", shapes={"X": [4, 5]})
    with pytest.raises(SurgeonError, match="rank 2"):
        apply_pass(dynamic_model(), "set-input-shapes", shapes={"x": [4]})


def test_same_shape_is_no_change():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", np.float32, [4, 5])],
                       [("y", np.float32, [4, 5])])
    _, step = apply_pass(model, "set-input-shapes", shapes={"x": [4, 5]})
    assert step.rewritten == []


def test_a_sorted_graph_keeps_its_node_order():
    """The stable order the pipeline promises: graphsurgeon's own toposort would move `c` before `b`."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"), helper.make_node("Neg", ["a"], ["b"], name="b"),
             helper.make_node("Abs", ["x"], ["c"], name="c")]
    model = make_model(nodes, [("x", np.float32, ["batch", 4])],
                       [("b", np.float32, ["batch", 4]), ("c", np.float32, ["batch", 4])])
    out, _ = apply_pass(model, "set-input-shapes", shapes={"x": [1, 4]})
    assert [n.name for n in out.graph.node] == ["a", "b", "c"]
    assert dims(out.graph.output[0]) == [1, 4] and dims(out.graph.output[1]) == [1, 4]

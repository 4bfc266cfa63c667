from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model

ZOO = Path(__file__).parent / "data" / "zoo"


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


def plugin_model(x_shape, y_shape):
    """Relu -> a plugin node (no schema: inference stops there) -> Relu; `p` declared like `y`."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("MyPlugin", ["r"], ["p"], name="plugin", domain="trt.plugins"),
             helper.make_node("Relu", ["p"], ["y"], name="relu2")]
    model = make_model(nodes, [("x", np.float32, x_shape)], [("y", np.float32, y_shape)])
    model.graph.value_info.append(helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, y_shape))
    return model


def test_declared_shapes_past_a_plugin_take_the_new_dims():
    out, _ = apply_pass(plugin_model(["N", 4], ["N", 4, "K"]), "set-input-shapes", shapes={"x": [2, 4]})
    onnx.checker.check_model(out)  # graph outputs without a shape fail it
    assert dims(out.graph.output[0]) == [2, 4, "K"]  # N is x's dim, now 2; K is no input's: it stays
    assert dims(next(v for v in out.graph.value_info if v.name == "p")) == [2, 4, "K"]
    assert dims(next(v for v in out.graph.value_info if v.name == "r")) == [2, 4]  # inferred


def test_static_declared_dims_past_a_plugin_become_unknown_when_a_static_input_dim_changes():
    """y[1, 4] could read x's batch of 1 (it does here), or not: only its rank can be kept."""
    out, _ = apply_pass(plugin_model([1, 4], [1, 4]), "set-input-shapes", shapes={"x": ["batch", 4]})
    onnx.checker.check_model(out)
    shape = out.graph.output[0].type.tensor_type.shape
    assert len(shape.dim) == 2 and not any(d.HasField("dim_value") for d in shape.dim)  # unknown, or unk__N


def test_a_dim_name_given_two_values_is_not_carried():
    nodes = [helper.make_node("MyPlugin", ["a", "b"], ["y"], name="plugin", domain="trt.plugins")]
    model = make_model(nodes, [("a", np.float32, ["N", 3]), ("b", np.float32, ["N"])], [("y", np.float32, ["N", 3])])
    out, _ = apply_pass(model, "set-input-shapes", shapes={"a": [2, 3], "b": [5]})
    onnx.checker.check_model(out)
    first, second = out.graph.output[0].type.tensor_type.shape.dim
    assert not first.HasField("dim_value") and first.dim_param != "N" and second.dim_value == 3


def test_zoo_aten_model_with_a_dynamic_batch_passes_the_checker():
    """The ATen grid sampler stops inference: bevformer's outputs keep their rank (the CLI exited 1 before)."""
    model = onnx.load(ZOO / "bevformer-tiny.fixture.opset11-aten.onnx")
    out, _ = apply_pass(model, "set-input-shapes", shapes={"image": ["batch", 6, 3, 64, 96]})
    onnx.checker.check_model(out)
    assert dims(out.graph.input[0]) == ["batch", 6, 3, 64, 96]
    assert [len(o.type.tensor_type.shape.dim) for o in out.graph.output] == [3, 4, 4]

import numpy as np
from onnx import helper

from surgeon.testing import apply_pass, make_model, run_ort


def test_set_opset_converts_split_attribute_to_input():
    node = helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=0, split=[1, 3])
    model = make_model([node], [("x", np.float32, [4])], [("a", np.float32, [1]), ("b", np.float32, [3])], opset=11)
    out, step = apply_pass(model, "set-opset", opset=13)
    assert {o.domain: o.version for o in out.opset_import}[""] == 13
    (split,) = [n for n in out.graph.node if n.op_type == "Split"]
    assert len(split.input) == 2 and step.rewritten == ["opset:11->13"]
    a, b = run_ort(out, {"x": np.arange(4, dtype=np.float32)})
    np.testing.assert_array_equal(b, [1, 2, 3])


def test_same_opset_is_no_change():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", np.float32, [2])],
                       [("y", np.float32, [2])], opset=13)
    _, step = apply_pass(model, "set-opset", opset=13)
    assert step.rewritten == []

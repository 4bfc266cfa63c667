import numpy as np
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model, run_ort


def test_simplify_removes_identity_chain_and_keeps_numbers():
    nodes = [helper.make_node("Identity", ["x"], ["a"], name="id1"),
             helper.make_node("Mul", ["a", "two"], ["b"], name="mul"),
             helper.make_node("Identity", ["b"], ["y"], name="id2")]
    model = make_model(nodes, [("x", np.float32, [3])], [("y", np.float32, [3])],
                       initializers={"two": np.float32(2)})
    out, step = apply_pass(model, "simplify")
    assert "id1" in step.rewritten and len(out.graph.node) < 3
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], 2 * x)


def test_simplify_failure_names_the_step():
    # Reshape to a size that does not fit: onnxsim's shape inference rejects the graph.
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")
    model = make_model([node], [("x", np.float32, [3])], [("y", np.float32, None)],
                       initializers={"shape": np.array([2, 2], np.int64)})
    with pytest.raises(SurgeonError, match=r"step 1 \(simplify\): onnxsim failed"):
        apply_pass(model, "simplify")

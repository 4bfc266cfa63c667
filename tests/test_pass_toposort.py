import onnx
import pytest

from surgeon.testing import apply_pass

from conftest import DATA


def test_toposort_orders_the_real_unsorted_graph():
    model = onnx.load(DATA / "centerpoint_pfe_sim_unsorted.onnx")
    out, step = apply_pass(model, "toposort")
    names = [n.name for n in out.graph.node]
    assert names.index("ReduceMax_5") < names.index("Tile_16")
    assert "ReduceMax_5" in step.rewritten
    onnx.checker.check_model(out)


def test_sorted_graph_is_left_alone(relu_model):
    _, step = apply_pass(relu_model, "toposort")
    assert step.rewritten == []


def test_cycle_is_a_clear_error():
    import numpy as np
    from onnx import helper

    from surgeon.errors import SurgeonError
    from surgeon.testing import make_model

    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="second")]
    model = make_model(nodes, [("x", np.float32, [2])], [("b", np.float32, [2])])
    with pytest.raises(SurgeonError, match="cycle through first, second"):
        apply_pass(model, "toposort")

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


def test_a_sorted_graph_whose_if_body_is_a_chain_is_left_alone():
    """Nodes inside an If branch produce tensors for each other; that is not an outer-graph order."""
    from onnx import TensorProto, helper

    from surgeon.graphio import import_graph
    from surgeon.rewrite import is_sorted, stable_toposort

    def branch(name, nodes, output):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1])])

    then = branch("then", [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Abs", ["a"], ["b"])], "b")
    other = branch("else", [helper.make_node("Abs", ["x"], ["c"])], "c")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x0"], ["x"], name="relu"),
         helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert is_sorted(import_graph(model).nodes)
    _, step = apply_pass(model, "toposort")
    assert step.rewritten == [] and step.notes == []
    imported = import_graph(model)
    imported.nodes.reverse()  # the If now reads x (through its branches) before Relu writes it
    assert not is_sorted(imported.nodes)
    assert stable_toposort(imported) and [n.name for n in imported.nodes] == ["relu", "if"]

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


def unsorted_if_model():
    """An If placed before the Relu that writes `t`, which both branches read from the outer graph
    (ONNX Runtime runs it; onnx.checker wants Relu first). graphsurgeon gives each branch a `t` of its
    own with no producer, since the Relu comes later in the file.

    y = -relu(x) if c else |relu(x)|
    """
    import numpy as np
    from onnx import TensorProto, helper

    from surgeon.testing import make_model

    then = helper.make_graph([helper.make_node("Neg", ["t"], ["o1"], name="neg")], "then", [],
                             [helper.make_tensor_value_info("o1", TensorProto.FLOAT, [4])])
    other = helper.make_graph([helper.make_node("Abs", ["t"], ["o2"], name="abs")], "else", [],
                              [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [4])])
    nodes = [helper.make_node("If", ["c"], ["y"], name="if", then_branch=then, else_branch=other),
             helper.make_node("Relu", ["x"], ["t"], name="relu")]
    return make_model(nodes, [("x", np.float32, [4]), ("c", np.bool_, [])], [("y", np.float32, [4])], opset=13)


def assert_same_on_ort(model, out, input_names=("x", "c")):
    """`out` passes onnx.checker and computes what `model` computes, bit for bit, for both branches."""
    import numpy as np

    from surgeon.testing import run_ort

    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(0).standard_normal(4).astype(np.float32)
    for c in (True, False):
        expected = run_ort(model, {"x": x, "c": np.array(c)})
        np.testing.assert_array_equal(run_ort(out, dict(zip(input_names, (x, np.array(c)))))[0], expected[0])


def test_a_tensor_read_only_inside_an_if_branch_orders_its_producer_first():
    from surgeon.graphio import import_graph
    from surgeon.rewrite import is_sorted

    model = unsorted_if_model()
    assert not is_sorted(import_graph(model).nodes)
    out, step = apply_pass(model, "toposort")
    assert [n.name for n in out.graph.node] == ["relu", "if"] and step.notes == ["reordered 2 node(s)"]
    assert_same_on_ort(model, out)


def test_a_read_from_an_if_inside_a_loop_body_orders_its_producer_first():
    """Nested subgraphs: the Loop's body holds the If that reads outer `t`."""
    import numpy as np
    from onnx import TensorProto, helper

    from surgeon.graphio import import_graph
    from surgeon.rewrite import is_sorted, stable_toposort
    from surgeon.testing import make_model, run_ort

    if_model = unsorted_if_model()
    inner_if = if_model.graph.node[0]
    body = helper.make_graph(
        [inner_if, helper.make_node("Add", ["v_in", "y"], ["v_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [4])])
    nodes = [helper.make_node("Loop", ["n", "", "v0"], ["v"], name="loop", body=body),
             helper.make_node("Relu", ["x"], ["t"], name="relu")]
    model = make_model(nodes, [("x", np.float32, [4]), ("c", np.bool_, []), ("v0", np.float32, [4])],
                       [("v", np.float32, [4])], {"n": np.array(3, np.int64)}, opset=13)
    graph = import_graph(model)
    assert not is_sorted(graph.nodes)
    assert stable_toposort(graph) and [n.name for n in graph.nodes] == ["relu", "loop"]
    out, _ = apply_pass(model, "toposort")
    onnx.checker.check_model(out, full_check=True)
    x, v0 = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    feeds = {"x": x, "c": np.array(False), "v0": v0}
    np.testing.assert_array_equal(run_ort(out, feeds)[0], run_ort(model, feeds)[0])


def test_the_nodes_inside_a_body_are_sorted_too():
    """A Loop whose body reads `u` before the body node writing it: onnx.checker refuses the body."""
    import numpy as np
    from onnx import TensorProto, helper

    from surgeon.graphio import import_graph
    from surgeon.rewrite import is_sorted
    from surgeon.testing import make_model, run_ort

    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "u"], ["v_out"], name="add"),
         helper.make_node("Neg", ["x"], ["u"], name="neg"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [4])])
    nodes = [helper.make_node("Loop", ["n", "", "v0"], ["v"], name="loop", body=body)]
    model = make_model(nodes, [("x", np.float32, [4]), ("v0", np.float32, [4])], [("v", np.float32, [4])],
                       {"n": np.array(3, np.int64)}, opset=13)
    assert not is_sorted(import_graph(model).nodes)
    out, step = apply_pass(model, "toposort")
    onnx.checker.check_model(out, full_check=True)
    assert [n.name for n in out.graph.node[0].attribute[0].g.node] == ["neg", "add", "keep_going"]
    assert step.rewritten == ["neg", "add"] and step.notes == ["reordered 2 node(s)"]
    x, v0 = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x, "v0": v0})[0], ((v0 - x) - x) - x)
    again, second = apply_pass(out, "toposort")
    assert second.rewritten == [] and again.graph == out.graph

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from surgeon.rewrite import export_graph, prune_graph
from surgeon.testing import apply_pass, run_ort


def test_cleanup_removes_dead_nodes_and_unused_initializers(relu_model):
    out, step = apply_pass(relu_model, "cleanup")
    assert [n.name for n in out.graph.node] == ["relu", "neg"]
    assert "dead_abs" in step.rewritten and "initializer:unused_w" in step.rewritten
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], -np.maximum(x, 0))


def test_cleanup_is_idempotent(relu_model):
    once, _ = apply_pass(relu_model, "cleanup")
    twice, step = apply_pass(once, "cleanup")
    assert step.rewritten == [] and twice.graph == once.graph


ZOO = Path(__file__).parent / "data" / "zoo"


@pytest.mark.parametrize("fixture", ["bevformer-tiny.fixture.opset11-aten.onnx", "bevfusion-camera.fixture.opset16.onnx",
                                     "sparse4d-head.fixture.opset11-aten.onnx"])
def test_prune_graph_removes_what_graphsurgeons_cleanup_removes(fixture):
    """Cut each real graph at a middle tensor (so half of it is dead) and prune it both ways."""
    graphs = [gs.import_onnx(onnx.load(ZOO / fixture)) for _ in range(2)]
    for graph in graphs:
        middle = graph.nodes[len(graph.nodes) // 2].outputs[0]
        graph.outputs = [middle]
    removed = prune_graph(graphs[0], remove_unused_inputs=True)
    graphs[1].cleanup(remove_unused_graph_inputs=True)
    assert removed and [n.name for n in graphs[0].nodes] == [n.name for n in graphs[1].nodes]
    assert [t.name for t in graphs[0].inputs] == [t.name for t in graphs[1].inputs]
    assert export_graph(graphs[0]).SerializeToString() == export_graph(graphs[1]).SerializeToString()


def test_initializers_read_only_inside_subgraphs_are_not_reported_unused():
    """An If branch (and an If inside it) reads outer initializers; only the one nothing reads is unused."""
    from onnx import TensorProto, helper, numpy_helper

    from surgeon.graphinfo import unused_initializers

    def branch(name, nodes, output):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1])])

    inner = helper.make_node("If", ["c"], ["deep"], name="inner_if",
                             then_branch=branch("t2", [helper.make_node("Neg", ["w_deep"], ["n2"])], "n2"),
                             else_branch=branch("e2", [helper.make_node("Abs", ["w_deep"], ["a2"])], "a2"))
    outer = helper.make_node("If", ["c"], ["y"], name="outer_if",
                             then_branch=branch("t1", [helper.make_node("Neg", ["w_then"], ["n1"])], "n1"),
                             else_branch=branch("e1", [inner], "deep"))
    graph = helper.make_graph(
        [outer], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, np.float32), n) for n in ("w_then", "w_deep", "w_dead")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert unused_initializers(model) == ["w_dead"]
    del model.graph.initializer[2]
    assert unused_initializers(model) == []


def loop_model():
    """v = v0 + 1, three times, in a Loop whose body never reads its iteration count `i` (and computes
    a `dead` tensor nothing reads)."""
    from onnx import TensorProto, helper

    from surgeon.testing import make_model

    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["v_out"], name="add"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Neg", ["v_in"], ["dead"], name="dead_neg")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])])
    return make_model([helper.make_node("Loop", ["n", "", "v0"], ["v"], name="loop", body=body)],
                      [("v0", np.float32, [1])], [("v", np.float32, [1])],
                      {"n": np.array(3, np.int64), "one": np.ones(1, np.float32)}, opset=13)


@pytest.mark.parametrize("pass_name, params", [("cleanup", {}), ("extract", {"outputs": ["v"]})])
def test_a_loop_body_keeps_its_unused_iteration_count_input(pass_name, params):
    """A body's inputs are its signature: without `i` ONNX Runtime refuses the Loop (size mismatch)."""
    model = loop_model()
    out, _ = apply_pass(model, pass_name, **params)
    body = out.graph.node[0].attribute[0].g
    assert [t.name for t in body.input] == ["i", "cond_in", "v_in"]
    assert [n.name for n in body.node] == ["add", "keep_going"]  # dead nodes in a body still go
    onnx.checker.check_model(out, full_check=True)
    v0 = np.array([0.5], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"v0": v0})[0], run_ort(model, {"v0": v0})[0])


def test_cleanup_on_the_bevfusion_camera_fixture_keeps_its_loop_intact():
    """The opset-16 export has a Loop over the BEV pooling intervals; cleanup has nothing to remove."""
    model = onnx.load(ZOO / "bevfusion-camera.fixture.opset16.onnx")
    feeds = dict(np.load(ZOO / "bevfusion-camera.fixture.opset16.inputs.npz"))
    out, step = apply_pass(model, "cleanup")
    body_inputs = [[t.name for t in n.attribute[0].g.input] for n in model.graph.node if n.op_type == "Loop"]
    assert body_inputs and body_inputs == [[t.name for t in n.attribute[0].g.input]
                                           for n in out.graph.node if n.op_type == "Loop"]
    assert step.rewritten == []
    np.testing.assert_array_equal(run_ort(out, feeds)[0], run_ort(model, feeds)[0])


def test_cleanup_keeps_the_producer_of_a_tensor_read_only_inside_an_if_branch():
    from test_pass_toposort import assert_same_on_ort, unsorted_if_model

    model = unsorted_if_model()
    out, step = apply_pass(model, "cleanup")
    assert step.rewritten == [] and [t.name for t in out.graph.input] == ["x", "c"]
    assert_same_on_ort(model, out)

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

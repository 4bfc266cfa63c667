import numpy as np

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

"""pool-rank on torch's exports of pooling on unbatched tensors (pytorch/pytorch#127875) and on built pools.

The raw exports are rejected by ONNX Runtime; after the pass they must equal torch exactly for max
pooling and within 1e-6 for average/Lp pooling (float32 sums in another order)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.testing import apply_pass, export_torch, make_model, op_types, run_ort

torch = pytest.importorskip("torch")
F = torch.nn.functional

POOLS = {
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, stride=1, padding=1), [4, 9, 11], 0.0),
    "max_pool2d_1x1": (lambda x: F.max_pool2d(x, kernel_size=1, stride=1, padding=0), [4, 9, 11], 0.0),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2, stride=2, ceil_mode=True), [3, 7, 9], 1e-6),
    "lp_pool2d": (lambda x: F.lp_pool2d(x, 2, 2), [3, 8, 8], 1e-6),  # exported as Pow, AveragePool, ...
    "max_pool1d": (lambda x: F.max_pool1d(x, 3, stride=2), [5, 13], 0.0),
    "max_pool3d": (lambda x: F.max_pool3d(x, 2), [2, 4, 6, 6], 0.0),
}


def _rejected_by_onnxruntime(model: onnx.ModelProto, feeds) -> bool:
    try:
        run_ort(model, feeds)
    except Exception:  # noqa: BLE001 - any refusal (load or run) is the point
        return True
    return False


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("name", POOLS)
def test_unbatched_torch_pool_runs_and_equals_torch(name, opset):
    pool, shape, atol = POOLS[name]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    model = export_torch(pool, x, opset=opset, input_names=["x"], output_names=["y"])
    feeds = {"x": x.numpy()}
    assert _rejected_by_onnxruntime(model, feeds)
    fixed, step = apply_pass(model, "pool-rank")
    assert len(step.rewritten) == 1
    assert op_types(fixed).count("Unsqueeze") >= 1 and op_types(fixed).count("Squeeze") >= 1
    np.testing.assert_allclose(run_ort(fixed, feeds)[0], pool(x).numpy(), rtol=0, atol=atol)
    again, second = apply_pass(fixed, "pool-rank")
    assert second.rewritten == [] and op_types(again) == op_types(fixed)


def _max_pool(input_shape, opset=11, outputs=("y",), op_type="MaxPool"):
    node = helper.make_node(op_type, ["x"], list(outputs), name="pool", kernel_shape=[2, 2], strides=[2, 2])
    return make_model([node], inputs=[("x", np.float32, input_shape)],
                      outputs=[(name, np.float32 if name == "y" else np.int64, None) for name in outputs], opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
def test_indices_output_is_the_batch_of_one_indices(opset):
    """MaxPool's Indices are flat over N*C*H*W; with N = 1 they are those of the batched pool."""
    x = np.random.default_rng(0).standard_normal((3, 6, 8)).astype(np.float32)
    fixed, step = apply_pass(_max_pool([3, 6, 8], opset, ("y", "indices")), "pool-rank")
    assert step.rewritten == ["pool"]
    assert [o.name for o in fixed.graph.output] == ["y", "indices"]
    values, indices = run_ort(fixed, {"x": x})
    batched_values, batched_indices = run_ort(_max_pool([1, 3, 6, 8], opset, ("y", "indices")), {"x": x[None]})
    np.testing.assert_array_equal(values, batched_values[0])
    np.testing.assert_array_equal(indices, batched_indices[0])


@pytest.mark.parametrize("opset", [11, 13])
def test_return_indices_export_is_left_alone_with_a_note(opset):
    """torch's index arithmetic (Slice over axes [2, 3]) assumes the 4-D result, so the pools are kept."""
    x = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(0))
    model = export_torch(lambda t: F.max_pool2d(t, 2, return_indices=True), x, opset=opset, input_names=["x"])
    out, step = apply_pass(model, "pool-rank")
    assert step.rewritten == [] and op_types(out) == op_types(model)
    assert len(step.notes) == 2 and all("a node reads its Indices" in note for note in step.notes)


def test_lp_pool_equals_the_batched_pool():
    """torch exports lp_pool2d through AveragePool; an LpPool node (other exporters) is repaired the same way."""
    x = np.random.default_rng(1).standard_normal((3, 6, 8)).astype(np.float32)
    fixed, step = apply_pass(_max_pool([3, 6, 8], op_type="LpPool"), "pool-rank")
    assert step.rewritten == ["pool"]
    batched = run_ort(_max_pool([1, 3, 6, 8], op_type="LpPool"), {"x": x[None]})[0]
    np.testing.assert_array_equal(run_ort(fixed, {"x": x})[0], batched[0])


def test_batched_pool_is_left_unchanged():
    model = _max_pool([1, 3, 6, 8])
    fixed, step = apply_pass(model, "pool-rank")
    assert step.rewritten == [] and op_types(fixed) == ["MaxPool"]


def test_unknown_rank_is_noted_and_left_alone():
    model = _max_pool(None)
    fixed, step = apply_pass(model, "pool-rank")
    assert step.rewritten == [] and op_types(fixed) == ["MaxPool"]
    assert step.notes == ["pool: input rank unknown, left alone (set-input-shapes may tell it)"]


def test_kernel_of_another_rank_is_noted_and_left_alone():
    model = _max_pool([6, 8])
    fixed, step = apply_pass(model, "pool-rank")
    assert step.rewritten == [] and op_types(fixed) == ["MaxPool"]
    assert "a 2-D kernel on a rank-2 input" in step.notes[0]


def test_new_nodes_are_named_after_the_pool():
    fixed, _ = apply_pass(_max_pool([3, 6, 8]), "pool-rank")
    assert [n.name for n in fixed.graph.node][:3] == ["pool/Unsqueeze", "pool/MaxPool", "pool/Squeeze"]

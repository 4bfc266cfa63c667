"""chunk: torch's dynamic chunk chains (Slice and SplitToSequence forms) and Split-18 num_outputs become
static Splits whose outputs equal torch.chunk exactly; unknown split-axis sizes are left with a note."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from surgeon.inference import infer_graph_shapes
from surgeon.registry import discover
from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, export_torch, make_model, op_types, run_ort

torch = pytest.importorskip("torch")


class Chunks(torch.nn.Module):
    def __init__(self, count, dim):
        super().__init__()
        self.count, self.dim = count, dim

    def forward(self, x):
        return x.chunk(self.count, dim=self.dim)


def export_chunks(count, dim, shape, opset, dynamic):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Chunks(count, dim), (torch.zeros(shape),), buffer, dynamo=False, opset_version=opset,
                          operator_export_type=torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK,
                          input_names=["x"], dynamic_axes={"x": dynamic})
    return onnx.load_from_string(buffer.getvalue())


def assert_chunks_match_torch(model, x, count, dim):
    got = run_ort(model, {"x": x})
    want = [c.numpy() for c in torch.from_numpy(x).chunk(count, dim=dim)]
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("mode", ["split", "slice"])
@settings(max_examples=20, deadline=None)
@given(count=st.integers(1, 6), size=st.integers(1, 13), dim=st.sampled_from([1, -1, 2]),
       opset=st.sampled_from([11, 13]))
def test_exported_chunk_chains_become_static(mode, count, size, dim, opset):
    """split: one Split. slice: a Slice chain keeps one Slice per chunk, with constant bounds; a
    SplitToSequence chain becomes one Split in either mode. Nothing dynamic is left."""
    shape = (2, 3, size) if dim != 1 else (2, size, 3)
    model = export_chunks(count, dim, shape, opset, dynamic=[0])  # dynamic batch, static split axis
    out, step = apply_pass(model, "chunk", target="opset-11" if opset == 11 else "tensorrt-8.6", mode=mode)
    x = np.random.default_rng(size).standard_normal((4,) + shape[1:]).astype(np.float32)
    if step.notes:  # torch's SplitToSequence chain for an axis shorter than count - 1: broken as exported
        assert "rejects in the original graph too" in step.notes[0]
        with pytest.raises(Exception, match="Invalid value in 'split'"):
            run_ort(model, {"x": x})
        return
    ops = op_types(out)
    chunks = len(torch.zeros(shape).chunk(count, dim=dim))
    if mode == "slice" and "Slice" in op_types(model):
        assert len(step.rewritten) == chunks and ops == ["Slice"] * chunks
        constants = {t.name for t in out.graph.initializer}
        assert all(set(node.input[1:]) <= constants for node in out.graph.node)
    else:
        if chunks > 1:
            assert step.rewritten and ops.count("Split") == 1
        assert "Slice" not in ops
    assert not {"Shape", "SplitToSequence", "SequenceAt"} & set(ops)
    onnx.checker.check_model(out, full_check=True)
    assert_chunks_match_torch(out, x, count, dim)


@pytest.mark.parametrize("opset", [11, 13])
def test_slice_mode_keeps_slices_with_constant_bounds(opset):
    model = export_chunks(3, 1, (2, 7), opset, dynamic=[0])
    out, step = apply_pass(model, "chunk", mode="slice")
    assert len(step.rewritten) == 3 and op_types(out).count("Slice") == 3 and "Shape" not in op_types(out)
    assert_chunks_match_torch(out, np.arange(35, dtype=np.float32).reshape(5, 7), 3, 1)


def test_unknown_split_axis_size_is_left_alone_with_a_note():
    model = export_chunks(3, 1, (2, 7), 13, dynamic=[0, 1])
    out, step = apply_pass(model, "chunk")
    assert step.rewritten == [] and step.notes and "unknown" in step.notes[0]
    assert op_types(out).count("Slice") == 3


def split18(size, count):
    node = helper.make_node("Split", ["x"], [f"y{i}" for i in range(count)], name="split18", axis=1,
                            num_outputs=count)
    return make_model([node], [("x", np.float32, ["batch", size])],
                      [(f"y{i}", np.float32, None) for i in range(count)], opset=18)


@pytest.mark.parametrize("size, count", [(7, 3), (10, 4), (8, 3), (6, 2), (5, 1)])
def test_num_outputs_becomes_explicit_sizes_with_torch_chunk_semantics(size, count):
    out, step = apply_pass(split18(size, count), "chunk", target="tensorrt-8.6")
    assert step.rewritten == ["split18"]
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert "num_outputs" not in [a.name for a in split.attribute]
    onnx.checker.check_model(out, full_check=True)
    assert_chunks_match_torch(out, np.random.default_rng(0).standard_normal((2, size)).astype(np.float32), count, 1)


def test_num_outputs_without_a_valid_split_is_left_with_a_note():
    _, step = apply_pass(split18(6, 4), "chunk", target="tensorrt-8.6")
    assert step.rewritten == [] and "ceil(6/4) = 2" in step.notes[0]


def test_num_outputs_is_kept_for_an_opset_18_target(tmp_path):
    target = tmp_path / "onnxruntime-opset18.yaml"
    target.write_text("name: onnxruntime-opset18\nextends: onnxruntime\nopset: 18\n")
    _, step = apply_pass(split18(7, 3), "chunk", target=str(target))
    assert step.rewritten == []


def test_split_with_computed_sizes_is_folded_and_second_run_changes_nothing():
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "one"], ["size"], name="gather", axis=0),
             helper.make_node("Sub", ["size", "two"], ["rest"], name="rest"),
             helper.make_node("Concat", ["two", "rest"], ["sizes"], name="sizes", axis=0),
             helper.make_node("Split", ["x", "sizes"], ["a", "b"], name="split", axis=1)]
    model = make_model(nodes, [("x", np.float32, ["batch", 9])], [("a", np.float32, None), ("b", np.float32, None)],
                       initializers={"one": np.array(1), "two": np.array([2])}, opset=13)
    once, step = apply_pass(model, "chunk")
    assert step.rewritten == ["split"] and "Shape" not in op_types(once)
    x = np.arange(18, dtype=np.float32).reshape(2, 9)
    a, b = run_ort(once, {"x": x})
    np.testing.assert_array_equal(a, x[:, :2])
    np.testing.assert_array_equal(b, x[:, 2:])
    twice, again = apply_pass(once, "chunk")
    assert again.rewritten == [] and op_types(twice) == op_types(once)


def test_sizes_through_a_reshape_that_copies_a_dim_are_folded_like_onnx_runtime():
    """The chain is evaluated by constant folding's evaluators (surgeon/folding.py), Reshape's 0 (copy that
    dim) included: the pass's own folder used to refuse any 0 in a Reshape's shape and leave the Split."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "one"], ["size"], name="gather", axis=0),
             helper.make_node("Sub", ["size", "two"], ["rest"], name="rest"),
             helper.make_node("Concat", ["two", "rest"], ["pair"], name="pair", axis=0),
             helper.make_node("Reshape", ["pair", "copy"], ["sizes"], name="same_shape"),
             helper.make_node("Split", ["x", "sizes"], ["a", "b"], name="split", axis=1)]
    model = make_model(nodes, [("x", np.float32, ["batch", 9])], [("a", np.float32, None), ("b", np.float32, None)],
                       initializers={"one": np.array(1), "two": np.array([2]), "copy": np.array([0])}, opset=13)
    out, step = apply_pass(model, "chunk")
    assert step.rewritten == ["split"] and not step.notes and "Reshape" not in op_types(out)
    x = np.arange(18, dtype=np.float32).reshape(2, 9)
    for got, expected in zip(run_ort(out, {"x": x}), run_ort(model, {"x": x})):
        np.testing.assert_array_equal(got, expected)


def chained_chunks(between):
    def blocks(x):
        for _ in range(4):
            a, b = x.chunk(2, dim=1)
            x = between(torch.cat([b, a * 2], 1))
        return x
    return blocks


@pytest.mark.parametrize("between, inferences", [
    pytest.param(lambda x: x, 0, id="sizes worked out through Concat and Mul"),
    pytest.param(lambda x: x.unsqueeze(0).squeeze(0), 3, id="Unsqueeze and Squeeze: shapes inferred again"),
])
def test_chained_chunks_fold_in_one_run(between, inferences, monkeypatch):
    """Each block's chunk reads a size that shape inference leaves unknown after the block before (its
    Slices are dynamic): the pass used to fold one block per run. Through Concat and elementwise ops it
    works the sizes out itself (one round, however long the chain); through other ops it infers shapes
    again after each block."""
    discover()  # the built-in passes import as surgeon.passes.*
    from surgeon.passes import chunk

    calls = []
    monkeypatch.setattr(chunk, "infer_graph_shapes", lambda graph: calls.append(graph) or infer_graph_shapes(graph))
    model = export_torch(chained_chunks(between), torch.randn(2, 8), input_names=["x"], output_names=["y"],
                         dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    out, step = apply_pass(model, "chunk", target="tensorrt-8.6")
    assert sorted(step.rewritten) == sorted(n.name for n in model.graph.node if n.op_type == "Slice")
    assert len(step.rewritten) == 8 and not step.notes and len(calls) == inferences
    assert not {"Slice", "Shape"} & set(op_types(out)) and op_types(out).count("Split") == 4
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)  # batch 5: the dynamic dim
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], run_ort(model, {"x": x})[0])
    again, second = apply_pass(out, "chunk", target="tensorrt-8.6")
    assert second.rewritten == [] and not second.notes and op_types(again) == op_types(out)


class SelfAttention(torch.nn.Module):
    """nn.MultiheadAttention with q = k = v: torch unpacks the in-projection with unflatten, not chunk."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attn = torch.nn.MultiheadAttention(8, 2)

    def forward(self, x):
        return self.attn(x, x, x)[0]


def test_self_attention_unflatten_becomes_a_reshape_with_torch_results():
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SelfAttention().eval(), (torch.zeros(5, 1, 8),), buffer, dynamo=False, opset_version=11,
                          operator_export_type=torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": [1]})
    model = onnx.load_from_string(buffer.getvalue())
    assert any(a.s == b"unflatten" for n in model.graph.node if n.op_type == "ATen" for a in n.attribute)
    out, step = apply_pass(model, "chunk", target="tensorrt-8.6")
    assert len(step.rewritten) == 1 and "ATen" not in op_types(out)
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(0).standard_normal((5, 3, 8)).astype(np.float32)  # batch 3: the dynamic dim
    with torch.no_grad():
        want = SelfAttention().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_ort(out, {"x": x})[0], want, atol=1e-6, rtol=0)
    again, second = apply_pass(out, "chunk", target="tensorrt-8.6")
    assert second.rewritten == [] and op_types(again) == op_types(out)


def sequence_readers(positions, outputs):
    """SplitToSequence of x [2, 7] into torch.chunk(3, dim=1)'s sizes, one SequenceAt per (position, name)."""
    nodes = [helper.make_node("SplitToSequence", ["x", "sizes"], ["seq"], name="s2s", axis=1)]
    initializers = {"sizes": np.array([3, 3, 1], np.int64)}
    for position, name in zip(positions, outputs):
        initializers[f"at_{name}"] = np.array(position, np.int64)
        nodes.append(helper.make_node("SequenceAt", ["seq", f"at_{name}"], [name], name=f"read_{name}"))
    return nodes, initializers


def test_every_reader_of_one_sequence_position_gets_that_chunk():
    # Two SequenceAt per position read (0 twice; 2 as 2 and -1), one of them a graph output itself.
    nodes, initializers = sequence_readers([0, -1, 0, 2], ["a", "last", "a2", "c"])
    nodes += [helper.make_node("Add", ["a", "a2"], ["twice_a"], name="add"),
              helper.make_node("Neg", ["c"], ["minus_c"], name="neg")]
    model = make_model(nodes, [("x", np.float32, ["batch", 7])],
                       [(name, np.float32, None) for name in ("twice_a", "a2", "last", "minus_c")],
                       initializers=initializers, opset=13)
    out, step = apply_pass(model, "chunk")
    assert step.rewritten == ["s2s"] and not step.notes
    assert not {"SplitToSequence", "SequenceAt"} & set(op_types(out))
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(1).standard_normal((4, 7)).astype(np.float32)
    first, _, last = (c.numpy() for c in torch.from_numpy(x).chunk(3, dim=1))
    got = dict(zip(("twice_a", "a2", "last", "minus_c"), run_ort(out, {"x": x})))
    np.testing.assert_array_equal(got["twice_a"], first + first)
    np.testing.assert_array_equal(got["a2"], first)
    np.testing.assert_array_equal(got["last"], last)
    np.testing.assert_array_equal(got["minus_c"], -last)


def test_sequence_position_out_of_range_is_left_with_a_note():
    nodes, initializers = sequence_readers([0, 3], ["a", "past_end"])
    model = make_model(nodes, [("x", np.float32, [2, 7])], [("a", np.float32, None), ("past_end", np.float32, None)],
                       initializers=initializers, opset=13)
    out, step = apply_pass(model, "chunk")
    assert step.rewritten == [] and "outside its 3 chunks" in step.notes[0]
    assert op_types(out) == op_types(model)
    with pytest.raises(Exception, match="index"):
        run_ort(model, {"x": np.zeros((2, 7), np.float32)})


def test_above_the_targets_opset_slice_chains_are_left_for_set_opset_first():
    """An opset-18 export for tensorrt-8.6 (at most 17): a Split made from its Slice chain would be Split-18,
    which set-opset cannot lower (no adapter), while the chain can be lowered. Lowered first, it folds."""
    model = export_chunks(2, 1, (2, 8, 3), 18, dynamic=[0])
    out, step = apply_pass(model, "chunk", target="tensorrt-8.6")
    assert step.rewritten == [] and "Split" not in op_types(out)
    assert step.notes == ["left Slice chains, SplitToSequence and unflatten alone: the graph's opset 18 is above "
                          "what tensorrt-8.6 parses (at most 17); run set-opset opset=17 before this step "
                          "(prepend_steps)"]
    lowered, _ = apply_pass(model, "set-opset", target="tensorrt-8.6")
    folded, step = apply_pass(lowered, "chunk", target="tensorrt-8.6")
    assert step.rewritten and op_types(folded).count("Split") == 1
    assert_chunks_match_torch(folded, np.random.default_rng(0).standard_normal((4, 8, 3)).astype(np.float32), 2, 1)


def test_a_split_the_converter_cannot_lower_is_said_in_words():
    model = split18(6, 2)
    with pytest.raises(SurgeonError, match="cannot convert opset 18 to 17: onnx's version converter has no adapter "
                                        "for Split across version 18"):
        apply_pass(model, "set-opset", opset=17)

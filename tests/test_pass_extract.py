from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model, run_ort

ZOO = Path(__file__).parent / "data" / "zoo"


def three_stage_model():
    """img -> backbone(Relu) -> feats -> vtransform(Mul 2) -> bev -> head(Add 1) -> boxes"""
    nodes = [helper.make_node("Relu", ["img"], ["feats"], name="backbone"),
             helper.make_node("Mul", ["feats", "two"], ["bev"], name="vtransform"),
             helper.make_node("Add", ["bev", "one"], ["boxes"], name="head")]
    return make_model(nodes, [("img", np.float32, [2, 3])], [("boxes", np.float32, [2, 3])],
                      initializers={"two": np.float32(2), "one": np.float32(1)})


def test_extract_middle_stage():
    out, step = apply_pass(three_stage_model(), "extract", inputs=["feats"], outputs=["bev"])
    onnx.checker.check_model(out)
    assert [i.name for i in out.graph.input] == ["feats"] and [o.name for o in out.graph.output] == ["bev"]
    assert [n.name for n in out.graph.node] == ["vtransform"]
    assert sorted(step.rewritten) == ["backbone", "head", "input:feats", "input:img", "output:bev", "output:boxes"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run_ort(out, {"feats": x})[0], 2 * x)


def test_extract_drops_post_processing_by_outputs_only():
    out, _ = apply_pass(three_stage_model(), "extract", outputs=["bev"])
    assert [n.name for n in out.graph.node] == ["backbone", "vtransform"]


def test_extract_errors():
    with pytest.raises(SurgeonError, match="no tensor named 'feat'.*did you mean 'feats'"):
        apply_pass(three_stage_model(), "extract", inputs=["feat"])
    with pytest.raises(SurgeonError, match=r"not closed: the kept nodes also read img \(read by skip\)"):
        # bev needs feats, and with 'two' as the only input the backbone still reads img... cut is open
        model = three_stage_model()
        model.graph.node.append(helper.make_node("Add", ["bev", "img"], ["z"], name="skip"))
        model.graph.output.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, 3]))
        apply_pass(model, "extract", inputs=["feats"], outputs=["z"])


def test_each_input_and_output_is_named_once():
    with pytest.raises(SurgeonError, match=r"extract\.inputs: 'feats' is named more than once"):
        apply_pass(three_stage_model(), "extract", inputs=["feats", "feats"], outputs=["bev"])
    with pytest.raises(SurgeonError, match=r"extract\.outputs: 'bev' is named more than once"):
        apply_pass(three_stage_model(), "extract", inputs=["feats"], outputs=["bev", "bev"])


def test_an_input_outside_the_cut_is_an_error_not_dropped():
    """img lies upstream of feats: nothing between [img, feats] and bev reads it."""
    with pytest.raises(SurgeonError, match=r"extract\.inputs: nothing between the inputs and the outputs reads 'img'"):
        apply_pass(three_stage_model(), "extract", inputs=["img", "feats"], outputs=["bev"])


def test_two_inputs_both_read():
    model = three_stage_model()
    model.graph.node.append(helper.make_node("Add", ["bev", "img"], ["z"], name="skip"))
    model.graph.output.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, 3]))
    out, step = apply_pass(model, "extract", inputs=["feats", "img"], outputs=["z"])
    assert [i.name for i in out.graph.input] == ["feats", "img"]
    assert step.notes == ["inputs ['feats', 'img'], outputs ['z'], 2 nodes kept"]
    feats, img = np.random.default_rng(0).standard_normal((2, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"feats": feats, "img": img})[0], 2 * feats + img)


def test_tensors_read_inside_an_if_branch_count():
    """The If reads `t` only inside its branches, and comes before t's producer (unsorted)."""
    from test_pass_toposort import assert_same_on_ort, unsorted_if_model

    model = unsorted_if_model()
    out, _ = apply_pass(model, "extract", outputs=["y"])
    assert [n.name for n in out.graph.node] == ["relu", "if"]
    assert_same_on_ort(model, out)

    out, _ = apply_pass(model, "extract", inputs=["t", "c"], outputs=["y"])
    assert [n.name for n in out.graph.node] == ["if"] and [i.name for i in out.graph.input] == ["t", "c"]
    t = np.array([-1, 0, 2, -3], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"t": t, "c": np.array(True)})[0], -t)

    with pytest.raises(SurgeonError, match="not closed: the kept nodes also read x"):
        apply_pass(model, "extract", inputs=["c"], outputs=["y"])


def split_model():
    """x -> Split -> (a, b); ya = Relu(a), yb = Neg(b)"""
    nodes = [helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=0),
             helper.make_node("Relu", ["a"], ["ya"], name="relu"), helper.make_node("Neg", ["b"], ["yb"], name="neg")]
    return make_model(nodes, [("x", np.float32, [4])], [("ya", np.float32, [2]), ("yb", np.float32, [2])])


def test_an_input_cut_from_a_multi_output_node_keeps_the_other_outputs_in_place():
    """Cutting `a` from the Split used to shift `b` into the first output slot: yb = -x[:2]."""
    out, step = apply_pass(split_model(), "extract", inputs=["x", "a"])
    split = out.graph.node[0]
    assert list(split.output) == ["a_before_cut", "b"] and [i.name for i in out.graph.input] == ["x", "a"]
    assert step.rewritten == ["input:a"]
    x, a = np.array([1, -2, 3, -4], np.float32), np.array([-9, 9], np.float32)
    ya, yb = run_ort(out, {"x": x, "a": a})
    np.testing.assert_array_equal(ya, np.maximum(a, 0))
    np.testing.assert_array_equal(yb, -x[2:])

    again, step = apply_pass(out, "extract", inputs=["x", "a"])
    assert step.rewritten == [] and list(again.graph.node[0].output) == ["a_before_cut", "b"]


def test_a_producer_no_longer_needed_goes_with_its_placeholder():
    out, step = apply_pass(split_model(), "extract", inputs=["a", "b"])
    assert [n.name for n in out.graph.node] == ["relu", "neg"]
    assert step.rewritten == ["split", "input:a", "input:b", "input:x"]


@pytest.mark.skipif(not (ZOO / "bevformer-tiny.fixture.opset16.onnx").exists(), reason="zoo fixture not generated")
def test_feeding_one_half_of_bevformers_query_split_from_outside():
    """BEVFormer-tiny splits its query embedding (`/Split`: query_pos, query). Fed query_pos from
    outside, the cut computes what the whole model does (ONNX Runtime refused the shifted Split)."""
    source = ZOO / "bevformer-tiny.fixture.opset16.onnx"
    model = onnx.load(source)
    weight = next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "query_embedding.weight")
    out, step = apply_pass(model, "extract", inputs=["image", "prev_bev", "can_bus", "lidar2img", "/Split_output_0"])
    assert step.rewritten == ["input:/Split_output_0"]
    split = next(n for n in out.graph.node if n.name == "/Split")
    assert list(split.output) == ["/Split_output_0_before_cut", "/Split_output_1"]
    feeds = dict(np.load(ZOO / "bevformer-tiny.fixture.opset16.inputs.npz"))
    expected = run_ort(model, feeds)
    got = run_ort(out, {**feeds, "/Split_output_0": weight[:, :weight.shape[1] // 2]})
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4)


def test_a_cut_that_changes_only_the_outputs_is_a_change():
    out, step = apply_pass(split_model(), "extract", outputs=["yb", "ya"])
    assert step.rewritten == ["outputs:order"] and [o.name for o in out.graph.output] == ["yb", "ya"]


def two_output_model():
    """three_stage_model plus a graph output nothing reads: feats_t = Transpose(feats) (BEVFormer's bev_embed)."""
    model = three_stage_model()
    model.graph.node.insert(1, helper.make_node("Transpose", ["feats"], ["feats_t"], name="transpose"))
    model.graph.output.append(helper.make_tensor_value_info("feats_t", onnx.TensorProto.FLOAT, [3, 2]))
    return model


def test_an_input_no_node_reads_names_what_its_producer_reads():
    """A graph output with no reader cannot feed the cut; the first error used to ask for the graph
    inputs, and the second (with them added) blamed nodes outside the cut."""
    for inputs in (["feats_t"], ["feats_t", "img"]):
        with pytest.raises(SurgeonError, match=r"reads 'feats_t': it is a graph output no node reads "
                                               r"\(its producer transpose \(Transpose\) reads 'feats': cut there"):
            apply_pass(two_output_model(), "extract", inputs=inputs, outputs=["boxes"])
    out, _ = apply_pass(two_output_model(), "extract", inputs=["feats"], outputs=["boxes"])
    assert [n.name for n in out.graph.node] == ["vtransform", "head"]


def test_an_input_downstream_of_an_output_says_so():
    with pytest.raises(SurgeonError, match=r"reads 'bev': it lies downstream of output 'feats' "
                                           r"\(an input lies upstream of the outputs"):
        apply_pass(three_stage_model(), "extract", inputs=["bev"], outputs=["feats"])


def test_an_input_read_only_outside_the_cut_names_its_readers():
    with pytest.raises(SurgeonError, match=r"reads 'img': the nodes that read it \(backbone\) are outside the cut"):
        apply_pass(three_stage_model(), "extract", inputs=["img", "feats"], outputs=["bev"])


def test_a_tensor_inside_a_branch_cannot_be_cut_at():
    from test_pass_toposort import unsorted_if_model

    with pytest.raises(SurgeonError, match=r"extract\.outputs: 'o1' is inside the body of node if \(If\); "
                                           r"a cut cannot enter a subgraph"):
        apply_pass(unsorted_if_model(), "extract", outputs=["o1"])


def sequence_model():
    """x -> SplitToSequence -> s -> SequenceAt(0) -> y; l = Loop collecting x into a sequence"""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("SequenceInsert", ["acc_in", "x"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("acc_in", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_sequence_value_info("acc_out", onnx.TensorProto.FLOAT, None)])
    nodes = [helper.make_node("SplitToSequence", ["x"], ["s"], name="to_seq", axis=0),
             helper.make_node("SequenceAt", ["s", "zero"], ["y"], name="at"),
             helper.make_node("SequenceEmpty", [], ["empty"], name="empty", dtype=onnx.TensorProto.FLOAT),
             helper.make_node("Loop", ["two", "", "empty"], ["l"], name="loop", body=body),
             helper.make_node("ConcatFromSequence", ["l"], ["z"], name="concat", axis=0)]
    return make_model(nodes, [("x", np.float32, [4])], [("y", np.float32, [1]), ("z", np.float32, [8])],
                      initializers={"zero": np.int64(0), "two": np.int64(2)}, opset=13)


@pytest.mark.parametrize("name, cut_at", [("s", "'x', 'y'"), ("l", "'z'")])
def test_a_sequence_cannot_be_a_stage_boundary(name, cut_at):
    """Shape annotation records tensor types only, so this used to say 'dtype unknown, run infer-shapes'."""
    with pytest.raises(SurgeonError, match=rf"'{name}' is a sequence, not a tensor, so it cannot be a graph input "
                                           rf"of a stage \(cut at a tensor the sequence is made from or read into: {cut_at}\)"):
        apply_pass(sequence_model(), "extract", inputs=[name])


def aten_model(operator):
    """x -> ATen(operator) -> t -> Relu -> y: shape inference cannot type t or y."""
    nodes = [helper.make_node("ATen", ["x", "x"], ["t"], name="aten", domain="org.pytorch.aten", operator=operator),
             helper.make_node("Relu", ["t"], ["y"], name="relu")]
    return make_model(nodes, [("x", np.float32, [4])], [("y", np.float32, [4])], extra_opsets={"org.pytorch.aten": 1})


@pytest.mark.parametrize("operator, hint", [("atan2", "pass atan2 rewrites aten"),
                                            ("unflatten", "no pass rewrites aten: cut upstream of it")])
def test_an_untyped_input_names_where_inference_stopped_and_the_fix(operator, hint):
    """The hint used to be 'run infer-shapes', which had run already (and cannot type an ATen node)."""
    with pytest.raises(SurgeonError, match=rf"the dtype of 't' is unknown, so it cannot become a graph input: "
                                           rf"shape inference stops at aten \(ATen:{operator}\), whose outputs "
                                           rf"have no type \({hint}\)"):
        apply_pass(aten_model(operator), "extract", inputs=["t"])

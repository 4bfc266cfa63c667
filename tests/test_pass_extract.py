import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model, run_ort


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
    assert sorted(step.rewritten) == ["backbone", "head"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run_ort(out, {"feats": x})[0], 2 * x)


def test_extract_drops_post_processing_by_outputs_only():
    out, _ = apply_pass(three_stage_model(), "extract", outputs=["bev"])
    assert [n.name for n in out.graph.node] == ["backbone", "vtransform"]


def test_extract_errors():
    with pytest.raises(SurgeonError, match="no tensor named 'feat'.*did you mean 'feats'"):
        apply_pass(three_stage_model(), "extract", inputs=["feat"])
    with pytest.raises(SurgeonError, match="not closed.*img"):
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

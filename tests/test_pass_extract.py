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

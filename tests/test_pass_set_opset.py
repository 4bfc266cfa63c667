import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model, run_ort


def test_set_opset_converts_split_attribute_to_input():
    node = helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=0, split=[1, 3])
    model = make_model([node], [("x", np.float32, [4])], [("a", np.float32, [1]), ("b", np.float32, [3])], opset=11)
    out, step = apply_pass(model, "set-opset", opset=13)
    assert {o.domain: o.version for o in out.opset_import}[""] == 13
    (split,) = [n for n in out.graph.node if n.op_type == "Split"]
    assert len(split.input) == 2 and step.rewritten == ["opset:11->13"]
    a, b = run_ort(out, {"x": np.arange(4, dtype=np.float32)})
    np.testing.assert_array_equal(b, [1, 2, 3])


def test_same_opset_is_no_change():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", np.float32, [2])],
                       [("y", np.float32, [2])], opset=13)
    _, step = apply_pass(model, "set-opset", opset=13)
    assert step.rewritten == []


def model_calling(function, opset=11):
    node = helper.make_node(function.name, ["x"], ["y"], name="call", domain=function.domain)
    model = make_model([node], [("x", np.float32, [2, 3])], [("y", np.float32, None)], opset=opset,
                       extra_opsets={function.domain: 1})
    model.functions.append(function)
    return model


def test_local_functions_are_kept_and_their_bodies_converted():
    """The version converter drops local functions; their bodies are converted one by one (Unsqueeze's
    axes attribute becomes an input at 13)."""
    body = [helper.make_node("Unsqueeze", ["a"], ["u"], axes=[0]), helper.make_node("Add", ["u", "u"], ["b"])]
    function = helper.make_function("local.fn", "TwiceUnsqueezed", ["a"], ["b"], body, [helper.make_opsetid("", 11)])
    model = model_calling(function)
    out, _ = apply_pass(model, "set-opset", opset=13)
    onnx.checker.check_model(out)
    (converted,) = out.functions
    assert {o.domain: o.version for o in converted.opset_import}[""] == 13
    assert [len(n.input) for n in converted.node if n.op_type == "Unsqueeze"] == [2]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], run_ort(model, {"x": x})[0])


def test_a_function_attribute_the_converter_would_lose_is_an_error():
    unsqueeze = helper.make_node("Unsqueeze", ["a"], ["b"])
    unsqueeze.attribute.append(onnx.AttributeProto(name="axes", ref_attr_name="where", type=onnx.AttributeProto.INTS))
    function = helper.make_function("local.fn", "UnsqueezeAt", ["a"], ["b"], [unsqueeze],
                                    [helper.make_opsetid("", 11)], attributes=["where"])
    model = model_calling(function)
    model.graph.node[0].attribute.append(helper.make_attribute("where", [0]))
    with pytest.raises(SurgeonError, match="local function local.fn::UnsqueezeAt .* takes an attribute from"):
        apply_pass(model, "set-opset", opset=13)


def test_default_domain_ops_without_a_schema_ride_through_the_converter():
    """BEVFormer_tensorrt's plugins are default-domain op types onnx has no schema for: the converter alone
    refuses the model; they come back as they were, and the ops around them are converted."""
    nodes = [helper.make_node("GridSampler2DTRT", ["x", "grid10"], ["y"], name="trt", interpolation_mode=1),
             helper.make_node("Unsqueeze", ["y"], ["z"], name="unsqueeze", axes=[0])]
    model = make_model(nodes, [("x", np.float32, [1, 2, 3, 4]), ("grid10", np.float32, [1, 2, 3, 3])],
                       [("z", np.float32, None)], opset=11)
    with pytest.raises(Exception, match="GridSampler2DTRT"):
        onnx.version_converter.convert_version(model, 13)
    out, step = apply_pass(model, "set-opset", opset=13)
    assert step.rewritten == ["opset:11->13"]
    assert [o.domain for o in out.opset_import] == [""] and out.opset_import[0].version == 13
    (trt,) = [n for n in out.graph.node if n.op_type == "GridSampler2DTRT"]
    assert (trt.domain, trt.attribute) == ("", model.graph.node[0].attribute)
    assert [len(n.input) for n in out.graph.node if n.op_type == "Unsqueeze"] == [2]


def test_nodes_the_converter_adds_or_changes_are_named_and_carry_provenance():
    """Unsqueeze-13 takes its axes as an input: the converter adds an unnamed Constant for them."""
    import numpy as np
    from onnx import helper

    from surgeon.testing import apply_pass, make_model, run_ort

    model = make_model([helper.make_node("Unsqueeze", ["x"], ["y"], name="lift", axes=[0]),
                        helper.make_node("Relu", ["y"], ["z"], name="relu")],
                       [("x", np.float32, [3])], [("z", np.float32, [1, 3])], opset=11)
    out, _ = apply_pass(model, "set-opset", opset=13)
    props = {n.name: {p.key: p.value for p in n.metadata_props} for n in out.graph.node}
    assert all(n.name for n in out.graph.node)
    assert props["lift/Constant"] == {"surgeon.pass": "set-opset", "surgeon.replaces": "lift"}
    assert props["lift"]["surgeon.pass"] == "set-opset" and "surgeon.pass" not in props["relu"]
    x = np.arange(3, dtype=np.float32) - 1
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], np.maximum(x, 0)[None])


def test_unnamed_nodes_the_converter_keeps_stay_unnamed_and_untagged():
    import numpy as np
    from onnx import helper

    from surgeon.testing import apply_pass, make_model

    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"], name="neg")],
                       [("x", np.float32, [4])], [("y", np.float32, [4])], opset=11)
    out, _ = apply_pass(model, "set-opset", opset=13)
    assert [(n.name, list(n.metadata_props)) for n in out.graph.node] == [("", []), ("neg", [])]


def test_nodes_the_converter_adds_inside_if_branches_are_named_and_tagged():
    import numpy as np
    from onnx import TensorProto, helper

    from surgeon.testing import apply_pass, make_model, run_ort

    def branch(name):
        return helper.make_graph([helper.make_node("Unsqueeze", ["x"], [f"{name}_o"], name=f"{name}_unsq", axes=[0])],
                                 name, [], [helper.make_tensor_value_info(f"{name}_o", TensorProto.FLOAT, [1, 4])])

    model = make_model([helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch("then"),
                                         else_branch=branch("else"))],
                       [("c", np.bool_, []), ("x", np.float32, [4])], [("y", np.float32, [1, 4])], opset=11)
    out, _ = apply_pass(model, "set-opset", opset=13)
    bodies = {a.name: a.g for a in out.graph.node[0].attribute}
    for name, body in (("then", bodies["then_branch"]), ("else", bodies["else_branch"])):
        props = {n.name: {p.key: p.value for p in n.metadata_props} for n in body.node}
        assert props[f"{name}_unsq/Constant"] == {"surgeon.pass": "set-opset", "surgeon.replaces": f"{name}_unsq"}
        assert props[f"{name}_unsq"] == {"surgeon.pass": "set-opset", "surgeon.replaces": f"{name}_unsq"}
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(run_ort(out, {"c": np.array(True), "x": x})[0], x[None])


def test_a_node_the_converter_wraps_keeps_its_name_metadata_and_doc():
    """Softmax-12 -> 13 with axis=1 becomes Flatten, Softmax, Reshape, the Reshape writing the old output:
    the user's node is still the Softmax (matched by name, not by its output)."""
    import numpy as np
    from onnx import helper

    from surgeon.testing import apply_pass, make_model, run_ort

    softmax = helper.make_node("Softmax", ["x"], ["y"], name="my_softmax", axis=1, doc_string="from torch")
    softmax.metadata_props.add(key="pkg.torch.onnx.stack_trace", value="head.py:42")
    model = make_model([softmax], [("x", np.float32, [2, 3, 4])], [("y", np.float32, [2, 3, 4])], opset=12)
    out, _ = apply_pass(model, "set-opset", opset=13)
    kept = next(n for n in out.graph.node if n.name == "my_softmax")
    assert kept.op_type == "Softmax" and kept.doc_string == "from torch"
    assert {p.key: p.value for p in kept.metadata_props}["pkg.torch.onnx.stack_trace"] == "head.py:42"
    assert all(n.name for n in out.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(run_ort(out, {"x": x})[0], run_ort(model, {"x": x})[0], rtol=1e-6)


def test_nodes_with_an_omitted_first_output_are_not_confused():
    """Two LSTMs writing ['', h]: matched by a first output of '' they were taken for each other, and one
    was tagged as adapted though LSTM does not change from opset 14 to 15."""
    import numpy as np
    from onnx import helper

    from surgeon.testing import apply_pass, make_model

    lstm = [helper.make_node("LSTM", ["x", f"w{i}", f"r{i}"], ["", f"h{i}"], name=f"lstm{i}", hidden_size=2)
            for i in range(2)]
    inits = {f"{kind}{i}": np.ones((1, 8, 3 if kind == "w" else 2), np.float32) for i in range(2) for kind in "wr"}
    model = make_model([*lstm, helper.make_node("Add", ["h0", "h1"], ["y"], name="add")],
                       [("x", np.float32, [1, 1, 3])], [("y", np.float32, [1, 1, 2])], inits, opset=14)
    out, _ = apply_pass(model, "set-opset", opset=15)
    assert [(n.name, list(n.metadata_props)) for n in out.graph.node] == [("lstm0", []), ("lstm1", []), ("add", [])]


def test_an_adapter_assertion_is_said_in_words():
    """ReduceSum-13 whose axes come from a graph input: the converter's adapter asserts in C++."""
    import numpy as np
    import pytest
    from onnx import helper

    from surgeon.errors import SurgeonError
    from surgeon.testing import apply_pass, make_model

    model = make_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum")],
                       [("x", np.float32, [2, 3]), ("axes", np.int64, [1])], [("y", np.float32, None)], opset=13)
    with pytest.raises(SurgeonError, match=r"cannot convert opset 13 to 11: onnx's version converter "
                                           r"\(axes_input_to_attribute\) refused: No initializer or constant input"):
        apply_pass(model, "set-opset", opset=11)

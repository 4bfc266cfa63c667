import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model, run_ort


def _functions_model(unused: bool = False) -> onnx.ModelProto:
    """Two calls of `pkg::Outer` (LeakyRelu alpha from the call's attribute, and a nested call of `pkg::Inner`),
    one more call of Inner inside an If branch, as torch's dynamo export nests module functions."""
    inner = helper.make_function("pkg", "Inner", ["x"], ["y"], [
        helper.make_node("Relu", ["x"], ["t"], name="relu"), helper.make_node("Neg", ["t"], ["y"], name="neg")],
        [helper.make_opsetid("", 17)])
    leaky = helper.make_node("LeakyRelu", ["t"], ["y"], name="leaky")
    leaky.attribute.append(helper.make_attribute_ref("alpha", AttributeProto.FLOAT))
    outer = helper.make_function("pkg", "Outer", ["x"], ["y"], [
        helper.make_node("Inner", ["x"], ["t"], domain="pkg", name="inner"), leaky],
        [helper.make_opsetid("", 17), helper.make_opsetid("pkg", 1)], attributes=["alpha"])
    then_branch = helper.make_graph([helper.make_node("Inner", ["a"], ["o"], domain="pkg", name="in_branch")], "then",
                                    [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["a"], ["e"], name="same")], "else",
                                    [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])])
    nodes = [helper.make_node("Outer", ["a"], ["t"], domain="pkg", name="block_1", alpha=0.5),
             helper.make_node("Outer", ["t"], ["b"], domain="pkg", name="block_2", alpha=0.125),
             helper.make_node("If", ["c"], ["d"], name="branch", then_branch=then_branch, else_branch=else_branch)]
    model = make_model(nodes, [("a", np.float32, [4]), ("c", np.bool_, [])],
                       [("b", np.float32, [4]), ("d", np.float32, [4])], opset=17)
    model.opset_import.append(helper.make_opsetid("pkg", 1))
    model.functions.extend([inner, outer])
    if unused:
        model.functions.append(helper.make_function("pkg", "Unused", ["x"], ["y"],
                                                    [helper.make_node("Abs", ["x"], ["y"])], [helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model)
    return model


def _calls(model: onnx.ModelProto) -> list[str]:
    local = {(f.domain, f.name) for f in model.functions} | {("pkg", "Inner"), ("pkg", "Outer")}
    found = []
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            if (node.domain, node.op_type) in local:
                found.append(node.name)
            graphs.extend(a.g for a in node.attribute if a.HasField("g"))
    return found


@pytest.mark.parametrize("branch", [True, False])
def test_every_call_is_inlined_and_the_outputs_are_identical_on_onnxruntime(branch):
    """Nested calls, attribute references (each call's alpha) and a call inside an If branch all go; the
    result passes onnx.checker and ONNX Runtime gives exactly the original's outputs."""
    model = _functions_model()
    out, step = apply_pass(model, "inline-functions")
    assert _calls(out) == [] and len(out.functions) == 0
    onnx.checker.check_model(out, full_check=True)
    assert step.rewritten == ["block_1", "block_2", "branch/then_branch/in_branch"]
    feeds = {"a": np.array([-2.0, -0.5, 0.0, 3.0], np.float32), "c": np.array(branch)}
    for got, want in zip(run_ort(out, feeds), run_ort(model, feeds)):
        np.testing.assert_array_equal(got, want)


def test_inlined_nodes_are_named_and_tagged_after_their_call():
    out, _ = apply_pass(_functions_model(), "inline-functions")
    tags = {node.name: {p.key: p.value for p in node.metadata_props} for node in out.graph.node}
    assert list(tags)[:6] == ["block_1/relu", "block_1/neg", "block_1/leaky",
                              "block_2/relu", "block_2/neg", "block_2/leaky"]
    assert tags["block_2/leaky"] == {"surgeon.pass": "inline-functions", "surgeon.replaces": "block_2"}
    assert [a.f for n in out.graph.node if n.op_type == "LeakyRelu" for a in n.attribute] == [0.5, 0.125]
    branch = next(a.g for a in out.graph.node[-1].attribute if a.name == "then_branch")
    assert [(n.name, {p.key: p.value for p in n.metadata_props}.get("surgeon.replaces")) for n in branch.node] == [
        ("in_branch/relu", "in_branch"), ("in_branch/neg", "in_branch")]


def test_a_second_run_changes_nothing():
    once, _ = apply_pass(_functions_model(), "inline-functions")
    twice, step = apply_pass(once, "inline-functions")
    assert step.rewritten == [] and twice.graph == once.graph


def test_unused_functions_are_dropped_and_reported():
    out, step = apply_pass(_functions_model(unused=True), "inline-functions")
    assert len(out.functions) == 0
    assert "function:pkg::Unused" in step.rewritten
    assert any("dropped 1 unused function(s): pkg::Unused" in note for note in step.notes)


def test_named_functions_only():
    """Inlining Outer leaves the nested Inner calls (Inner is kept); inlining Inner alone leaves Outer's calls,
    and Inner with them, as Outer's body still calls it."""
    model = _functions_model()
    out, step = apply_pass(model, "inline-functions", functions=["Outer"])
    assert [n.op_type for n in out.graph.node] == ["Inner", "LeakyRelu", "Inner", "LeakyRelu", "If"]
    assert [f.name for f in out.functions] == ["Inner"] and step.rewritten == ["block_1", "block_2"]
    out, step = apply_pass(model, "inline-functions", functions=["pkg::Inner"])
    assert _calls(out) == ["block_1", "block_2"] and [f.name for f in out.functions] == ["Inner", "Outer"]
    feeds = {"a": np.array([-2.0, -0.5, 0.0, 3.0], np.float32), "c": np.array(True)}
    for got, want in zip(run_ort(out, feeds), run_ort(model, feeds)):
        np.testing.assert_array_equal(got, want)


def test_an_unknown_function_name_is_one_clear_error():
    with pytest.raises(SurgeonError, match=r"no local function named 'Outr' \(the model's: pkg::Inner, pkg::Outer\)") \
            as raised:
        apply_pass(_functions_model(), "inline-functions", functions=["Outr"])
    assert raised.value.hint == "did you mean 'Outer'?"


def test_a_model_without_functions_is_left_alone(relu_model):
    out, step = apply_pass(relu_model, "inline-functions")
    assert step.rewritten == [] and list(out.graph.node) == list(relu_model.graph.node)


def test_the_inliner_gets_the_model_without_its_weights(monkeypatch):
    """onnx's inliner serializes the model it is given, which fails past protobuf's 2 GB limit: like
    validation, the pass hands it the model without the weights' data, which stays in the result."""
    import onnx.inliner

    model = _functions_model()
    weight = np.arange(64 * 4, dtype=np.float32).reshape(4, 64) / 256
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    model.graph.node.append(helper.make_node("MatMul", ["b", "w"], ["bw"], name="mm"))
    model.graph.output.append(helper.make_tensor_value_info("bw", TensorProto.FLOAT, [64]))
    given, inline = [], onnx.inliner.inline_local_functions
    monkeypatch.setattr(onnx.inliner, "inline_local_functions",
                        lambda proto, *args: given.append(proto.ByteSize()) or inline(proto, *args))
    out, _ = apply_pass(model, "inline-functions")
    assert given and max(given) < weight.nbytes and len(out.functions) == 0
    feeds = {"a": np.array([-2.0, -0.5, 0.0, 3.0], np.float32), "c": np.array(False)}
    for got, want in zip(run_ort(out, feeds), run_ort(model, feeds)):
        np.testing.assert_array_equal(got, want)


def test_the_pass_runs_through_the_api_without_validation_loaded(tmp_path):
    """`import onnx` does not load `onnx.inliner`: the module that calls it must import it, not validation."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    onnx.save(_functions_model(), tmp_path / "fn.onnx")
    code = ("import sys; from surgeon.pipeline import run_recipe; "
            "run_recipe({'model': 'fn.onnx', 'steps': [{'pass': 'inline-functions'}]}, output='out.onnx', "
            "validate=False); assert 'surgeon.validation.runners' not in sys.modules")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert not _calls(onnx.load(tmp_path / "out.onnx"))

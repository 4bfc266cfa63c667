import re

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper

from surgeon.errors import SurgeonError
from surgeon.graphinfo import all_nodes
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
    assert tags["block_2/leaky"] == {"surgeon.function": "pkg::Outer", "surgeon.pass": "inline-functions",
                                     "surgeon.replaces": "block_2"}
    assert tags["block_2/relu"]["surgeon.function"] == "pkg::Outer/pkg::Inner"  # the call Outer's body makes
    assert [a.f for n in out.graph.node if n.op_type == "LeakyRelu" for a in n.attribute] == [0.5, 0.125]
    branch = next(a.g for a in out.graph.node[-1].attribute if a.name == "then_branch")
    assert [(n.name, {p.key: p.value for p in n.metadata_props}.get("surgeon.replaces")) for n in branch.node] == [
        ("in_branch/relu", "in_branch"), ("in_branch/neg", "in_branch")]


def test_inlined_names_keep_clear_of_the_users_own_nodes_in_bodies():
    """A node of the user's own in the If branch holding a call, named as an inlined node would be: the
    inlined one takes a suffix (it took the same name, and the branch had two nodes of one name)."""
    model = _functions_model()
    then_branch = next(a.g for a in model.graph.node[2].attribute if a.name == "then_branch")
    then_branch.node.insert(0, helper.make_node("Identity", ["a"], ["a2"], name="in_branch/relu"))
    then_branch.node[1].input[0] = "a2"
    out, _ = apply_pass(model, "inline-functions")
    branch = next(a.g for a in out.graph.node[-1].attribute if a.name == "then_branch")
    assert [n.name for n in branch.node] == ["in_branch/relu", "in_branch/relu_1", "in_branch/neg"]
    assert [n.name for n in out.graph.node][:3] == ["block_1/relu", "block_1/neg", "block_1/leaky"]
    again, _ = apply_pass(model, "inline-functions")
    assert again.graph == out.graph


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


def test_naming_a_function_only_a_kept_function_calls_says_which_to_name_too():
    """Before, `functions: [Inner]` with Inner called only from Outer's body said only "nothing to do"."""
    model = _functions_model()
    branch = next(n for n in model.graph.node if n.op_type == "If")
    model.graph.node.remove(branch)
    del model.graph.output[1], model.graph.input[1]
    out, step = apply_pass(model, "inline-functions", functions=["Inner"])
    assert step.rewritten == [] and _calls(out) == ["block_1", "block_2"]
    assert step.notes == ["Inner is called only from functions kept as calls (Outer): name those too"]
    out, step = apply_pass(model, "inline-functions", functions=["Inner", "Outer"])
    assert _calls(out) == [] and step.notes == ["inlined 2 call(s) of pkg::Outer"]


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
    weight = np.arange(1024 * 4, dtype=np.float32).reshape(4, 1024) / 4096  # 16 KB, well above the header's size
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    model.graph.node.append(helper.make_node("MatMul", ["b", "w"], ["bw"], name="mm"))
    model.graph.output.append(helper.make_tensor_value_info("bw", TensorProto.FLOAT, [1024]))
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


def _gated_model() -> onnx.ModelProto:
    """Two calls of `pkg::Gated`, whose body holds an If whose then-branch calls `pkg::Inner`: nodes of a
    function body, and of a call in it, that end up inside an If body."""
    inner = helper.make_function("pkg", "Inner", ["x"], ["y"], [
        helper.make_node("Relu", ["x"], ["t"], name="relu"), helper.make_node("Neg", ["t"], ["y"], name="neg")],
        [helper.make_opsetid("", 17)])
    then_branch = helper.make_graph([helper.make_node("Inner", ["x"], ["o"], domain="pkg", name="in_then"),
                                     helper.make_node("Abs", ["o"], ["o2"], name="abs")], "then", [],
                                    [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [4])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"], name="same")], "else", [],
                                    [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4])])
    gated = helper.make_function("pkg", "Gated", ["x", "c"], ["y"], [
        helper.make_node("If", ["c"], ["y"], name="gate", then_branch=then_branch, else_branch=else_branch)],
        [helper.make_opsetid("", 17), helper.make_opsetid("pkg", 1)])
    nodes = [helper.make_node("Gated", ["a", "c"], ["b"], domain="pkg", name="block_1"),
             helper.make_node("Gated", ["b", "c"], ["d"], domain="pkg", name="block_2")]
    model = make_model(nodes, [("a", np.float32, [4]), ("c", np.bool_, [])], [("d", np.float32, [4])], opset=17)
    model.functions.extend([inner, gated])
    onnx.checker.check_model(model)
    return model


def _provenance(graph: onnx.GraphProto, scope: str = ""):
    """(path, surgeon.replaces, surgeon.function) of every node, bodies' nodes included."""
    for node in graph.node:
        tags = {p.key: p.value for p in node.metadata_props}
        yield scope + node.name, tags.get("surgeon.replaces"), tags.get("surgeon.function")
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _provenance(attribute.g, f"{scope}{node.name}/{attribute.name}/")


@pytest.mark.parametrize("branch", [True, False])
def test_nodes_a_call_brings_into_an_if_body_are_named_and_tagged_after_the_call(branch):
    """The If of Gated's body and the nodes of its branches (Inner's too) take the call's name and tags, as
    the nodes of the main graph do (they kept the inliner's `same__1` and no provenance)."""
    model = _gated_model()
    out, step = apply_pass(model, "inline-functions")
    assert _calls(out) == [] and len(out.functions) == 0 and step.rewritten == ["block_1", "block_2"]
    onnx.checker.check_model(out, full_check=True)
    found = list(_provenance(out.graph))
    assert found[:5] == [
        ("block_1/gate", "block_1", "pkg::Gated"),
        ("block_1/gate/else_branch/block_1/same", "block_1", "pkg::Gated"),
        ("block_1/gate/then_branch/block_1/relu", "block_1", "pkg::Gated/pkg::Inner"),
        ("block_1/gate/then_branch/block_1/neg", "block_1", "pkg::Gated/pkg::Inner"),
        ("block_1/gate/then_branch/block_1/abs", "block_1", "pkg::Gated")]
    assert [path for path, _, _ in found[5:]] == [
        "block_2/gate", "block_2/gate/else_branch/block_2/same", "block_2/gate/then_branch/block_2/relu",
        "block_2/gate/then_branch/block_2/neg", "block_2/gate/then_branch/block_2/abs"]
    feeds = {"a": np.array([-2.0, -0.5, 0.0, 3.0], np.float32), "c": np.array(branch)}
    np.testing.assert_array_equal(run_ort(out, feeds)[0], run_ort(model, feeds)[0])


def test_naming_a_function_an_extended_target_recipe_inlined_is_a_note(tmp_path):
    """A recipe extending a target recipe (which inlines every function first) that names functions finds
    them gone: the nodes' provenance says they were inlined, so that is a note; the same holds for a run on
    that output, whose nodes carry the provenance."""
    from surgeon.pipeline import run_recipe

    onnx.save(_functions_model(), tmp_path / "fn.onnx")
    (tmp_path / "child.yaml").write_text("name: child\nmodel: fn.onnx\nextends: targets/onnxruntime\n"
                                         "append_steps:\n  - pass: inline-functions\n"
                                         "    with: {functions: [Outer, pkg::Inner]}\n")
    result = run_recipe(tmp_path / "child.yaml", output=tmp_path / "out.onnx", validate=False)
    assert result.steps[-1].rewritten == []
    assert result.steps[-1].notes == ["already inlined by an earlier step or run: pkg::Inner, pkg::Outer"]
    again, step = apply_pass(onnx.load(tmp_path / "out.onnx"), "inline-functions", functions=["Inner"])
    assert step.rewritten == [] and step.notes == ["already inlined by an earlier step or run: pkg::Inner"]


def test_a_name_no_function_had_is_an_error_also_after_inlining():
    """With no function left, a name that provenance does not show inlined is still an error (before, the
    pass returned at once, and a misspelt name went unnoticed)."""
    once, _ = apply_pass(_functions_model(), "inline-functions")
    with pytest.raises(SurgeonError, match=r"no local function named 'Outr' \(the model has none; inlined earlier: "
                                           r"pkg::Inner, pkg::Outer\)") as raised:
        apply_pass(once, "inline-functions", functions=["Outr"])
    assert raised.value.hint == "did you mean 'Outer'?"


def test_without_provenance_a_function_the_model_lacks_is_an_error():
    """A model inlined by another tool (or an older surgeon) does not say which functions it had."""
    once, _ = apply_pass(_functions_model(), "inline-functions")
    for node in all_nodes(once.graph):
        del node.metadata_props[:]
    with pytest.raises(SurgeonError, match=r"no local function named 'Outer' \(the model has none\)$"):
        apply_pass(once, "inline-functions", functions=["Outer"])


def _calling_f(body, imports, extra_opsets=None) -> onnx.ModelProto:
    """A model (opset 17) calling `pkg::F`, whose body is `body` at the opsets `imports` ({domain: version})."""
    function = helper.make_function("pkg", "F", ["x"], ["y"], body,
                                    [helper.make_opsetid(domain, version) for domain, version in imports.items()])
    model = make_model([helper.make_node("F", ["a"], ["b"], domain="pkg", name="call")],
                       [("a", np.float32, [1, 4])], [("b", np.float32, [4])], opset=17, extra_opsets=extra_opsets)
    model.functions.append(function)
    return model


@pytest.mark.parametrize("function_opset", [15, 11])
def test_a_function_at_another_default_opset_is_converted_then_inlined(function_opset):
    """onnx's inliner leaves the call of a function whose default-domain opset is not the model's in place
    (the pass then kept the function twice, which onnx.checker refuses): its body is converted first. At 15
    the model is valid as it is; at 11 Squeeze's axes are an attribute, which Squeeze-13 takes as an input."""
    squeeze = (helper.make_node("Squeeze", ["x"], ["s"], name="squeeze", axes=[0]) if function_opset < 13 else
               helper.make_node("Squeeze", ["x", "axes"], ["s"], name="squeeze"))
    axes = helper.make_node("Constant", [], ["axes"], name="axes", value_ints=[0])
    body = ([axes] if function_opset >= 13 else []) + [squeeze, helper.make_node("Relu", ["s"], ["y"], name="relu")]
    model = _calling_f(body, {"": function_opset})
    out, step = apply_pass(model, "inline-functions")
    assert _calls(out) == [] and len(out.functions) == 0 and step.rewritten == ["call"]
    onnx.checker.check_model(out, full_check=True)
    a = np.array([[-2.0, -0.5, 0.0, 3.0]], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"a": a})[0], np.maximum(a[0], 0))


@pytest.mark.parametrize("model_opset", [11, 17])
def test_a_function_body_the_converter_refuses_is_one_clear_error(model_opset):
    """Split-18's `num_outputs` has no form below 18 the converter knows: the error names the function and says
    why in words (it ended in the converter's C++ assertion, `BaseConverter.h:66: adapter_lookup: ...`)."""
    model = _calling_f([helper.make_node("Split", ["x"], ["y", "z"], name="halves", axis=1, num_outputs=2)], {"": 18})
    model.opset_import[0].version = model_opset
    with pytest.raises(SurgeonError) as raised:
        apply_pass(model, "inline-functions")
    assert str(raised.value).endswith(f"cannot convert local function pkg::F from opset 18 to {model_opset}: onnx's "
                                      "version converter has no adapter for Split across version 18")


def test_a_domain_only_the_function_imports_is_imported_by_the_model():
    """The inliner puts a body's `q::G` in the graph without importing `q` (onnx.checker refuses that)."""
    out, _ = apply_pass(_calling_f([helper.make_node("G", ["x"], ["y"], domain="q")], {"": 17, "q": 3}),
                        "inline-functions")
    assert [n.op_type for n in out.graph.node] == ["G"]
    assert ("q", 3) in [(o.domain, o.version) for o in out.opset_import]
    onnx.checker.check_model(out)


def test_a_function_importing_another_version_of_the_models_domain_is_one_clear_error():
    """The inliner leaves such a call in place whatever it is told: an error, not a half-inlined model."""
    model = _calling_f([helper.make_node("G", ["x"], ["y"], domain="q")], {"": 17, "q": 2}, extra_opsets={"q": 1})
    with pytest.raises(SurgeonError, match=r"local function pkg::F imports domain 'q' version 2, the model "
                                           r"version 1: onnx's inliner leaves such a function's calls in place"):
        apply_pass(model, "inline-functions")


def _overloaded() -> onnx.ModelProto:
    """Two overloads of `pkg::F` (IR 10), one call of each."""
    model = _calling_f([helper.make_node("Relu", ["x"], ["y"])], {"": 17})
    model.functions.append(helper.make_function("pkg", "F", ["x"], ["y"], [helper.make_node("Neg", ["x"], ["y"])],
                                                [helper.make_opsetid("", 17)]))
    model.functions[0].overload, model.functions[1].overload = "relu", "neg"
    model.graph.node[0].overload = "relu"
    model.graph.node.append(helper.make_node("F", ["b"], ["c"], domain="pkg", name="call_neg", overload="neg"))
    model.graph.output[0].name = "c"
    return model


@pytest.mark.parametrize("model, why", [
    (lambda: _calling_f([helper.make_node("F", ["x"], ["y"], domain="pkg", name="again")], {"": 17, "pkg": 1}),
     "Cycle detected in model-local function references: pkg::F -> pkg::F"),
    (_overloaded, "Model contains multiple local functions with the same implementation id 'pkg::F'")])
def test_what_the_inliner_refuses_is_one_clear_error(model, why):
    """A function that calls itself, and overloads (which onnx 1.23's inliner does not tell apart)."""
    with pytest.raises(SurgeonError, match=re.escape(f"onnx's inliner refused the model: {why}")):
        apply_pass(model(), "inline-functions")

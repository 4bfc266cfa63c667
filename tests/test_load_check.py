"""The load-time check (`modelio.model_problems`) is cheap on a sound model and still names every problem:
whole fields are checked at once, names and string attributes by `_names_are_utf8`'s parse, and only what
fails is looked at one by one. The messages themselves: tests/test_output_safety.py. Also what validation
runs a model with local functions as (`modelio.inlined_header`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import surgeon.modelio as modelio
from surgeon.errors import SurgeonError
from surgeon.pipeline import run_recipe
from surgeon.testing import make_model, run_ort

#: Five-character marks, one in each place the check reads as text; each is made not UTF-8 in turn.
_MARKS = {"MDOM1": "the model's domain", "GNAME": "the graph name", "ODOM1": "an opset import's domain",
          "INIT1": "an initializer's name", "SPAR1": "a sparse initializer's name", "GIN01": "a graph input's name",
          "GOUT1": "a graph output's name", "GVI01": "a value_info's name", "CNODE": "a node's name",
          "COUT1": "a node's output and input", "CTENS": "an attribute tensor's name", "XOPTY": "a node's op_type",
          "XDOM1": "a node's domain", "XATTR": "an attribute's name", "XSTR1": "a string attribute",
          "XSTS1": "an entry of a strings attribute", "BNODE": "a body's node", "BOUT1": "a body's output",
          "FNODE": "a local function's node"}


def _marked_model() -> onnx.ModelProto:
    """A sound model with every mark in place, Constant and string attributes among plain ones, an If body
    and a local function."""
    body = helper.make_graph([helper.make_node("Identity", ["GIN01"], ["BOUT1"], name="BNODE")], "body", [],
                             [helper.make_tensor_value_info("BOUT1", onnx.TensorProto.FLOAT, [2])])
    constant = numpy_helper.from_array(np.ones(2, np.float32), "CTENS")
    nodes = [helper.make_node("LeakyRelu", ["GIN01"], ["r"], alpha=0.1),
             helper.make_node("Constant", [], ["COUT1"], name="CNODE", value=constant),
             helper.make_node("XOPTY", ["COUT1", "INIT1"], ["x"], domain="XDOM1", XATTR=b"XSTR1", other=[b"XSTS1"]),
             helper.make_node("If", ["c"], ["GOUT1"], name="if", then_branch=body, else_branch=body),
             helper.make_node("Fn", ["x"], ["GVI01"], domain="local")]
    model = make_model(nodes, [("GIN01", np.float32, [2]), ("c", np.bool_, [])], [("GOUT1", np.float32, [2])],
                       initializers={"INIT1": np.ones(2, np.float32)}, name="GNAME",
                       extra_opsets={"XDOM1": 1, "local": 1, "ODOM1": 1})
    model.domain = "MDOM1"
    model.graph.value_info.append(helper.make_tensor_value_info("GVI01", onnx.TensorProto.FLOAT, [2]))
    values = numpy_helper.from_array(np.ones(1, np.float32), "SPAR1")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, numpy_helper.from_array(
        np.zeros(1, np.int64), "idx"), [2]))
    model.functions.append(helper.make_function("local", "Fn", ["a"], ["b"], [
        helper.make_node("Relu", ["a"], ["b"], name="FNODE")], [helper.make_opsetid("", 17)]))
    model.doc_string = "free text that is not UTF-8 slows nothing: \u00fc"
    return model


def _problems(serialized: bytes) -> list[str]:
    return list(modelio.model_problems(onnx.load_model_from_string(serialized), serialized, Path(".")))


def test_a_sound_model_is_checked_without_naming_anything(monkeypatch):
    """Only a node holding bodies is labelled (its label names the body's scope): each label cost a few
    microseconds on every node with attributes. Free text that is not UTF-8 does not send the names
    the slow way."""
    model = _marked_model()
    serialized = model.SerializeToString().replace("\u00fc".encode(), b"\xfc ")
    labelled = []
    monkeypatch.setattr(modelio, "_node_label", lambda node, index: labelled.append(node.name) or node.name)
    assert modelio._names_are_utf8(serialized)
    assert _problems(serialized) == []
    assert labelled == ["if", "if"]


@pytest.mark.parametrize("mark", sorted(_MARKS), ids=[_MARKS[mark] for mark in sorted(_MARKS)])
def test_every_name_the_check_reads_is_seen_by_the_fast_check_too(mark):
    """`_names_are_utf8` is a filter: where it passes a model, no name or string attribute is looked at one
    by one, so it must see each that `model_problems` reads as text."""
    serialized = _marked_model().SerializeToString()
    assert serialized.count(mark.encode()) >= 1
    broken = serialized.replace(mark.encode(), b"\xff" + mark[1:].encode())
    assert not modelio._names_are_utf8(broken)
    problems = _problems(broken)
    assert problems and all("is not UTF-8 text" in problem for problem in problems), problems


@pytest.mark.parametrize("mark", sorted(_MARKS), ids=[_MARKS[mark] for mark in sorted(_MARKS)])
def test_past_64_mib_names_are_checked_without_a_second_parse(monkeypatch, mark):
    """That parse would hold a copy of the weights (the peak memory of a 2 GB model): joins check instead."""
    monkeypatch.setattr(modelio, "_SCAN_RAW_DATA_FROM", 0)
    serialized = _marked_model().SerializeToString()
    assert not modelio._names_are_utf8(serialized) and _problems(serialized) == []
    problems = _problems(serialized.replace(mark.encode(), b"\xff" + mark[1:].encode()))
    assert problems and all("is not UTF-8 text" in problem for problem in problems), problems


def test_a_constant_with_the_wrong_bytes_is_named_among_many_sound_ones():
    """Attribute tensors are compared all at once; the one that disagrees is still named by its node, as
    are unnamed nodes by their index."""
    model = _marked_model()
    bad = numpy_helper.from_array(np.ones(3, np.float32), "t")
    bad.raw_data = bad.raw_data[:8]
    model.graph.node.insert(4, helper.make_node("Constant", [], ["unused"], value=bad))
    problems = _problems(model.SerializeToString())
    assert problems == ["the tensor of attribute 'value' of node #4 (Constant): dims [3] of FLOAT take 12 bytes, "
                        "but its raw_data holds 8"]


def _calling(body, imports: dict, extra_opsets=None) -> onnx.ModelProto:
    """A model (opset 17) whose `pkg::F` call feeds a Neg; F's body imports `imports` ({domain: version})."""
    function = helper.make_function("pkg", "F", ["x"], ["y"], body,
                                    [helper.make_opsetid(domain, version) for domain, version in imports.items()])
    model = make_model([helper.make_node("F", ["a"], ["r"], domain="pkg", name="call"),
                        helper.make_node("Neg", ["r"], ["b"], name="neg")],
                       [("a", np.float32, [1, 4])], [("b", np.float32, [1, 4])], opset=17,
                       extra_opsets={"pkg": 1, **(extra_opsets or {})})
    model.functions.append(function)
    return model


def _relu_at_15() -> onnx.ModelProto:
    return _calling([helper.make_node("Relu", ["x"], ["y"], name="relu")], {"": 15})


def test_a_function_at_another_opset_is_inlined_for_validation():
    """onnx's inliner leaves, silently, the call of a function whose opset is not the model's: validation then
    had a `pkg::F` node to run and stopped, saying it has no CPU reference. Its body is converted first."""
    model = _relu_at_15()
    inlined = modelio.inlined_header(model)
    assert [(n.op_type, n.domain) for n in inlined.graph.node] == [("Relu", ""), ("Neg", "")]
    assert not inlined.functions and len(model.functions) == 1  # the model itself is left as it was
    a = np.array([[-2.0, -0.5, 0.0, 3.0]], np.float32)
    np.testing.assert_array_equal(run_ort(inlined, {"a": a})[0], -np.maximum(a, 0))


@pytest.mark.parametrize("runner", ["reference", "auto"])
def test_a_run_validates_a_model_calling_a_function_at_another_opset(tmp_path, runner):
    onnx.save(_relu_at_15(), tmp_path / "m.onnx")
    result = run_recipe({"name": "t", "steps": [{"pass": "toposort"}], "validate": {"runner": runner}},
                        model=tmp_path / "m.onnx", output=tmp_path / "o.onnx")
    assert result.ok and result.validation is not None


@pytest.mark.parametrize("model, why", [
    (lambda: _calling([helper.make_node("Split", ["x"], ["y", "z"], name="halves", axis=1, num_outputs=2)], {"": 18}),
     "cannot convert local function pkg::F from opset 18 to 17: onnx's version converter has no adapter for Split "
     "across version 18"),
    (lambda: _calling([helper.make_node("G", ["x"], ["y"], domain="q")], {"": 17, "q": 2}, {"q": 1}),
     "local function pkg::F imports domain 'q' version 2, the model version 1: onnx's inliner leaves such a "
     "function's calls in place"),
    (lambda: _calling([helper.make_node("F", ["x"], ["y"], domain="pkg", name="again")], {"": 17, "pkg": 1}),
     "onnx's inliner refused the model: Cycle detected in model-local function references: pkg::F -> pkg::F")])
def test_a_function_validation_cannot_inline_is_one_clear_error(tmp_path, model, why):
    """The converter's C++ assertion, a domain at two versions (a call left in place before) and the inliner's
    ValidationError (an internal error before), in words."""
    onnx.save(model(), tmp_path / "m.onnx")
    with pytest.raises(SurgeonError) as raised:
        run_recipe({"name": "t", "steps": [{"pass": "toposort"}], "validate": {}}, model=tmp_path / "m.onnx",
                   output=tmp_path / "o.onnx")
    assert why in str(raised.value)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("name", ["model.onnx", "model.json"])
def test_a_git_lfs_pointer_is_named_as_one_by_every_command(tmp_path, capsys, name):
    """A clone without `git lfs pull` holds pointers in place of models: protobuf's "Wire format was corrupt"
    said nothing of that (an .npz pointer was already named)."""
    from surgeon.cli import main

    pointer = tmp_path / name
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n")
    with pytest.raises(SurgeonError, match=r"a Git LFS pointer, not the model: fetch the file \(git lfs pull\)$"):
        modelio.load_model(pointer)
    assert main(["check", "--no-config", str(pointer)]) == 2
    assert capsys.readouterr().out.startswith(f"{pointer}: SG000 error a Git LFS pointer, not the model")

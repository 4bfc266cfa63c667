"""Every `surgeon check` model rule fires on a minimal bad graph and stays silent on a clean one."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from surgeon.check import Settings, all_rules, check_file
from surgeon.check.findings import MODEL_RULES
from surgeon.targets import available_targets
from surgeon.testing import make_model


def _relu(x="x", y="y", name="relu"):
    return helper.make_node("Relu", [x], [y], name=name)


def clean_model():
    return make_model([_relu("x", "r"), helper.make_node("Add", ["r", "w"], ["y"], name="add")],
                      [("x", np.float32, [2, 3])], [("y", np.float32, [2, 3])],
                      initializers={"w": np.ones((2, 3), np.float32)})


def aten_grid_sampler():
    node = helper.make_node("ATen", ["x", "g"], ["y"], name="/ATen_12", domain="org.pytorch.aten",
                            operator="grid_sampler")
    return make_model([node], [("x", np.float32, [1, 2, 3, 3]), ("g", np.float32, [1, 3, 3, 2])],
                      [("y", np.float32, [1, 2, 3, 3])])


def custom_op_without_reference():
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="acme")
    return make_model([node], [("x", np.float32, [2])], [("y", np.float32, [2])])


def grid_sample_16():
    node = helper.make_node("GridSample", ["x", "g"], ["y"], name="gs")
    return make_model([node], [("x", np.float32, [1, 2, 3, 3]), ("g", np.float32, [1, 3, 3, 2])],
                      [("y", np.float32, [1, 2, 3, 3])], opset=16)


def split_num_outputs_18():
    node = helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=0, num_outputs=2)
    return make_model([node], [("x", np.float32, [4])], [("a", np.float32, [2]), ("b", np.float32, [2])], opset=18)


def reduce_sum_int64():
    node = helper.make_node("ReduceSum", ["x"], ["y"], name="sum", keepdims=0)
    return make_model([node], [("x", np.int64, [4])], [("y", np.int64, [])])


def mask_count(shape=(4,), axes_input=False, opset=11):
    """torch's `mask.sum()`: ReduceSum(Cast(bool -> int64)), over every axis."""
    reduce_inputs = ["n", "axes"] if axes_input else ["n"]
    nodes = [helper.make_node("Cast", ["m"], ["n"], name="cast", to=TensorProto.INT64),
             helper.make_node("ReduceSum", reduce_inputs, ["y"], name="sum", keepdims=0)]
    initializers = {"axes": np.arange(len(shape), dtype=np.int64)} if axes_input else None
    return make_model(nodes, [("m", np.bool_, list(shape))], [("y", np.int64, [])], initializers=initializers,
                      opset=opset)


def bool_max(op="Max", opset=13):
    """torch.maximum on two bool tensors, as torch writes it from opset 13: ONNX's Max has no bool type."""
    nodes = [helper.make_node("Greater", ["a", "zero"], ["a_pos"], name="a_pos"),
             helper.make_node("Greater", ["b", "zero"], ["b_pos"], name="b_pos"),
             helper.make_node(op, ["a_pos", "b_pos"], ["y"], name=op.lower())]
    return make_model(nodes, [("a", np.float32, [3]), ("b", np.float32, [3])], [("y", np.bool_, [3])],
                      initializers={"zero": np.float32(0)}, opset=opset)


def clip_int64(opset=13):
    node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")
    return make_model([node], [("x", np.int64, [4])], [("y", np.int64, [4])],
                      initializers={"lo": np.array(0), "hi": np.array(5)}, opset=opset)


def dynamic_input():
    return make_model([_relu()], [("x", np.float32, ["batch", 3])], [("y", np.float32, ["batch", 3])])


def float64_cast():
    node = helper.make_node("Cast", ["x"], ["y"], name="to_double", to=TensorProto.DOUBLE)
    return make_model([node], [("x", np.float32, [2])], [("y", np.float64, [2])])


def where_int16():
    """Where on int16 data: its condition is bool, so the dtype rule must read input 1 (`dtype_input`)."""
    node = helper.make_node("Where", ["c", "a", "b"], ["y"], name="where")
    return make_model([node], [("c", np.bool_, [2]), ("a", np.int16, [2]), ("b", np.int16, [2])],
                      [("y", np.int16, [2])], opset=13)


def unsorted():
    return make_model([helper.make_node("Neg", ["r"], ["y"], name="Tile_16"), _relu("x", "r", name="ReduceMax_5")],
                      [("x", np.float32, [2])], [("y", np.float32, [2])])


def duplicate_node_names():
    return make_model([_relu("x", "r", name="same"), helper.make_node("Neg", ["r"], ["y"], name="same")],
                      [("x", np.float32, [2])], [("y", np.float32, [2])])


def duplicate_tensor_names():
    return make_model([_relu("x", "y", name="a"), helper.make_node("Neg", ["x"], ["y"], name="b")],
                      [("x", np.float32, [2])], [("y", np.float32, [2])])


def unused_initializer():
    return make_model([_relu()], [("x", np.float32, [2])], [("y", np.float32, [2])],
                      initializers={"orphan": np.ones(2, np.float32)})


def external_data(location, offset, length, size=2):
    """Add(x, w) with w, `size` float32 values, stored in `location` (not written here) at `offset`, `length`."""
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [("x", np.float32, [size])],
                       [("y", np.float32, [size])], initializers={"w": np.ones(size, np.float32)})
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            weight.external_data.add(key=key, value=value)
    return model


def external_data_outside():
    return external_data("../elsewhere/weights.bin", "0", "8")


def external_data_past_the_end():
    """w's 4 KiB read from the model file itself (a file beside the model, of a few hundred bytes)."""
    return external_data("model.onnx", "0", "4096", size=1024)


def large_initializer():
    return make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [("x", np.float32, [2 ** 18])],
                      [("y", np.float32, [2 ** 18])], initializers={"w": np.zeros(2 ** 18, np.float32)})  # 1 MiB


def large_constant_in_a_body():
    big = helper.make_tensor("w", TensorProto.FLOAT, [2 ** 18], np.zeros(2 ** 18, np.float32))  # 1 MiB
    branch = helper.make_graph([helper.make_node("Constant", [], ["w"], name="weights", value=big)], "then", [],
                               [helper.make_tensor_value_info("w", TensorProto.FLOAT, [2 ** 18])])
    small = helper.make_graph([helper.make_node("Identity", ["x"], ["x2"], name="pass_x")], "else", [],
                              [helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2 ** 18])])
    return make_model([helper.make_node("If", ["c"], ["y"], name="choose", then_branch=branch, else_branch=small)],
                      [("c", np.bool_, []), ("x", np.float32, [2 ** 18])], [("y", np.float32, [2 ** 18])])


def unknown_attribute():
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="relu", alpha=1.0)],
                      [("x", np.float32, [2])], [("y", np.float32, [2])])


def shape_conflict():
    return make_model([helper.make_node("Add", ["x", "z"], ["y"], name="add")],
                      [("x", np.float32, [2, 3]), ("z", np.float32, [4, 5])], [("y", np.float32, [2, 3])])


def ir_version_14():
    model = clean_model()
    model.ir_version = 14
    return model


def opset_27():
    return make_model([_relu()], [("x", np.float32, [2])], [("y", np.float32, [2])], opset=27)


def opset_imported_twice(second=13):
    model = clean_model()
    model.opset_import.append(helper.make_opsetid("", second))
    return model


def output_also_input():
    model = clean_model()
    model.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]))
    return model


def output_is_initializer():
    model = clean_model()
    model.graph.output.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3]))
    return model


def output_listed_twice():
    model = clean_model()
    model.graph.output.append(model.graph.output[0])
    return model


def value_info_undefined():
    model = clean_model()
    model.graph.value_info.append(helper.make_tensor_value_info("r", TensorProto.UNDEFINED, [2, 3]))
    return model


def int64_index_beyond_int32(value=2 ** 40):
    """A Gather index torch might write for a flat offset into a huge table: TensorRT 8 clamps it."""
    nodes = [helper.make_node("Gather", ["x", "index"], ["y"], name="gather", axis=0)]
    return make_model(nodes, [("x", np.float32, [4])], [("y", np.float32, [2])],
                      initializers={"index": np.array([1, value], np.int64)})


def libspconv_scn(transposed=0, batch=1):
    """A libspconv graph as NVIDIA's exptool.py writes it (float16, default domain, coordinates implicit): a
    stride-2 SparseConvolution [4, 4, 4] -> [2, 2, 2], then ScatterDense to [batch, 8, 2, 2, 2]."""
    conv = helper.make_node(
        "SparseConvolution", ["features", "conv.weight", "conv.bias"], ["conv"], name="conv", ndim=3,
        input_spatial_shape=[4, 4, 4], output_spatial_shape=[2, 2, 2], in_channels=4, out_channels=8,
        kernel_size=[3, 3, 3], output_bound=200000, stride=[2, 2, 2], dilation=[1, 1, 1], padding=[1, 1, 1],
        transposed=transposed, inverse=0, output_padding=[0, 0, 0], groups=1, subm=0, rulebook="down",
        activation="ReLU", input_shape=[10, 4], output_shape=[6, 8])
    dense = helper.make_node("ScatterDense", ["conv"], ["dense"], name="dense", input_spatial_shape=[2, 2, 2],
                             format="zyx", output_shape=[batch, 8, 2, 2, 2])
    return make_model([conv, dense], [("features", np.float16, [10, 4])], [("dense", np.float16, [batch, 8, 2, 2, 2])],
                      initializers={"conv.weight": np.zeros((8, 3, 3, 3, 4), np.float16),
                                    "conv.bias": np.zeros(8, np.float16)})


# rule id, bad model, settings, expected text in one finding of that rule, its severity
CASES = [
    ("SG001", aten_grid_sampler, Settings(target="tensorrt-8.6"), "node /ATen_12 (ATen:grid_sampler) not runnable "
     "on tensorrt-8.6 — fix: pass grid-sample (native GridSample), or mode=plugin or mode=decompose", "error"),
    ("SG002", custom_op_without_reference, Settings(), "node frob (acme::Frobnicate) has no CPU reference", "warning"),
    ("SG003", grid_sample_16, Settings(target="opset-11"), "node gs (GridSample) is not supported by opset-11 — "
     "fix: pass grid-sample mode=decompose", "error"),
    ("SG003", split_num_outputs_18, Settings(target="tensorrt-8.6"), "version 18 (opset 18) is newer than "
     "tensorrt-8.6 supports (up to version 17); at opset 18 no pass helps", "error"),
    ("SG004", reduce_sum_int64, Settings(target="tensorrt-8.5"), "node sum (ReduceSum) on int64 is not supported "
     "by tensorrt-8.5 (supported: float32, float16); no pass rewrites it", "error"),
    ("SG004", lambda: mask_count(), Settings(target="tensorrt-8.5"), "node sum (ReduceSum) on int64 is not supported "
     "by tensorrt-8.5 (supported: float32, float16) — fix: pass any-all", "error"),
    ("SG004", lambda: bool_max(), Settings(target="onnxruntime"), "node max (Max) on bool is not supported by "
     "onnxruntime (supported: float16, float32, float64, int32, int64, int8, uint32, uint64, uint8) — fix: pass "
     "maximum-minimum", "error"),
    ("SG004", where_int16, Settings(target="onnxruntime"), "node where (Where) on int16 is not supported by "
     "onnxruntime", "error"),
    ("SG004", where_int16, Settings(target="tensorrt-10"), "node where (Where) on int16 is not supported by "
     "tensorrt-10 (supported: float32, float16, bfloat16, int32, int64, bool)", "error"),
    ("SG005", clip_int64, Settings(target="tensorrt-8.6"), "on int64 is not supported by tensorrt-8.6", "error"),
    ("SG005", lambda: clip_int64(opset=11), Settings(), "Clip takes floats only before opset 12", "error"),
    ("SG005", clip_int64, Settings(target="onnxruntime"), "TensorRT and opset-11 runtimes reject integer Clip", "warning"),
    ("SG006", dynamic_input, Settings(target="opset-11"), "input 'x' has dynamic dims batch", "error"),
    ("SG006", dynamic_input, Settings(static_shapes=True), "input 'x' has dynamic dims batch", "error"),
    ("SG007", float64_cast, Settings(), "tensor 'y' is float64", "warning"),
    ("SG008", unsorted, Settings(), "node Tile_16 (Neg) reads 'r' before node ReduceMax_5 (Relu) produces it", "error"),
    ("SG009", duplicate_node_names, Settings(), "node name 'same' is used by 2 nodes", "warning"),
    ("SG010", duplicate_tensor_names, Settings(), "tensor 'y' is defined 2 times", "error"),
    ("SG011", unused_initializer, Settings(), "initializer 'orphan' is not used — fix: pass cleanup", "warning"),
    ("SG012", external_data_outside, Settings(), "reads external data from '../elsewhere/weights.bin'", "error"),
    ("SG019", external_data_past_the_end, Settings(), "initializer 'w' reads bytes 0 to 4096 of 'model.onnx', which "
     "holds", "error"),
    ("SG013", large_initializer, Settings(max_initializer_mb=0.5), "holds 1.0 MiB, over the 0.5 MiB limit", "warning"),
    ("SG013", large_constant_in_a_body, Settings(max_initializer_mb=0.5), "the 'value' tensor of node choose/"
     "then_branch/weights holds 1.0 MiB", "warning"),
    ("SG014", unknown_attribute, Settings(), "onnx.checker: Unrecognized attribute: alpha", "error"),
    ("SG015", shape_conflict, Settings(), "shape inference (strict)", "error"),
    ("SG016", ir_version_14, Settings(target="onnxruntime"), "IR version 14 is newer than onnxruntime reads", "error"),
    ("SG018", opset_27, Settings(target="onnxruntime"), "ai.onnx opset 27 is newer than onnxruntime loads (at "
     "most 26) — fix: pass set-opset opset=26", "error"),
    ("SG017", lambda: plugin_node(), Settings(target="tensorrt-8.5"), "needs a plugin library for tensorrt-8.5 "
     "registering GridSample2D version 1 in namespace surgeon (surgeon's library is TensorRT 10 only", "warning"),
    ("SG020", opset_imported_twice, Settings(), "the model imports domain 'ai.onnx' 2 times (versions 11, 13)",
     "error"),
    ("SG020", lambda: opset_imported_twice(11), Settings(), "imports domain 'ai.onnx' 2 times (versions 11, 11)",
     "warning"),
    ("SG021", output_also_input, Settings(target="tensorrt-8.6"), "graph output 'x' is also a graph input: TensorRT "
     "refuses it ('Tensor x cannot be both input and output')", "error"),
    ("SG021", output_also_input, Settings(target="onnxruntime"), "graph output 'x' is also a graph input", "warning"),
    ("SG021", output_is_initializer, Settings(), "graph output 'w' is an initializer, which no node computes",
     "warning"),
    ("SG022", output_listed_twice, Settings(), "graph output 'y' is listed 2 times", "warning"),
    ("SG023", value_info_undefined, Settings(), "value_info 'r' has element type 0 (UNDEFINED): it declares no type "
     "— fix: pass infer-shapes", "warning"),
    ("SG024", int64_index_beyond_int32, Settings(target="tensorrt-8.6"), "initializer 'index' holds 1 int64 value(s) "
     "outside the int32 range (1099511627776 at flat index 1); tensorrt-8.6 holds int64 in int32 and clamps it to "
     "2147483647", "warning"),
    ("SG025", lambda: libspconv_scn(transposed=1), Settings(target="libspconv"), "node conv (SparseConvolution) has "
     "transposed=1, which libspconv's parser never reads (nor output_padding / output_spatial_shape): it builds a "
     "strided down-sampling convolution instead — fix: re-export with SparseInverseConv3d for up-sampling, or in the "
     "standard flavour", "error"),
    ("SG025", lambda: libspconv_scn(batch=2), Settings(target="libspconv"), "node dense (ScatterDense) writes "
     "batch 2; libspconv runs batch 1 only (engine.hpp: the batch 'must be 1 now') — fix: re-export with batch size 1",
     "error"),
]


def _check(model, settings, tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return check_file(path, settings)


@pytest.mark.parametrize("rule_id, build, settings, expected, severity", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_fires_on_bad_graph(rule_id, build, settings, expected, severity, tmp_path):
    findings = [f for f in _check(build(), settings, tmp_path) if f.rule == rule_id]
    assert findings, f"{rule_id} did not fire"
    texts = [f.describe() for f in findings]
    assert any(expected in text for text in texts), texts
    assert {f.severity for f in findings} == {severity}


@pytest.mark.parametrize("rule_id, build, settings, expected, severity", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_ignored_rule_is_not_reported(rule_id, build, settings, expected, severity, tmp_path):
    from dataclasses import replace

    findings = _check(build(), replace(settings, ignore=(rule_id,)), tmp_path)
    assert rule_id not in {f.rule for f in findings}


def test_every_model_rule_has_a_bad_graph():
    assert {c[0] for c in CASES} == set(MODEL_RULES)


@pytest.mark.parametrize("target", [t for t in available_targets() if t != "libspconv"])
def test_clean_graph_has_no_findings(target, tmp_path):
    assert _check(clean_model(), Settings(target=target, static_shapes=True), tmp_path) == []


def plugin_node():
    node = helper.make_node("GridSample2D", ["x", "g"], ["y"], name="gs", domain="surgeon",
                            plugin_version="1", plugin_namespace="surgeon")
    return make_model([node], [("x", np.float32, [1, 2, 3, 3]), ("g", np.float32, [1, 3, 3, 2])],
                      [("y", np.float32, [1, 2, 3, 3])])


def test_plugin_node_is_runnable_on_tensorrt(tmp_path):
    """TensorRT 10 loads surgeon's plugin library; 8.x runs the node only with a library the user brings."""
    assert [f.rule for f in _check(plugin_node(), Settings(target="tensorrt-10"), tmp_path)] == []
    assert [f.rule for f in _check(plugin_node(), Settings(target="tensorrt-8.6"), tmp_path)] == ["SG017"]
    assert [f.rule for f in _check(plugin_node(), Settings(target="onnxruntime"), tmp_path)] == ["SG001"]


def test_a_plugin_of_your_own_gets_advice_not_a_pass(tmp_path, monkeypatch):
    """No pass removes a node of the user's own plugin spec: SG001's fix is advice (list it in a target profile),
    not a pass, and no longer sits in the message."""
    from surgeon import reference
    from surgeon.plugins import specs

    reference.load_references()
    monkeypatch.setattr(specs, "_SPECS", dict(specs._SPECS))
    monkeypatch.setattr(reference, "_REFERENCES", dict(reference._REFERENCES))
    specs.plugin_spec("CheckOwnPlugin", inputs=("x",), output_shape=lambda shapes, attrs: [shapes[0]],
                      cuda_source="mine.cu")(lambda x: x)
    node = helper.make_node("CheckOwnPlugin", ["x"], ["y"], name="mine", domain="surgeon")
    model = make_model([node], [("x", np.float32, [2])], [("y", np.float32, [2])])
    [finding] = _check(model, Settings(target="tensorrt-10", select=("SG001",)), tmp_path)
    assert (finding.message, finding.fix) == ("not runnable on tensorrt-10: your plugin CheckOwnPlugin is not in its "
                                              "profile", None)
    assert finding.describe().endswith("is not in its profile — fix: list it under `plugins:` in a target profile "
                                       "(docs/plugins.md#your-own-plugins)")


def test_sorted_copy_lets_the_checker_report_the_next_problem(tmp_path):
    model = unsorted()
    model.graph.node[1].attribute.append(helper.make_attribute("alpha", 1.0))
    rules = {f.rule for f in _check(model, Settings(), tmp_path)}
    assert {"SG008", "SG014"} <= rules
    assert not any("topologically sorted" in f.message for f in _check(model, Settings(), tmp_path))


def test_rule_ids_are_unique_and_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "check.md").read_text()
    for rule_id, rule in all_rules().items():
        assert f"| {rule_id} |" in doc, f"{rule_id} missing from docs/check.md"
        assert rule.severity in ("error", "warning", "info")


def test_every_fix_names_a_registered_pass():
    from surgeon.registry import discover

    passes = discover()
    named = {"grid-sample"}
    for rule in MODEL_RULES.values():  # "pass toposort", "per node: pass grid-sample (GridSample), chunk ..."
        if rule.fix:
            named |= set(re.findall(r"\b[a-z]+(?:-[a-z]+)*\b", rule.fix.split("pass ", 1)[1])) - {"or"}
    assert named <= set(passes), named - set(passes)
    grid = passes["grid-sample"].params["mode"].choices
    assert {"plugin", "decompose"} <= set(grid)


def test_aten_forms_map_to_their_pass(tmp_path):
    node = helper.make_node("ATen", ["a", "b"], ["y"], name="and", domain="org.pytorch.aten",
                            operator="__iand_", overload_name="Tensor")
    model = make_model([node], [("a", np.bool_, [2]), ("b", np.bool_, [2])], [("y", np.bool_, [2])])
    findings = [f for f in _check(model, Settings(target="tensorrt-10"), tmp_path) if f.rule == "SG001"]
    assert [f.fix for f in findings] == ["inplace-and"]


def test_shape_inference_reports_the_cause_not_its_echoes(tmp_path):
    """MaxPool on an unbatched [C, H, W] tensor (torch accepts it, ONNX does not) leaves its output
    untyped; the Expand reading it fails too, but only the MaxPool is the problem."""
    model = make_model([helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[1, 1]),
                        helper.make_node("Expand", ["p", "s"], ["y"], name="expand")],
                       [("x", np.float32, [2, 3, 4])], [("y", np.float32, [2, 3, 4])],
                       initializers={"s": np.array([2, 3, 4])})
    findings = _check(model, Settings(select=("SG015",)), tmp_path)
    assert [(f.node, f.message) for f in findings] == [
        ("pool", "shape inference (strict): [ShapeInferenceError] Attribute kernel_shape has incorrect size")]


def test_external_data_beside_the_model_is_clean_and_a_missing_file_is_reported(tmp_path):
    onnx.save(clean_model(), tmp_path / "model.onnx", save_as_external_data=True, location="model.data",
              size_threshold=0)
    assert check_file(tmp_path / "model.onnx", Settings()) == []
    (tmp_path / "model.data").unlink()
    findings = check_file(tmp_path / "model.onnx", Settings())
    assert [f.rule for f in findings] == ["SG014"]
    assert "model.data" in findings[0].message


@pytest.mark.parametrize("offset, length, rule, message", [
    ("0", "8", None, None),
    (None, "8", None, None),
    ("8", None, None, None),  # to the end of the file
    ("12", "8", "SG019", "initializer 'w' reads bytes 12 to 20 of 'w.bin', which holds 16"),
    ("17", "8", "SG019", "initializer 'w' reads bytes 17 to 25 of 'w.bin', which holds 16"),
    # the loader refuses a length (or the rest of the file) that disagrees with the dims, and what is no byte count
    (None, None, "SG000", "initializer 'w'"),
    ("17", None, "SG000", "initializer 'w'"),
    ("0", "4", "SG000", "initializer 'w'"),
    ("abc", "8", "SG000", "initializer 'w'"),
    ("0", "-8", "SG000", "initializer 'w'"),
])
def test_external_data_is_checked_against_the_data_file(offset, length, rule, message, tmp_path):
    """onnx.checker accepts all of these and `check` reported none; ONNX Runtime cannot read the wrong ones."""
    (tmp_path / "w.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    onnx.save(external_data("w.bin", offset, length), tmp_path / "model.onnx")
    findings = check_file(tmp_path / "model.onnx", Settings())
    assert [f.rule for f in findings] == ([rule] if rule else [])
    assert all(message in f.message for f in findings)


def test_a_cast_to_no_type_is_a_finding_not_a_crash(tmp_path):
    """Strict shape inference raises ValueError for Cast(to=0), which onnx.checker passes."""
    model = make_model([helper.make_node("Cast", ["x"], ["y"], name="cast", to=0)], [("x", np.float32, [2])],
                       [("y", np.float32, [2])])
    findings = _check(model, Settings(), tmp_path)
    expected = [("SG015", "shape inference (strict): Invalid tensor data type 0.")]
    assert [(f.rule, f.message) for f in findings] == expected


def test_fixes_come_from_what_passes_declare_they_handle():
    from onnx import helper as h

    from surgeon.check.rules import fix_for
    from surgeon.registry import passes_handling
    from surgeon.targets import load_target

    assert [c.name for c in passes_handling("ATen:atan2")] == ["atan2"]
    assert [c.name for c in passes_handling("ATen:fmax")] == ["maximum-minimum"]
    node = h.make_node("ATen", ["x", "g"], ["y"], domain="org.pytorch.aten", operator="grid_sampler")
    assert fix_for(node, load_target("tensorrt-8.6")) == "grid-sample (native GridSample), or mode=plugin or mode=decompose"
    assert fix_for(node, load_target("opset-11")) == "grid-sample mode=decompose"
    assert fix_for(h.make_node("Relu", ["x"], ["y"]), load_target("opset-11")) is None


def test_a_pool_of_the_wrong_rank_names_pool_rank_as_its_fix(tmp_path):
    from onnx import helper as h

    pool = h.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[1, 1])  # 2-D pool on a 3-D tensor
    model = make_model([pool], [("x", np.float32, [1, 4, 5])], [("y", np.float32, None)])
    path = tmp_path / "pool.onnx"
    onnx.save(model, path)
    findings = [f for f in check_file(path, Settings(target="onnxruntime")) if f.rule == "SG015"]
    assert findings and findings[0].node == "pool" and findings[0].fix == "pool-rank"


def if_with_branches(then_nodes, else_nodes, then_out=("t", np.bool_), else_out=("e", np.bool_), opset=13):
    """`y = If(c)` whose branches hold the given nodes and read `x` ([2, 3]) from the outer graph."""
    def branch(nodes, name, out):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(
            out[0], helper.np_dtype_to_tensor_dtype(np.dtype(out[1])), [2, 3])])

    node = helper.make_node("If", ["c"], ["y"], name="If_0", then_branch=branch(then_nodes, "then", then_out),
                            else_branch=branch(else_nodes, "else", else_out))
    return make_model([node], [("x", np.float32, [2, 3]), ("c", np.bool_, [])], [("y", then_out[1], [2, 3])],
                      opset=opset, extra_opsets={"org.pytorch.aten": 1})


def test_nodes_inside_subgraphs_are_checked_and_named_by_their_path(tmp_path):
    """If/Loop bodies hold nodes the runtime must run too: SG001/SG003 see them, named so they can be found."""
    aten = helper.make_node("ATen", ["x"], ["e"], name="/else/ATen", domain="org.pytorch.aten",
                            operator="grid_sampler")
    model = if_with_branches([helper.make_node("IsInf", ["x"], ["t"], name="gs")], [aten])
    findings = _check(model, Settings(target="tensorrt-8.6", select=("SG001", "SG003")), tmp_path)
    assert sorted((f.rule, f.node, f.op) for f in findings) == [
        ("SG001", "If_0/else_branch/else/ATen", "ATen:grid_sampler"), ("SG003", "If_0/then_branch/gs", "IsInf")]
    assert [f.rule for f in _check(model, Settings(target="onnxruntime", select=("SG001",)), tmp_path)] == ["SG001"]


def test_dtypes_inside_subgraphs_are_checked(tmp_path):
    """An Acos on float64 in a branch (no float64 Acos kernel in ONNX Runtime): SG004, and SG007 for the tensor."""
    cast = helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE)
    acos = helper.make_node("Acos", ["d"], ["t"])
    model = if_with_branches([cast, acos], [helper.make_node("Cast", ["x"], ["e"], to=TensorProto.DOUBLE)],
                             then_out=("t", np.float64), else_out=("e", np.float64))
    findings = _check(model, Settings(target="onnxruntime", select=("SG004", "SG007")), tmp_path)
    assert ("SG004", "If_0/then_branch/#1") in {(f.rule, f.node) for f in findings}
    assert "tensor 'd' is float64" in {f.message for f in findings if f.rule == "SG007"}


def _reflecting_grid_sampler(dtype=np.float32):
    node = helper.make_node("grid_sampler", ["x", "g"], ["y"], name="sampler", domain="mmdeploy",
                            interpolation_mode=0, padding_mode=2, align_corners=0)
    return make_model([node], [("x", dtype, [1, 2, 3, 3]), ("g", dtype, [1, 3, 3, 2])], [("y", dtype, [1, 2, 3, 3])],
                      opset=11)


def test_float64_of_grid_samples_fma_emulation_says_where_it_comes_from(tmp_path):
    """The opset-11 target recipe decomposes grid sampling with `fma_emulation: auto`, float64 on opset-11: check
    -t opset-11 on its output used to give one bare SG007 per float64 tensor (20 for this sampler). Now one per
    sampler, at the Cast that widens, naming fma_emulation and advising `fma_emulation: none`, which, applied
    as the advice words it, leaves no float64. A float64 grid's float64 is the model's: reported as before."""
    from surgeon.pipeline import run_recipe

    target_recipe = Path(__file__).resolve().parent.parent / "recipes" / "targets" / "opset11.yaml"
    onnx.save(_reflecting_grid_sampler(), tmp_path / "in.onnx")
    (tmp_path / "none.yaml").write_text(f"extends: {target_recipe}\nset: {{grid-sample.fma_emulation: none}}\n")
    settings = Settings(target="opset-11", select=("SG007",))
    run_recipe(target_recipe, tmp_path / "in.onnx", tmp_path / "auto.onnx", validate=False, build=False, quiet=True)
    [finding] = check_file(tmp_path / "auto.onnx", settings)
    assert (finding.node, finding.op, finding.fix) == ("sampler/x_plus1_wide", "Cast", None)
    assert finding.message.startswith("starts grid-sample's fma_emulation in its rewrite of node sampler: 20 float64 "
                                      "tensors ('sampler/x_distance_wide', 'sampler/x_flips_wide', 'sampler/x_half', "
                                      "...) that round torch's fused multiply-adds once")
    assert finding.advice.startswith("where the runtime has no float64, run grid-sample with `fma_emulation: none` "
                                     "(extending a target recipe: `set: {grid-sample.fma_emulation: none}`)")
    assert "1 ulp" in finding.advice
    run_recipe(tmp_path / "none.yaml", tmp_path / "in.onnx", tmp_path / "none.onnx", validate=False, build=False,
               quiet=True)
    assert check_file(tmp_path / "none.onnx", settings) == []
    onnx.save(_reflecting_grid_sampler(np.float64), tmp_path / "double.onnx")
    run_recipe(target_recipe, tmp_path / "double.onnx", tmp_path / "double-out.onnx", validate=False, build=False,
               quiet=True)
    findings = check_file(tmp_path / "double-out.onnx", settings)
    assert "tensor 'g' is float64" in {f.message for f in findings}
    assert not [f for f in findings if "fma_emulation" in f.message or f.advice]


def test_an_unsorted_body_is_sg008_and_the_rest_is_checked_sorted(tmp_path):
    """A body out of order used to give an SG014 naming no fix and SG015 echoes of it: now SG008 points to
    toposort (which sorts bodies), and the checker and shape inference judge the sorted copy, finding nothing."""
    neg = helper.make_node("Neg", ["x"], ["n"], name="neg")
    model = if_with_branches([helper.make_node("Abs", ["n"], ["t"], name="abs"), neg],
                             [helper.make_node("Abs", ["x"], ["e"], name="abs_e")],
                             then_out=("t", np.float32), else_out=("e", np.float32))
    findings = _check(model, Settings(), tmp_path)
    assert [(f.rule, f.node, f.message, f.fix) for f in findings] == [
        ("SG008", "If_0/then_branch/abs", "reads 'n' before node If_0/then_branch/neg (Neg) produces it", "toposort")]


def _constant_with_external_data(location: str):
    """Relu(Constant) whose Constant tensor is stored in `location` (not an initializer)."""
    value = helper.make_tensor("cval", TensorProto.FLOAT, [2], [0.0, 0.0])
    value.ClearField("float_data")
    value.data_location = TensorProto.EXTERNAL
    for key, text in (("location", location), ("offset", "0"), ("length", "8")):
        value.external_data.add(key=key, value=text)
    return make_model([helper.make_node("Constant", [], ["c"], name="/Const", value=value), _relu("c", "y")],
                      [], [("y", np.float32, [2])])


def test_external_data_of_constant_tensors(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w.bin").write_bytes(np.zeros(2, np.float32).tobytes())
    onnx.save(_constant_with_external_data("w.bin"), folder / "ok.onnx")
    monkeypatch.chdir(tmp_path)  # not the model's folder: the data file is still found beside the model
    assert check_file(Path("m/ok.onnx"), Settings()) == []
    onnx.save(_constant_with_external_data("../other/w.bin"), folder / "escape.onnx")
    findings = check_file(folder / "escape.onnx", Settings(select=("SG012",)))
    assert [f.message for f in findings] == ["the 'value' tensor of node /Const reads external data from "
                                             "'../other/w.bin', outside m/; keep data files beside the model"]


def test_a_dangling_input_is_reported_in_an_unsorted_graph(tmp_path):
    """The sorted copy's "must be topologically sorted" names a tensor nothing produces: not SG008's."""
    model = make_model([helper.make_node("Add", ["r", "ghost"], ["y"], name="/Add"), _relu("x", "r", name="/Relu1")],
                       [("x", np.float32, [2])], [("y", np.float32, [2])])
    findings = _check(model, Settings(select=("SG008", "SG014")), tmp_path)
    assert {f.rule for f in findings} == {"SG008", "SG014"}
    assert "'ghost'" in next(f.message for f in findings if f.rule == "SG014")


def test_unsorted_model_with_external_data_is_checked_sorted(tmp_path):
    def unsorted_concat(**axis):  # without axis the checker rejects the Concat
        concat = helper.make_node("Concat", ["r", "w"], ["y"], name="/Concat", **axis)
        return make_model([concat, _relu("x", "r", name="/Relu")], [("x", np.float32, [2])],
                          [("y", np.float32, [4])], initializers={"w": np.ones(2, np.float32)})

    onnx.save(unsorted_concat(), tmp_path / "bad.onnx", save_as_external_data=True, location="bad.data",
              size_threshold=0)
    rules = [f.rule for f in check_file(tmp_path / "bad.onnx", Settings(select=("SG008", "SG014")))]
    assert sorted(rules) == ["SG008", "SG014"]
    onnx.save(unsorted_concat(axis=0), tmp_path / "ok.onnx", save_as_external_data=True, location="ok.data",
              size_threshold=0)
    assert [f.rule for f in check_file(tmp_path / "ok.onnx", Settings())] == ["SG008"]


def test_checker_warnings_do_not_reach_stdout(tmp_path, capfd):
    """onnx.checker's C++ prints "Warning: Model contains experimental ops" on fd 1: it goes to stderr."""
    from surgeon.pipeline import check_model

    model = make_model([helper.make_node("ATen", ["x"], ["y"], name="a", operator="grid_sampler")],
                       [("x", np.float32, [2])], [("y", np.float32, [2])])
    _check(model, Settings(target="tensorrt-8.6"), tmp_path)
    check_model(model)
    out, err = capfd.readouterr()
    assert out == "" and "experimental ops" in err


def test_a_model_above_the_targets_opset_is_one_sg018_not_one_sg003_per_node(tmp_path):
    """opset-11 on an opset-13 export: every node whose version changed after 11 used to be its own SG003
    (63 for one grid_sample module); set-opset lowers them all, so SG018 says it once."""
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["u"], name="unsqueeze"),
             helper.make_node("Squeeze", ["u", "axes"], ["y"], name="squeeze")]
    model = make_model(nodes, [("x", np.float32, [4])], [("y", np.float32, [4])],
                       initializers={"axes": np.array([0], np.int64)}, opset=13)
    findings = _check(model, Settings(target="opset-11"), tmp_path)
    assert [f.rule for f in findings if f.rule in ("SG003", "SG018")] == ["SG018"]
    sg018 = next(f for f in findings if f.rule == "SG018")
    assert sg018.fix.startswith("set-opset opset=11, as the first step (prepend_steps")


def test_no_sg002_for_what_onnx_runtime_or_a_local_function_body_runs(tmp_path):
    """com.microsoft::Inverse runs in ONNX Runtime and a model-local function's body is inlined for
    validation: neither needs a CPU reference (both were SG002 warnings)."""
    from onnx import TensorProto

    inverse = helper.make_node("Inverse", ["m"], ["inv"], name="inverse", domain="com.microsoft")
    twice = helper.make_function("custom", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                 [helper.make_opsetid("", 13)])
    call = helper.make_node("Twice", ["inv"], ["y"], name="twice", domain="custom")
    graph = helper.make_graph([inverse, call], "g", [helper.make_tensor_value_info("m", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    model = helper.make_model(graph, functions=[twice], ir_version=10,
                              opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1),
                                             helper.make_opsetid("custom", 1)])
    assert [f for f in _check(model, Settings(target="onnxruntime"), tmp_path) if f.rule == "SG002"] == []


@pytest.mark.parametrize("op, fix", [("Clip", "clip-int"), ("Max", "maximum-minimum")])
def test_an_integer_op_rounded_through_float32_is_sg005_until_its_pass_runs(op, fix, tmp_path):
    """torch's opset-11 export of clamp/maximum on int64 (static shapes): it runs everywhere and is wrong
    past 2**24 without a word, so check names it; after the pass it is exact and the finding is gone."""
    from surgeon.testing import apply_pass

    operands = ["xf", "lo", "hi"] if op == "Clip" else ["xf", "hi"]
    nodes = [helper.make_node("Cast", ["x"], ["xf"], name="to_float", to=TensorProto.FLOAT),
             helper.make_node(op, operands, ["rf"], name="op"),
             helper.make_node("Cast", ["rf"], ["y"], name="back", to=TensorProto.INT64)]
    model = make_model(nodes, [("x", np.int64, [4])], [("y", np.int64, [4])],
                       initializers={"lo": np.float32(-3), "hi": np.float32(5)}, opset=11)
    findings = [f for f in _check(model, Settings(target="onnxruntime"), tmp_path) if f.rule == "SG005"]
    assert [(f.node, f.fix) for f in findings] == [("op", fix)]
    assert "computes int64 through float32" in findings[0].message and "2**24" in findings[0].message
    fixed, _ = apply_pass(model, fix)
    assert not [f for f in _check(fixed, Settings(target="onnxruntime"), tmp_path) if f.rule == "SG005"]


def test_the_grid_sampler_fix_on_tensorrt_offers_what_auto_picks_first():
    """From TensorRT 8.5 the parser has GridSample, which the pass's auto mode emits: the fix says so
    (it offered only the plugin, which 8.x needs a library of your own for, and the slower decomposition)."""
    from surgeon.registry import get_pass
    from surgeon.targets import load_target

    hint = get_pass("grid-sample").fix_hint
    assert hint(load_target("tensorrt-8.6")).startswith("grid-sample (native GridSample), or mode=plugin")
    assert hint(load_target("tensorrt-10")).startswith("grid-sample (native GridSample)")


def _any_form(shape=(2, 3)):
    """torch.any(x, dim=1) on bool x, as torch exports it: Greater(ReduceSum(Cast(x, int64)), 0)."""
    nodes = [helper.make_node("Cast", ["m"], ["n"], name="cast", to=TensorProto.INT64),
             helper.make_node("ReduceSum", ["n"], ["count"], name="sum", axes=[1], keepdims=0),
             helper.make_node("Greater", ["count", "zero"], ["y"], name="any")]
    return make_model(nodes, [("m", np.bool_, list(shape))], [("y", np.bool_, [shape[0]])],
                      initializers={"zero": np.array(0, np.int64)})


def _all_form():
    """torch.all(x, dim=1): Not(Greater(ReduceSum(Cast(Not(x), int64)), 0))."""
    nodes = [helper.make_node("Not", ["m"], ["not_m"], name="not_in"),
             helper.make_node("Cast", ["not_m"], ["n"], name="cast", to=TensorProto.INT64),
             helper.make_node("ReduceSum", ["n"], ["count"], name="sum", axes=[1], keepdims=0),
             helper.make_node("Greater", ["count", "zero"], ["some"], name="some"),
             helper.make_node("Not", ["some"], ["y"], name="all")]
    return make_model(nodes, [("m", np.bool_, [2, 3])], [("y", np.bool_, [2])],
                      initializers={"zero": np.array(0, np.int64)})


def _count_read_by_more_than_greater():
    """An any whose count is also an output: the pass rewrites the Greater, the int64 ReduceSum stays (its
    extent is unknown, so the mask count form leaves it too)."""
    model = _any_form(shape=("batch", "n"))
    model.graph.output.append(helper.make_tensor_value_info("count", TensorProto.INT64, ["batch"]))
    return model


# (model, the SG004 fix on TensorRT 8.6, text in the message where there is none)
ANY_ALL_CASES = {
    "any": (_any_form, "any-all", None),
    "all": (_all_form, "any-all", None),
    "mask count": (mask_count, "any-all", None),
    "mask count, axes input": (lambda: mask_count(axes_input=True, opset=13), "any-all", None),
    "mask count over an unknown extent": (lambda: mask_count(shape=("n",)), None, "(here: unknown)"),
    "mask count over 2**24 values": (lambda: mask_count(shape=(2 ** 12, 2 ** 12)), None, "(here: 16777216)"),
    "count also read as a number": (_count_read_by_more_than_greater, None, "(here: unknown)"),
    "int64 sum": (reduce_sum_int64, None, "no pass rewrites it"),
}


@pytest.mark.parametrize("form", ANY_ALL_CASES)
def test_any_all_is_the_fix_only_for_the_reductions_it_rewrites(form, tmp_path):
    """SG004 named any-all for every int64 ReduceSum on TensorRT; the pass rewrites only torch's any/all
    clusters and bool mask counts over an extent known below 2**24. Where check names it, running it clears
    the finding; where check does not, the pass leaves the ReduceSum and the message says why."""
    from surgeon.testing import apply_pass

    build, fix, why = ANY_ALL_CASES[form]
    settings = Settings(target="tensorrt-8.6", select=("SG004",))
    [finding] = _check(build(), settings, tmp_path)
    assert (finding.node, finding.fix) == ("sum", fix)
    assert why is None or why in finding.message
    rewritten, _ = apply_pass(build(), "any-all", target="tensorrt-8.6")
    assert [f.node for f in _check(rewritten, settings, tmp_path)] == ([] if fix else ["sum"])


def test_no_any_all_fix_for_a_mask_count_inside_a_body(tmp_path):
    """any-all rewrites the main graph: a count in an If branch gets no fix, and the message says so."""
    cast = helper.make_node("Cast", ["x_pos"], ["n"], name="cast", to=TensorProto.INT32)
    count = helper.make_node("ReduceSum", ["n"], ["t"], name="sum", axes=[1], keepdims=1)
    positive = helper.make_node("Greater", ["x", "zero"], ["x_pos"], name="pos")
    other = helper.make_node("Cast", ["x"], ["e"], name="other", to=TensorProto.INT32)
    model = if_with_branches([positive, cast, count], [other], then_out=("t", np.int32), else_out=("e", np.int32))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0, np.float32), "zero"))
    [finding] = _check(model, Settings(target="tensorrt-8.6", select=("SG004",)), tmp_path)
    assert finding.node == "If_0/then_branch/sum" and finding.fix is None
    assert "any-all rewrites the main graph only" in finding.message


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt-8.6", "tensorrt-10", "opset-11"])
def test_a_bool_max_or_min_is_sg004_with_maximum_minimum_as_fix(op, target, tmp_path):
    """torch.maximum/minimum on bool tensors at opset 13 is a bool Max/Min, which ONNX does not define and
    ONNX Runtime refuses to load; check said nothing (shape inference fails on it, so its operands were
    untyped). maximum-minimum makes it Or/And, which loads."""
    import onnxruntime as ort

    from surgeon.testing import apply_pass, run_ort

    opset = 11 if target == "opset-11" else 13  # opset-11's profile has no dtypes: ONNX's Max-8 has no bool
    with pytest.raises(Exception, match=r"tensor\(bool\)"):
        ort.InferenceSession(bool_max(op, opset).SerializeToString(), providers=["CPUExecutionProvider"])
    settings = Settings(target=target, select=("SG004",))
    findings = _check(bool_max(op, opset), settings, tmp_path)
    assert [(f.node, f.fix) for f in findings] == [(op.lower(), "maximum-minimum")]
    assert "on bool" in findings[0].message
    fixed, _ = apply_pass(bool_max(op, opset), "maximum-minimum", target=target)
    assert _check(fixed, settings, tmp_path) == []
    a, b = np.array([1, -1, 1], np.float32), np.array([1, 1, -1], np.float32)
    expected = (a > 0) | (b > 0) if op == "Max" else (a > 0) & (b > 0)
    np.testing.assert_array_equal(run_ort(fixed, {"a": a, "b": b})[0], expected)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"])
@pytest.mark.parametrize("target", sorted(set(available_targets()) - {"libspconv"}))
def test_an_integer_max_names_maximum_minimum_only_where_its_rewrite_runs(dtype, target, tmp_path):
    """ONNX Runtime has no int16 Max: maximum-minimum computes it in int32 (it handles no standard op label,
    so the generic fix lookup found nothing). On TensorRT a uint8 Max became Greater/Where on uint8, which
    TensorRT lacks too: the hint led to a model that still failed. The pass is run on every integer dtype
    and target: where check names it, the result is clean; where it does not, the rewrite is not."""
    from surgeon.testing import apply_pass

    opset = 11 if target == "opset-11" else 13
    model = make_model([helper.make_node("Max", ["a", "b"], ["y"], name="max")],
                       [("a", dtype, [3]), ("b", dtype, [3])], [("y", dtype, [3])], opset=opset)
    settings = Settings(target=target, select=("SG003", "SG004"))
    findings = _check(model, settings, tmp_path)
    if not findings:
        return
    [finding] = findings
    fixed, _ = apply_pass(model, "maximum-minimum", target=target)
    if finding.fix == "maximum-minimum":
        assert _check(fixed, settings, tmp_path) == []
    else:
        assert finding.fix is None and "cast its inputs to a supported type in the model" in finding.message
        assert _check(fixed, settings, tmp_path) != []


def _contrib(op_type, inputs):
    node = helper.make_node(op_type, [name for name, _ in inputs], ["y"], name="contrib", domain="com.microsoft")
    return make_model([node], [(name, np.float32, shape) for name, shape in inputs], [("y", np.float32, None)])


CONTRIB_OPS = {  # op: (inputs, whether ONNX Runtime's CPU build has a kernel for it)
    "Gelu": ([("x", [2, 3])], True),
    "FusedMatMul": ([("a", [2, 3]), ("b", [3, 2])], True),
    "BiasAdd": ([("x", [2, 3, 4]), ("bias", [4]), ("skip", [2, 3, 4])], False),  # a CUDA kernel only
    "Frobnicate": ([("x", [2])], False),  # no such op
}


@pytest.mark.parametrize("op_type", CONTRIB_OPS)
def test_a_contrib_op_without_an_onnx_runtime_cpu_kernel_is_sg002(op_type, tmp_path):
    """Validation runs com.microsoft ops in ONNX Runtime, which fails on one its CPU build has no kernel for:
    check said nothing. The kernels come from onnxruntime itself (get_all_opkernel_def), so what it runs is
    clean; on the onnxruntime target such a node is SG001 as well."""
    import onnxruntime as ort

    inputs, runs = CONTRIB_OPS[op_type]
    model = _contrib(op_type, inputs)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        loads = True
    except Exception:  # noqa: BLE001  ONNX Runtime raises its own exception types
        loads = False
    assert loads == runs
    for target in ("tensorrt-8.6", "onnxruntime"):
        findings = _check(model, Settings(target=target, select=("SG001", "SG002")), tmp_path)
        sg002 = [f for f in findings if f.rule == "SG002"]
        assert [(f.node, f.op, f.severity) for f in sg002] == ([] if runs else [
            ("contrib", f"com.microsoft::{op_type}", "warning")])
        assert all("has no kernel in the CPU build of ONNX Runtime" in f.message for f in sg002)
        if target == "onnxruntime":
            assert [f.rule for f in findings if f.rule == "SG001"] == ([] if runs else ["SG001"])


def _calls_local_function(body, inputs, outputs, opset=17):
    """A model whose graph calls a local function `pkg.local::Block` made of `body` twice, as torch's dynamo
    export writes modules: (inputs, outputs) are the call's (name, numpy dtype) pairs, fed from the graph."""
    names = [name for name, _ in inputs]
    block = helper.make_function("pkg.local", "Block", names, [name for name, _ in outputs], body,
                                 [helper.make_opsetid("", opset), helper.make_opsetid("org.pytorch.aten", 1)])
    calls = [helper.make_node("Block", names, [f"{name}_{i}" for name, _ in outputs], name=f"block_{i}",
                              domain="pkg.local") for i in (1, 2)]
    graph_outputs = [(f"{name}_{i}", dtype, [3]) for i in (1, 2) for name, dtype in outputs]
    model = make_model(calls, [(name, dtype, [3]) for name, dtype in inputs], graph_outputs, opset=opset)
    model.functions.append(block)
    return model


def _linear_relu():
    return _calls_local_function([helper.make_node("Mul", ["x", "x"], ["t"], name="mul"),
                                  helper.make_node("Relu", ["t"], ["y"], name="relu")],
                                 [("x", np.float32)], [("y", np.float32)])


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt-10"])
def test_a_call_of_a_local_function_is_no_custom_op(target, tmp_path):
    """torch's dynamo export calls model-local functions; ONNX Runtime and TensorRT 9+ run their bodies, but
    every call was SG001 'not runnable', so every such export failed check."""
    from surgeon.testing import run_ort

    model = _linear_relu()
    x = np.array([-1, 0, 2], np.float32)
    np.testing.assert_array_equal(run_ort(model, {"x": x})[0], np.maximum(x * x, 0))
    assert _check(model, Settings(target=target), tmp_path) == []


@pytest.mark.parametrize("target", ["tensorrt-8.5", "tensorrt-8.6", "opset-11", "libspconv"])
def test_a_call_of_a_local_function_is_sg001_where_the_runtime_does_not_read_them(target, tmp_path):
    """onnx-tensorrt parses local functions from TensorRT 9.0 (its changelog); before, the call is an
    unknown op (profile `local_functions: false`): the finding names the pass that inlines them."""
    findings = _check(_linear_relu(), Settings(target=target, select=("SG001",)), tmp_path)
    assert [(f.node, f.op, f.fix) for f in findings] == [
        (f"block_{i}", "pkg.local::Block", "inline-functions") for i in (1, 2)]
    assert all("calls a model-local function" in f.message and "local_functions: false" in f.message
               for f in findings)


@pytest.mark.parametrize("base, local_functions, expected", [
    ("tensorrt-8.6", "true", []), ("onnxruntime", "false", ["SG001", "SG001"])])
def test_whether_a_local_call_is_sg001_is_the_profiles_to_say(base, local_functions, expected, tmp_path):
    """The profile's `local_functions`, not the runtime's name and version, decides (a TensorRT 8.6 with
    a parser backport, an ONNX Runtime build for a converter that cannot read functions)."""
    profile = tmp_path / "mine.yaml"
    profile.write_text(f"extends: {base}\nname: mine\nlocal_functions: {local_functions}\n")
    findings = _check(_linear_relu(), Settings(target=str(profile), select=("SG001",)), tmp_path)
    assert [f.rule for f in findings] == expected


def test_after_inline_functions_no_local_call_is_left_to_report(tmp_path):
    from surgeon.testing import apply_pass

    inlined, _ = apply_pass(_linear_relu(), "inline-functions", target="tensorrt-8.6")
    assert _check(inlined, Settings(target="tensorrt-8.6", select=("SG001",)), tmp_path) == []


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt-10"])
def test_the_nodes_of_a_local_function_body_are_checked(target, tmp_path):
    """The body is what runs: an ATen node in it is SG001, named by the function's path."""
    aten = helper.make_node("ATen", ["x", "g"], ["y"], name="gs", domain="org.pytorch.aten", operator="grid_sampler")
    model = _calls_local_function([aten], [("x", np.float32), ("g", np.float32)], [("y", np.float32)])
    findings = _check(model, Settings(target=target, select=("SG001",)), tmp_path)
    assert [(f.node, f.op) for f in findings] == [("pkg.local::Block/gs", "ATen:grid_sampler")]


def test_dtypes_inside_a_local_function_come_from_its_calls(tmp_path):
    """A uint8 Max in a function body is SG004 on TensorRT 10 (its dtype inferred from what the calls pass
    in, not from the graph's tensors of the same name); maximum-minimum's rewrite needs uint8 Greater/Where,
    which TensorRT lacks too."""
    body = [helper.make_node("Max", ["a", "b"], ["y"], name="max")]
    model = _calls_local_function(body, [("a", np.uint8), ("b", np.uint8)], [("y", np.uint8)])
    [finding] = _check(model, Settings(target="tensorrt-10", select=("SG004",)), tmp_path)
    assert finding.node == "pkg.local::Block/max" and finding.fix is None
    assert "on uint8" in finding.message and "Greater on uint8" in finding.message  # the rewrite's own refusal
    shadowed = _calls_local_function(body, [("a", np.float32), ("b", np.float32)], [("y", np.float32)])
    for value in shadowed.graph.input:
        value.name = {"a": "p", "b": "q"}[value.name]
    for call in shadowed.graph.node:
        call.input[:] = ["p", "q"]
    shadowed.graph.input.append(helper.make_tensor_value_info("a", TensorProto.UINT8, [3]))  # the graph's own 'a'
    assert _check(shadowed, Settings(target="tensorrt-10", select=("SG004",)), tmp_path) == []


# ---------------------------------------------------------------- fixes for nodes in If/Loop/Scan bodies

def _in_main_graph_or_if(node, inputs, output, in_body, opset=11, initializers=None):
    """`node` making `y` in the main graph, or (`in_body` "input" or "constant", how the condition comes) in the
    then-branch of `If_0` (the else-branch a constant of the same type and shape) reading the same graph inputs
    from outside."""
    dtype, shape = output
    extra = {"org.pytorch.aten": 1} if node.domain else None
    if not in_body:
        return make_model([node], inputs, [("y", dtype, shape)], initializers, opset=opset, extra_opsets=extra)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    then = helper.make_graph([node], "then", [], [helper.make_tensor_value_info("y", elem, shape)])
    zeros = helper.make_node("Constant", [], ["e"], name="zeros", value=onnx.numpy_helper.from_array(np.zeros(shape, dtype)))
    other = helper.make_graph([zeros], "else", [], [helper.make_tensor_value_info("e", elem, shape)])
    choose = helper.make_node("If", ["c"], ["out"], name="If_0", then_branch=then, else_branch=other)
    if in_body == "constant":
        initializers = {**(initializers or {}), "c": np.array(True)}
    else:
        inputs = inputs + [("c", np.bool_, [])]
    return make_model([choose], inputs, [("out", dtype, shape)], initializers, opset=opset, extra_opsets=extra)


def _aten(operator, inputs):
    return helper.make_node("ATen", inputs, ["y"], name="n", domain="org.pytorch.aten", operator=operator)


_GRID = [("x", np.float32, [1, 2, 3, 3]), ("g", np.float32, [1, 3, 3, 2])]
# rule, target, node, graph inputs, output, opset, initializers, the fix in the main graph, the pass and its params
BODY_FIX_CASES = [
    ("SG001", "tensorrt-8.6", lambda: _aten("grid_sampler", ["x", "g", "mode", "pad", "align"]), _GRID,
     (np.float32, [1, 2, 3, 3]), 11, {"mode": np.array(0), "pad": np.array(0), "align": np.array(False)},
     "grid-sample (native GridSample), or mode=plugin or mode=decompose", ("grid-sample", {})),
    ("SG001", "tensorrt-8.6", lambda: _aten("atan2", ["a", "b"]), [("a", np.float32, [3]), ("b", np.float32, [3])],
     (np.float32, [3]), 11, None, "atan2", ("atan2", {})),
    ("SG003", "opset-11", lambda: helper.make_node("GridSample", ["x", "g"], ["y"], name="n"), _GRID,
     (np.float32, [1, 2, 3, 3]), 16, None, "grid-sample mode=decompose", ("grid-sample", {"mode": "decompose"})),
    ("SG004", "onnxruntime", lambda: helper.make_node("Max", ["a", "b"], ["y"], name="n"),
     [("a", np.bool_, [3]), ("b", np.bool_, [3])], (np.bool_, [3]), 13, None, "maximum-minimum",
     ("maximum-minimum", {})),
    ("SG005", "tensorrt-8.6", lambda: helper.make_node("Clip", ["a", "lo", "hi"], ["y"], name="n"),
     [("a", np.int64, [3])], (np.int64, [3]), 13, {"lo": np.array(0), "hi": np.array(5)}, "clip-int",
     ("clip-int", {})),
    ("SG015", "onnxruntime", lambda: helper.make_node("MaxPool", ["x"], ["y"], name="n", kernel_shape=[1, 1]),
     [("x", np.float32, [1, 4, 5])], (np.float32, [1, 4, 5]), 13, None, "pool-rank", ("pool-rank", {})),
]


@pytest.mark.parametrize("rule, target, build, inputs, output, opset, initializers, fix, applied", BODY_FIX_CASES,
                         ids=[f"{c[0]}-{c[8][0]}" for c in BODY_FIX_CASES])
def test_a_fix_is_named_only_where_its_pass_reaches_the_node(rule, target, build, inputs, output, opset,
                                                             initializers, fix, applied, tmp_path):
    """Every pass a SG001-SG005 fix names rewrites the main graph only: in the main graph the finding names
    the pass and the pass removes it; in an If branch the pass leaves the node, so the finding named a fix
    that does nothing. Now it names none and says where the node is and what to do, unless the If's condition
    is a constant: simplify folds the If, and the pass then reaches the node."""
    from surgeon.testing import apply_pass

    settings = Settings(target=target, select=(rule,))
    pass_name, params = applied
    for in_body in (None, "input", "constant"):
        model = _in_main_graph_or_if(build(), inputs, output, in_body, opset, initializers)
        [finding] = [f for f in _check(model, settings, tmp_path) if f.node in ("n", "If_0/then_branch/n")]
        if in_body == "constant":
            assert (finding.node, finding.fix) == ("If_0/then_branch/n", f"simplify, then {fix}")
            model, _ = apply_pass(model, "simplify", target=target)
        rewritten, _ = apply_pass(model, pass_name, target=target, **params)
        if in_body != "input":
            assert in_body or (finding.node, finding.fix) == ("n", fix)
            assert not {"n", "If_0/then_branch/n"} & {f.node for f in _check(rewritten, settings, tmp_path)}
            continue
        assert (finding.node, finding.fix) == ("If_0/then_branch/n", None)
        assert (f"it runs inside the If/Loop/Scan body If_0/then_branch, which no pass rewrites (in the main graph "
                f"the fix would be: {fix})") in finding.message
        assert ("If_0/then_branch/n", None) in [(f.node, f.fix) for f in _check(rewritten, settings, tmp_path)]


def test_a_node_of_a_local_function_is_fixed_after_inline_functions(tmp_path):
    """maximum-minimum does not reach a function's body either, but inline-functions puts it in the main graph."""
    from surgeon.testing import apply_pass

    body = [helper.make_node("Max", ["a", "b"], ["y"], name="max")]
    model = _calls_local_function(body, [("a", np.bool_), ("b", np.bool_)], [("y", np.bool_)])
    settings = Settings(target="onnxruntime", select=("SG004",))
    assert {f.fix for f in _check(model, settings, tmp_path)} == {"inline-functions, then maximum-minimum"}
    untouched, _ = apply_pass(model, "maximum-minimum")
    assert _check(untouched, settings, tmp_path) != []
    inlined, _ = apply_pass(model, "inline-functions")
    fixed, _ = apply_pass(inlined, "maximum-minimum")
    assert _check(fixed, settings, tmp_path) == []


def test_a_pool_of_the_wrong_rank_in_a_local_function_is_fixed_after_inline_functions(tmp_path):
    """Strict inference reports it through the call (`(op_type:Block, node name: call): ... Inference error(s):
    (op_type:MaxPool, node name: n): ...`): one SG015 on the body's node, whose fix inlines first (before, an
    SG015 on the call with the truncated message, and one naming no node and no fix)."""
    from surgeon.testing import apply_pass

    pool = helper.make_node("MaxPool", ["x"], ["y"], name="n", kernel_shape=[1, 1])
    model = make_model([helper.make_node("Block", ["x"], ["y"], name="call", domain="pkg.local")],
                       [("x", np.float32, [1, 4, 5])], [("y", np.float32, [1, 4, 5])], opset=17)
    model.functions.append(helper.make_function("pkg.local", "Block", ["x"], ["y"], [pool],
                                                [helper.make_opsetid("", 17)]))
    settings = Settings(target="onnxruntime", select=("SG015",))
    [finding] = _check(model, settings, tmp_path)
    assert (finding.node, finding.op) == ("pkg.local::Block/n", "MaxPool")
    assert finding.fix == "inline-functions, then pool-rank"
    assert finding.message.endswith("Attribute kernel_shape has incorrect size")
    assert _check(apply_pass(model, "pool-rank")[0], settings, tmp_path) != []
    inlined, _ = apply_pass(model, "inline-functions")
    assert _check(apply_pass(inlined, "pool-rank")[0], settings, tmp_path) == []


def test_a_function_called_only_inside_a_body_gets_no_fix(tmp_path):
    """Inlined there, its nodes land in the body: no pass reaches them."""
    body = [helper.make_node("Max", ["a", "b"], ["y"], name="max")]
    model = _calls_local_function(body, [("a", np.bool_), ("b", np.bool_)], [("y", np.bool_)])
    then = helper.make_graph(list(model.graph.node), "then", [], [helper.make_tensor_value_info(
        f"y_{i}", TensorProto.BOOL, [3]) for i in (1, 2)])
    other = helper.make_graph([helper.make_node("Identity", ["a"], [f"e_{i}"]) for i in (1, 2)], "else", [],
                              [helper.make_tensor_value_info(f"e_{i}", TensorProto.BOOL, [3]) for i in (1, 2)])
    del model.graph.node[:]
    model.graph.node.append(helper.make_node("If", ["c"], ["y_1", "y_2"], name="If_0", then_branch=then,
                                             else_branch=other))
    model.graph.input.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    [finding] = _check(model, Settings(target="onnxruntime", select=("SG004",)), tmp_path)
    assert (finding.node, finding.fix) == ("pkg.local::Block/max", None)
    assert "inside the If/Loop/Scan body If_0/then_branch" in finding.message


# ---------------------------------------------------------------- structure the checker lets pass (SG020-SG023)

def test_structural_findings_are_the_only_ones(tmp_path):
    """onnx.checker (SG014), inference (SG015) and ONNX Runtime accept each of these models: the new rule is
    the only finding, so none duplicates another."""
    for rule, build in (("SG020", opset_imported_twice), ("SG021", output_also_input),
                        ("SG021", output_is_initializer), ("SG022", output_listed_twice),
                        ("SG023", value_info_undefined)):
        assert [f.rule for f in _check(build(), Settings(target="tensorrt-8.6"), tmp_path)] == [rule], rule


def test_a_local_function_importing_a_domain_twice_is_sg020(tmp_path):
    model = _linear_relu()
    model.functions[0].opset_import.append(helper.make_opsetid("", 18))
    [finding] = _check(model, Settings(select=("SG020",)), tmp_path)
    assert (finding.severity, finding.message) == ("error", "local function pkg.local::Block imports domain "
                                                   "'ai.onnx' 2 times (versions 17, 18); keep one opset_import "
                                                   "entry per domain")


def test_an_initializer_listed_as_input_and_output_is_an_initializer_output(tmp_path):
    """IR < 4 lists initializers among the inputs: such an output is a constant, not a graph input."""
    model = output_is_initializer()
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3]))
    [finding] = _check(model, Settings(target="tensorrt-8.6", select=("SG021",)), tmp_path)
    assert finding.severity == "warning" and "is an initializer" in finding.message


@pytest.mark.parametrize("where", ["input", "output"])
def test_an_undefined_element_type_on_the_graph_is_one_sg000(where, tmp_path):
    """The loader refuses it (as ONNX Runtime does): one clear finding, not SG023 too, and no traceback."""
    model = clean_model()
    getattr(model.graph, where)[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
    findings = _check(model, Settings(target="tensorrt-8.6"), tmp_path)
    assert [(f.rule, f.message) for f in findings] == [
        ("SG000", f"not a usable ONNX model: graph {where} '{getattr(model.graph, where)[0].name}' has no element "
                  "type (0, UNDEFINED)")]


def test_an_undefined_element_type_on_a_body_output_is_an_error_infer_shapes_fixes(tmp_path):
    """ONNX Runtime refuses it ('Invalid tensor data type 0'); strict inference types it."""
    import onnxruntime
    from surgeon.testing import apply_pass

    model = if_with_branches([_relu("x", "t", "relu")], [helper.make_node("Neg", ["x"], ["e"], name="neg")],
                             then_out=("t", np.float32), else_out=("e", np.float32))
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    then.output[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
    with pytest.raises(Exception, match="Invalid tensor data type 0"):
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    [finding] = _check(model, Settings(), tmp_path)
    assert (finding.rule, finding.severity, finding.fix) == ("SG023", "error", "infer-shapes")
    assert finding.message.startswith("output 't' of If_0/then_branch has element type 0 (UNDEFINED)")
    inferred, _ = apply_pass(model, "infer-shapes")
    assert _check(inferred, Settings(), tmp_path) == []


# ---------------------------------------------------------------- int64 constants on TensorRT 8 (SG024)

INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def _slice(ends, also_read=None, steps=None):
    """x[1:] as torch writes it (ends INT64_MAX), optionally with `steps`, and with the tensor named `also_read`
    ("ends", "steps") also added to an int64 input."""
    bounds = ["x", "starts", "ends"] + (["axes", "steps"] if steps is not None else [])
    nodes = [helper.make_node("Slice", bounds, ["y"], name="slice")]
    outputs = [("y", np.float32, [3])]
    if also_read:
        nodes.append(helper.make_node("Add", ["i", also_read], ["j"], name="add"))
        outputs.append(("j", np.int64, [1]))
    steps = {"axes": np.array([0]), "steps": np.array([steps])} if steps is not None else {}
    return make_model(nodes, [("x", np.float32, [4]), ("i", np.int64, [1])], outputs, opset=13,
                      initializers={"starts": np.array([1]), "ends": np.array([ends]), **steps})


@pytest.mark.parametrize("ends", [INT64_MAX, INT64_MIN, -INT64_MAX, 2 ** 40, -2 ** 33])
def test_slice_starts_and_ends_beyond_int32_are_no_sg024(ends, tmp_path):
    """Slice clamps them to the dim, so their int32 limits select the same on every dim below 2**31 (torch.flip
    writes -INT64_MAX); read by anything else, the clamped value is wrong there."""
    settings = Settings(target="tensorrt-8.6", select=("SG024",))
    assert _check(_slice(ends), settings, tmp_path) == []
    [finding] = _check(_slice(ends, also_read="ends"), settings, tmp_path)
    assert finding.message.startswith(f"initializer 'ends' holds 1 int64 value(s) outside the int32 range ({ends} ")


@pytest.mark.parametrize("steps", [2 ** 31, 2 ** 40, INT64_MAX, -2 ** 31 - 1, -2 ** 33, INT64_MIN])
def test_slice_steps_beyond_int32_are_no_sg024(steps, tmp_path):
    """TensorRT 8 clamps such a step to the int32 limit of its sign, which is no smaller than a dim below 2**31
    either: both take the start's element alone (or none), as ONNX Runtime shows on a small dim, whatever the
    starts and ends. Before, only steps of exactly the int64 limits were left out; read by anything else, the
    clamped value is wrong there."""
    from surgeon.testing import run_ort

    clamped = int(np.clip(steps, np.iinfo(np.int32).min, np.iinfo(np.int32).max))
    x = np.arange(5, dtype=np.float32)
    for starts, ends in ((0, 5), (1, INT64_MAX), (-1, INT64_MIN), (4, -6), (-2, 2), (2, 2)):
        node = helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])
        taken = [run_ort(make_model([node], [("x", np.float32, [5])], [("y", np.float32, None)], opset=13,
                                    initializers={"starts": np.array([starts]), "ends": np.array([ends]),
                                                  "axes": np.array([0]), "steps": np.array([step])}), {"x": x})[0]
                 for step in (steps, clamped)]
        assert taken[0].tolist() == taken[1].tolist() and len(taken[0]) <= 1, (starts, ends, taken)
    settings = Settings(target="tensorrt-8.6", select=("SG024",))
    assert _check(_slice(4, steps=steps), settings, tmp_path) == []
    [finding] = _check(_slice(4, steps=steps, also_read="steps"), settings, tmp_path)
    assert finding.message.startswith(f"initializer 'steps' holds 1 int64 value(s) outside the int32 range ({steps} ")


def test_a_torch_flip_export_is_no_sg024(tmp_path):
    """torch writes the Slice of a flip as ends -INT64_MAX, step -1 (before, a warning on every flip)."""
    torch = pytest.importorskip("torch")

    class Flip(torch.nn.Module):
        def forward(self, x):
            return torch.flip(x, dims=[1])[:, 1:]

    path = tmp_path / "flip.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(Flip(), (torch.randn(2, 5),), str(path), opset_version=11, dynamo=False)
    slices = [n for n in onnx.load(path).graph.node if n.op_type == "Slice"]
    assert len(slices) == 2
    assert check_file(path, Settings(target="tensorrt-8.6", select=("SG024",))) == []


def test_sg024_names_a_constant_node_and_reads_value_ints(tmp_path):
    nodes = [helper.make_node("Constant", [], ["k"], name="offsets", value_ints=[1, -2 ** 33]),
             helper.make_node("Add", ["i", "k"], ["y"], name="add")]
    model = make_model(nodes, [("i", np.int64, [2])], [("y", np.int64, [2])], opset=13)
    [finding] = _check(model, Settings(target="tensorrt-8.6", select=("SG024",)), tmp_path)
    assert (finding.node, finding.op) == ("offsets", "Constant")
    assert finding.message.startswith("holds 1 int64 value(s) outside the int32 range (-8589934592 at flat index 1)")
    assert "clamps it to -2147483648" in finding.message


@pytest.mark.parametrize("options, message", [
    ({"ignore": "SG007"}, "Settings: 'ignore' must be a list or tuple of rule ids, got 'SG007'"),
    ({"select": ["SG001", 1]}, "Settings: 'select' must be a list or tuple of rule ids"),
    ({"ignore": ("SG0O1",)}, "Settings: 'ignore': no rule 'SG0O1'"),
    ({"select": ("",)}, "Settings: 'select': no rule ''"),
])
def test_settings_refuse_what_the_command_line_refuses(options, message):
    """A string would be one prefix per character (`S` ignoring every rule: a CI gate going green), a typo
    would ignore nothing: both are errors, as on the command line and in pyproject.toml."""
    from surgeon.errors import SurgeonError

    with pytest.raises(SurgeonError, match=re.escape(message)):
        Settings(target="tensorrt-8.6", **options)
    assert Settings(select=["SG001"]).select == ("SG001",)


def test_a_libspconv_graph_as_exptool_writes_it_is_clean(tmp_path):
    assert _check(libspconv_scn(), Settings(target="libspconv"), tmp_path) == []


@pytest.mark.parametrize("target", sorted(set(available_targets()) - {"libspconv"}))
def test_sg025_is_libspconvs_alone(target, tmp_path):
    # No other target runs libspconv's ops at all: SG001 says so there, not SG025.
    findings = _check(libspconv_scn(transposed=1, batch=2), Settings(target=target), tmp_path)
    assert findings and "SG025" not in {f.rule for f in findings}


def test_sg025_follows_the_profiles_runtime_not_its_name(tmp_path):
    profile = tmp_path / "my-spconv.yaml"
    profile.write_text("extends: libspconv\nname: my-spconv\n")
    findings = _check(libspconv_scn(batch=4), Settings(target=str(profile)), tmp_path)
    assert [(f.rule, f.node) for f in findings] == [("SG025", "dense")]


def test_sg025_without_the_attributes_is_silent(tmp_path):
    model = libspconv_scn()
    conv, dense = model.graph.node
    del conv.attribute[:]  # a convolution without `transposed`, a ScatterDense without `output_shape`
    del dense.attribute[:]
    assert "SG025" not in {f.rule for f in _check(model, Settings(target="libspconv"), tmp_path)}


def test_sg025_passes_the_centerpoint_export_and_names_what_the_exporter_once_let_through(tmp_path):
    """The real CenterPoint libspconv export (the committed window of nuScenes voxels) is clean; given a transposed
    convolution and batch 2, as graphs exported before the exporter refused them can be, it is SG025 there."""
    pytest.importorskip("spconv.pytorch", reason="needs spconv (pip install 'surgeon[zoo]')")
    from surgeon.export.spconv_export import export_spconv
    from surgeon.export.tensor_file import read_tensor
    from surgeon.zoo.centerpoint import build_centerpoint_scn

    data = Path(__file__).resolve().parent / "data" / "spconv"
    window = read_tensor(data / "window_features.fp16.tensor"), read_tensor(data / "window_indices_zyx.int32.tensor")
    model = export_spconv(build_centerpoint_scn(), *window, flavour="libspconv").model
    libspconv = Settings(target="libspconv")
    assert _check(model, libspconv, tmp_path) == []
    nodes = {node.name: node for node in model.graph.node}
    for name, key, value in (("backbone.conv2.0.0", "transposed", 1), ("dense", "output_shape", [2, 128, 2, 180, 180])):
        attribute = next(a for a in nodes[name].attribute if a.name == key)
        attribute.CopyFrom(helper.make_attribute(key, value))
    assert [(f.rule, f.node) for f in _check(model, libspconv, tmp_path)] == [
        ("SG025", "backbone.conv2.0.0"), ("SG025", "dense")]


def test_sg025_on_a_transposed_convolution_exported_in_the_standard_flavour(tmp_path):
    """libspconv's parser dispatches on op type alone, so a standard-flavour graph (spconv domain, SG001 there)
    is read the same way: a SparseConvTranspose3d at batch 2 is SG025 twice."""
    spconv = pytest.importorskip("spconv.pytorch", reason="needs spconv (pip install 'surgeon[zoo]')")
    torch = pytest.importorskip("torch")
    from surgeon.export.graph import build_model
    from surgeon.export.spconv_export import trace_spconv

    class UpSampling(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = spconv.SparseConvTranspose3d(4, 3, 3, stride=2, padding=1, bias=False)

        def forward(self, features, indices, batch_size):
            return self.up(spconv.SparseConvTensor(features, indices, [6, 6, 6], batch_size)).dense()

    rng = np.random.default_rng(0)
    cells = rng.choice(2 * 6 ** 3, size=40, replace=False)
    indices = np.stack(np.unravel_index(cells, [2, 6, 6, 6]), axis=1).astype(np.int32)
    features = rng.standard_normal((40, 4)).astype(np.float32)
    trace = trace_spconv(UpSampling().eval(), torch.from_numpy(features), torch.from_numpy(indices), 2)
    model = build_model(trace, "standard")
    findings = [f for f in _check(model, Settings(target="libspconv"), tmp_path) if f.rule == "SG025"]
    assert [(f.node, f.op) for f in findings] == [("up", "spconv::SparseConvolution"),
                                                  ("dense", "spconv::ScatterDense")]
    assert "writes batch 2;" in findings[1].message

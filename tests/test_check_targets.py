"""The target profiles: they load, say what their sources say, and agree with the runtimes we can run."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.targets import available_targets, load_target
from surgeon.testing import make_model, run_ort

OURS = ["onnxruntime", "opset-11", "tensorrt-8.5", "tensorrt-8.6", "tensorrt-10"]
TENSORRT = ["tensorrt-8.5", "tensorrt-8.6", "tensorrt-10"]


@pytest.mark.parametrize("name", OURS)
def test_profile_loads_with_sources(name):
    target = load_target(name)
    assert name in available_targets()
    assert target.name == name and target.ops and target.sources


@pytest.mark.parametrize("name", TENSORRT)
def test_tensorrt_clips_floats_only(name):
    target = load_target(name)
    assert target.supports("Clip", dtype=np.float32)
    assert not target.supports("Clip", dtype=np.int32)
    assert not target.supports("Clip", dtype=np.int64)


@pytest.mark.parametrize("name, split_until", [("tensorrt-8.5", 17), ("tensorrt-8.6", 17), ("tensorrt-10", None)])
def test_split_num_outputs_only_from_tensorrt_10(name, split_until):
    assert load_target(name).ops["Split"].get("until") == split_until


@pytest.mark.parametrize("name", TENSORRT)
def test_grid_sample_from_opset_16_on_tensorrt(name):
    target = load_target(name)
    assert target.ops["GridSample"]["since"] == 16
    assert target.supports("GridSample", opset=16) and not target.supports("GridSample", opset=11)


def test_tensorrt_8_6_extends_8_5_with_layer_normalization():
    old, new = load_target("tensorrt-8.5"), load_target("tensorrt-8.6")
    assert not old.supports("LayerNormalization") and new.supports("LayerNormalization")
    assert {k: v for k, v in new.ops.items() if k != "LayerNormalization"} == old.ops
    assert new.version == "8.6" and new.plugins == old.plugins


def test_opset_11_has_opset_11_ops_only():
    target = load_target("opset-11")
    assert target.opset == 11 and target.static_shapes
    for later in ("GridSample", "LayerNormalization", "Trilu", "Gelu"):
        assert later not in target.ops
    assert target.ops["Clip"]["until"] == 11  # Clip-12 added integers
    assert all(rule.get("until", 11) == 11 for rule in target.ops.values())


@pytest.mark.parametrize("name", TENSORRT)
def test_tensorrt_plugins_match_the_plugin_specs(name):
    specs = pytest.importorskip("surgeon.plugins.specs", reason="surgeon.plugins.specs not present").plugin_specs()
    plugins = load_target(name).plugins
    assert set(plugins) == set(specs)
    for plugin, info in plugins.items():
        assert (info["plugin_version"], info["namespace"]) == (specs[plugin].version, specs[plugin].namespace)


def test_onnxruntime_profile_matches_onnxruntime():
    """What the profile promises, ONNX Runtime runs; what it leaves out, ONNX Runtime refuses."""
    target = load_target("onnxruntime")
    assert target.max_ir_version == 13
    assert "int64" in target.dtypes_for("Clip", 13) and "GridSample" in target.domains["com.microsoft"]
    clip = make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [("x", np.int64, [3])],
                      [("y", np.int64, [3])], initializers={"lo": np.array(0), "hi": np.array(5)}, opset=13)
    np.testing.assert_array_equal(run_ort(clip, {"x": np.array([-1, 3, 9])})[0], [0, 3, 5])
    assert "float64" not in target.dtypes_for("Acos", 7)
    acos = make_model([helper.make_node("Acos", ["x"], ["y"])], [("x", np.float64, [1])], [("y", np.float64, [1])])
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|Could not find an implementation"):
        run_ort(acos, {"x": np.zeros(1)})


def test_generated_profiles_are_current():
    """onnxruntime.yaml and opset-11.yaml match the installed onnxruntime/onnx (regenerate after upgrades)."""
    from surgeon.check.make_profiles import main

    assert main(["--check"]) == 0, "run: python -m surgeon.check.make_profiles"


def _one_node(op, opset, dtype, inputs=1, shape=(1, 1, 4, 4), out_shape=None, out_dtype=None, **attrs):
    """`y = op(x0, ...)` on `dtype`, with GridSample's grid as a second input of the same type."""
    names = [f"x{i}" for i in range(inputs)]
    values = [(name, dtype, list(shape)) for name in names]
    if op == "GridSample":
        names.append("grid")
        values.append(("grid", dtype, [1, 2, 2, 2]))
    node = helper.make_node(op, names, ["y"], **attrs)
    return make_model([node], values, [("y", out_dtype or dtype, out_shape)], opset=opset)


# op, opset, dtype, what ONNX Runtime 1.31 registers for that op version (kernels differ by version range)
ORT_VERSIONED = [
    ("GridSample", 16, "float64", False), ("GridSample", 20, "float64", True),
    ("Clip", 11, "float64", False), ("Clip", 13, "float64", True),
    ("MaxPool", 7, "float64", False), ("MaxPool", 12, "float64", True),
    ("Min", 7, "float64", False), ("Min", 8, "float64", True),
    ("DepthToSpace", 7, "int8", False), ("DepthToSpace", 11, "int8", True),
    ("IsNaN", 13, "bfloat16", False), ("IsNaN", 20, "bfloat16", True),
    # no float16 kernel (the profile says so, for passes choosing a float32 form), but a session runs a
    # float16 node in float32 (InsertCastTransformer): SG004 does not report it
    ("Clip", 11, "float16", "cast"), ("Acos", 13, "float16", "cast"),
]


@pytest.mark.parametrize("op, opset, dtype, runs", ORT_VERSIONED, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in ORT_VERSIONED])
def test_onnxruntime_dtypes_are_per_op_version(op, opset, dtype, runs, tmp_path):
    """The profile's dtypes hold per op version, as ONNX Runtime registers its kernels: GridSample-16 has
    float32 only, GridSample-20 float64 too. Checked against a real session load, and through SG004."""
    import onnx

    elem = {"float64": np.float64, "float16": np.float16, "int8": np.int8}.get(dtype)
    attrs = {"kernel_shape": [2, 2]} if op == "MaxPool" else {"blocksize": 2} if op == "DepthToSpace" else {}
    out_dtype = np.bool_ if op == "IsNaN" else None
    model = _one_node(op, opset, elem or np.float32, inputs=2 if op == "Min" else 1, out_dtype=out_dtype, **attrs)
    if elem is None:  # bfloat16: numpy has no such dtype
        for value in model.graph.input:
            value.type.tensor_type.elem_type = onnx.TensorProto.BFLOAT16
    target = load_target("onnxruntime")
    assert target.supports(op, dtype=dtype, opset=opset) == (runs is True)
    _ort_loads_exactly_where_sg004_is_silent(model, runs, tmp_path)


@pytest.mark.parametrize("dtype, runs", [("int16", False), ("uint16", False), ("uint64", False), ("bool", False),
                                         ("int32", True), ("int8", True), ("float32", True)])
def test_where_dtypes_describe_its_data_not_its_condition(dtype, runs, tmp_path):
    """Where's first input is the bool condition: its rule reads the data (`dtype_input: 1`), so an int16
    Where, which ONNX Runtime refuses to load, is reported (SG004) and `supports` says no."""
    target = load_target("onnxruntime")
    assert target.dtype_input("Where") == 1 and target.dtype_input("Relu") == 0
    assert target.supports("Where", dtype=dtype, opset=13) == runs
    node = helper.make_node("Where", ["c", "a", "b"], ["y"])
    model = make_model([node], [("c", np.bool_, [2]), ("a", np.dtype(dtype), [2]), ("b", np.dtype(dtype), [2])],
                       [("y", np.dtype(dtype), [2])], opset=13)
    _ort_loads_exactly_where_sg004_is_silent(model, runs, tmp_path)


@pytest.mark.parametrize("name", ["tensorrt-8.5", "tensorrt-8.6", "tensorrt-10"])
def test_tensorrt_where_types_are_its_data_types(name):
    """onnx-tensorrt's table lists FP32/FP16/INT32/INT64/BOOL for Where: the data's types (the condition is
    always BOOL)."""
    target = load_target(name)
    assert target.dtype_input("Where") == 1
    assert target.supports("Where", dtype="float32", opset=13) and not target.supports("Where", dtype="int8", opset=13)


def test_onnxruntime_profile_has_the_opset_ceiling_onnxruntime_has():
    import onnxruntime as ort

    target = load_target("onnxruntime")
    assert target.max_opset is not None and target.max_opset >= target.opset
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for opset, loads in ((target.max_opset, True), (target.max_opset + 1, False)):
        model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [2])],
                           [("y", np.float32, [2])], opset=opset)
        if loads:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        else:
            with pytest.raises(Exception, match="official support for domain ai.onnx is till opset"):
                ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_dtypes_per_op_version_in_a_profile_file(tmp_path):
    from surgeon.errors import SurgeonError
    from surgeon.targets import rule_dtypes

    rule = {"since": 6, "dtypes": {6: ["float32"], 12: ["float32", "int64"]}}
    assert [rule_dtypes(rule, v) for v in (6, 11, 12, 13, None)] == [
        ["float32"], ["float32"], ["float32", "int64"], ["float32", "int64"], ["float32", "int64"]]
    profile = tmp_path / "npu.yaml"
    profile.write_text("name: npu\nruntime: npu\nopset: 13\nops:\n"
                       "  Clip: {since: 6, dtypes: {6: [float32], 12: [float32, int64]}}\n")
    target = load_target(str(profile))
    assert not target.supports("Clip", dtype=np.int64, opset=11) and target.supports("Clip", dtype=np.int64, opset=13)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: npu\nopset: 13\nops:\n  Clip: {dtypes: {six: [float32]}}\n")
    with pytest.raises(SurgeonError, match=r"bad.yaml:4:.*'ops.Clip.dtypes' must be .*op versions"):
        load_target(str(bad))


@pytest.mark.parametrize("value, error", [("-1", "got -1"), ("data", "got str 'data'"), ("true", "got bool True")])
def test_dtype_input_must_be_an_input_index(value, error, tmp_path):
    from surgeon.errors import SurgeonError

    good = tmp_path / "npu.yaml"
    good.write_text("name: npu\nopset: 13\nops:\n  Where: {since: 9, dtype_input: 1, dtypes: [float32]}\n")
    target = load_target(str(good))
    assert target.supports("Where", dtype="float32") and not target.supports("Where", dtype="bool")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: npu\nopset: 13\nops:\n  Where: {{since: 9, dtype_input: {value}, dtypes: [float32]}}\n")
    with pytest.raises(SurgeonError, match=rf"bad.yaml:4:.*'ops.Where.dtype_input' must be the index .*{error}"):
        load_target(str(bad))


def _ort_loads_exactly_where_sg004_is_silent(model, runs: bool, tmp_path) -> None:
    """ONNX Runtime loads `model` iff `runs`, and SG004 (onnxruntime) reports it iff it does not."""
    import onnx
    import onnxruntime as ort

    from surgeon.check import Settings, check_file

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if runs:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    else:
        with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    onnx.save(model, tmp_path / "m.onnx")
    findings = check_file(tmp_path / "m.onnx", Settings(target="onnxruntime", select=("SG004",)))
    assert [f.rule for f in findings] == ([] if runs else ["SG004"])


def test_a_dtype_name_a_profile_misspells_is_an_error_with_a_suggestion(tmp_path):
    from surgeon.errors import SurgeonError

    bad = tmp_path / "npu.yaml"
    bad.write_text("name: npu\nopset: 13\nops:\n  Relu: {since: 1, dtypes: [flaot32]}\n")
    with pytest.raises(SurgeonError, match=r"npu.yaml:4:.*unknown dtype 'flaot32'.*did you mean 'float32'"):
        load_target(str(bad))


@pytest.mark.parametrize("name, max_opset", [("tensorrt-8.5", 17), ("tensorrt-8.6", 17), ("tensorrt-10", 24)])
def test_tensorrt_profiles_know_the_newest_opset_their_parser_documents(name, max_opset, tmp_path):
    from surgeon.check.config import Settings
    from surgeon.check.runner import check_model

    assert load_target(name).max_opset == max_opset
    path = tmp_path / "m.onnx"
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [2])], [("y", np.float32, [2])],
                         opset=max_opset + 1), path)
    assert "SG018" in {f.rule for f in check_model(path, Settings(target=name))}


def test_no_pass_is_offered_for_split_18_in_an_opset_18_model_on_tensorrt_8(tmp_path):
    from surgeon.check.config import Settings
    from surgeon.check.runner import check_model

    path = tmp_path / "m.onnx"
    onnx.save(make_model([helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=0, num_outputs=2)],
                         [("x", np.float32, [4])], [("a", np.float32, [2]), ("b", np.float32, [2])], opset=18), path)
    split = [f for f in check_model(path, Settings(target="tensorrt-8.6")) if f.rule == "SG003"]
    assert len(split) == 1 and split[0].fix is None  # chunk leaves it Split-18 at opset 18
    assert "set-opset cannot lower Split-18" in split[0].message and "opset 17 or lower" in split[0].message


@pytest.mark.parametrize("name, local_functions, int64", [
    ("tensorrt-8.5", False, "int32"), ("tensorrt-8.6", False, "int32"), ("tensorrt-10", True, "native"),
    ("onnxruntime", True, "native"), ("opset-11", False, "native"), ("libspconv", False, "native")])
def test_profiles_say_whether_the_runtime_reads_local_functions_and_holds_int64(name, local_functions, int64):
    """What `check` (SG001 on a local call) and passes (inplace-and's int32 form) read instead of comparing
    runtime versions in code: TensorRT reads local functions from 9.0 and holds INT64 from 10."""
    target = load_target(name)
    assert (target.local_functions, target.int64) == (local_functions, int64)


@pytest.mark.parametrize("text, error", [
    ("local_functions: no-thanks", r"'local_functions' must be true or false, got str"),
    ("int64: int16", r"'int64' must be 'native' or 'int32', got 'int16'.*did you mean 'int32'"),
    ("int64: 32", r"'int64' must be 'native' or 'int32', got int 32")])
def test_local_functions_and_int64_keys_are_checked(text, error, tmp_path):
    from surgeon.errors import SurgeonError

    bad = tmp_path / "npu.yaml"
    bad.write_text(f"name: npu\nopset: 13\n{text}\n")
    with pytest.raises(SurgeonError, match=rf"npu.yaml:3:.*{error}"):
        load_target(str(bad))


@pytest.mark.parametrize("int64, note", [("int32", True), ("native", False)])
def test_inplace_and_takes_its_int32_form_where_the_profile_says_int64_is_held_in_int32(int64, note, tmp_path):
    """inplace-and reads the profile's `int64`, not TensorRT's version: a TensorRT 10 profile saying `int32`
    gets the int32 bit planes (and the int64 note), a TensorRT 8.6 one saying `native` the int64 ones."""
    from surgeon.testing import apply_pass

    base = "tensorrt-10" if int64 == "int32" else "tensorrt-8.6"
    profile = tmp_path / "mine.yaml"
    profile.write_text(f"extends: {base}\nname: mine\nint64: {int64}\n")
    node = helper.make_node("ATen", ["a", "b"], ["c"], name="op_node", domain="org.pytorch.aten",
                            operator="__iand_", overload_name="Tensor")
    model = make_model([node], [("a", np.int64, [4]), ("b", np.int64, [4])], [("c", np.int64, [4])], opset=17)
    out, step = apply_pass(model, "inplace-and", target=str(profile))
    ops = {n.op_type for n in out.graph.node}
    assert ("Greater" not in ops) == note  # the int64 form reads bits as Greater(Mod(v, 2**(i+1)), 2**i - 1)
    assert any("computed in int32" in text for text in step.notes) == note
    a, b = np.array([-7, 0, 5, 2**20 + 3], np.int64), np.array([3, -1, 6, 2**20 + 1], np.int64)
    np.testing.assert_array_equal(run_ort(out, {"a": a, "b": b})[0], a & b)

"""Bad recipes and target profiles end to end: exit code 2 and one line naming the file, line and key.

Undecodable recipe files, malformed target profiles, target files relative to the recipe that names them,
duplicate keys, and set-input-shapes dims, all refused at load time: nothing written, the input untouched.
"""
from __future__ import annotations

import codecs
import textwrap

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.cli import main
from surgeon.errors import RecipeError, SurgeonError
from surgeon.pass_api import Param, ParamError, Pass, PassResult, register_pass
from surgeon.recipe import load_recipe
from surgeon.registry import get_pass
from surgeon.targets import load_target
from surgeon.testing import apply_pass, make_model

BUILTIN = "libspconv, onnxruntime, opset-11, tensorrt-10, tensorrt-8.5, tensorrt-8.6"


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def model(tmp_path):
    """model.onnx: x[1, 4] -> Relu -> y."""
    path = tmp_path / "model.onnx"
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [1, 4])],
                         [("y", np.float32, [1, 4])]), path)
    return path


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, tmp_path, model, recipe, *extra) -> str:
    """`surgeon run RECIPE MODEL -o OUT` exits 2 with one line, writes nothing and leaves the model as it was."""
    before = model.read_bytes()
    out_path = tmp_path / "out" / "x.onnx"
    code, _, err = cli(capsys, "run", recipe, model, "-o", out_path, *extra)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("surgeon: error: ") and "Traceback" not in err and "<unicode string>" not in err
    assert not out_path.parent.exists() or not any(out_path.parent.iterdir())
    assert model.read_bytes() == before
    return err.strip()[len("surgeon: error: "):]


# ---------------------------------------------------------------- files that are not UTF-8 text

@pytest.fixture
def nonutf8(tmp_path):
    path = tmp_path / "nonutf8.yaml"
    path.write_bytes(b"name: \xff\xfe bad\nsteps:\n  - pass: toposort\n")
    return path


@pytest.mark.parametrize("command", ["run", "bisect"])
def test_a_recipe_that_is_not_utf8_names_the_file_line_and_byte(capsys, tmp_path, model, nonutf8, command):
    if command == "run":
        message = refused(capsys, tmp_path, model, nonutf8)
    else:
        code, _, err = cli(capsys, command, nonutf8, model)
        assert code == 2 and len(err.strip().splitlines()) == 1
        message = err.strip()[len("surgeon: error: "):]
    assert message == (f"{nonutf8}:1:7: recipe is not UTF-8 text: byte 0xff at offset 6 cannot be decoded "
                       "(save it as UTF-8)")


def test_check_reports_an_undecodable_recipe_as_unreadable(capsys, nonutf8):
    code, out, err = cli(capsys, "check", "--no-config", nonutf8)
    assert code == 2 and err == ""
    assert out.splitlines()[0] == (f"{nonutf8}:1:7: SG000 error recipe is not UTF-8 text: byte 0xff at offset 6 "
                                   "cannot be decoded (save it as UTF-8)")


def test_an_undecodable_parent_recipe_is_named(tmp_path, nonutf8):
    child = write(tmp_path / "child.yaml", "extends: nonutf8.yaml\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(child)
    assert info.value.file == str(nonutf8) and info.value.line == 1


def test_utf16_with_a_byte_order_mark_is_read_as_yaml_allows(tmp_path):
    path = tmp_path / "utf16.yaml"
    path.write_bytes(codecs.BOM_UTF16_LE + "name: ünïcode\nsteps:\n  - pass: toposort\n".encode("utf-16-le"))
    assert load_recipe(path).name == "ünïcode"
    path.write_bytes(codecs.BOM_UTF16_LE + b"n\x00a")  # odd length: not UTF-16 either
    with pytest.raises(RecipeError, match="recipe is not valid UTF-16 text"):
        load_recipe(path)


def test_a_control_character_is_one_line_at_its_line_and_column(capsys, tmp_path, model):
    recipe = tmp_path / "ctl.yaml"
    recipe.write_bytes(b"name: x\nsteps: []\ndescription: a\x07b\n")
    assert refused(capsys, tmp_path, model, recipe) == (
        f"{recipe}:3:15: not valid YAML: unacceptable character #x0007: special characters are not allowed")


# ---------------------------------------------------------------- duplicate keys

def test_a_duplicate_key_names_the_recipe_file(capsys, tmp_path, model):
    dup = write(tmp_path / "dupkey.yaml", """
        name: x
        steps:
          - pass: toposort
        name: y
        """)
    assert refused(capsys, tmp_path, model, dup) == f"{dup}:4:1: duplicate key 'name'"
    child = write(tmp_path / "sub" / "extdup.yaml", "extends: ../dupkey.yaml\n")
    assert refused(capsys, tmp_path, model, child) == f"{dup}:4:1: duplicate key 'name'"
    code, out, _ = cli(capsys, "check", "--no-config", dup)
    assert code == 1 and out.splitlines()[0] == f"{dup}:4:1: SR001 error duplicate key 'name'"


# ---------------------------------------------------------------- malformed target profiles

BAD_PROFILES = {
    "list": ("- 1\n", "1", "a target profile must be a mapping of keys (name, runtime, opset, ops, ...)"),
    "opset": ("runtime: onnxruntime\nopset: abc\n", "2:8", "target profile key 'opset' must be an integer, got str 'abc'"),
    "yaml": ("runtime: [\n", "2:1", "not valid YAML: did not find expected node content"),
    "key": ("runtime: onnxruntime\nopsett: 17\n", "2:1", "unknown key 'opsett' in target profile",
            "did you mean 'opset'?"),
    "rule": ("ops:\n  Clip: {since: one}\n", "2:17", "target profile key 'ops.Clip.since' must be an op version "
             "(an integer), got str 'one'"),
    "dtypes": ("ops:\n  Clip: {dtypes: float32}\n", "2:18", "target profile key 'ops.Clip.dtypes' must be a list of "
               "dtype names such as [float32, int64], got str 'float32'"),
    "bool": ("static_shapes: maybe\n", "1:16", "target profile key 'static_shapes' must be true or false, got str "
             "'maybe'"),
    "notutf8": (b"name: \xe9\n", "1:7", "target profile is not UTF-8 text: byte 0xe9 at offset 6 cannot be decoded",
                "save it as UTF-8"),
}


@pytest.mark.parametrize("kind", sorted(BAD_PROFILES))
def test_a_malformed_profile_named_by_a_recipe_fails_at_load_time(capsys, tmp_path, model, kind):
    text, where, message, *hint = BAD_PROFILES[kind]
    prof = tmp_path / "rc" / "prof.yaml"
    prof.parent.mkdir()
    prof.write_bytes(text if isinstance(text, bytes) else text.encode())
    recipe = write(tmp_path / "rc" / "recipe.yaml", "name: x\ntarget: prof.yaml\nsteps:\n  - pass: toposort\n")
    hint = f" ({hint[0]})" if hint else ""
    assert refused(capsys, tmp_path, model, recipe) == f"{prof}:{where}: {message} (the target of {recipe}:2){hint}"
    # `surgeon check` loads the target as `surgeon run` does
    code, out, _ = cli(capsys, "check", "--no-config", recipe)
    assert code == 1 and out.splitlines()[0].startswith(f"{prof}:{where}: SR001 error {message}")


@pytest.mark.parametrize("kind", sorted(BAD_PROFILES))
def test_a_malformed_profile_given_to_check_is_a_usage_error(capsys, tmp_path, model, monkeypatch, kind):
    text, where, message, *hint = BAD_PROFILES[kind]
    hint = f" ({hint[0]})" if hint else ""
    (tmp_path / "prof.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "check", "--no-config", model, "--target", "prof.yaml")
    assert code == 2 and out == ""
    assert err.strip() == f"surgeon: error: prof.yaml:{where}: {message}{hint}"


def test_a_profile_extends_a_file_relative_to_itself(tmp_path, monkeypatch):
    write(tmp_path / "profiles" / "base.yaml", "name: base\nruntime: npu\nopset: 13\n")
    write(tmp_path / "profiles" / "child.yaml", "name: child\nextends: base.yaml\nstatic_shapes: true\n")
    monkeypatch.chdir(tmp_path)
    target = load_target("profiles/child.yaml")
    assert (target.name, target.runtime, target.opset, target.static_shapes) == ("child", "npu", 13, True)
    write(tmp_path / "profiles" / "loop.yaml", "extends: loop.yaml\n")
    with pytest.raises(SurgeonError, match="target profile extends itself"):
        load_target("profiles/loop.yaml")
    write(tmp_path / "profiles" / "orphan.yaml", "extends: tensorrt-8.7\n")
    with pytest.raises(SurgeonError) as info:
        load_target("profiles/orphan.yaml")
    assert str(info.value).startswith("profiles/orphan.yaml:1:10: unknown target 'tensorrt-8.7'")


# ---------------------------------------------------------------- where a target file is looked for

def test_a_target_file_is_relative_to_the_recipe_that_names_it(capsys, tmp_path, model, monkeypatch):
    write(tmp_path / "rc" / "prof.yaml", "name: myprof\nruntime: onnxruntime\nopset: 17\n")
    recipe = write(tmp_path / "rc" / "recipe.yaml", "name: x\ntarget: prof.yaml\nsteps:\n  - pass: toposort\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_target(load_recipe(recipe).target).name == "myprof"
    code, _, err = cli(capsys, "run", recipe, model, "-o", tmp_path / "out" / "x.onnx")
    assert code == 0, err
    metadata = {p.key: p.value for p in onnx.load(tmp_path / "out" / "x.onnx").metadata_props}
    assert metadata["surgeon.target"] == "myprof"  # the profile's name, not a path that depends on the cwd


def test_a_target_file_in_a_parent_recipe_is_relative_to_the_parent(tmp_path, monkeypatch):
    write(tmp_path / "base" / "prof.yaml", "name: baseprof\nruntime: tensorrt\n")
    write(tmp_path / "base" / "parent.yaml", "target: prof.yaml\nsteps:\n  - pass: toposort\n")
    child = write(tmp_path / "work" / "child.yaml", "extends: ../base/parent.yaml\nname: child\n")
    monkeypatch.chdir(tmp_path / "work")
    recipe = load_recipe(child)
    assert load_target(recipe.target).name == "baseprof"


def test_a_target_path_written_from_the_working_directory_says_where_to_look(capsys, tmp_path, model,
                                                                              monkeypatch):
    write(tmp_path / "rc" / "prof.yaml", "name: p\n")
    recipe = write(tmp_path / "rc" / "recipe.yaml", "name: x\ntarget: rc/prof.yaml\nsteps: []\n")
    monkeypatch.chdir(tmp_path)
    assert refused(capsys, tmp_path, model, "rc/recipe.yaml") == (
        "rc/recipe.yaml:2:9: target profile not found: rc/rc/prof.yaml (paths are relative to the file that names "
        "them, in rc: did you mean 'prof.yaml'?)")
    assert recipe.exists()


def test_an_unknown_target_is_a_load_time_error_at_the_recipe_line(capsys, tmp_path, model):
    recipe = write(tmp_path / "recipe.yaml", "name: x\nsteps:\n  - pass: toposort\ntarget: tensorrt-99\n")
    assert refused(capsys, tmp_path, model, recipe) == (
        f"{recipe}:4:9: unknown target 'tensorrt-99'; built-in targets: {BUILTIN}, or a profile file (.yaml) "
        "(did you mean 'tensorrt-10'?)")
    recipe = write(tmp_path / "recipe.yaml", "name: x\ntarget: tensorrt-8.6.yaml\nsteps: []\n")
    assert refused(capsys, tmp_path, model, recipe) == (
        f"{recipe}:2:9: target profile not found: {tmp_path / 'tensorrt-8.6.yaml'} "
        "(did you mean the built-in target 'tensorrt-8.6'?)")
    code, out, _ = cli(capsys, "check", "--no-config", recipe)
    assert code == 1 and f"{recipe}:2:9: SR001 error target profile not found" in out


# ---------------------------------------------------------------- set-input-shapes dims

def shapes_recipe(tmp_path, shapes: str):
    return write(tmp_path / "shapes.yaml", f"""
        name: x
        steps:
          - pass: set-input-shapes
            with: {{shapes: {shapes}}}
        """)


@pytest.mark.parametrize("shapes, problem", [
    ("{x: [-3, 0]}", "input 'x': dim 0 is -3; a size cannot be negative"),
    ("{x: [1, -1]}", "input 'x': dim 1 is -1; a size cannot be negative"),
    ("{x: 4}", "input 'x': the shape must be a list of dims, got int 4"),
    ("{x: [1, true]}", "input 'x': dim 1 must be a size or a dim name, got bool True"),
    ("{x: [1, '']}", "input 'x': dim 1 is an empty name"),
])
def test_set_input_shapes_refuses_bad_dims_at_load_time(capsys, tmp_path, model, shapes, problem):
    recipe = shapes_recipe(tmp_path, shapes)
    message = (f"parameter 'shapes' of pass 'set-input-shapes': {problem} (steps item 1) "
               "(a dim is a size >= 0 or a name such as 'batch' for a dynamic dim)")
    assert refused(capsys, tmp_path, model, recipe) == f"{recipe}:4:12: {message}"
    code, out, _ = cli(capsys, "check", "--no-config", recipe)
    assert code == 1 and out.splitlines()[0] == f"{recipe}:4:12: SR001 error {message}"


def test_set_input_shapes_refuses_a_negative_dim_from_set_and_from_python(capsys, tmp_path, model):
    recipe = shapes_recipe(tmp_path, "{x: [1, 4]}")
    assert refused(capsys, tmp_path, model, recipe, "--set", "set-input-shapes.shapes={x: [-1, 4]}") == (
        "--set set-input-shapes.shapes: parameter 'shapes' of pass 'set-input-shapes': input 'x': dim 0 is -1; a "
        "size cannot be negative (a dim is a size >= 0 or a name such as 'batch' for a dynamic dim)")
    with pytest.raises(ParamError, match="dim 0 is -2"):
        get_pass("set-input-shapes")(shapes={"x": [-2, 4]})
    with pytest.raises(SurgeonError, match="dim 0 is -2"):
        apply_pass(onnx.load(model), "set-input-shapes", shapes={"x": [-2, 4]})


def test_set_input_shapes_accepts_a_zero_size_dim_and_names(tmp_path, model):
    out, step = apply_pass(onnx.load(model), "set-input-shapes", shapes={"x": [0, 4]})
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == [0, 4]
    out, step = apply_pass(onnx.load(model), "set-input-shapes", shapes={"x": ["batch", 4]})
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


# ---------------------------------------------------------------- build sections TensorRT cannot take

BAD_BUILD = {
    "profile": ("precision: fp16\n  profiles:\n    - x: {min: [4, 3], opt: [2, 3], max: [1, 3]}\n", "6:5",
                "build.profiles: item 1, input 'x': needs min <= opt <= max in every dimension, same ranks"),
    "workspace": ("workspace: 4 gigs\n", "4:14",
                  "build.workspace: cannot read '4 gigs' as a size (e.g. 4096, '512MiB', '4GiB')"),
    "calibration": ("precision: int8\n  calibration: {dta: calib.npz}\n", "5:16",
                    "build.calibration: unknown key 'dta': calibration takes data and cache; did you mean 'data'?"),
    "level": ("optimization_level: 9\n", "4:23",
              "build.optimization_level: TensorRT's builder optimization levels are 0 to 5, got 9"),
    "strongly-typed": ("precision: fp16\n  strongly_typed: true\n", "5:19",
                       "build.strongly_typed: a strongly typed network takes its precisions from the model's types, "
                       "and TensorRT refuses precision 'fp16' with it"),
}


@pytest.mark.parametrize("kind", sorted(BAD_BUILD))
def test_a_bad_build_section_fails_at_load_time_at_its_line(capsys, tmp_path, model, kind):
    """Before any step runs or OUT is written, for `surgeon run` and `surgeon build --recipe` alike."""
    body, where, message = BAD_BUILD[kind]
    recipe = write(tmp_path / "recipe.yaml", "name: x\nsteps: [{pass: cleanup}]\nbuild:\n  " + body)
    assert refused(capsys, tmp_path, model, recipe).startswith(f"{recipe}:{where}: {message}")
    code, _, err = cli(capsys, "build", model, "-o", tmp_path / "out.engine", "--recipe", recipe)
    assert code == 2 and err.startswith(f"surgeon: error: {recipe}:{where}: {message}")
    assert not (tmp_path / "out.engine").exists()


def test_set_cannot_make_a_strongly_typed_build_take_a_precision(capsys, tmp_path, model):
    recipe = write(tmp_path / "recipe.yaml", "name: x\nsteps: []\nbuild: {strongly_typed: true}\n")
    message = refused(capsys, tmp_path, model, recipe, "--set", "build.precision=fp16")
    assert message.startswith(f"{recipe}: build.strongly_typed: a strongly typed network")
    # the order of the overrides does not matter: only the result is checked
    assert load_recipe(recipe, overrides=["build.precision=fp16", "build.strongly_typed=false"]).build["precision"] \
        == "fp16"


@pytest.mark.parametrize("pass_name, param, value, bounds", [
    ("fold-constants", "size_threshold", -5, "must be at least 0"),
    ("simplify", "check_n", -1, "must be between 0 and 100"),
    ("simplify", "check_n", 99999999999999999999999999999, "must be between 0 and 100"),  # would run for ever
    ("set-opset", "opset", 0, "must be at least 1")])
def test_a_parameter_outside_its_bounds_is_refused_at_its_line(tmp_path, pass_name, param, value, bounds):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"steps:\n  - pass: {pass_name}\n    with: {{{param}: {value}}}\n")
    with pytest.raises(RecipeError, match=rf"r.yaml:3:.*'{param}' of pass '{pass_name}': {bounds}, got {value}"):
        load_recipe(recipe)


# ---------------------------------------------------------------- input that used to end in "internal error"

DEEP = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize("command", ["run", "check", "bisect", "build"])
def test_a_recipe_nested_too_deep_is_one_error_at_its_line_in_every_command(capsys, tmp_path, model, command):
    """PyYAML composes recursively: 3000 brackets were a RecursionError, reported as an internal error."""
    recipe = write(tmp_path / "deep.yaml", f"name: t\nsteps: [{{pass: toposort}}]\ndescription: {DEEP}\n")
    where = f"{recipe}:3:113: "
    if command == "run":
        assert refused(capsys, tmp_path, model, recipe) == where + "nested more than 100 levels deep"
        return
    argv = {"check": ["check", "--no-config", recipe], "bisect": ["bisect", recipe, model],
            "build": ["build", model, "-o", tmp_path / "out.engine", "--recipe", recipe]}[command]
    code, out, err = cli(capsys, *argv)
    assert "internal error" not in err and "RecursionError" not in out + err
    if command == "check":
        assert code == 1 and out.startswith(where + "SR001 error nested more than 100 levels deep")
    else:
        assert code == 2 and err == f"surgeon: error: {where}nested more than 100 levels deep\n"


def test_a_set_value_nested_too_deep_is_one_error(capsys, tmp_path, model):
    recipe = write(tmp_path / "r.yaml", "name: t\nsteps: [{pass: toposort}]\n")
    message = refused(capsys, tmp_path, model, recipe, "--set", f"validate.atol={DEEP}")
    assert message == f"--set validate.atol={DEEP[:46]}...: nested more than 100 levels deep"


def test_a_recipe_name_with_a_nul_is_refused_at_its_line(capsys, tmp_path, model):
    recipe = write(tmp_path / "nul.yaml", 'name: "a\\0b"\nsteps: [{pass: toposort}]\n')
    assert refused(capsys, tmp_path, model, recipe) == (
        f"{recipe}:1:7: 'name' must not contain control characters: 'a\\x00b'")


def test_an_empty_output_path_is_refused_in_one_line(capsys, tmp_path, model):
    recipe = write(tmp_path / "r.yaml", "name: t\nsteps: [{pass: toposort}]\n")
    code, out, err = cli(capsys, "run", recipe, model, "-o", "")
    assert (code, out) == (2, "") and err == "surgeon: error: -o/--output is empty: give the path of the output model\n"



# ---------------------------------------------------------------- parameters the recipe's own target cannot run

TARGET_REFUSALS = [("clip-int", "mode: cast", "mode", "'cast' needs float64, which target 'tensorrt-8.6' lacks",
                    "use mode 'minmax'"),
                   ("grid-sample", "fma_emulation: float64", "fma_emulation",
                    "'float64' needs float64 Cast/Mul/Sub, which target 'tensorrt-8.6' lacks",
                    "use fma_emulation 'none' or 'auto'")]


@pytest.mark.parametrize("pass_name, given, param, why, hint", TARGET_REFUSALS)
def test_a_parameter_the_target_cannot_run_is_refused_at_its_line_by_run_and_check(
        capsys, tmp_path, model, pass_name, given, param, why, hint):
    """It failed when the step ran, after the model was read, naming no line; `check` found nothing."""
    recipe = write(tmp_path / "recipe.yaml", f"""
        name: x
        target: tensorrt-8.6
        steps:
          - pass: {pass_name}
            with: {{{given}}}
        """)
    message = f"{recipe}:5:12: step 1 ({pass_name}): parameter '{param}' of pass '{pass_name}': {why} ({hint})"
    assert refused(capsys, tmp_path, model, recipe) == message
    code, out, _ = cli(capsys, "check", "--no-config", recipe)
    assert code == 1 and out.startswith(message.replace(": step 1", ": SR001 error step 1", 1))


def test_the_target_check_blames_where_the_final_value_was_given(capsys, tmp_path, model):
    """Every level, `set:` and `--set` has spoken first: the value that stays is checked, at its own place."""
    parent = write(tmp_path / "base" / "parent.yaml", """
        name: parent
        steps:
          - pass: clip-int
            with: {mode: cast}
        """)
    child = write(tmp_path / "child.yaml", "extends: base/parent.yaml\ntarget: tensorrt-8.6\n")
    with pytest.raises(RecipeError) as refusal:  # the parent's value, refused by the child's target: see below
        load_recipe(child)
    assert (refusal.value.file, refusal.value.line) == (str(child), 2) and f"set at {parent}:4" in str(refusal.value)

    fixed = write(tmp_path / "fixed.yaml", "extends: child.yaml\nset: {clip-int.mode: minmax}\n")
    assert load_recipe(fixed).steps[0].params == {"mode": "minmax"}
    with pytest.raises(RecipeError, match=r"^--set clip-int.mode: step 1 \(clip-int\): parameter 'mode'"):
        load_recipe(fixed, overrides=["clip-int.mode=cast"])
    assert load_recipe(child, overrides=["clip-int.mode=minmax"]).steps[0].params == {"mode": "minmax"}

    repeated = write(tmp_path / "repeated.yaml", """
        extends: base/parent.yaml
        target: tensorrt-8.6
        set:
          clip-int.mode: cast
        """)
    with pytest.raises(RecipeError) as refusal:  # the `set:` line gave the value last
        load_recipe(repeated)
    assert (refusal.value.file, refusal.value.line, refusal.value.column) == (str(repeated), 4, 3)


def test_a_refusal_an_extends_childs_target_causes_is_blamed_on_that_target_line(capsys, tmp_path, model):
    """The parent's value was fine on the parent's target: the child's `target:` made it wrong, so the error
    points there, and still says where the value was set (it blamed the parent's line alone)."""
    parent = write(tmp_path / "base" / "parent.yaml", """
        name: parent
        steps:
          - pass: grid-sample
            with:
              fma_emulation: float64
        """)
    assert load_recipe(parent).steps[0].params["fma_emulation"] == "float64"  # onnxruntime runs float64
    child = write(tmp_path / "child.yaml", "name: child\nextends: base/parent.yaml\ntarget: tensorrt-8.6\n")
    message = (f"{child}:3:9: target 'tensorrt-8.6' refuses step 1 (grid-sample), whose 'fma_emulation' is set at "
               f"{parent}:5: parameter 'fma_emulation' of pass 'grid-sample': 'float64' needs float64 "
               "Cast/Mul/Sub, which target 'tensorrt-8.6' lacks (use fma_emulation 'none' or 'auto')")
    assert refused(capsys, tmp_path, model, child) == message
    code, out, _ = cli(capsys, "check", "--no-config", child)
    assert code == 1 and out.startswith(f"{child}:3:9: SR001 error target 'tensorrt-8.6' refuses step 1")

    # A value given below the target (here the child's `set:`) is still the value's fault, at its line.
    on_target = write(tmp_path / "base" / "on-target.yaml", "target: tensorrt-8.6\nsteps: [{pass: grid-sample}]\n")
    setting = write(tmp_path / "setting.yaml", "extends: base/on-target.yaml\nset:\n  1.fma_emulation: float64\n")
    with pytest.raises(RecipeError) as refusal:
        load_recipe(setting)
    assert (refusal.value.file, refusal.value.line) == (str(setting), 3)
    assert refusal.value.message.startswith("step 1 (grid-sample): parameter 'fma_emulation'")
    assert load_recipe(on_target).target == "tensorrt-8.6"


@register_pass("test-refuses-its-default-on-tensorrt")
class RefusesItsDefaultOnTensorRT(Pass):
    """A pass whose default value TensorRT cannot run."""

    params = {"form": Param(str, "float64", choices=("float64", "float32"))}

    @classmethod
    def check_params_for(cls, values, target):
        if values["form"] == "float64" and target.is_tensorrt:
            raise ParamError("form", f"parameter 'form' of pass '{cls.name}': 'float64' is not on '{target.name}'")

    def run(self, graph, ctx):
        return PassResult()


def test_a_default_an_extends_childs_target_refuses_is_blamed_on_that_target_line(tmp_path):
    parent = write(tmp_path / "parent.yaml", "steps:\n  - pass: test-refuses-its-default-on-tensorrt\n")
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\ntarget: tensorrt-10\n")
    with pytest.raises(RecipeError) as refusal:
        load_recipe(child)
    assert str(refusal.value) == (f"{child}:2:9: target 'tensorrt-10' refuses step 1 "
                                  f"(test-refuses-its-default-on-tensorrt), whose 'form' keeps its default (the step "
                                  f"is at {parent}:2): parameter 'form' of pass 'test-refuses-its-default-on-tensorrt'"
                                  ": 'float64' is not on 'tensorrt-10'")
    together = write(tmp_path / "together.yaml",
                     "target: tensorrt-10\nsteps: [{pass: test-refuses-its-default-on-tensorrt}]\n")
    with pytest.raises(RecipeError) as refusal:  # one file wrote both: the step, as before
        load_recipe(together)
    assert (refusal.value.file, refusal.value.line) == (str(together), 2)

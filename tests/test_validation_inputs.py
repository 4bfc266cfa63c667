"""Bad validation input (tolerances, counts, data and expected files, models that cannot run) is exit 2
with one line naming the recipe's file:line, the option or the data file, found before the models
run and, in `surgeon run`, before anything is written. A numerical failure still writes OUT (exit 1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.cli import main
from surgeon.errors import SurgeonError
from surgeon.pass_api import Pass, PassResult, register_pass
from surgeon.testing import make_model

REPO = Path(__file__).resolve().parent.parent
X = np.array([[0.5, -1.0, 2.0, -3.0]], np.float32)


def relu_neg(input_shape=(1, 4)) -> onnx.ModelProto:
    """x [1, 4] -> Relu -> Neg -> y."""
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="relu0"), helper.make_node("Neg", ["t"], ["y"], name="neg0")]
    return make_model(nodes, [("x", np.float32, list(input_shape))], [("y", np.float32, list(input_shape))])


@pytest.fixture
def work(tmp_path):
    """A model, recorded inputs, good and bad expected outputs, in tmp_path."""
    onnx.save(relu_neg(), tmp_path / "good.onnx")
    np.savez(tmp_path / "inputs.npz", x=X)
    np.savez(tmp_path / "expected.npz", y=-np.maximum(X, 0))
    np.savez(tmp_path / "expected_off.npz", y=-np.maximum(X, 0) + 5)
    return tmp_path


def write_recipe(folder: Path, validate_yaml: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text("name: v\nsteps:\n  - pass: toposort\nvalidate:\n" + validate_yaml)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("surgeon: error:")]
    assert len(errors) == 1 and not any(line.startswith("[") and "]" in line[:4] for line in err), err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


def run_fails_cleanly(folder: Path, recipe: Path, capsys, *extra) -> str:
    """`surgeon run` exits 2 with one error line, writes nothing and changes no input."""
    before = snapshot(folder)
    assert main(["run", str(recipe), str(folder / "good.onnx"), "-o", str(folder / "out" / "o.onnx"), *extra]) == 2
    assert not (folder / "out").exists()
    assert snapshot(folder) == before
    return one_error_line(capsys)


# ---------------------------------------------------------------- values of the validate section

@pytest.mark.parametrize("body, line, words", [
    ("  data: inputs.npz\n  expected: expected_off.npz\n  atol: .nan\n  rtol: .nan\n", 7,
     "validate.atol: a tolerance must be a finite number >= 0, got nan"),
    ("  atol: -1\n", 5, "validate.atol: a tolerance must be a finite number >= 0, got -1"),
    ("  rtol: .inf\n", 5, "validate.rtol: a tolerance must be a finite number >= 0, got inf"),
    ("  atol: {y: .nan, '': 1e-3}\n", 5, "validate.atol: the tolerance of output 'y' must be a finite number >= 0"),
    ("  rtol: {y: -0.5}\n", 5, "validate.rtol: the tolerance of output 'y' must be a finite number >= 0"),
    ("  atol: {y: loose}\n", 5, "validate.atol: the tolerance of output 'y' must be a finite number >= 0, got 'loose'"),
    ("  iterations: -2\n", 5, "validate.iterations: must be at least 1, got -2"),
    ("  iterations: 0\n", 5, "validate.iterations: must be at least 1, got 0"),
    ("  seed: -2\n", 5, "validate.seed: must be between 0 and 4294967295"),
    ("  seed: 4294967296\n", 5, "validate.seed: must be between 0 and 4294967295"),
    ("  error_stat: quantile\n  quantile: 5\n", 6, "validate.quantile: must be between 0 and 1, got 5"),
    ("  quantile: .nan\n", 5, "validate.quantile: must be between 0 and 1, got nan"),
    ("  inputs:\n    x: {shape: [1, 4], dtype: floaty}\n", 6, "validate.inputs: x.dtype: 'floaty' is not a dtype"),
    ("  inputs:\n    x: {shape: [1, -4]}\n", 6, "validate.inputs: x.shape must be a list of dimensions >= 0"),
    ("  inputs:\n    x: {range: [1, .nan]}\n", 6, "validate.inputs: x.range must be [low, high], finite numbers"),
    ("  inputs:\n    x: {shape: [1, 4], size: 3}\n", 6, "validate.inputs: x has unknown key 'size'"),
])
def test_a_value_validation_cannot_use_is_refused_at_load_time_naming_file_and_line(work, capsys, body, line, words):
    recipe = write_recipe(work, body)
    error = run_fails_cleanly(work, recipe, capsys)
    assert error.startswith(f"surgeon: error: {recipe}:{line}:") and words in error


def test_set_overrides_and_bisect_check_the_same_values(work, capsys):
    recipe = write_recipe(work, "  data: inputs.npz\n")
    error = run_fails_cleanly(work, recipe, capsys, "--set", "validate.atol=.nan")
    assert "validate.atol: a tolerance must be a finite number >= 0, got nan" in error
    assert main(["bisect", str(recipe), str(work / "good.onnx"), "--set", "validate.rtol=-1"]) == 2
    assert "validate.rtol: a tolerance must be a finite number >= 0" in one_error_line(capsys)
    assert main(["bisect", str(recipe), str(work / "good.onnx"), "--set", "validate.seed=-1"]) == 2
    assert "validate.seed" in one_error_line(capsys)


def test_tolerance_objects_refuse_nan_and_negative_values():
    from surgeon.validation import Tolerance

    with pytest.raises(SurgeonError, match="atol: a tolerance must be a finite number >= 0, got nan"):
        Tolerance(atol=float("nan"))
    with pytest.raises(SurgeonError, match="rtol: the tolerance of output 'y'"):
        Tolerance(rtol={"y": -1.0})
    with pytest.raises(SurgeonError, match="quantile: must be between 0 and 1"):
        Tolerance(quantile=1.5)


@pytest.mark.parametrize("options, words", [
    (["--atol", "nan"], "--atol: a tolerance must be a finite number >= 0, got nan"),
    (["--atol", "y:-1"], "--atol: the tolerance of output 'y' must be a finite number >= 0"),
    (["--rtol", "inf"], "--rtol: a tolerance must be a finite number >= 0, got inf"),
    (["--iterations", "-1"], "--iterations: must be at least 1, got -1"),
    (["--seed=-1"], "--seed: must be between 0 and 4294967295"),
    (["--error-stat", "quantile", "--quantile", "7"], "--quantile: must be between 0 and 1, got 7"),
    (["--input-shape", "x:1x-4"], "--input-shape expects NAME:1x3x224x224 (dimensions >= 0), got 'x:1x-4'"),
    (["--input-range", "x:nan,1"], "--input-range expects NAME:LOW,HIGH (finite, LOW <= HIGH)"),
])
def test_compare_options_validation_cannot_use_are_refused_naming_the_option(work, capsys, options, words):
    good = str(work / "good.onnx")
    data = [] if options[0].startswith("--input") else ["--data", str(work / "inputs.npz")]
    assert main(["compare", good, good, *data, *options]) == 2
    assert words in one_error_line(capsys)


# ---------------------------------------------------------------- recorded inputs and expected outputs

def _bad_data(folder: Path, kind: str) -> tuple[Path, str]:
    """A data file of the given kind of wrongness and the words its error must hold."""
    if kind == "shape":
        np.savez(folder / "bad.npz", x=np.zeros((3, 7), np.float32))
        return folder / "bad.npz", "input set 1: x is float32 [3, 7], but input x of "
    if kind == "dtype":
        np.savez(folder / "bad.npz", x=np.zeros((1, 4), np.int64))
        return folder / "bad.npz", "input set 1: x is int64 [1, 4], but input x of "
    if kind == "name":
        np.savez(folder / "bad.npz", q=X)
        return folder / "bad.npz", "input set 1 lacks model input(s) x of "
    if kind == "strings":
        np.savez(folder / "bad.npz", x=np.array([["a", "b", "c", "d"]]))
        return folder / "bad.npz", "x holds <U1 data; inputs must be numbers or booleans"
    if kind == "truncated":
        (folder / "bad.npz").write_bytes((folder / "inputs.npz").read_bytes()[:200])
        return folder / "bad.npz", "inputs file is not an .npz (a zip archive of .npy arrays): damaged, cut short"
    if kind == "json-shape":
        (folder / "bad.json").write_text('{"x": 1}')
        return folder / "bad.json", "input set 1: x is int64 [], but input x of "
    if kind == "json-second-set":
        from polygraphy.json import save_json

        save_json([{"x": X}, {"x": X[0]}], str(folder / "bad.json"))
        return folder / "bad.json", "input set 2: x is float32 [4], but input x of "
    raise AssertionError(kind)


KINDS = ["shape", "dtype", "name", "strings", "truncated", "json-shape", "json-second-set"]


@pytest.mark.parametrize("kind", KINDS)
def test_run_refuses_bad_recorded_inputs_before_any_step_writing_nothing(work, capsys, kind):
    data, words = _bad_data(work, kind)
    recipe = write_recipe(work, f"  data: {data.name}\n")
    error = run_fails_cleanly(work, recipe, capsys)
    assert error.startswith(f"surgeon: error: {data}: ") and words in error
    assert main(["run", str(recipe), str(work / "good.onnx"), "--dry-run"]) == 2
    capsys.readouterr()


@pytest.mark.parametrize("kind", KINDS)
def test_compare_and_bisect_refuse_bad_recorded_inputs_naming_the_file(work, capsys, kind):
    data, words = _bad_data(work, kind)
    good = str(work / "good.onnx")
    assert main(["compare", good, good, "--data", str(data)]) == 2
    error = one_error_line(capsys)
    assert error.startswith(f"surgeon: error: {data}: ") and words in error
    recipe = write_recipe(work, f"  data: {data.name}\n")
    assert main(["bisect", str(recipe), good]) == 2
    assert words in one_error_line(capsys)


def test_a_truncated_expected_file_is_named(work, capsys):
    (work / "trunc.npz").write_bytes((work / "expected.npz").read_bytes()[:200])
    good = str(work / "good.onnx")
    assert main(["compare", good, good, "--data", str(work / "inputs.npz"), "--expected", str(work / "trunc.npz")]) == 2
    assert f"{work / 'trunc.npz'}: expected outputs file is not an .npz" in one_error_line(capsys)


def test_an_expected_output_the_model_lacks_is_bad_input_not_a_failure(work, capsys):
    np.savez(work / "expected_zz.npz", zz=np.zeros((1, 4), np.float32))
    recipe = write_recipe(work, "  data: inputs.npz\n  expected: expected_zz.npz\n")
    error = run_fails_cleanly(work, recipe, capsys)
    assert error == (f"surgeon: error: {work / 'expected_zz.npz'}: expected outputs hold 'zz', which is not an "
                     "output of the model (outputs: y)")
    good = str(work / "good.onnx")
    assert main(["compare", good, good, "--data", str(work / "inputs.npz"), "--expected",
                 str(work / "expected_zz.npz")]) == 2
    assert "expected outputs hold 'zz'" in one_error_line(capsys)


def test_a_numerical_failure_still_writes_the_model_and_its_reports(work, capsys):
    recipe = write_recipe(work, "  data: inputs.npz\n  expected: expected_off.npz\n")
    assert main(["run", str(recipe), str(work / "good.onnx"), "-o", str(work / "out" / "o.onnx"), "-q"]) == 1
    assert {"o.onnx", "o.surgeon.json", "o.validation.md"} <= {p.name for p in (work / "out").iterdir()}
    recipe = write_recipe(work, "  data: inputs.npz\n  expected: expected.npz\n", name="ok.yaml")
    assert main(["run", str(recipe), str(work / "good.onnx"), "-o", str(work / "out" / "p.onnx"), "-q"]) == 0


def test_against_none_checks_its_inputs_before_any_step(work, capsys):
    """The original is never run, but the recorded inputs are still those of the original model."""
    recipe = write_recipe(work, "  against: none\n  data: inputs.npz\n")
    assert "'against: none' compares with the expected outputs only" in run_fails_cleanly(work, recipe, capsys)
    data, words = _bad_data(work, "name")
    recipe = write_recipe(work, f"  against: none\n  data: {data.name}\n  expected: expected.npz\n")
    assert words in run_fails_cleanly(work, recipe, capsys)
    recipe = write_recipe(work, "  against: none\n  data: inputs.npz\n  expected: expected.npz\n")
    assert main(["run", str(recipe), str(work / "good.onnx"), "-o", str(work / "out" / "o.onnx"), "-q"]) == 0


# ---------------------------------------------------------------- models that cannot share inputs or run

def test_compare_models_with_different_static_inputs_names_both(work, capsys):
    onnx.save(relu_neg((2, 8)), work / "other.onnx")
    a, b = str(work / "good.onnx"), str(work / "other.onnx")
    assert main(["compare", a, b]) == 2
    assert one_error_line(capsys) == (f"surgeon: error: {a} and {b} take different inputs: x is float32 [1, 4] in "
                                      f"{a}, x is float32 [2, 8] in {b}; both run on the same inputs")
    assert main(["compare", a, b, "--data", str(work / "inputs.npz")]) == 2
    assert (f"{work / 'inputs.npz'}: input set 1: x is float32 [1, 4], but input x of {b} is float32 [2, 8]"
            in one_error_line(capsys))


def test_a_model_reading_a_tensor_nothing_provides_is_named(work, capsys):
    broken = make_model([helper.make_node("Relu", ["nope"], ["y"], name="relu_bad")],
                        [("x", np.float32, [1, 4])], [("y", np.float32, [1, 4])])
    onnx.save(broken, work / "broken.onnx")
    good, bad = str(work / "good.onnx"), str(work / "broken.onnx")
    words = "node 'relu_bad' (Relu) reads 'nope', which no node, graph input or initializer provides"
    recipe = str(write_recipe(work, "  seed: 1\n"))
    for argv in (["compare", good, bad], ["compare", bad, good], ["bisect", recipe, bad]):
        assert main(argv) == 2
        error = one_error_line(capsys)
        assert error.startswith(f"surgeon: error: {bad}: ") and words in error


def test_polygraphy_json_inputs_leave_stdout_to_the_json_document(work):
    """Polygraphy's own lines ('colored' module notice, "Loading inputs from") go to stderr, if anywhere;
    a fresh process, since the notice comes once per process."""
    from polygraphy.json import save_json

    save_json([{"x": X}], str(work / "inputs.json"))
    good = str(work / "good.onnx")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "surgeon", "compare", good, good, "--data",
                           str(work / "inputs.json"), "--json"], capture_output=True, text=True, env=env, cwd=work)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["passed"] is True


@register_pass("test-validation-inputs-neg-to-plugin")
class NegToPlugin(Pass):
    """Turns Neg into `NegTRT`, an op ONNX Runtime cannot load (a third-party pass, for the tests)."""

    def run(self, graph, ctx):
        result = PassResult()
        for node in graph.nodes:
            if node.op == "Neg":
                node.op = "NegTRT"
                result.rewrote(node)
        return result


def test_runner_onnxruntime_on_a_rewrite_it_cannot_load_is_refused_before_anything_is_written(work, capsys):
    recipe = work / "ort.yaml"
    recipe.write_text("name: v\nchecker: false\nsteps:\n  - pass: test-validation-inputs-neg-to-plugin\n"
                      "validate:\n  runner: onnxruntime\n")
    error = run_fails_cleanly(work, recipe, capsys)
    assert error.startswith("surgeon: error: ONNX Runtime cannot load the rewritten model: ") and "NegTRT" in error
    onnx.save(make_model([helper.make_node("NegTRT", ["x"], ["y"], name="neg")], [("x", np.float32, [1, 4])],
                         [("y", np.float32, [1, 4])]), work / "plugin.onnx")
    good, plugin = str(work / "good.onnx"), str(work / "plugin.onnx")
    assert main(["compare", good, plugin, "--runner", "onnxruntime"]) == 2
    assert one_error_line(capsys).startswith(f"surgeon: error: {plugin}: ONNX Runtime cannot load the model: ")


def test_an_input_shape_for_a_static_input_is_refused_naming_the_option(work, capsys):
    good = str(work / "good.onnx")
    assert main(["compare", good, good, "--input-shape", "x:4x3"]) == 2
    assert one_error_line(capsys) == (f"surgeon: error: validate.inputs.x.shape / --input-shape x: [4, 3] does not "
                                      f"fit input x of {good}, [1, 4]: only its dynamic dimensions can be chosen")


@pytest.mark.parametrize("content, words", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 456632\n",
     "inputs file is a Git LFS pointer, not the arrays: fetch the file (git lfs pull)"),
    (None, "inputs file is a single .npy array, not an .npz archive"),
    (b"PK\x03\x04 cut short", "inputs file is not an .npz (a zip archive of .npy arrays)"),
])
def test_a_file_named_npz_that_is_not_one_says_what_it_is(work, capsys, content, words):
    path = work / "in.npz"
    if content is None:
        with open(path, "wb") as handle:
            np.save(handle, X)
    else:
        path.write_bytes(content)
    good = str(work / "good.onnx")
    assert main(["compare", good, good, "--data", str(path)]) == 2
    error = one_error_line(capsys)
    assert error.startswith(f"surgeon: error: {path}: ") and words in error


# ---------------------------------------------------------------- libspconv tensor files (surgeon export spconv)

WINDOW = REPO / "tests" / "data" / "spconv"
SHARED = REPO.parent / "shared" / "data"


def voxel_model(path: Path) -> Path:
    """features f32 [n, 5], indices i32 [n, 4] (the inputs of a `standard` spconv export) -> voxel_sum f32 [n],
    coords f32 [n, 4]."""
    nodes = [helper.make_node("ReduceSum", ["features"], ["voxel_sum"], name="sum", axes=[1], keepdims=0),
             helper.make_node("Cast", ["indices"], ["coords"], name="cast_indices", to=onnx.TensorProto.FLOAT)]
    onnx.save(make_model(nodes, [("features", np.float32, ["n", 5]), ("indices", np.int32, ["n", 4])],
                         [("voxel_sum", np.float32, ["n"]), ("coords", np.float32, ["n", 4])]), path)
    return path


def test_compare_reads_named_tensor_files_as_inputs_and_expected_outputs(tmp_path, capsys):
    """The committed real window of voxels: the float16 features (libspconv's format) feed the float32 input
    exactly; the expected sums, computed here from the same file, pass, sums off by 1e-3 fail."""
    from surgeon.export.tensor_file import read_tensor, write_tensor

    model = str(voxel_model(tmp_path / "voxels.onnx"))
    features = WINDOW / "window_features.fp16.tensor"
    data = ["--data", f"features={features}", "--data", f"indices={WINDOW / 'window_indices_zyx.int32.tensor'}"]
    sums = read_tensor(features).astype(np.float32).sum(axis=1)
    write_tensor(tmp_path / "sums.tensor", sums)
    write_tensor(tmp_path / "sums_off.tensor", sums + 1e-3)
    assert main(["compare", model, model, *data, "--expected", f"voxel_sum={tmp_path / 'sums.tensor'}", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["data"] == f"features={features}, indices={WINDOW / 'window_indices_zyx.int32.tensor'}"
    assert [o["name"] for o in result["expected"]] == ["voxel_sum"]
    assert main(["compare", model, model, *data, "--expected", f"voxel_sum={tmp_path / 'sums_off.tensor'}", "-q"]) == 1
    capsys.readouterr()


@pytest.mark.skipif(not (SHARED / "centerpoint_voxels_features.fp16.tensor").exists(),
                    reason="../shared/data/centerpoint_voxels_*.tensor (NVIDIA's files) are absent")
def test_compare_reads_nvidias_tensor_files(tmp_path, capsys):
    model = str(voxel_model(tmp_path / "voxels.onnx"))
    assert main(["compare", model, model, "--data", f"features={SHARED / 'centerpoint_voxels_features.fp16.tensor'}",
                 "--data", f"indices={SHARED / 'centerpoint_voxels_indices_zyx.int32.tensor'}",
                 "--expected", f"coords={SHARED / 'centerpoint_voxels_indices_zyx.int32.tensor'}"]) == 0
    assert "1 input set(s) from features=" in capsys.readouterr().out


def _tensor_file_error(tmp_path, kind) -> tuple[list[str], Path | None, str]:
    """compare arguments with a bad tensor file (or a bad use of one), the file the error names, its words."""
    from surgeon.export.tensor_file import MAGIC, write_tensor

    indices = f"indices={WINDOW / 'window_indices_zyx.int32.tensor'}"
    if kind == "unnamed":
        path = WINDOW / "window_features.fp16.tensor"
        return [str(path)], path, "inputs file is a libspconv tensor file, one array without a name"
    if kind == "unnamed-save-tensors":  # `surgeon export spconv --save-tensors scn` writes scn.voxels
        path = write_tensor(tmp_path / "scn.voxels", np.zeros((3, 5), np.float16))
        return [str(path)], path, "inputs file is a libspconv tensor file, one array without a name"
    if kind == "magic":
        path = tmp_path / "bad.tensor"
        path.write_bytes(np.array([0x12345678, 1, 2, 4], "<i4").tobytes())
        return [f"features={path}", indices], path, "not a libspconv tensor file: magic 0x12345678"
    if kind == "truncated":
        path = tmp_path / "cut.tensor"
        path.write_bytes((WINDOW / "window_features.fp16.tensor").read_bytes()[:100])
        return [f"features={path}", indices], path, "tensor file holds 80 data bytes, header (3011, 5) float16 needs"
    if kind == "header-only":
        path = tmp_path / "short.tensor"
        path.write_bytes(np.array([MAGIC], "<i4").tobytes())
        return [f"features={path}", indices], path, "shorter than the header"
    if kind == "missing":
        path = tmp_path / "nope.tensor"
        return [f"features={path}", indices], path, "inputs file not found"
    if kind == "dtype":  # only float16 -> float32 is taken: exact
        path = write_tensor(tmp_path / "i32.tensor", np.zeros((3, 5), np.int32))
        return [f"features={path}", indices], path, "input set 1: features is int32 [3, 5], but input features of "
    if kind == "mixed":
        np.savez(tmp_path / "in.npz", features=np.zeros((3, 5), np.float16))
        return [str(tmp_path / "in.npz"), indices], None, "--data takes one .npz or Polygraphy JSON file, or NAME=FILE"
    if kind == "twice":
        return [indices, indices], None, "--data names 'indices' twice"
    if kind == "named-npz":
        return [f"features={tmp_path / 'in.npz'}"], None, "--data features=" f"{tmp_path / 'in.npz'}: an .npz or JSON"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["unnamed", "unnamed-save-tensors", "magic", "truncated", "header-only", "missing",
                                  "dtype", "mixed", "twice", "named-npz"])
def test_compare_refuses_a_bad_tensor_file_naming_it(tmp_path, capsys, kind):
    model = str(voxel_model(tmp_path / "voxels.onnx"))
    values, path, words = _tensor_file_error(tmp_path, kind)
    before = snapshot(tmp_path)
    assert main(["compare", model, model, *[item for value in values for item in ("--data", value)],
                 "--report", str(tmp_path / "r")]) == 2
    error = one_error_line(capsys)
    assert words in error
    if path is not None:
        assert error.startswith(f"surgeon: error: {path}: ")
    assert snapshot(tmp_path) == before  # no report written


def test_a_report_may_not_replace_a_tensor_file_read(tmp_path, capsys):
    from surgeon.export.tensor_file import write_tensor

    model = str(voxel_model(tmp_path / "voxels.onnx"))
    write_tensor(tmp_path / "r.md", np.zeros((3, 5), np.float16))
    assert main(["compare", model, model, "--data", f"features={tmp_path / 'r.md'}", "--data",
                 f"indices={WINDOW / 'window_indices_zyx.int32.tensor'}", "--report", str(tmp_path / "r")]) == 2
    assert "the --data file" in one_error_line(capsys)


# ---------------------------------------------------------------- random inputs: memory, odd declared inputs

def test_random_inputs_are_polygraphys_data_loaders_drawn_a_chunk_at_a_time(monkeypatch):
    """The same values as Polygraphy's DataLoader for the same seed (reports made before stay the same),
    floats drawn in chunks straight into their dtype instead of a whole float64 array first."""
    from polygraphy.comparator import DataLoader
    from polygraphy.common import TensorMetadata

    from surgeon.validation import data

    monkeypatch.setattr(data, "DRAW_CHUNK", 7)
    inputs = [("a", np.dtype(np.float32), [3, 5]), ("shape", np.dtype(np.int64), [1]),
              ("c", np.dtype(np.int32), [2, 3]), ("mask", np.dtype(bool), [4]), ("e", np.dtype(np.float16), [2, 9]),
              ("f", np.dtype(np.uint8), [6]), ("g", np.dtype(np.float64), []), ("empty", np.dtype(np.float32), [0, 3])]
    ranges = {"a": (-2.5, 3.0), "c": (-7.0, 9.0), "mask": (-1.5, 1.5), "e": (-1e3, 1e3), "f": (0.0, 255.0)}
    meta = TensorMetadata()
    for name, dtype, shape in inputs:
        meta.add(name, dtype, shape)
    for index in range(3):
        theirs = DataLoader(seed=5, iterations=3, input_metadata=meta, val_range=ranges)[index]
        ours = data._random_feed(inputs, ranges, 5 + index)
        assert list(ours) == list(theirs)
        for name, array in theirs.items():
            assert ours[name].dtype == array.dtype and np.array_equal(ours[name], array), name


def test_iterations_are_limited_by_disk_not_memory(work, capsys, monkeypatch):
    """Every input set used to stay in memory with both models' outputs and their errors, so 100 sets of a
    model whose 23 sets filled the machine's memory were refused; held one at a time, they run. What is
    kept of every set goes to the temp directory, whose free space bounds their number instead."""
    from surgeon.validation import data

    monkeypatch.setattr(data, "physical_memory", lambda: 100 * 2**10)  # 100 KiB: one set of this model fits
    good = str(work / "good.onnx")
    assert main(["compare", good, good, "--iterations", "100", "-q"]) == 0
    monkeypatch.setattr(data, "free_disk", lambda folder: 10 * 2**10)
    assert main(["compare", good, good, "--iterations", "100"]) == 2
    error = one_error_line(capsys)
    assert error.startswith("surgeon: error: validate.iterations / --iterations 100: every input set's outputs and "
                            "errors are kept on disk, about 0.2 KiB each here, 17.2 KiB in all, more than the 10.0 KiB "
                            "free in the temp directory ")
    assert error.endswith("; at most 58 fit (or set TMPDIR to a folder with more room)")
    assert main(["compare", good, good, "--iterations", "58", "-q"]) == 0
    assert main(["compare", good, good, "-q"]) == 0  # one set keeps nothing on disk
    recipe = write_recipe(work, "  iterations: 1e30\n")
    error = run_fails_cleanly(work, recipe, capsys, "--dry-run")
    assert "validate.iterations / --iterations 1000000000000000019884624838656: " in error
    assert main(["bisect", str(recipe), good]) == 2
    assert "validate.iterations / --iterations 1000000000000000019884624838656: " in one_error_line(capsys)


def test_running_out_of_memory_while_validating_names_the_setting(work, capsys, monkeypatch):
    """A real MemoryError (NumPy refuses 6.4 TiB at once) past an estimate that let it through."""
    from surgeon.validation import data

    monkeypatch.setattr(data, "physical_memory", lambda: 2**60)
    onnx.save(relu_neg((2**33, 20, 10)), work / "huge.onnx")
    huge = str(work / "huge.onnx")
    assert main(["compare", huge, huge]) == 2
    assert one_error_line(capsys) == ("surgeon: error: out of memory validating on 1 input set(s), one at a time: "
                                      "validate on smaller inputs")


def test_random_inputs_larger_than_memory_name_the_model_and_input(work, capsys):
    onnx.save(relu_neg((2**33, 20, 10)), work / "huge.onnx")
    onnx.save(relu_neg(("n", 20, 10)), work / "dynamic.onnx")
    huge, dynamic = str(work / "huge.onnx"), str(work / "dynamic.onnx")
    assert main(["compare", huge, str(work / "good.onnx")]) == 2
    error = one_error_line(capsys)
    assert error.startswith(f"surgeon: error: random data for input 'x' of {huge}, float32 [8589934592, 20, 10], "
                            "would take 6,400.0 GiB, more than this machine's ")
    assert error.endswith("of memory: give recorded inputs (validate.data / --data)")
    assert main(["compare", dynamic, dynamic, "--input-shape", "x:100000000000x20x10"]) == 2
    assert one_error_line(capsys).endswith("give recorded inputs (validate.data / --data) or a smaller "
                                           "validate.inputs.x.shape / --input-shape")


def test_a_declared_zero_dimension_is_a_static_empty_one(work, capsys):
    onnx.save(relu_neg((0, 4)), work / "empty.onnx")
    good, empty = str(work / "good.onnx"), str(work / "empty.onnx")
    assert main(["compare", empty, empty, "-q"]) == 0  # empty tensors run and compare
    assert main(["compare", good, empty]) == 2
    assert one_error_line(capsys) == (f"surgeon: error: {good} and {empty} take different inputs: x is float32 [1, 4] "
                                      f"in {good}, x is float32 [0, 4] in {empty}; both run on the same inputs")


@pytest.mark.parametrize("elem_type, words", [
    (onnx.TensorProto.STRING, "'string' is not a dtype random inputs can have"),
    (onnx.TensorProto.FLOAT8E4M3FN, "'float8_e4m3fn' is not a dtype random inputs can have"),
])
def test_an_input_random_data_cannot_have_is_named(work, capsys, elem_type, words):
    model = relu_neg()
    model.graph.input[0].type.tensor_type.elem_type = elem_type
    onnx.save(model, work / "odd.onnx")
    odd = str(work / "odd.onnx")
    assert main(["compare", odd, odd]) == 2
    assert one_error_line(capsys) == (f"surgeon: error: input 'x' of {odd}: {words} (e.g. float32, float16, int64, "
                                      "int32, uint8, bool); surgeon validates on numbers and booleans only")


@pytest.mark.parametrize("edit, words", [
    (lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 0),
     "graph input 'x' has element type 0, which no runner can be fed, so the model cannot be validated"),
    (lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 999),
     "graph input 'x' has element type 999, which no runner can be fed, so the model cannot be validated"),
    (lambda m: m.graph.input[0].type.tensor_type.ClearField("shape"),
     "graph input 'x' declares no shape (unknown rank), which Polygraphy's runners cannot feed, so the model cannot "
     "be validated (declare its rank; its dimensions may be dynamic)"),
    (lambda m: m.graph.input[0].type.ClearField("tensor_type"),
     "graph input 'x' is a value without a type, not a tensor, so the model cannot be validated"),
    (lambda m: m.graph.ClearField("output"), "the graph has no outputs, so there is nothing to compare"),
])
def test_a_candidate_no_runner_can_feed_is_refused_before_anything_runs(edit, words):
    from surgeon.validation.validate import prepare_validation

    candidate = relu_neg()
    edit(candidate)
    prepared = prepare_validation({}, relu_neg(), "a.onnx")
    with pytest.raises(SurgeonError) as caught:
        prepared.check_candidate(candidate, file="b.onnx")
    assert str(caught.value) == f"b.onnx: {words}"


def test_compare_names_the_model_a_run_error_is_about(work, capsys):
    wrong = relu_neg()
    wrong.graph.node.insert(0, helper.make_node("Transpose", ["x"], ["xt"], name="transpose0", perm=1.5))
    wrong.graph.node[1].input[0] = "xt"  # perm a float: ONNX Runtime and onnx.reference refuse the node
    onnx.save(wrong, work / "wrong.onnx")
    cycle = make_model([helper.make_node("Add", ["x", "u"], ["t"], name="add0"),
                        helper.make_node("Relu", ["t"], ["u"], name="relu0"),
                        helper.make_node("Neg", ["t"], ["y"], name="neg0")],
                       [("x", np.float32, [1, 4])], [("y", np.float32, [1, 4])])
    onnx.save(cycle, work / "cycle.onnx")
    good = str(work / "good.onnx")
    for bad, words in ((str(work / "wrong.onnx"), "cannot run the 3 node(s) from 'transpose0' to 'neg0': "),
                       (str(work / "cycle.onnx"), "the graph has a cycle or reads a tensor nothing produces")):
        for argv in (["compare", good, bad], ["compare", bad, good]):
            assert main(argv) == 2
            assert one_error_line(capsys).startswith(f"surgeon: error: {bad}: {words}")


def test_compare_names_the_model_whose_functions_cannot_be_inlined(work, capsys):
    """The inliner's refusal (raised while inlining, before any node is checked) named no model."""
    calls_f = [helper.make_node("F", ["x"], ["y"], domain="pkg", name="call")]
    looping = make_model(calls_f, [("x", np.float32, [1, 4])], [("y", np.float32, [1, 4])], opset=17,
                         extra_opsets={"pkg": 1})
    looping.functions.append(helper.make_function("pkg", "F", ["x"], ["y"], calls_f,  # F calls itself
                                                  [helper.make_opsetid("", 17), helper.make_opsetid("pkg", 1)]))
    onnx.save(looping, work / "looping.onnx")
    bad, good = str(work / "looping.onnx"), str(work / "good.onnx")
    for argv in (["compare", good, bad], ["compare", bad, good]):
        assert main(argv) == 2
        assert one_error_line(capsys).startswith(f"surgeon: error: {bad}: onnx's inliner refused the model: Cycle "
                                                 "detected in model-local function references: pkg::F -> pkg::F")


def test_a_plugin_node_outside_its_specs_domains_says_so(work, capsys):
    rotate = make_model([helper.make_node("Rotate", ["x", "angle", "center"], ["y"], domain="myco", name="rot")],
                        [("x", np.float32, [1, 1, 2, 2]), ("angle", np.float32, [1]), ("center", np.float32, [2])],
                        [("y", np.float32, [1, 1, 2, 2])], extra_opsets={"myco": 1})
    onnx.save(rotate, work / "rotate.onnx")
    assert main(["compare", str(work / "rotate.onnx"), str(work / "rotate.onnx")]) == 2
    assert one_error_line(capsys) == (
        f"surgeon: error: {work / 'rotate.onnx'}: node 'rot' (myco::Rotate) has no CPU reference in domain 'myco' "
        "(plugin spec Rotate answers in ('surgeon', ''): add it to plugin_spec(domains=...)), so the graph cannot be "
        "validated")


def test_bisect_names_the_step_whose_graph_cannot_run(work, capsys):
    recipe = work / "plugin.yaml"
    recipe.write_text("name: v\nchecker: false\nsteps:\n  - pass: test-validation-inputs-neg-to-plugin\n")
    assert main(["bisect", str(recipe), str(work / "good.onnx"), "-q"]) == 2
    assert one_error_line(capsys) == (
        "surgeon: error: the graph after step 1 (test-validation-inputs-neg-to-plugin): node 'neg0' (NegTRT) has no "
        "CPU reference, so the graph cannot be validated: register one with @reference_op (see docs/validation.md)")

"""TensorRT builds: the no-TensorRT path (which runs here and in CI), option parsing, and real builds
that run only where TensorRT and a GPU are."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

from surgeon.build import (build_options, build_run, parse_bytes, parse_profiles, plugin_libraries, tensorrt_missing,
                           trt_runner)
from surgeon.cli import main
from surgeon.commands.build import parse_profile_args
from surgeon.errors import SurgeonError
from surgeon.pipeline import run_recipe
from surgeon.plugins.build_lib import LIBRARY_NAME, RECORD_NAME
from surgeon.recipe import load_recipe
from surgeon.testing import make_model

NO_TENSORRT = tensorrt_missing()
needs_no_tensorrt = pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT is installed: the no-TensorRT path "
                                                                   "cannot be exercised on this machine")
needs_tensorrt = pytest.mark.skipif(NO_TENSORRT is not None, reason=f"needs TensorRT: {NO_TENSORRT}")


@pytest.fixture
def relu_model(tmp_path):
    import onnx

    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], inputs=[("x", np.float32, [2, 3])],
                       outputs=[("y", np.float32, [2, 3])])
    path = tmp_path / "relu.onnx"
    onnx.save(model, str(path))
    return path


@needs_no_tensorrt
def test_build_command_without_tensorrt_exits_2_and_says_how_to_install(relu_model, tmp_path, capsys):
    assert main(["build", str(relu_model), "-o", str(tmp_path / "relu.engine")]) == 2
    error = capsys.readouterr().err
    assert "TensorRT is not installed" in error and "pip install 'surgeon[trt]'" in error
    assert "Traceback" not in error
    assert not (tmp_path / "relu.engine").exists()


@pytest.mark.parametrize("output", ["model", "timing_cache"])
def test_build_refuses_an_engine_path_that_is_one_of_its_inputs(relu_model, tmp_path, capsys, output):
    """Checked before TensorRT is even imported, so it holds with and without it."""
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"cache")
    target = relu_model if output == "model" else cache
    before = target.read_bytes()
    assert main(["build", str(relu_model), "-o", str(target), "--timing-cache", str(cache)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(target) in error and "Traceback" not in error
    assert target.read_bytes() == before


@needs_no_tensorrt
def test_recipe_with_a_build_section_runs_its_other_stages_and_reports_the_skip(relu_model, tmp_path):
    recipe = load_recipe({"name": "with-build", "model": str(relu_model), "steps": [{"pass": "cleanup"}],
                          "build": {"precision": "fp16", "workspace": "1GiB"}})
    output = tmp_path / "out.onnx"
    result = run_recipe(recipe, output=output)
    assert output.is_file()
    assert result.build.built is False and "pip install 'surgeon[trt]'" in result.build.skipped_reason
    assert result.build.summary.startswith("TensorRT build skipped: TensorRT is not installed")
    report = json.loads(result.report_path.read_text())
    assert report["build"]["built"] is False and report["build"]["precision"] == "fp16"
    assert not (tmp_path / "out.engine").exists()


@needs_no_tensorrt
def test_build_run_and_trt_runner_without_tensorrt(relu_model):
    recipe = load_recipe({"name": "b", "model": str(relu_model), "build": {}})
    result = build_run(recipe, relu_model)
    assert (result.built, result.engine) == (False, None) and result.to_dict()["skipped_reason"] == NO_TENSORRT
    with pytest.raises(SurgeonError, match="TensorRT is not installed"):
        trt_runner(relu_model, plugins=[])


@pytest.mark.parametrize("text, expected", [(4096, 4096), ("4GiB", 4 * 2**30), ("512 MiB", 512 * 2**20),
                                            ("1.5GB", 1_500_000_000), (None, None)])
def test_workspace_sizes(text, expected):
    assert parse_bytes(text) == expected


def test_bad_options_name_the_key():
    with pytest.raises(SurgeonError, match="build.workspace: cannot read 'lots'"):
        build_options({"workspace": "lots"})
    with pytest.raises(SurgeonError, match="build.precision"):
        build_options({"precision": "fp64"})
    with pytest.raises(SurgeonError, match="unknown build option 'precison'"):
        build_options({"precison": "fp16"})
    with pytest.raises(SurgeonError, match="build.profiles: item 1, input 'x': needs min <= opt <= max"):
        build_options({"profiles": [{"x": {"min": [1, 3], "opt": [4, 3], "max": [2, 3]}}]})
    with pytest.raises(ValueError, match="item 2, input 'y': give exactly min, opt and max"):
        parse_profiles([{"x": {"min": [1], "opt": [1], "max": [1]}}, {"y": {"min": [1]}}])


@pytest.mark.parametrize("section, message", [
    ({"optimization_level": 6}, "build.optimization_level: TensorRT's builder optimization levels are 0 to 5, got 6"),
    ({"optimization_level": -1}, "build.optimization_level: TensorRT's builder optimization levels are 0 to 5, got -1"),
    ({"workspace": -4096}, "build.workspace: needs at least one byte, got -4096"),
    ({"workspace": 0}, "build.workspace: needs at least one byte, got 0"),
    ({"workspace": "0.5"}, "build.workspace: '0.5' is not a whole number of bytes"),
    ({"calibration": {"dta": "x.npz"}},
     "build.calibration: unknown key 'dta': calibration takes data and cache; did you mean 'data'?"),
    ({"calibration": {"data": "x.npz", "cahce": "c"}},
     "build.calibration: unknown key 'cahce': calibration takes data and cache; did you mean 'cache'?"),
    ({"calibration": {"cache": "c"}}, "build.calibration: needs 'data': an .npz or Polygraphy JSON"),
    ({"calibration": {"data": 3}}, "build.calibration: 'data' must be a path, got int 3"),
    ({"profiles": [{"x": {"min": [True], "opt": [1], "max": [1]}}]},
     "build.profiles: item 1, input 'x': shapes must be lists of positive integers"),
])
def test_options_tensorrt_cannot_take_are_refused(section, message):
    with pytest.raises(SurgeonError) as info:
        build_options(section)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("precision", ["fp16", "int8", "best"])
def test_strongly_typed_takes_no_precision_flags(precision):
    """TensorRT 10 refuses builder precision flags on a strongly typed network (NVIDIA/TensorRT#4253)."""
    with pytest.raises(SurgeonError, match=f"build.strongly_typed: .* TensorRT refuses precision '{precision}'"):
        build_options({"strongly_typed": True}, precision=precision)
    assert build_options({"strongly_typed": True})["precision"] == "fp32"


def test_build_paths_are_relative_to_the_recipe_folder(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "recipe.yaml").write_text(
        "name: paths\nbuild:\n  engine: out.engine\n  timing_cache: trt.cache\n  plugins: [builtin, libmine.so]\n"
        "  calibration: {data: calib.npz, cache: calib.cache}\n")
    monkeypatch.chdir(tmp_path)
    build = load_recipe("sub/recipe.yaml").build
    assert build["engine"] == "sub/out.engine" and build["timing_cache"] == "sub/trt.cache"
    assert build["plugins"] == ["builtin", "sub/libmine.so"]
    assert build["calibration"] == {"data": "sub/calib.npz", "cache": "sub/calib.cache"}


PLUGIN_NODE = helper.make_node("GridSample2D", ["x", "grid"], ["y"], name="sampler", domain="surgeon",
                               plugin_version="1", plugin_namespace="surgeon")


@pytest.fixture
def plugin_model(tmp_path):
    """x, grid -> surgeon::GridSample2D -> y."""
    import onnx

    model = make_model([PLUGIN_NODE], inputs=[("x", np.float32, [1, 1, 2, 2]), ("grid", np.float32, [1, 2, 2, 2])],
                       outputs=[("y", np.float32, [1, 1, 2, 2])])
    path = tmp_path / "plugin.onnx"
    onnx.save(model, str(path))
    return path


def built_library(folder, record):
    """A library folder as `surgeon plugins build` leaves it: the library and, unless None, its build record."""
    folder.mkdir()
    (folder / LIBRARY_NAME).write_bytes(b"")
    if record is not None:
        (folder / RECORD_NAME).write_text(json.dumps(record))
    return folder / LIBRARY_NAME


@pytest.mark.parametrize("record, problem", [
    ({"with_tensorrt": False, "tensorrt": "TensorRT headers not found"}, ": TensorRT headers not found"),
    (None, ": no readable build record"),
])
def test_builtin_refuses_a_library_built_without_the_tensorrt_plugins(tmp_path, monkeypatch, plugin_model, record,
                                                                      problem):
    library = built_library(tmp_path / "lib", record)
    monkeypatch.setenv("SURGEON_PLUGINS_DIR", str(library.parent))
    for model in (plugin_model, None):  # None: an engine, whose plugins cannot be read
        with pytest.raises(SurgeonError) as info:
            plugin_libraries(["builtin"], model)
        assert str(info.value).startswith(f"{library} has the kernels and their C API only, no TensorRT plugins{problem}")
        assert "surgeon plugins build --tensorrt-root" in str(info.value)


def test_builtin_takes_a_library_with_the_tensorrt_plugins(tmp_path, monkeypatch, plugin_model):
    library = built_library(tmp_path / "lib", {"with_tensorrt": True, "tensorrt": "TensorRT 10 at /opt/trt/include"})
    monkeypatch.setenv("SURGEON_PLUGINS_DIR", str(library.parent))
    assert plugin_libraries(["builtin"], plugin_model) == [str(library)]


def test_builtin_is_left_out_for_a_model_without_plugin_nodes(tmp_path, monkeypatch, relu_model, plugin_model):
    monkeypatch.setenv("SURGEON_PLUGINS_DIR", str(tmp_path / "not-built"))
    assert plugin_libraries(["builtin"], relu_model) == []
    with pytest.raises(SurgeonError, match="surgeon's plugin library is not built"):
        plugin_libraries(["builtin"], plugin_model)


def test_options_layer_defaults_section_and_command_line():
    options = build_options({"precision": "fp16", "profiles": [{"x": {"min": [1, 3], "opt": [2, 3], "max": [4, 3]}}]},
                            precision="best", workspace="2GiB", plugins=None)
    assert options["precision"] == "best" and options["workspace"] == 2 * 2**30 and options["plugins"] == ["builtin"]
    assert options["profiles"] == [{"x": {"min": [1, 3], "opt": [2, 3], "max": [4, 3]}}]
    assert parse_profile_args(["image=1x3x64x96:2x3x64x96:4x3x64x96"]) == {
        "image": {"min": [1, 3, 64, 96], "opt": [2, 3, 64, 96], "max": [4, 3, 64, 96]}}
    with pytest.raises(SurgeonError, match="expected INPUT=MIN:OPT:MAX"):
        parse_profile_args(["image=1x3"])


@needs_tensorrt
@pytest.mark.gpu
def test_builds_an_engine_and_writes_the_layer_report(relu_model, tmp_path):
    from surgeon.build import build_engine

    result = build_engine(relu_model, tmp_path / "relu.engine", {"plugins": [], "precision": "fp16"})
    assert result.built and result.engine.stat().st_size == result.engine_bytes > 0
    report = json.loads(result.report.read_text())
    assert report["layers"] and report["precision"] == "fp16" and report["plugins_used"] == []
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    with trt_runner(result.engine, plugins=[]) as runner:
        np.testing.assert_array_equal(runner.infer({"x": x})["y"], np.maximum(x, 0))


@needs_no_tensorrt
def test_compare_trt_without_tensorrt_exits_2_and_says_how_to_install(relu_model, capsys):
    assert main(["compare", str(relu_model), str(relu_model), "--trt"]) == 2
    error = capsys.readouterr().err
    assert "TensorRT is not installed" in error and "pip install 'surgeon[trt]'" in error
    assert "Traceback" not in error


@needs_tensorrt
@pytest.mark.gpu
def test_compare_trt_runs_the_engine_against_onnxruntime(relu_model, tmp_path, capsys):
    from surgeon.build import build_engine

    result = build_engine(relu_model, tmp_path / "relu.engine", {"plugins": []})
    code = main(["compare", str(relu_model), str(result.engine), "--trt", "--plugin-lib", "builtin",
                 "--report", str(tmp_path / "trt")])
    assert code == 0, capsys.readouterr().out
    assert (tmp_path / "trt.md").read_text().startswith("### surgeon validation PASSED")


def _run_files(folder) -> dict:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@needs_no_tensorrt
def test_run_require_build_without_tensorrt_exits_2_before_writing_anything(relu_model, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {relu_model.name}\nsteps: [{{pass: cleanup}}]\nbuild: {{precision: fp16}}\n")
    before = _run_files(tmp_path)
    assert main(["run", str(recipe), "-o", str(tmp_path / "out.onnx"), "--require-build"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert error.startswith("surgeon: error: --require-build: the TensorRT build cannot run, so nothing was written: "
                            "TensorRT is not installed") and "pip install 'surgeon[trt]'" in error
    assert _run_files(tmp_path) == before
    assert main(["run", str(recipe), "-o", str(tmp_path / "out.onnx")]) == 0  # without the flag: skipped, exit 0
    assert "TensorRT build skipped: TensorRT is not installed" in capsys.readouterr().out


@pytest.mark.parametrize("recipe_text, extra, message", [
    ("steps: [{pass: cleanup}]\n", [], "--require-build needs a 'build' section in the recipe"),
    ("build: {}\n", ["--no-build"], "--require-build cannot be combined with --no-build, which builds no engine"),
    ("build: {}\n", ["--dry-run"], "--require-build cannot be combined with --dry-run, which builds no engine"),
])
def test_run_require_build_refuses_a_run_that_builds_no_engine(relu_model, tmp_path, capsys, recipe_text, extra,
                                                                message):
    """Whether or not TensorRT is installed."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {relu_model.name}\n{recipe_text}")
    before = _run_files(tmp_path)
    assert main(["run", str(recipe), "-o", str(tmp_path / "out.onnx"), "--require-build", *extra]) == 2
    assert capsys.readouterr().err.strip() == f"surgeon: error: {message}"
    assert _run_files(tmp_path) == before

"""`surgeon check` end to end: exit codes, output formats, pyproject settings, recipes, real models."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.cli import main
from surgeon.testing import make_model

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
BEVFORMER_TINY = DATA / "zoo" / "bevformer-tiny.fixture.opset11-aten.onnx"


@pytest.fixture
def models(tmp_path):
    """good.onnx (clean everywhere) and bad.onnx (an ATen grid_sampler and an unused initializer)."""
    good = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2])],
                      [("y", np.float32, [2])])
    aten = helper.make_node("ATen", ["x", "g"], ["y"], name="/ATen_12", domain="org.pytorch.aten",
                            operator="grid_sampler")
    bad = make_model([aten], [("x", np.float32, [1, 2, 3, 3]), ("g", np.float32, [1, 3, 3, 2])],
                     [("y", np.float32, [1, 2, 3, 3])], initializers={"orphan": np.ones(2, np.float32)})
    onnx.save(good, tmp_path / "good.onnx")
    onnx.save(bad, tmp_path / "bad.onnx")
    return tmp_path


def run(capsys, *argv):
    code = main(["check", "--no-config", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_exit_codes(models, capsys):
    assert run(capsys, models / "good.onnx", "--target", "tensorrt-8.6")[0] == 0
    code, out, _ = run(capsys, models / "bad.onnx", "--target", "tensorrt-8.6")
    assert code == 1
    assert (f"{models / 'bad.onnx'}: SG001 error node /ATen_12 (ATen:grid_sampler) not runnable on tensorrt-8.6 "
            "— fix: pass grid-sample (native GridSample), or mode=plugin or mode=decompose") in out
    assert out.splitlines()[-1] == "1 error, 1 warning in 1 file"
    assert run(capsys, models / "bad.onnx", "--ignore", "SG001")[0] == 0  # warnings alone pass


def test_unreadable_model_is_one_clear_error(models, capsys):
    (models / "broken.onnx").write_bytes(b"not a protobuf")
    code, out, err = run(capsys, models / "broken.onnx", models / "missing.onnx", models / "bad.onnx")
    assert code == 2
    assert f"{models / 'broken.onnx'}: SG000 error not a valid ONNX model" in out
    assert f"{models / 'missing.onnx'}: SG000 error model file not found" in out
    assert "SG001" in out  # the readable file is still checked
    assert "Traceback" not in out + err


@pytest.mark.parametrize("argv, message", [
    (["--target", "tensorrt-9"], "unknown target 'tensorrt-9'"),
    (["--select", "SG008x"], "--select: no rule 'SG008x' (did you mean 'SG008'?)"),
    ([], "needs at least one model or recipe"),
])
def test_bad_usage_exits_2(models, capsys, argv, message):
    files = [models / "good.onnx"] if argv else []
    code, _, err = run(capsys, *files, *argv)
    assert code == 2
    assert message in err


def test_select_keeps_only_the_named_rules(models, capsys):
    code, out, _ = run(capsys, models / "bad.onnx", "--select", "SG011")
    assert code == 0
    assert "SG011" in out and "SG001" not in out


def test_json_format(models, capsys):
    code, out, _ = run(capsys, models / "bad.onnx", models / "good.onnx", "--format", "json")
    document = json.loads(out)
    assert code == 1
    assert document["files"] == 2
    assert document["summary"] == {"error": 1, "warning": 1, "info": 0}
    first = document["findings"][0]
    assert first == {"rule": "SG001", "severity": "error", "file": str(models / "bad.onnx"), "node": "/ATen_12",
                     "op": "ATen:grid_sampler", "fix": "grid-sample",  # auto: native GridSample, which ONNX Runtime runs
                     "message": "not runnable on onnxruntime"}


def test_a_fix_that_is_no_pass_is_advice_in_every_format(models, capsys, tmp_path):
    """`fix` names a pass, as it always did; what to do where no pass helps (here: run grid-sample with other
    parameters, SG007 on the opset-11 recipe's output) is `advice`, printed `— fix: <advice>`, not `— fix: pass
    <advice>` (before, such advice could only live in the message)."""
    from surgeon.pipeline import run_recipe

    sampler = helper.make_node("grid_sampler", ["x", "g"], ["y"], name="sampler", domain="mmdeploy",
                               interpolation_mode=0, padding_mode=0, align_corners=0)
    onnx.save(make_model([sampler], [("x", np.float32, [1, 2, 3, 3]), ("g", np.float32, [1, 3, 3, 2])],
                         [("y", np.float32, [1, 2, 3, 3])], opset=11), tmp_path / "in.onnx")
    run_recipe(REPO / "recipes" / "targets" / "opset11.yaml", tmp_path / "in.onnx", tmp_path / "fma.onnx",
               validate=False, build=False, quiet=True)
    files = (models / "bad.onnx", tmp_path / "fma.onnx", "--target", "opset-11", "--select", "SG007,SG011")
    advice = "where the runtime has no float64, run grid-sample with `fma_emulation: none`"
    _, out, _ = run(capsys, *files)
    assert f"{models / 'bad.onnx'}: SG011 warning initializer 'orphan' is not used — fix: pass cleanup\n" in out
    assert "SG007 warning node sampler/x_plus1_wide (Cast) starts grid-sample's fma_emulation" in out
    assert f" — fix: {advice}" in out and "fix: pass where" not in out
    _, out, _ = run(capsys, *files, "--format", "json")
    by_rule = {f["rule"]: f for f in json.loads(out)["findings"]}
    assert by_rule["SG011"]["fix"] == "cleanup" and "advice" not in by_rule["SG011"]
    assert by_rule["SG007"]["advice"].startswith(advice) and "fix" not in by_rule["SG007"]
    _, out, _ = run(capsys, *files, "--format", "sarif")
    by_rule = {r["ruleId"]: r for r in json.loads(out)["runs"][0]["results"]}
    assert by_rule["SG011"]["properties"] == {"fix": "pass cleanup"}
    assert list(by_rule["SG007"]["properties"]) == ["advice"]
    assert by_rule["SG007"]["properties"]["advice"].startswith(advice)
    assert by_rule["SG007"]["message"]["text"].endswith("(docs/passes/grid-sample.md#modes)")


def test_github_format(models, capsys):
    _, out, _ = run(capsys, models / "bad.onnx", "--format", "github", "--target", "tensorrt-8.6")
    lines = out.splitlines()
    assert len(lines) == 2
    assert all(re.fullmatch(r"::(error|warning|notice) file=[^,]+,title=SG\d{3} [a-z0-9-]+::.+", line)
               for line in lines), lines
    assert lines[0].startswith(f"::error file={models / 'bad.onnx'},title=SG001 custom-op-unsupported::node /ATen_12")


# The parts of the OASIS SARIF 2.1.0 schema (sarif-schema-2.1.0.json) that GitHub code scanning
# relies on: required properties and enums of sarifLog, run, tool, toolComponent, reportingDescriptor,
# result, message, location, physicalLocation, artifactLocation and region.
SARIF_REQUIRED = {
    "type": "object", "required": ["version", "runs"],
    "properties": {
        "version": {"const": "2.1.0"}, "$schema": {"type": "string", "format": "uri"},
        "runs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["tool"],
            "properties": {
                "tool": {"type": "object", "required": ["driver"], "properties": {"driver": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}, "rules": {"type": "array", "items": {
                        "type": "object", "required": ["id"],
                        "properties": {"id": {"type": "string"},
                                       "shortDescription": {"type": "object", "required": ["text"]},
                                       "defaultConfiguration": {"type": "object", "properties": {
                                           "level": {"enum": ["none", "note", "warning", "error"]}}}}}}}}}},
                "results": {"type": "array", "items": {
                    "type": "object", "required": ["message"],
                    "properties": {
                        "ruleId": {"type": "string"}, "ruleIndex": {"type": "integer", "minimum": -1},
                        "level": {"enum": ["none", "note", "warning", "error"]},
                        "message": {"type": "object", "anyOf": [{"required": ["text"]}, {"required": ["id"]}]},
                        "locations": {"type": "array", "items": {"type": "object", "properties": {
                            "physicalLocation": {
                                "type": "object", "anyOf": [{"required": ["address"]}, {"required": ["artifactLocation"]}],
                                "properties": {"artifactLocation": {"type": "object", "required": ["uri"]},
                                               "region": {"type": "object", "properties": {
                                                   "startLine": {"type": "integer", "minimum": 1}}}}},
                            "logicalLocations": {"type": "array"}}}}}}}}}}},
}


def test_sarif_format(models, capsys, tmp_path):
    report = tmp_path / "out" / "surgeon.sarif"
    code, out, _ = run(capsys, models / "bad.onnx", "--format", "sarif", "--output", report)
    assert code == 1 and out == ""
    document = json.loads(report.read_text())
    jsonschema.validate(document, SARIF_REQUIRED)
    run_ = document["runs"][0]
    rules = run_["tool"]["driver"]["rules"]
    result = next(r for r in run_["results"] if r["ruleId"] == "SG001")
    assert rules[result["ruleIndex"]]["id"] == "SG001"
    assert result["level"] == "error"
    assert result["locations"][0]["logicalLocations"][0]["name"] == "/ATen_12"
    assert result["message"]["text"].startswith("node /ATen_12 (ATen:grid_sampler) not runnable")


def test_pyproject_settings_and_overrides(models, capsys, monkeypatch):
    (models / "legacy").mkdir()
    shutil.copy(models / "bad.onnx", models / "legacy" / "old.onnx")
    (models / "pyproject.toml").write_text('[tool.surgeon]\ntarget = "tensorrt-8.6"\nignore = ["SG011"]\n\n'
                                           '[[tool.surgeon.overrides]]\nfiles = ["legacy/*.onnx"]\nignore = ["SG0"]\n')
    (models / "sub").mkdir()
    monkeypatch.chdir(models / "sub")  # found upward from the working directory
    code = main(["check", str(models / "bad.onnx"), str(models / "legacy" / "old.onnx")])
    out = capsys.readouterr().out
    assert code == 1
    assert "not runnable on tensorrt-8.6" in out and "SG011" not in out and "old.onnx" not in out
    assert main(["check", str(models / "bad.onnx"), "--target", "onnxruntime"]) == 1
    assert "not runnable on onnxruntime" in capsys.readouterr().out


def test_bad_pyproject_names_the_file(models, capsys, monkeypatch):
    (models / "pyproject.toml").write_text('[tool.surgeon]\ntargte = "tensorrt-8.6"\n')
    monkeypatch.chdir(models)
    assert main(["check", str(models / "good.onnx")]) == 2
    err = capsys.readouterr().err
    assert f"{models / 'pyproject.toml'}: unknown key 'targte' in [tool.surgeon] (did you mean 'target'?; " \
           "--no-config skips pyproject.toml)" in err
    (models / "pyproject.toml").write_text('[tool.surgeon]\n# tensorrt-8.7 is next year\n[[tool.surgeon.overrides]]\n'
                                           'files = ["*"]\ntarget = "tensorrt-8.7"\n')
    assert main(["check", str(models / "good.onnx")]) == 2
    err = capsys.readouterr().err
    assert f"{models / 'pyproject.toml'}:5: [[tool.surgeon.overrides]] entry 1: 'target': unknown target " \
           "'tensorrt-8.7'" in err and "(did you mean 'tensorrt-8.6'?; --no-config skips pyproject.toml)" in err


@pytest.mark.parametrize("content, message", [
    (b'[project\nname = "x"\n', ": not valid TOML: Expected ']'"),
    (b'[tool]\nsurgeon = "yes"\n', ":2: 'tool.surgeon' must be a table"),
    (b"tool = 3\n", ":1: 'tool' must be a table"),
    (b'[project]\nname = "caf\xe9"\n', ": not UTF-8 text (byte 21)"),
])
def test_a_malformed_pyproject_is_one_error_naming_it(content, message, models, capsys, monkeypatch):
    """`surgeon check` reads the nearest pyproject.toml whole: a file it cannot read is its error (it was an
    internal error for a `tool` that is no table and for a byte that is not UTF-8), which says how to skip it."""
    (models / "pyproject.toml").write_bytes(content)
    monkeypatch.chdir(models)
    assert main(["check", "good.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"surgeon: error: {models / 'pyproject.toml'}{message}")
    assert err.endswith("(--no-config skips pyproject.toml)\n") and len(err.splitlines()) == 1
    assert main(["check", "--no-config", "good.onnx"]) == 0

def test_a_pyproject_target_profile_is_relative_to_pyproject(models, capsys, monkeypatch):
    """As `plugins` and the override globs: from a subfolder the working directory would miss it."""
    (models / "profiles").mkdir()
    (models / "profiles" / "my-trt.yaml").write_text("name: my-trt\nextends: tensorrt-8.6\n")
    (models / "my-ort.yaml").write_text("name: my-ort\nextends: onnxruntime\n")
    (models / "pyproject.toml").write_text('[tool.surgeon]\ntarget = "profiles/my-trt.yaml"\nselect = ["SG001"]\n\n'
                                           '[[tool.surgeon.overrides]]\nfiles = ["other/*.onnx"]\n'
                                           'target = "my-ort.yaml"\n')
    (models / "other").mkdir()
    shutil.copy(models / "bad.onnx", models / "other" / "bad.onnx")
    (models / "sub").mkdir()
    monkeypatch.chdir(models / "sub")
    assert main(["check", "../bad.onnx", "../other/bad.onnx"]) == 1
    out = capsys.readouterr().out
    assert "not runnable on my-trt" in out and "not runnable on my-ort" in out
    (models / "pyproject.toml").write_text('[tool.surgeon]\nselect = ["SG001"]\ntarget = "my-trt.yaml"\n')
    assert main(["check", "../good.onnx"]) == 2
    assert capsys.readouterr().err.startswith(f"surgeon: error: {models / 'pyproject.toml'}:3: [tool.surgeon]: "
                                              f"'target': target profile not found: {models / 'my-trt.yaml'}")
    (models / "pyproject.toml").write_text('[tool.surgeon]\ntarget = "tensorrt-8.6"\n')  # a name stays a name
    assert main(["check", "../bad.onnx"]) == 1 and "not runnable on tensorrt-8.6" in capsys.readouterr().out


def test_recipe_lint(tmp_path, capsys):
    good = REPO / "recipes" / "centerpoint-pfe-repair.yaml"
    assert run(capsys, good)[0] == 0
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: t\nsteps:\n  - pass: toposrot\n")
    code, out, _ = run(capsys, "--recipe", typo)
    assert code == 1
    assert re.search(rf"{re.escape(str(typo))}:3:\d+: SR001 error unknown pass 'toposrot'.*did you mean 'toposort'", out)
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: m\nmodel: nowhere.onnx\nsteps:\n  - pass: cleanup\n")
    code, out, _ = run(capsys, missing)
    assert code == 1
    assert f"{missing}:2:8: SR002 error model: file not found: {tmp_path / 'nowhere.onnx'}" in out


def test_recipe_option_takes_a_shipped_recipe_name_as_run_does(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not found relative to the working directory: the shipped one
    code, out, _ = run(capsys, "--recipe", "bevformer-tiny")
    assert (code, out.strip()) == (0, "no findings in 1 file")
    code, out, _ = run(capsys, "--recipe", "bevformer-tiny-nonesuch")
    assert code == 2 and "bevformer-tiny-nonesuch: SG000 error recipe file not found" in out


def test_every_bundled_recipe_passes_the_lint(capsys):
    """What the sample pre-commit hook runs over recipes/ (two of them compare with `against: none`,
    which once failed SR002 as a missing file named 'none')."""
    recipes = sorted((REPO / "recipes").rglob("*.yaml"))
    code, out, _ = run(capsys, "--recipe", *recipes)
    assert (code, out.strip()) == (0, f"no findings in {len(recipes)} files")


def test_real_unsorted_centerpoint_names_the_nodes(capsys):
    code, out, _ = run(capsys, DATA / "centerpoint_pfe_sim_unsorted.onnx", "--format", "json")
    findings = json.loads(out)["findings"]
    assert code == 1
    unsorted = [f for f in findings if f["rule"] == "SG008"]
    assert [(f["node"], f["message"]) for f in unsorted] == [
        ("Tile_16", "reads '21' before node ReduceMax_5 (MaxPool) produces it")]
    assert {f["rule"] for f in findings} == {"SG008", "SG011"}


def test_real_centerpoint_is_clean_for_onnxruntime(capsys):
    code, out, _ = run(capsys, DATA / "centerpoint_pfe.onnx", "--target", "onnxruntime", "--format", "json")
    assert code == 0
    assert json.loads(out)["findings"] == []


@pytest.mark.skipif(not BEVFORMER_TINY.exists(), reason=f"zoo fixture {BEVFORMER_TINY.name} not generated yet "
                    "(written by the zoo exporter, surgeon/zoo)")
def test_raw_bevformer_tiny_export_is_not_ready_for_tensorrt_8_6(capsys):
    code, out, _ = run(capsys, BEVFORMER_TINY, "--target", "tensorrt-8.6", "--format", "json")
    findings = json.loads(out)["findings"]
    assert code == 1
    grid = [f for f in findings if f["rule"] == "SG001" and f["op"] == "ATen:grid_sampler"]
    assert grid and all(f["fix"] == "grid-sample (native GridSample), or mode=plugin or mode=decompose" for f in grid)
    # 68 Slice ends of INT64_MAX (torch's `x[i:]`): TensorRT 8 clamps them, and they still mean "to the end"
    assert not [f for f in findings if f["rule"] == "SG024"]


def test_new_structural_rules_in_every_format(tmp_path, capsys):
    """SG021 (an output that is an input) and SG024 (an int64 offset TensorRT 8 clamps) through text, JSON and
    SARIF, and --ignore hides them."""
    nodes = [helper.make_node("Add", ["x", "index"], ["y"], name="add")]
    model = make_model(nodes, [("x", np.int64, [2])], [("y", np.int64, [2]), ("x", np.int64, [2])],
                       initializers={"index": np.array([1, 2 ** 40], np.int64)})
    onnx.save(model, tmp_path / "m.onnx")
    code, out, _ = run(capsys, tmp_path / "m.onnx", "--target", "tensorrt-8.6")
    assert code == 1
    assert f"{tmp_path / 'm.onnx'}: SG021 error graph output 'x' is also a graph input" in out
    assert f"{tmp_path / 'm.onnx'}: SG024 warning initializer 'index' holds 1 int64 value(s)" in out
    code, out, _ = run(capsys, tmp_path / "m.onnx", "--target", "tensorrt-8.6", "--format", "json")
    assert [(f["rule"], f["severity"]) for f in json.loads(out)["findings"]] == [("SG021", "error"),
                                                                                ("SG024", "warning")]
    report = tmp_path / "m.sarif"
    run(capsys, tmp_path / "m.onnx", "--target", "tensorrt-8.6", "--format", "sarif", "--output", report)
    document = json.loads(report.read_text())
    jsonschema.validate(document, SARIF_REQUIRED)
    rules = document["runs"][0]["tool"]["driver"]["rules"]
    assert [(rules[r["ruleIndex"]]["id"], r["level"]) for r in document["runs"][0]["results"]] == [
        ("SG021", "error"), ("SG024", "warning")]
    assert run(capsys, tmp_path / "m.onnx", "--target", "tensorrt-8.6", "--ignore", "SG021,SG024")[0] == 0


def _recipes(folder):
    """recipes/typo.yaml (an unknown pass: SR001) and recipes/latin1.yaml (not UTF-8: SG000)."""
    (folder / "recipes").mkdir()
    (folder / "recipes" / "typo.yaml").write_text("name: x\nsteps:\n  - pass: gridsample\n")
    (folder / "recipes" / "latin1.yaml").write_bytes(b"name: caf\xe9\nsteps: []\n")
    return folder / "recipes" / "typo.yaml", folder / "recipes" / "latin1.yaml"


def test_select_of_model_rules_leaves_recipe_rules_and_sg000_alone(tmp_path, capsys, monkeypatch):
    """The documented `select = ["SG0"]` restricts the model rules only; an unreadable file is always SG000."""
    typo, latin1 = _recipes(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.surgeon]\nselect = ["SG0"]\n')
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--recipe", str(typo), str(latin1)]) == 2
    out = capsys.readouterr().out
    assert "SR001 error unknown pass 'gridsample'" in out and "SG000 error recipe is not UTF-8 text" in out
    code, out, _ = run(capsys, latin1, "--ignore", "SR")
    assert code == 2 and "SG000 error recipe is not UTF-8 text" in out
    code, out, _ = run(capsys, latin1, "--select", "SR002", "--ignore", "SG0")
    assert code == 2 and "SG000" in out
    code, out, _ = run(capsys, typo, "--select", "SR002")  # an SR entry: only the named recipe rules
    assert (code, out.strip()) == (0, "no findings in 1 file")


@pytest.mark.parametrize("key", ["select", "ignore"])
def test_pyproject_rule_ids_are_validated(models, capsys, monkeypatch, key):
    (models / "pyproject.toml").write_text(f'[tool.surgeon]\n{key} = ["SG011", "SG0O8"]\n')
    monkeypatch.chdir(models)
    assert main(["check", "bad.onnx"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().startswith(f"surgeon: error: {models / 'pyproject.toml'}:2: [tool.surgeon]: '{key}': "
                                  "no rule 'SG0O8' (did you mean")
    assert len(err.strip().splitlines()) == 1


def test_recipe_hook_takes_args(tmp_path, capsys):
    """pre-commit runs entry + args + file names: the recipe hook's entry must not end in an option
    that takes a value (it once was `--recipe`, so `args: [--format, github]` was a usage error)."""
    import yaml

    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    entry = hooks["surgeon-recipe-lint"]["entry"].split()
    assert entry[:2] == ["surgeon", "check"]
    typo, _ = _recipes(tmp_path)
    renamed = tmp_path / "recipes" / "typo.recipe"  # `files:` may match other names: still linted as a recipe
    shutil.copy(typo, renamed)
    code = main([*entry[1:], "--no-config", "--format", "github", str(typo), str(renamed)])
    out = capsys.readouterr().out
    assert code == 1
    assert out.count("title=SR001 recipe-invalid::unknown pass 'gridsample'") == 2
    assert f"::error file={typo},line=3," in out


def test_output_may_not_replace_a_recipe_target_profile(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text("name: base\nruntime: npu\nopset: 11\n")
    (tmp_path / "prof.yaml").write_text("name: p\nextends: base.yaml\n")
    (tmp_path / "r.yaml").write_text("name: r\ntarget: prof.yaml\nsteps:\n  - pass: toposort\n")
    before = {name: (tmp_path / name).read_bytes() for name in ("base.yaml", "prof.yaml")}
    for output in ("prof.yaml", "base.yaml"):
        code, out, err = run(capsys, "r.yaml", "-o", output)
        assert code == 2 and out == ""
        assert err.strip() == (f"surgeon: error: refusing to overwrite the target profile {output} with the report "
                               "(choose another -o)")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert run(capsys, "r.yaml")[0] == 0


@pytest.mark.parametrize("pyproject, option", [
    ("", ["--target", "../my.yaml"]),
    ('[tool.surgeon]\ntarget = "my.yaml"\n', []),
    ('[tool.surgeon]\n[[tool.surgeon.overrides]]\nfiles = ["legacy/*.onnx"]\ntarget = "my.yaml"\n', []),
], ids=["--target", "pyproject-target", "override-target"])
def test_output_may_not_replace_a_target_file(models, capsys, monkeypatch, pyproject, option):
    """The profile file named by --target or pyproject.toml (an override's too, whichever files it matches)
    is read by check: the report must not replace it."""
    monkeypatch.chdir(models)
    (models / "pyproject.toml").write_text(pyproject)
    profile = models / "my.yaml"
    profile.write_text("name: my\nextends: onnxruntime\n")
    before = profile.read_bytes()
    (models / "sub").mkdir()
    monkeypatch.chdir(models / "sub")  # pyproject's target is relative to pyproject.toml, not here
    assert main(["check", "../good.onnx", *option, "-o", "../my.yaml"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and profile.read_bytes() == before
    refused = re.fullmatch(r"surgeon: error: refusing to overwrite the target file (\S+) with the report"
                           r"( \.\./my\.yaml)? \(choose another -o\)", err.strip())
    assert refused and Path(refused[1]).resolve() == profile.resolve()


def test_sarif_uris_are_percent_encoded(models, capsys, monkeypatch):
    from urllib.parse import unquote, urlsplit

    monkeypatch.chdir(models)
    names = ["my model.onnx", "v1:fp16.onnx", "a%2Cb.onnx"]
    for name in names:
        shutil.copy(models / "bad.onnx", models / name)
    code, out, _ = run(capsys, "--select", "SG001", "--format", "sarif", *names, models / "bad.onnx")
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in json.loads(out)["runs"][0]["results"]]
    assert uris == ["my%20model.onnx", "v1%3Afp16.onnx", "a%252Cb.onnx", "bad.onnx"]
    assert [unquote(urlsplit(u).path) for u in uris[:3]] == names and not any(urlsplit(u).scheme for u in uris)


def test_json_on_stdout_survives_checker_warnings(tmp_path, capfd):
    """onnx.checker's C++ prints "Warning: Model contains experimental ops: ATen" on fd 1 for an ATen node
    in the default domain; it must not land in the JSON report."""
    aten = helper.make_node("ATen", ["x"], ["y"], name="a", operator="grid_sampler")
    onnx.save(make_model([aten], [("x", np.float32, [2])], [("y", np.float32, [2])]), tmp_path / "m.onnx")
    for fmt in ("json", "sarif"):
        main(["check", "--no-config", "-t", "tensorrt-8.6", "--format", fmt, str(tmp_path / "m.onnx")])
        out, err = capfd.readouterr()
        json.loads(out)
        assert "experimental ops" in err


PLUGIN_PASS = '''
from surgeon.pass_api import Pass, PassResult, register_pass


@register_pass("check-plugin-demo")
class CheckPluginDemo(Pass):
    """Does nothing: a pass that only a plugin file provides."""

    def run(self, graph, ctx):
        return PassResult()
'''


def test_a_recipe_using_a_plugin_pass_passes_with_plugin_or_the_pyproject_plugins_key(tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "passes.py").write_text(PLUGIN_PASS)
    (tmp_path / "r.yaml").write_text("target: onnxruntime\nsteps:\n  - pass: check-plugin-demo\n")
    assert main(["check", "--no-config", "--recipe", "r.yaml", "--plugin", "tools/passes.py"]) == 0
    (tmp_path / "pyproject.toml").write_text('[tool.surgeon]\nplugins = ["tools/passes.py"]\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # the path is relative to pyproject.toml, not the working directory
    assert main(["check", "--recipe", "../r.yaml"]) == 0
    capsys.readouterr()


def test_a_missing_pyproject_plugin_file_names_the_pyproject_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.surgeon]\ntarget = "onnxruntime"\nplugins = ["nope.py"]\n')
    (tmp_path / "r.yaml").write_text("steps:\n  - pass: cleanup\n")
    assert main(["check", "r.yaml"]) == 2
    assert re.search(r"pyproject.toml:3: \[tool.surgeon\]: plugin file 'nope.py' not found", capsys.readouterr().err)
    (tmp_path / "pyproject.toml").write_text('[tool.surgeon]\n[[tool.surgeon.overrides]]\nfiles = ["*"]\n'
                                             'plugins = ["x.py"]\n')
    assert main(["check", "r.yaml"]) == 2
    assert "'plugins' belongs in [tool.surgeon] itself" in capsys.readouterr().err


def test_the_report_may_not_replace_a_plugin_file(tmp_path, capsys):
    plugin = PLUGIN_PASS.replace("check-plugin-demo", "check-plugin-report-demo")  # a name is one file's
    (tmp_path / "p.py").write_text(plugin)
    (tmp_path / "r.yaml").write_text("steps:\n  - pass: check-plugin-report-demo\n")
    assert main(["check", "--no-config", "--plugin", str(tmp_path / "p.py"), str(tmp_path / "r.yaml"),
                 "-o", str(tmp_path / "p.py")]) == 2
    assert "plugin file" in capsys.readouterr().err and (tmp_path / "p.py").read_text() == plugin


def test_the_report_may_not_replace_a_plugin_file_pyproject_lists(tmp_path, capsys, monkeypatch):
    plugin = PLUGIN_PASS.replace("check-plugin-demo", "check-plugin-project-report-demo")
    (tmp_path / "p.py").write_text(plugin)
    (tmp_path / "pyproject.toml").write_text('[tool.surgeon]\nplugins = ["p.py"]\n')
    (tmp_path / "r.yaml").write_text("steps:\n  - pass: check-plugin-project-report-demo\n")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "r.yaml", "-o", "p.py"]) == 2
    assert "the plugin file" in capsys.readouterr().err and (tmp_path / "p.py").read_text() == plugin


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "1e400", "lots"])
def test_max_initializer_mb_must_be_a_finite_size(models, capsys, value):
    """NaN turned SG013 off without a word, and -1 flagged every initializer."""
    with pytest.raises(SystemExit) as info:
        main(["check", "--no-config", str(models / "good.onnx"), "--max-initializer-mb", value])
    assert info.value.code == 2
    assert (f"argument --max-initializer-mb: expected a finite number of MiB, 0 or more, got '{value}'"
            in capsys.readouterr().err)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "true"])
def test_pyproject_max_initializer_mb_must_be_a_finite_size(models, capsys, monkeypatch, value):
    (models / "pyproject.toml").write_text(f"[tool.surgeon]\nmax-initializer-mb = {value}\n")
    monkeypatch.chdir(models)
    assert main(["check", str(models / "good.onnx")]) == 2
    assert (f"{models / 'pyproject.toml'}: [tool.surgeon]: 'max-initializer-mb' must be a finite number of MiB, "
            "0 or more" in capsys.readouterr().err)


def test_a_recipe_model_that_is_no_onnx_file_is_reported(tmp_path, capsys):
    """`model: /etc/passwd` or `model: .` linted clean, and `surgeon run` then refused the recipe."""
    text = tmp_path / "notes.txt"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2])],
                         [("y", np.float32, [2])]), tmp_path / "good.onnx")
    recipe = tmp_path / "r.yaml"
    not_onnx = f"not a binary ONNX model (the file ends inside field 14): {text}"  # 'r' starts field 14
    for model, against, expected in [
        (text, "original", [f"{recipe}:2:8: SR003 error model: {not_onnx}"]),
        (tmp_path, text, [f"{recipe}:2:8: SR002 error model: a folder, not a file: {tmp_path}",
                          f"{recipe}:6:12: SR003 error validate.against: {not_onnx}"]),
        (tmp_path / "good.onnx", "/dev/null", [f"{recipe}:6:12: SR002 error validate.against: not a regular file: "
                                               "/dev/null"]),
    ]:
        recipe.write_text(f"name: r\nmodel: {model}\nsteps:\n  - pass: toposort\nvalidate:\n  against: {against}\n")
        code, out, _ = run(capsys, recipe)
        assert (code, out.splitlines()[:-1]) == (1, expected)
    recipe.write_text(f"name: r\nmodel: {tmp_path / 'good.onnx'}\nsteps:\n  - pass: toposort\n")
    assert run(capsys, recipe)[:2] == (0, "no findings in 1 file\n")
    pointer = tmp_path / "lfs.onnx"  # what a clone without `git lfs pull` holds
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123\n")
    recipe.write_text(f"name: r\nmodel: {pointer}\nsteps:\n  - pass: toposort\n")
    code, out, _ = run(capsys, recipe)
    assert (code, out.splitlines()[0]) == (1, f"{recipe}:2:8: SR003 error model: not a binary ONNX model (a Git LFS "
                                              f"pointer: fetch the file (git lfs pull)): {pointer}")


def _non_utf8_node_name(model):
    return model.SerializeToString().replace(b"add_node", b"\xff\xfed_node")


@pytest.mark.parametrize("spoil, cause", [
    (lambda m: setattr(m.graph.initializer[0], "data_type", 999), "999"),
    (lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 999), "999"),
    (_non_utf8_node_name, "UTF-8"),
    (lambda m: setattr(m.graph.initializer[0], "raw_data", m.graph.initializer[0].raw_data * 2), "raw_data"),
    (lambda m: m.graph.ClearField("output"), "no outputs"),
])
def test_a_model_that_cannot_run_is_sg000_not_an_internal_error(tmp_path, capsys, spoil, cause):
    """Each ended `check` in an internal error (invalid dtypes, a name that is not UTF-8) or passed it (raw data
    longer than its dims, no graph outputs): the loader refuses them, which check reports as SG000."""
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add_node")], [("x", np.float32, [2])],
                       [("y", np.float32, [2])], initializers={"w": np.ones(2, np.float32)})
    spoilt = spoil(model)
    (tmp_path / "m.onnx").write_bytes(spoilt if isinstance(spoilt, bytes) else model.SerializeToString())
    code, out, err = run(capsys, tmp_path / "m.onnx")
    assert code == 2 and "internal error" not in err
    assert out.startswith(f"{tmp_path / 'm.onnx'}: SG000 error ") and cause in out.splitlines()[0]


def test_an_export_with_local_functions_passes_where_the_runtime_runs_them(tmp_path, capsys):
    """torch's dynamo export: weights as external data, the graph calling a local function per module. Every
    call was SG001, so such exports failed CI on every target; TensorRT before 9.0 still cannot parse them."""
    body = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    block = helper.make_function("pkg.local", "LinearRelu", ["x", "w"], ["y"], body, [helper.make_opsetid("", 17)])
    calls = [helper.make_node("LinearRelu", ["inp", "w1"], ["h"], domain="pkg.local", name="l1"),
             helper.make_node("LinearRelu", ["h", "w2"], ["out"], domain="pkg.local", name="l2")]
    weights = {name: np.eye(64, dtype=np.float32) for name in ("w1", "w2")}
    model = make_model(calls, [("inp", np.float32, [3, 64])], [("out", np.float32, [3, 64])], initializers=weights,
                       opset=17)
    model.functions.append(block)
    onnx.save(model, tmp_path / "func.onnx", save_as_external_data=True, location="func.onnx.data",
              size_threshold=0)
    for target in ("onnxruntime", "tensorrt-10"):
        assert run(capsys, tmp_path / "func.onnx", "--target", target) == (0, "no findings in 1 file\n", "")
    code, out, _ = run(capsys, tmp_path / "func.onnx", "--target", "tensorrt-8.6")
    assert code == 1 and out.count("calls a model-local function, which tensorrt-8.6 does not run") == 2


def test_a_pyproject_error_points_into_surgeons_table(tmp_path, capsys, monkeypatch):
    """Another tool's `plugins =` came first, and the error named its line."""
    (tmp_path / "pyproject.toml").write_text('[tool.mypy]\nplugins = ["pydantic.mypy"]\n\n[tool.surgeon]\n'
                                             'plugins = "tools/p.py"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["passes"]) == 2
    assert f"{tmp_path / 'pyproject.toml'}:5: [tool.surgeon]: 'plugins' must be a list" in capsys.readouterr().err

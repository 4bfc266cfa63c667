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
            "— fix: pass grid-sample mode=plugin or mode=decompose") in out
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
    (["--select", "SG9"], "--select: no rule 'SG9' (did you mean 'SG009'?)"),
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
    assert f"{models / 'pyproject.toml'}: unknown key 'targte' in [tool.surgeon] (did you mean 'target'?)" in err


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
    assert grid and all(f["fix"] == "grid-sample mode=plugin or mode=decompose" for f in grid)

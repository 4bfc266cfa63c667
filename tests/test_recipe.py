"""Recipe loading: every error class names file, line, column, step and key, and suggests a fix."""
from __future__ import annotations

import textwrap

import pytest

from surgeon.errors import RecipeError
from surgeon.recipe import apply_override, json_schema, load_recipe


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def error_of(path, **kwargs) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, **kwargs)
    return info.value


def test_valid_recipe_loads_with_defaults_and_relative_model(tmp_path):
    path = write(tmp_path, """
        name: demo
        model: models/m.onnx
        target: tensorrt-8.6
        steps:
          - pass: cleanup
          - pass: remove-node
            with: {op_types: [Identity]}
        validate: {atol: 1e-4, rtol: 2e-3}
        """)
    recipe = load_recipe(path)
    assert recipe.validate["atol"] == 1e-4 and recipe.validate["rtol"] == 2e-3  # YAML 1.1 would give strings
    assert recipe.name == "demo" and recipe.target == "tensorrt-8.6"
    assert recipe.model == tmp_path / "models" / "m.onnx"
    assert [s.pass_name for s in recipe.steps] == ["cleanup", "remove-node"]
    assert recipe.steps[0].params == {"remove_unused_inputs": True}
    assert len(recipe.sha256) == 64


def test_unknown_top_level_key_names_line_column_and_suggests(tmp_path):
    path = write(tmp_path, """
        name: demo
        stpes: []
        """)
    err = error_of(path)
    assert (err.file, err.line, err.column) == (str(path), 2, 1)
    assert "unknown key 'stpes'" in err.message and "did you mean 'steps'" in str(err)


def test_unknown_pass_suggests_nearest(tmp_path):
    path = write(tmp_path, """
        steps:
          - pass: cleanup
          - pass: toposrot
        """)
    err = error_of(path)
    assert err.line == 3 and "unknown pass 'toposrot'" in err.message and "steps item 2" in err.message
    assert "did you mean 'toposort'" in str(err)


def test_unknown_parameter_points_at_the_parameter(tmp_path):
    path = write(tmp_path, """
        steps:
          - pass: cleanup
            with:
              remove_unused_input: false
        """)
    err = error_of(path)
    assert err.line == 4 and err.column == 7
    assert "unknown parameter 'remove_unused_input'" in err.message
    assert "remove_unused_inputs" in str(err)


def test_ill_typed_parameter(tmp_path):
    path = write(tmp_path, """
        steps:
          - pass: cleanup
            with: {remove_unused_inputs: "yes"}
        """)
    err = error_of(path)
    assert err.line == 3 and "expected a boolean" in err.message


def test_missing_required_parameter(tmp_path):
    path = write(tmp_path, """
        steps:
          - pass: set-input-shapes
        """)
    err = error_of(path)
    assert "needs parameter 'shapes'" in err.message and err.line == 2


def test_unknown_step_key_and_missing_pass(tmp_path):
    err = error_of(write(tmp_path, """
        steps:
          - pass: cleanup
            wiht: {}
        """))
    assert "unknown key 'wiht' in step" in err.message and "did you mean 'with'" in str(err)
    err = error_of(write(tmp_path, """
        steps:
          - with: {}
        """, "r2.yaml"))
    assert "step has no 'pass'" in err.message


def test_unknown_target_suggests(tmp_path):
    err = error_of(write(tmp_path, "target: tensorrt-8.7\n"))
    assert err.line == 1 and "unknown target 'tensorrt-8.7'" in err.message and "tensorrt-8.6" in str(err)


def test_invalid_yaml_and_duplicate_keys(tmp_path):
    err = error_of(write(tmp_path, "steps: [\n  - pass: x\n"))
    assert "not valid YAML" in err.message and err.line is not None
    err = error_of(write(tmp_path, "name: a\nname: b\n", "dup.yaml"))
    assert "duplicate key 'name'" in err.message and err.line == 2


def test_yaml_is_loaded_safely(tmp_path):
    err = error_of(write(tmp_path, "name: !!python/object/apply:os.system ['true']\n"))
    assert "not valid YAML" in err.message


def test_not_a_mapping_and_empty_and_missing(tmp_path):
    assert "must be a mapping" in error_of(write(tmp_path, "- a\n- b\n")).message
    assert "empty" in error_of(write(tmp_path, "", "e.yaml")).message
    assert "not found" in error_of(tmp_path / "nope.yaml").message


def test_section_keys_are_checked(tmp_path):
    err = error_of(write(tmp_path, """
        validate:
          atol: 1e-4
          error_stats: max
        """))
    assert err.line == 3 and "unknown key 'error_stats' in the validate section" in err.message
    err = error_of(write(tmp_path, """
        build:
          precision: fp8
        """, "b.yaml"))
    assert "build.precision" in err.message and "'fp8' is not one of" in err.message


def test_extends_inherits_and_overrides(tmp_path):
    write(tmp_path, """
        name: base
        target: opset-11
        steps:
          - pass: toposort
          - pass: cleanup
        validate: {atol: 0.001, data: inputs.npz}
        """, "base.yaml")
    (tmp_path / "child").mkdir()
    child = write(tmp_path, """
        extends: ../base.yaml
        name: child
        prepend_steps:
          - pass: remove-node
            with: {op_types: [Dropout]}
        append_steps:
          - pass: infer-shapes
        set:
          cleanup.remove_unused_inputs: false
        """, "child/child.yaml")
    recipe = load_recipe(child)
    assert recipe.name == "child" and recipe.target == "opset-11"
    assert [s.pass_name for s in recipe.steps] == ["remove-node", "toposort", "cleanup", "infer-shapes"]
    assert recipe.steps[2].params["remove_unused_inputs"] is False
    # paths of the parent stay relative to the parent's folder
    assert recipe.validate["data"] == str(tmp_path / "inputs.npz")
    assert recipe.files == [str(tmp_path / "base.yaml"), str(child)]


def test_extends_cycle_and_missing(tmp_path):
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    assert "extends itself" in error_of(tmp_path / "a.yaml").message
    err = error_of(write(tmp_path, "extends: gone.yaml\n", "c.yaml"))
    assert "extended recipe not found" in err.message and err.line == 1


def test_set_in_recipe_reports_its_line(tmp_path):
    err = error_of(write(tmp_path, """
        steps: [{pass: cleanup}]
        set:
          cleanup.remove_unused: true
        """))
    assert err.line == 3 and "unknown parameter 'remove_unused'" in err.message


def test_overrides_by_index_name_and_pass(tmp_path):
    path = write(tmp_path, """
        steps:
          - pass: cleanup
          - pass: remove-node
            name: drop-dropout
            with: {op_types: [Dropout]}
          - pass: cleanup
        """)
    recipe = load_recipe(path, overrides=["1.remove_unused_inputs=false", "drop-dropout.op_types=[Identity]",
                                          "validate.atol=1e-3"])
    assert recipe.steps[0].params["remove_unused_inputs"] is False
    assert recipe.steps[1].params["op_types"] == ["Identity"]
    assert recipe.validate["atol"] == 1e-3
    with pytest.raises(RecipeError, match="used by steps 1, 3"):
        apply_override(recipe, "cleanup.remove_unused_inputs=true")
    with pytest.raises(RecipeError, match="step 9 does not exist"):
        apply_override(recipe, "9.x=1")
    with pytest.raises(RecipeError, match="STEP.PARAM=VALUE"):
        apply_override(recipe, "nonsense")
    with pytest.raises(RecipeError, match="expected a boolean"):
        apply_override(recipe, "1.remove_unused_inputs=maybe")


def test_json_schema_matches_docs_and_validates_recipes(tmp_path):
    import json

    import jsonschema

    from conftest import REPO

    schema = json_schema(builtin_only=True)
    published = json.loads((REPO / "docs" / "recipe.schema.json").read_text())
    assert published == schema, "docs/recipe.schema.json is stale: run python -m surgeon schema --builtin-only > docs/recipe.schema.json"
    good = {"name": "x", "target": "onnxruntime", "steps": [{"pass": "cleanup", "with": {"remove_unused_inputs": False}}]}
    jsonschema.validate(good, schema)
    bad = {"steps": [{"pass": "cleanup", "with": {"remove_unused_input": False}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_extends_a_shipped_recipe_by_name(tmp_path):
    path = write(tmp_path, """
        extends: targets/tensorrt-8.6
        name: mine
        """)
    recipe = load_recipe(path)
    assert recipe.target == "tensorrt-8.6" and recipe.steps and recipe.name == "mine"
    err = error_of(write(tmp_path, "extends: targets/tensorrt-8.7\n", "bad.yaml"))
    assert "extended recipe not found" in err.message and "targets/tensorrt-8.6" in str(err)


def test_suggestions_are_offered_for_typos_only():
    from surgeon.errors import suggest

    assert suggest("toposrot", ["toposort", "linspace"]) == "did you mean 'toposort'?"
    assert suggest("nope", ["toposort", "linspace", "opset-11"]) is None


def test_prepend_append_and_set_accumulate_over_three_levels(tmp_path):
    write(tmp_path, """
        steps: [{pass: cleanup}]
        prepend_steps: [{pass: toposort}]
        set: {cleanup.remove_unused_inputs: false}
        """, "a.yaml")
    write(tmp_path, """
        extends: a.yaml
        prepend_steps: [{pass: infer-shapes}]
        append_steps: [{pass: toposort}]
        """, "b.yaml")
    c = write(tmp_path, """
        extends: b.yaml
        name: c
        append_steps: [{pass: infer-shapes}]
        set: {cleanup.remove_unused_inputs: true}
        """, "c.yaml")
    recipe = load_recipe(c)
    assert [s.pass_name for s in recipe.steps] == ["toposort", "infer-shapes", "cleanup", "toposort", "infer-shapes"]
    assert recipe.steps[2].params["remove_unused_inputs"] is True  # the child's set applies last

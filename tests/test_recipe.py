"""Recipe loading: every error class names file, line, column, step and key, and suggests a fix."""
from __future__ import annotations

import textwrap

import pytest

from surgeon.errors import RecipeError
from surgeon.recipe import apply_override, json_schema, load_recipe, parse_override


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


@pytest.mark.parametrize("names, problem", [
    (("../outside", "/tmp/precious", "a\\\\b", ".."), "'name' must be a plain name, not a path"),
    (("a\\0b", "tab\\there", "bell\\a", "nel\\N"), "'name' must not contain control characters"),  # YAML escapes
])
def test_a_name_that_is_a_path_or_holds_a_control_character_is_refused_where_it_is_written(tmp_path, names, problem):
    for name in names:
        err = error_of(write(tmp_path, f'name: "{name}"\nsteps: [{{pass: cleanup}}]\n'))
        assert (err.line, err.column) == (1, 7) and problem in err.message
    assert load_recipe(write(tmp_path, "name: bevformer-tiny.v2 ü\n")).name == "bevformer-tiny.v2 ü"


def test_a_child_without_a_name_is_named_after_its_file(tmp_path):
    write(tmp_path, "name: parent\nsteps: [{pass: cleanup}]\n", "parent.yaml")
    assert load_recipe(write(tmp_path, "extends: parent.yaml\n", "mine.yaml")).name == "mine"


def test_extends_never_falls_back_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    child = write(tmp_path, "extends: parent.yaml\n", "recipes/child.yaml")
    write(tmp_path, "steps: [{pass: cleanup}]\n", "parent.yaml")  # beside the working directory, not the child
    monkeypatch.chdir(tmp_path)
    err = error_of(child)
    assert "extended recipe not found: parent.yaml" in err.message and err.line == 1


def test_a_parents_set_means_the_parents_own_steps(tmp_path):
    write(tmp_path, """
        steps:
          - pass: toposort
          - pass: cleanup
            name: base-clean
        set:
          2.remove_unused_inputs: false
        """, "parent.yaml")
    child = write(tmp_path, "extends: parent.yaml\nprepend_steps: [{pass: cleanup}]\n", "child.yaml")
    recipe = load_recipe(child)
    assert [s.pass_name for s in recipe.steps] == ["cleanup", "toposort", "cleanup"]
    assert recipe.steps[0].params["remove_unused_inputs"] is True  # the child's step 2 is another step
    assert recipe.steps[2].params["remove_unused_inputs"] is False
    # a child whose steps replace the parent's: the parent's set has no step left to mean
    write(tmp_path, "steps: [{pass: cleanup, name: base-clean}]\nset: {base-clean.remove_unused_inputs: false}\n",
          "labelled.yaml")
    err = error_of(write(tmp_path, "extends: labelled.yaml\nsteps: [{pass: toposort}]\n", "replacing.yaml"))
    assert err.file.endswith("labelled.yaml") and err.line == 2
    assert "its step (base-clean" in err.message and "replacing.yaml replaces the steps" in err.message
    # the hint says what can be done: writing the set in the child would not help, the parent's still fails
    assert "prepend_steps or append_steps" in err.hint and "without this set" in err.hint


def test_a_childs_section_replaces_what_a_parents_set_made_of_it(tmp_path):
    write(tmp_path, "steps: [{pass: toposort}]\nvalidate: {atol: 1.0e-3}\nset: {validate.rtol: 0.5}\n",
          "base.yaml")
    # a level's set edits the section as that level sees it: a child inheriting it keeps the edit ...
    assert load_recipe(write(tmp_path, "extends: base.yaml\n", "same.yaml")).validate["rtol"] == 0.5
    mine = load_recipe(write(tmp_path, "extends: base.yaml\nset: {validate.atol: 0.1}\n", "mine.yaml")).validate
    assert (mine["atol"], mine["rtol"]) == (0.1, 0.5)
    # ... a child writing the section replaces it, the parent's set with it (not 500,000x looser than written)
    own = load_recipe(write(tmp_path, "extends: base.yaml\nvalidate: {rtol: 1.0e-6}\n", "own.yaml")).validate
    assert (own["atol"], own["rtol"]) == (1e-5, 1e-6)
    assert load_recipe(write(tmp_path, "extends: base.yaml\nvalidate:\n", "none.yaml")).validate is None
    # three levels: the middle's section replaces the top's set; the middle's own set edits it
    write(tmp_path, "extends: base.yaml\nvalidate: {atol: 0.2}\nset: {validate.seed: 3}\n", "mid.yaml")
    low = load_recipe(write(tmp_path, "extends: mid.yaml\n", "low.yaml")).validate
    assert (low["atol"], low["rtol"], low["seed"]) == (0.2, 1e-5, 3)

    (tmp_path / "sub").mkdir()
    write(tmp_path, "steps: [{pass: toposort}]\nbuild: {precision: fp16}\n"
                    "set: {build.plugins: [libfoo.so], build.calibration: {data: cal.npz}}\n", "sub/b.yaml")
    int8 = write(tmp_path, "extends: sub/b.yaml\nbuild: {precision: int8, calibration: {data: mine.npz}}\n",
                 "int8.yaml")
    build = load_recipe(int8).build
    assert (build["precision"], build["plugins"]) == ("int8", ["builtin"])
    assert build["calibration"] == {"data": str(tmp_path / "mine.npz")}
    assert load_recipe(write(tmp_path, "extends: sub/b.yaml\nbuild:\n", "nobuild.yaml")).build is None


def test_a_set_key_without_a_dot_is_refused_where_it_is_written(tmp_path):
    err = error_of(write(tmp_path, "steps: [{pass: toposort}]\nset: {toposort: 1}\n"))
    assert (err.line, err.column) == (2, 7)
    assert err.message == "set toposort: expected STEP.PARAM, such as 2.mode or validate.atol"


def test_paths_in_a_recipes_set_are_relative_to_its_file(tmp_path, monkeypatch):
    (tmp_path / "rec").mkdir()
    write(tmp_path, "steps: [{pass: cleanup}]\n", "rec/base.yaml")
    child = write(tmp_path, "extends: base.yaml\nset: {validate.data: inputs.npz, validate.against: none}\n",
                  "rec/child.yaml")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(child)
    assert recipe.validate["data"] == str(tmp_path / "rec" / "inputs.npz") and recipe.validate["against"] == "none"
    recipe = load_recipe(child, overrides=["validate.data=mine.npz"])  # --set: relative to the working directory
    assert recipe.validate["data"] == "mine.npz"
    build = write(tmp_path, "extends: base.yaml\nset: {build.plugins: [libmine.so, builtin], "
                            "build.calibration: {data: calib.npz, cache: calib.cache}}\n", "rec/build.yaml")
    recipe = load_recipe(build)
    assert recipe.build["plugins"] == [str(tmp_path / "rec" / "libmine.so"), "builtin"]
    assert recipe.build["calibration"] == {"data": str(tmp_path / "rec" / "calib.npz"),
                                           "cache": str(tmp_path / "rec" / "calib.cache")}


def test_an_error_in_a_recipes_set_is_not_called_set_from_the_command_line(tmp_path):
    err = error_of(write(tmp_path, "steps: [{pass: clip-int}]\nset: {clip-int.mode: 3}\n"))
    assert err.line == 2 and err.message.startswith("set clip-int.mode: parameter 'mode'")


def test_the_sha256_covers_every_file_of_the_chain_and_the_overrides(tmp_path):
    import hashlib

    base = write(tmp_path, "steps: [{pass: clip-int, with: {mode: minmax}}]\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\n", "child.yaml")
    alone = load_recipe(base).sha256
    assert alone == hashlib.sha256(base.read_bytes()).hexdigest()  # one file: `sha256sum` of it
    before = load_recipe(child).sha256
    assert load_recipe(child, overrides=["clip-int.mode=cast"]).sha256 != before
    base.write_text(base.read_text().replace("minmax", "cast"))
    assert load_recipe(child).sha256 != before


def test_a_key_written_beside_a_yaml_merge_replaces_the_merged_one(tmp_path):
    recipe = load_recipe(write(tmp_path, """
        steps:
          - pass: clip-int
            with: &d {mode: minmax}
          - pass: clip-int
            with:
              <<: *d
              mode: cast
        """))
    assert [s.params["mode"] for s in recipe.steps] == ["minmax", "cast"]
    err = error_of(write(tmp_path, "steps:\n  - pass: clip-int\n    with: {mode: cast, mode: minmax}\n", "dup.yaml"))
    assert "duplicate key 'mode'" in err.message


@pytest.mark.parametrize("written, message, hint", [
    ("010", "`010`: octal 8 in YAML 1.1 but 10 in YAML 1.2", "write 8 or 10, or quote it for text"),
    ("-010", "`-010`: octal -8 in YAML 1.1 but -10 in YAML 1.2", "write -8 or -10"),
    ("08", "`08`: text in YAML 1.1 but 8 in YAML 1.2", "write 8, or quote it"),
    ("0b101", "`0b101`: binary 5 in YAML 1.1 but text in YAML 1.2", "write 5, or quote it"),
    ("1_000", "`1_000`: 1000 in YAML 1.1 but text in YAML 1.2", "write 1000, or quote it"),
    ("1_0.5", "`1_0.5`: 10.5 in YAML 1.1 but text in YAML 1.2", "write 10.5"),
    ("1:30", "`1:30`: base-60 90 in YAML 1.1 but text in YAML 1.2", "write 90, or quote it"),
    ("0o17", "`0o17`: text in YAML 1.1 but 15 in YAML 1.2", "write 15, or quote it"),
    ("-0x1F", "`-0x1F`: hexadecimal -31 in YAML 1.1 but text in YAML 1.2", "write -31, or quote it"),
])
def test_a_plain_number_yaml_versions_read_differently_is_refused_at_its_position(tmp_path, written, message, hint):
    err = error_of(write(tmp_path, f"steps:\n  - pass: fold-constants\n    with: {{size_threshold: {written}}}\n"))
    assert (err.line, err.column) == (3, 28)
    assert err.message == f"ambiguous number {message}" and hint in err.hint
    with pytest.raises(RecipeError) as info:
        apply_override(load_recipe(write(tmp_path, "steps: [{pass: fold-constants}]\n", "ok.yaml")),
                       f"1.size_threshold={written}")
    assert str(info.value).startswith(f"--set 1.size_threshold={written}: ambiguous number {message}")


def test_quoted_numbers_stay_text_and_numbers_both_versions_agree_on_load(tmp_path):
    recipe = load_recipe(write(tmp_path, """
        steps:
          - pass: rename
            with: {tensors: {'010': a, "1:30": b, '1_000': c}}
          - pass: fold-constants
            with: {size_threshold: 007}
        validate: {atol: 1e-3, rtol: +.5}
        """))
    assert recipe.steps[0].params["tensors"] == {"010": "a", "1:30": "b", "1_000": "c"}
    assert recipe.steps[1].params["size_threshold"] == 7  # octal 7 is 7: nothing to misread
    assert (recipe.validate["atol"], recipe.validate["rtol"]) == (1e-3, 0.5)
    assert parse_override("1.x=-.5") == ("1.x", -0.5)  # a signed `.5` is a number in both, as `.5` is


@pytest.mark.parametrize("recipe, line, column, message", [
    ("steps:\n  - pass: clip-int\n    with: {mode: off}\n", 3, 12,
     "parameter 'mode' of pass 'clip-int': expected a string, got a boolean False (steps item 1)"),
    ("validate:\n  runner: yes\n", 2, 11, "validate.runner: expected a string, got a boolean True"),
    ("steps: [{pass: clip-int}]\nset: {clip-int.mode: on}\n", 2, 7,
     "set clip-int.mode: parameter 'mode' of pass 'clip-int': expected a string, got a boolean True"),
])
def test_an_unquoted_yes_no_on_off_where_text_belongs_says_to_quote_it(tmp_path, recipe, line, column, message):
    err = error_of(write(tmp_path, recipe))
    assert (err.line, err.column, err.message) == (line, column, message)
    assert "quote the word for text" in err.hint
    assert load_recipe(write(tmp_path, "checker: no\n", "bool.yaml")).checker is False  # booleans stay booleans


@pytest.mark.parametrize("recipe, overrides, message", [
    ("steps:\n  - pass: simplify\n    with: {skip_optimizers: [yes]}\n", (),
     "parameter 'skip_optimizers' of pass 'simplify': expected a string, got a boolean True (steps item 1)"),
    ("steps: [{pass: simplify}]\n", ("simplify.skip_optimizers=[off]",), "--set simplify.skip_optimizers: "
     "parameter 'skip_optimizers' of pass 'simplify': expected a string, got a boolean False"),
    ("build:\n  plugins: [builtin, no]\n", (), "build.plugins: expected a string, got a boolean False"),
    ("validate:\n  error_stat: {boxes: on}\n", (),
     "validate.error_stat: True is not one of 'elemwise', 'max', 'mean', 'median', 'quantile'"),
    ("build:\n  workspace: yes\n", (), "build.workspace: expected an integer or string, got a boolean True"),
])
def test_a_boolean_for_text_inside_a_list_or_mapping_or_among_types_says_to_quote_it(tmp_path, recipe, overrides,
                                                                                       message):
    err = error_of(write(tmp_path, recipe), overrides=overrides)
    assert err.message == message
    assert "quote the word for text" in err.hint


def test_a_boolean_where_no_text_belongs_gets_no_quoting_hint(tmp_path):
    err = error_of(write(tmp_path, "steps:\n  - pass: simplify\n    with: {check_n: yes}\n"))
    assert err.message == ("parameter 'check_n' of pass 'simplify': expected an integer, got a boolean True "
                           "(steps item 1)")
    assert err.hint is None


def test_an_integer_too_large_for_a_float_is_refused_at_its_line(tmp_path):
    err = error_of(write(tmp_path, f"validate:\n  quantile: {10**400}\n"))
    assert (err.line, err.message) == (2, "validate.quantile: expected a number, got an integer too large for a float")


def test_whole_floats_are_integers(tmp_path):
    recipe = load_recipe(write(tmp_path, "steps:\n  - pass: fold-constants\n    with: {size_threshold: 1e3}\n",
                               "float.yaml"))
    threshold = recipe.steps[0].params["size_threshold"]
    assert threshold == 1000 and isinstance(threshold, int)


def test_a_step_name_is_a_label_not_a_number(tmp_path):
    err = error_of(write(tmp_path, "steps:\n  - pass: cleanup\n    name: 3\n"))
    assert (err.line, err.column) == (3, 11) and "must be a label, not a number" in err.message


def test_param_bounds_are_checked_and_published():
    from surgeon.pass_api import Param

    bounded = Param(int, 0, minimum=0)
    assert bounded.coerce(5) == 5
    with pytest.raises(ValueError, match="must be at least 0, got -5"):
        bounded.coerce(-5)
    with pytest.raises(ValueError, match="must be between 0 and 1, got nan"):
        Param(float, 0.5, minimum=0, maximum=1).coerce(float("nan"))
    quantile = json_schema()["properties"]["validate"]["properties"]["quantile"]
    assert (quantile["minimum"], quantile["maximum"]) == (0, 1)


def test_the_schema_agrees_with_the_loader(tmp_path):
    import jsonschema
    import yaml

    from surgeon.recipe import _Loader

    schema = json_schema(builtin_only=True)
    cases = {  # recipe -> whether both accept it
        "steps: [{pass: set-input-shapes}]\n": False,  # a required parameter without `with`
        "steps: [{pass: cleanup, name: '3'}]\n": False,
        "steps: [{pass: cleanup}]\nvalidate:\n": True,  # no validation, as if the key were absent
        "steps: [{pass: fold-constants, with: {size_threshold: 1024.0}}]\n": True,
        "name: ../up\n": False,
        'name: "a\\0b"\n': False,
        "name: bevformer tiny ü\n": True,
    }
    for text, accepted in cases.items():
        schema_ok = jsonschema.Draft202012Validator(schema).is_valid(yaml.load(text, Loader=_Loader))
        try:
            load_recipe(write(tmp_path, text))
            loader_ok = True
        except RecipeError:
            loader_ok = False
        assert (schema_ok, loader_ok) == (accepted, accepted), text


def test_a_value_nested_too_deep_is_refused_at_its_bracket_not_a_recursion_error(tmp_path):
    import yaml

    from surgeon.recipe import MAX_NESTING, _Loader, parse_override

    deep = "[" * 3000 + "]" * 3000
    err = error_of(write(tmp_path, f"name: t\nsteps: [{{pass: toposort}}]\ndescription: {deep}\n"))
    # the top-level mapping is level 1: the bracket that opens level 101 is the 100th
    assert (err.line, err.column) == (3, 13 + MAX_NESTING) and err.message == "nested more than 100 levels deep"
    with pytest.raises(RecipeError) as info:
        parse_override(f"validate.atol={deep}")
    assert str(info.value) == f"--set validate.atol={deep[:46]}...: nested more than 100 levels deep"
    assert yaml.load("[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1), Loader=_Loader)  # as deep as allowed


def test_extends_naming_a_folder_is_refused_at_the_extends_line(tmp_path):
    for parent in (".", "..", "''"):
        err = error_of(write(tmp_path, f"name: t\nextends: {parent}\n"))
        assert (err.file, err.line) == (str(tmp_path / "r.yaml"), 2)
        assert err.message.startswith("'extends' names a folder, not a recipe file: ")


def test_the_shipped_recipe_fallback_never_leaves_the_shipped_folder(tmp_path):
    from surgeon.recipe import find_recipe
    from surgeon.registry import shipped_dir

    (tmp_path / "a" / "b").mkdir(parents=True)
    outside = write(tmp_path, "steps: [{pass: cleanup}]\n", "outside.yaml")
    shipped = shipped_dir("recipes")
    # a path from the shipped folder to `outside`: followed there, it would load
    escape = "/".join([".."] * len(shipped.resolve().parts)) + str(outside.resolve().with_suffix(""))
    assert (shipped / f"{escape}.yaml").resolve() == outside.resolve()
    err = error_of(write(tmp_path / "a" / "b", f"extends: {escape}\n"))
    assert err.message.startswith(f"extended recipe not found: {escape} (neither in ") and err.line == 1
    for name in (escape, str(outside.with_suffix("")), "targets/../targets/opset11", "./targets/opset11"):
        with pytest.raises(RecipeError, match="recipe not found"):
            find_recipe(name)
    assert find_recipe("targets/opset11") == shipped / "targets" / "opset11.yaml"


def test_an_ill_typed_value_is_named_in_the_recipes_words_not_a_class_name(tmp_path):
    err = error_of(write(tmp_path, "steps:\n  - pass: clip-int\n    with: {mode: [1]}\n"))
    assert err.message == "parameter 'mode' of pass 'clip-int': expected a string, got a list [1] (steps item 1)"
    err = error_of(write(tmp_path, "validate: {runner: {a: 1}}\n"))
    assert err.message == "validate.runner: expected a string, got a mapping {'a': 1}"

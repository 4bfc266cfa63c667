"""Recipe lint (`surgeon check RECIPE.yaml`): what `surgeon run` would refuse, found before it runs.

`surgeon.recipe.load_recipe` already checks the schema, pass names, parameter types, `extends` chains
and the target (a built-in name, or a profile file it loads), stopping at the first problem with its
file:line:col; SR001 reports that problem, SG000 a recipe file that is not text (exit code 2, as for a
model that is not ONNX). SR002 then checks that every input file the recipe names exists (the loader
leaves that to run time).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from surgeon.check.findings import UNREADABLE_FILE, Finding, recipe_rule
from surgeon.errors import SurgeonError
from surgeon.recipe import UnreadableRecipe, decode_text, load_recipe


@recipe_rule("SR001", "recipe-invalid", "error",
             "recipe does not load: unknown key or pass, ill-typed parameter, bad YAML, broken extends, "
             "unknown or malformed target profile")
def recipe_invalid(path: Path):
    try:
        load_recipe(path)
    except SurgeonError as exc:
        rule = UNREADABLE_FILE.id if isinstance(exc, UnreadableRecipe) else "SR001"
        yield Finding(rule, "error", exc.message + (f" ({exc.hint})" if exc.hint else ""),
                      file=exc.file or str(path), line=exc.line, column=exc.column)


@recipe_rule("SR002", "recipe-file-missing", "error",
             "a file the recipe names (model, validation data, plugin library) does not exist")
def recipe_file_missing(path: Path):
    try:
        recipe = load_recipe(path)
    except SurgeonError:
        return  # SR001 reports it
    for keys, file in _input_files(recipe):
        if not Path(file).exists():
            line, column = _locate(path, keys)
            yield Finding("SR002", "error", f"{'.'.join(keys)}: file not found: {file}", file=str(path),
                          line=line, column=column)


def _input_files(recipe):
    """(key path, file) for every input file the recipe declares, resolved as `surgeon run` resolves them."""
    if recipe.model is not None:
        yield ("model",), recipe.model
    validate = recipe.validate or {}
    for key in ("expected", "data", "against"):
        if validate.get(key) and not (key == "against" and validate[key] in ("original", "none")):
            yield ("validate", key), validate[key]
    build = recipe.build or {}
    for library in build.get("plugins") or ():
        if library != "builtin":
            yield ("build", "plugins"), library
    calibration = build.get("calibration") or {}
    if calibration.get("data"):
        yield ("build", "calibration", "data"), calibration["data"]


def _locate(path: Path, keys: tuple[str, ...]) -> tuple[int | None, int | None]:
    """1-based line and column of the value at `keys` in the recipe file (None where a parent declares it)."""
    try:
        node = yaml.compose(decode_text(path.read_bytes(), path, "recipe"))
    except (yaml.YAMLError, SurgeonError, OSError):
        return None, None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None, None
        node = next((value for name, value in node.value if name.value == key), None)
        if node is None:
            return None, None
    return node.start_mark.line + 1, node.start_mark.column + 1

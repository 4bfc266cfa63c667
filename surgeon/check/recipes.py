"""Recipe lint (`surgeon check RECIPE.yaml`): what `surgeon run` would refuse, found before it runs.

`surgeon.recipe.load_recipe` already checks the schema, pass names, parameter types, `extends` chains
and the target (a built-in name, or a profile file it loads), stopping at the first problem with its
file:line:col; SR001 reports that problem, SG000 a recipe file that is not text (exit code 2, as for a
model that is not ONNX). SR002 then checks that every input file the recipe names is a regular file, and
SR003 that the models it names look like binary ONNX models (the loader leaves both to run time).
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from surgeon.check.findings import UNREADABLE_FILE, Finding, recipe_rule
from surgeon.errors import SurgeonError
from surgeon.modelio import is_git_lfs_pointer
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
             "a file the recipe names (model, validation data, plugin library) does not exist or is not a regular "
             "file")
def recipe_file_missing(path: Path):
    for keys, file, _ in _input_files(path):
        problem = _not_a_file(Path(file))
        if problem:
            yield _finding("SR002", path, keys, f"{problem}: {file}")


@recipe_rule("SR003", "recipe-model-invalid", "error",
             "a model the recipe names (model, validate.against) is not a binary ONNX model")
def recipe_model_invalid(path: Path):
    for keys, file, is_model in _input_files(path):
        problem = _not_onnx(Path(file)) if is_model and Path(file).is_file() else None
        if problem:
            yield _finding("SR003", path, keys, f"not a binary ONNX model ({problem}): {file}")


def _not_a_file(file: Path) -> str | None:
    if not file.exists():
        return "file not found"
    if file.is_dir():
        return "a folder, not a file"
    return None if file.is_file() else "not a regular file"


def _finding(rule: str, path: Path, keys: tuple[str, ...], message: str) -> Finding:
    line, column = _locate(path, keys)
    return Finding(rule, "error", f"{'.'.join(keys)}: {message}", file=str(path), line=line, column=column)


def _input_files(path: Path):
    """(key path, file, whether it is a model) for every input file the recipe declares, resolved as
    `surgeon run` resolves them; nothing for a recipe that does not load (SR001 reports it)."""
    try:
        recipe = load_recipe(path)
    except SurgeonError:
        return
    if recipe.model is not None:
        yield ("model",), recipe.model, True
    validate = recipe.validate or {}
    for key in ("expected", "data", "against"):
        if validate.get(key) and not (key == "against" and validate[key] in ("original", "none")):
            yield ("validate", key), validate[key], key == "against"
    build = recipe.build or {}
    for library in build.get("plugins") or ():
        if library != "builtin":
            yield ("build", "plugins"), library, False
    calibration = build.get("calibration") or {}
    if calibration.get("data"):
        yield ("build", "calibration", "data"), calibration["data"], False


# The wire type of each ModelProto field (0: a number, 2: a message or text); protobuf skips other field numbers
MODEL_FIELD_WIRE_TYPES = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
FIXED_SIZES = {1: 8, 5: 4}  # bytes of a value of wire types 1 and 5; 0 is a varint, 2 a varint length and bytes
GRAPH_FIELD, OPSET_IMPORT_FIELD = 7, 8


def _not_onnx(path: Path) -> str | None:
    """Why `path` cannot be a binary ONNX model, from the framing of its top-level protobuf fields as protobuf
    reads them (the graph is skipped over, not parsed, so a model of any size costs a few reads); None where it
    can be. Text (YAML, /etc/passwd) fails within its first bytes."""
    try:
        size = path.stat().st_size
        seen = set()
        with open(path, "rb") as handle:
            if is_git_lfs_pointer(handle.read(64)):
                return "a Git LFS pointer: fetch the file (git lfs pull)"
            handle.seek(0)
            while handle.tell() < size:
                start = handle.tell()
                key = _varint(handle)
                field, wire_type = (key >> 3, key & 7) if key is not None else (0, None)
                declared = MODEL_FIELD_WIRE_TYPES.get(field, wire_type)
                if not field or wire_type not in (0, 1, 2, 5) or wire_type != declared:  # 3, 4: obsolete groups
                    return f"byte {start} does not start a ModelProto field"
                if wire_type == 0:
                    length = None if _varint(handle) is None else 0
                else:
                    length = _varint(handle) if wire_type == 2 else FIXED_SIZES[wire_type]
                if length is None or handle.tell() + length > size:
                    return f"the file ends inside field {field}"
                handle.seek(length, os.SEEK_CUR)
                seen.add(field)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if GRAPH_FIELD not in seen or OPSET_IMPORT_FIELD not in seen:
        return "no graph or no opset import"
    return None


def _varint(handle) -> int | None:
    """A protobuf base-128 varint read from `handle`; None where the file ends inside it or it is over 10 bytes."""
    value = 0
    for shift in range(0, 70, 7):
        byte = handle.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
    return None


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

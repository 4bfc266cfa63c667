"""Recipes: YAML files that chain passes over a model, with validation and build sections.

    name: bevformer-tiny
    description: make BEVFormer-tiny deployable on TensorRT 8.6
    model: ../tests/data/zoo/bevformer-tiny.onnx     # relative to this file
    target: tensorrt-8.6
    extends: targets/tensorrt-8.6.yaml               # optional: inherit, then override
    steps:
      - pass: grid-sample
        with: {mode: plugin}
    validate: {...}                                  # see VALIDATE_FIELDS
    build: {...}                                     # see BUILD_FIELDS

A child recipe's keys replace its parent's (but not its `name`); `steps` replaces the parent's steps,
`prepend_steps` and `append_steps` add around them, and `set: {STEP.PARAM: VALUE}` overrides parameters
like `--set`, each file's as if written in that file: over its own steps and sections, with paths relative to it.
Every error names the file, line and column, the step and the key, and suggests the nearest name.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from surgeon.errors import RecipeError, suggest
from surgeon.pass_api import BUILTIN_PACKAGE, Param, ParamError
from surgeon.registry import discover, get_pass, shipped_dir, unknown_pass_hint
from surgeon.validation.settings import MAX_SEED

TOP_LEVEL_KEYS = ("name", "description", "model", "target", "extends", "steps", "prepend_steps", "append_steps",
                  "set", "validate", "build", "checker")
STEP_KEYS = ("pass", "with", "name")
#: Keys whose entries from every level of an `extends` chain apply, outermost parent first. (Every level's
#: `set` applies too, each over that level's own steps: see `_build`.)
ACCUMULATING = ("prepend_steps", "append_steps")

VALIDATE_FIELDS: dict[str, Param] = {
    "against": Param(str, "original", help="'original' (the recipe's input model), 'none' (only the expected "
                     "outputs: for exports nothing can run) or the path of a model to compare with"),
    "expected": Param(str, None, help=".npz of reference outputs (e.g. from PyTorch), compared as well"),
    "data": Param(str, None, help="recorded inputs: .npz or Polygraphy JSON (else seeded random inputs)"),
    "inputs": Param(dict, None, help="per input name: {shape: [...], dtype: float32, range: [low, high]}"),
    "iterations": Param(int, 1, help="how many input sets to run", minimum=1),
    "seed": Param(int, 0, help="seed of the random data loader", minimum=0, maximum=MAX_SEED),
    "atol": Param((float, dict), 1e-5, help="absolute tolerance, or {output: tol, '': default}"),
    "rtol": Param((float, dict), 1e-5, help="relative tolerance, or {output: tol, '': default}"),
    "error_stat": Param((str, dict), "elemwise", choices=("elemwise", "max", "mean", "median", "quantile"),
                        help="which error statistic is held to the tolerance, or {output: stat, '': default}"),
    "quantile": Param(float, 0.99, help="the quantile used when error_stat is 'quantile'", minimum=0, maximum=1),
    "each_step": Param(bool, False, help="validate after every step and name the first step that diverges"),
    "report": Param(str, None, help="report path prefix (default: beside the output model)"),
    "runner": Param(str, "auto", choices=("auto", "onnxruntime", "reference"),
                    help="how to run the models: ONNX Runtime, the reference runner, or whichever can"),
}
BUILD_FIELDS: dict[str, Param] = {
    "engine": Param(str, None, help="engine path (default: the output model's path with .engine)"),
    "precision": Param(str, "fp32", choices=("fp32", "fp16", "int8", "best"), help="builder precision flags"),
    "strongly_typed": Param(bool, False, help="build a strongly typed network (TensorRT 9+)"),
    "profiles": Param(list, None, help="optimization profiles: [{input: {min: [...], opt: [...], max: [...]}}]"),
    "workspace": Param((int, str), None, help="workspace limit in bytes or with a unit ('4GiB')"),
    "optimization_level": Param(int, None, help="builder optimization level 0-5"),
    "timing_cache": Param(str, None, help="timing cache file, read and updated"),
    "plugins": Param(list, ["builtin"], items=str, help="plugin libraries to load; 'builtin' is surgeon's"),
    "calibration": Param(dict, None, help="int8 calibration: {data: inputs.npz, cache: file}"),
}
SECTIONS = {"validate": VALIDATE_FIELDS, "build": BUILD_FIELDS}
# Section keys holding paths (build.plugins: a list of them, build.calibration: a mapping of them), resolved
# relative to the recipe file that declares them, in its section or its `set` (`--set` values stay
# relative to the working directory).
_INPUT_PATHS = {"validate": ("expected", "data", "against", "report"),
                "build": ("engine", "timing_cache", "plugins", "calibration")}


@dataclass
class Step:
    """One step: a pass name and its checked parameters."""

    pass_name: str
    params: dict[str, Any]
    label: str | None = None
    file: str | None = None
    line: int | None = None
    #: Where each parameter was last given: (file, mark) of its key in `with` or `set:`, or the `--set KEY`
    #: text, so a value the target refuses (see `_check_for_target`) is blamed where it was written.
    given_at: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def describe(self, index: int) -> str:
        return f"step {index} ({self.label or self.pass_name})"

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_name, "with": dict(self.params), **({"name": self.label} if self.label else {})}


@dataclass
class Recipe:
    name: str
    path: Path | None = None
    description: str = ""
    model: Path | None = None
    target: str = "onnxruntime"
    steps: list[Step] = field(default_factory=list)
    validate: dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    checker: bool = True
    sha256: str = ""
    files: list[str] = field(default_factory=list)
    #: Where `target` was given, (file, mark) of its value; None for the default. A value the target refuses
    #: is blamed on it where an `extends` child set it below the value (see `_check_for_target`).
    target_given_at: tuple | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "target": self.target,
                "model": str(self.model) if self.model else None,
                "steps": [s.to_dict() for s in self.steps], "validate": self.validate, "build": self.build}


# ---------------------------------------------------------------- YAML with positions

class _Mapping(dict):
    """A dict that remembers where each key and value stood in the file."""

    file: str | None = None
    mark = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.key_marks: dict[Any, Any] = {}
        self.value_marks: dict[Any, Any] = {}


class _Sequence(list):
    mark = None

    def __init__(self, *args):
        super().__init__(*args)
        self.item_marks: list[Any] = []


# No recipe nests deeper; PyYAML composes nodes recursively, so a deeper value would overflow Python's stack.
MAX_NESTING = 100


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise _error(f"nested more than {MAX_NESTING} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_scalar_node(self, anchor):
        node = super().compose_scalar_node(anchor)
        if node.style is None:  # plain: a quoted scalar is text in every YAML version
            ambiguity = _version_dependent_number(node.value)
            if ambiguity:
                message, hint = ambiguity
                raise _error(message, node.start_mark, hint)
        return node


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Mapping:
    written = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # puts the pairs of `<<: *anchor` first, then the keys written here
    merged = len(node.value) - written
    mapping = _Mapping()
    mapping.mark = node.start_mark
    written_keys = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        # A key written here replaces a merged one (YAML merge semantics); written twice, it is a mistake.
        if index >= merged:
            if key in written_keys:
                raise RecipeError(f"duplicate key '{key}'", file=key_node.start_mark.name,
                                  line=key_node.start_mark.line + 1, column=key_node.start_mark.column + 1)
            written_keys.add(key)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_marks[key] = key_node.start_mark
        mapping.value_marks[key] = value_node.start_mark
    return mapping


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _Sequence:
    seq = _Sequence(loader.construct_object(child, deep=True) for child in node.value)
    seq.mark = node.start_mark
    seq.item_marks = [child.start_mark for child in node.value]
    return seq


# YAML 1.1 (PyYAML) reads `1e-3` as a string; tolerances are written that way, so accept it as a float.
# Base-60 numbers (`1:30`) are not read: see _version_dependent_number.
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_YAML_INT = re.compile(r"""^(?:
    [-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""", re.X)
_YAML_FLOAT = re.compile(r"""^(?:
    [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9]+[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_INT_TAG, _YAML_INT, list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _YAML_FLOAT, list("-+0123456789."))
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


# Plain numbers that YAML 1.1 (PyYAML, which reads recipes) and YAML 1.2 (editors checking a recipe against
# the JSON schema, most other tools) read as different values: `010` is 8 or 10, `0b101`, `1_000` and `1:30`
# are numbers or text. A reader of the recipe misreads one of them either way, so the loader refuses them
# where they stand. (yes/no/on/off stay booleans: docs/recipes.md says why.)
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")
_BINARY = re.compile(r"[-+]?0b[01_]+")
_BASE_60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")
_OCTAL_1_2 = re.compile(r"0o[0-7]+")  # YAML 1.2's octal; text in YAML 1.1
_SIGNED_HEX = re.compile(r"[-+]0x[0-9a-fA-F_]+")  # a number in YAML 1.1; text in 1.2, whose hex has no sign


def _version_dependent_number(text: str) -> tuple[str, str] | None:
    """(message, hint) for a plain scalar whose value depends on the YAML version, else None."""
    if _LEADING_ZERO.fullmatch(text):
        kind, yaml11, yaml12 = "octal ", yaml.safe_load(text), text if "_" in text else int(text, 10)
    elif _BINARY.fullmatch(text):
        kind, yaml11, yaml12 = "binary ", yaml.safe_load(text), text
    elif _BASE_60.fullmatch(text):
        kind, yaml11, yaml12 = "base-60 ", yaml.safe_load(text), text
    elif _OCTAL_1_2.fullmatch(text):
        kind, yaml11, yaml12 = "", text, int(text, 0)
    elif _SIGNED_HEX.fullmatch(text):
        kind, yaml11, yaml12 = "hexadecimal ", int(text.replace("_", ""), 0), text
    elif "_" in text and (_YAML_INT.match(text) or _YAML_FLOAT.match(text)):
        digits = text.replace("_", "")
        kind, yaml11, yaml12 = "", int(digits, 0) if _YAML_INT.match(text) else float(digits), text
    else:
        return None
    if yaml11 == yaml12:  # `007` is 7 and `0:30` text in both
        return None
    numbers = [repr(value) for value in dict.fromkeys((yaml11, yaml12)) if not isinstance(value, str)]
    as_1_1 = "text" if isinstance(yaml11, str) else f"{kind}{yaml11!r}"
    as_1_2 = "text" if isinstance(yaml12, str) else repr(yaml12)
    return (f"ambiguous number `{text}`: {as_1_1} in YAML 1.1 but {as_1_2} in YAML 1.2",
            f"write {' or '.join(numbers)}, or quote it for text")


def _error(message: str, mark=None, hint: str | None = None, file=None, error=RecipeError) -> RecipeError:
    if mark is None:
        return error(message, file=file, hint=hint)
    return error(message, file=file or mark.name, line=mark.line + 1, column=mark.column + 1, hint=hint)


def _key_mark(mapping, key):
    return getattr(mapping, "key_marks", {}).get(key) or getattr(mapping, "mark", None)


def _value_mark(mapping, key):
    return getattr(mapping, "value_marks", {}).get(key) or getattr(mapping, "mark", None)


class UnreadableRecipe(RecipeError):
    """A recipe file that cannot be read as text (missing, unreadable, not UTF-8): `surgeon check` says SG000."""


def _read_yaml(path: Path) -> _Mapping:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UnreadableRecipe("recipe file not found", file=path) from None
    except OSError as exc:
        raise UnreadableRecipe(f"cannot read recipe: {exc.strerror}", file=path) from None
    data = load_yaml_text(decode_text(raw, path, "recipe", UnreadableRecipe), path, _Loader, RecipeError)
    if data is None:
        raise RecipeError("recipe is empty", file=path)
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping of keys (name, target, steps, ...)", file=path, line=1)
    return data


def decode_text(raw: bytes, file, what: str, error=RecipeError) -> str:
    """The text of a YAML file: UTF-8 (a BOM allowed), or UTF-16 with a BOM, as YAML allows; anything else
    raises `error` naming the file, and for UTF-8 the line and column of the first byte that is not."""
    encoding = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        if encoding == "utf-16":
            raise error(f"{what} is not valid UTF-16 text: the bytes at offset {exc.start} cannot be decoded "
                        f"({exc.reason})", file=file, hint="save it as UTF-8") from None
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        raise error(f"{what} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start} cannot be decoded",
                    file=file, line=raw.count(b"\n", 0, exc.start) + 1, column=exc.start - line_start + 1,
                    hint="save it as UTF-8") from None


def load_yaml_text(text: str, file, loader_class=yaml.SafeLoader, error=RecipeError):
    """Parse `text` with `loader_class`, its marks naming `file`; bad YAML raises one-line `error` at file:line:col."""
    loader = None
    try:
        loader = loader_class(text)  # the pure-Python reader checks for control characters here
        loader.name = str(file)  # marks carry the reader's name, "<unicode string>" for text
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise _error(f"not valid YAML: {exc.problem or exc.context}", mark, file=file, error=error) from None
    except yaml.reader.ReaderError as exc:  # a control character: the reader says where in characters
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise error(f"not valid YAML: unacceptable character {char}: {exc.reason}", file=file, line=line,
                    column=column) from None
    except yaml.YAMLError as exc:
        raise error(f"not valid YAML: {' '.join(str(exc).split())}", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()


# ---------------------------------------------------------------- loading

def find_recipe(name_or_path) -> Path:
    """A recipe path as given, or the name of a shipped recipe (`bevformer-tiny`, `targets/opset11`)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    return _shipped_recipe(name_or_path)


def _shipped_recipe(name) -> Path:
    """The shipped recipe called `name` (`targets/opset11`, with or without .yaml): a name below the shipped
    folder, never a path out of it (`../`, `/etc/...`)."""
    shipped = shipped_dir("recipes")
    parts = str(name).split("/")
    if all(part not in ("", ".", "..") and "\\" not in part for part in parts):
        for candidate in (shipped / name, shipped / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    known = sorted(str(p.relative_to(shipped).with_suffix("")) for p in shipped.rglob("*.yaml"))
    raise RecipeError(f"recipe not found: {name}", hint=suggest(str(name), known))


def load_recipe(source, overrides=(), model=None, *, plugins_looked_at: str | None = None) -> Recipe:
    """Load and check a recipe file (or a dict); apply `--set` style overrides; optionally replace the model.

    `plugins_looked_at`: what a command made of pyproject.toml's plugins, in words, for the hint of an unknown
    pass (`registry.unknown_pass_hint`); None where the caller read no pyproject.toml."""
    path = None if isinstance(source, dict) else find_recipe(source)
    chain = _chain(source, None, ()) if path is None else _chain(_read_yaml(path), path, ())
    recipe = _build(chain, path, plugins_looked_at)
    recipe.files = [str(file) for _, file in chain if file is not None]
    recipe.sha256 = _sha256(chain, overrides)
    for override in overrides:
        apply_override(recipe, override)
    _check_for_target(recipe, [file for _, file in chain])
    if recipe.build:  # the section as written was checked with its marks; `set:` and --set may have changed it
        from surgeon.build import check_build_combination
        from surgeon.errors import SurgeonError

        try:
            check_build_combination(recipe.build)
        except SurgeonError as exc:
            raise RecipeError(exc.message, file=path) from None
    if model is not None:
        recipe.model = Path(model)
    return recipe


def _check_for_target(recipe: Recipe, levels: list) -> None:
    """Refuse a parameter the recipe's target cannot run (clip-int mode cast on TensorRT) at the place that gave
    its final value, now that every level, `set:` and `--set` has spoken, before any model is read. Where a level
    below that place set the target (an `extends` child's `target:`, `levels`: the chain's files, outermost parent
    first; None: a recipe given as a dict, always the last), the change of target caused the refusal: it is
    blamed there, naming where the value was given."""
    from surgeon.targets import load_target

    target = load_target(recipe.target)
    for index, step in enumerate(recipe.steps, start=1):
        cls = get_pass(step.pass_name)
        try:
            cls.check_params_for(step.params, target)
        except ParamError as exc:
            message = f"{step.describe(index)}: {exc.message}"
            given = step.given_at.get(exc.param)
            if isinstance(given, str):  # --set
                raise RecipeError(f"{given}: {message}", hint=exc.hint) from None
            if given is None:  # the default: the step itself is where to change it
                file, line, column = Path(step.file) if step.file else None, step.line, None
                value_is = f"keeps its default (the step is at {file}:{line})"
            else:
                file, mark = given
                line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
                value_is = f"is set at {file}:{line}"
            if recipe.target_given_at and levels.index(recipe.target_given_at[0]) > levels.index(file):
                target_file, target_mark = recipe.target_given_at
                raise _error(f"target '{target.name}' refuses {step.describe(index)}, whose '{exc.param}' "
                             f"{value_is}: {exc.message}", target_mark, exc.hint, file=target_file) from None
            raise RecipeError(message, file=file, line=line, column=column, hint=exc.hint) from None
        except Exception as exc:  # a bug in a pass's own check (a plugin's): where, not an internal error
            defined_in = getattr(sys.modules.get(cls.__module__), "__file__", None) or cls.__module__
            raise RecipeError(f"{step.describe(index)}: the pass's check_params_for failed: "
                              f"{type(exc).__name__}: {exc} (in {defined_in})", file=step.file,
                              line=step.line) from exc


def _sha256(chain: list, overrides) -> str:
    """What the recipe is made of, hashed: the file's bytes (`sha256sum` of it); with `extends` or overrides,
    each file's (outermost parent first) and the overrides, so a change in any of them changes the hash."""
    parts = [file.read_bytes() if file is not None else json.dumps(data, sort_keys=True, default=str).encode()
             for data, file in chain]
    if len(parts) == 1 and not overrides:
        return hashlib.sha256(parts[0]).hexdigest()
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    digest.update(json.dumps([o if isinstance(o, str) else list(o) for o in overrides], default=str).encode())
    return digest.hexdigest()


def _chain(data: dict, path: Path | None, seen: tuple) -> list[tuple[dict, Path | None]]:
    """Resolve `extends` recursively: the (mapping, file) of every level, outermost parent first.

    A parent is a file relative to the folder of the recipe naming it, else a shipped recipe by name; never
    a file of the working directory, which would make the recipe mean different things in different places."""
    _check_keys(data, TOP_LEVEL_KEYS, "recipe", path)
    parent_name = data.get("extends")
    if parent_name is None:
        return [(data, path)]
    if not isinstance(parent_name, str):
        raise _error("'extends' must be the path of another recipe", _value_mark(data, "extends"), file=path)
    base_dir = path.parent if path is not None else Path.cwd()
    parent_path = _join(base_dir, parent_name)
    if parent_path.is_dir():
        raise _error(f"'extends' names a folder, not a recipe file: {parent_path}", _value_mark(data, "extends"),
                     file=path)
    if not parent_path.exists():
        try:  # a shipped recipe by name, e.g. `extends: targets/tensorrt-8.6`
            parent_path = _shipped_recipe(parent_name)
        except RecipeError as exc:
            raise _error(f"extended recipe not found: {parent_name} (neither in {base_dir} nor a shipped recipe)",
                         _value_mark(data, "extends"), exc.hint, file=path) from None
    resolved = parent_path.resolve()
    if resolved in seen or (path is not None and resolved == path.resolve()):
        raise _error(f"recipe extends itself through {parent_name}", _value_mark(data, "extends"), file=path)
    return _chain(_read_yaml(parent_path), parent_path,
                  seen + ((path.resolve(),) if path else ()) + (resolved,)) + [(data, path)]


def _merge(chain: list) -> dict:
    """Map each top-level key to the [(mapping, file)] that set it, outermost parent first: a child replaces its
    parent's entry, except for the keys that accumulate (ACCUMULATING)."""
    merged: dict[str, list] = {}
    for data, path in chain:
        for key in data:
            merged[key] = merged.get(key, []) + [(data, path)] if key in ACCUMULATING else [(data, path)]
    return merged


def _check_keys(mapping, allowed, what: str, path, extra: str = "") -> None:
    for key in mapping:
        if key not in allowed:
            raise _error(f"unknown key '{key}' in {what}{extra}", _key_mark(mapping, key),
                         hint=suggest(key, allowed) or f"allowed: {', '.join(allowed)}", file=path)


def _build(chain: list, path: Path | None, plugins_looked_at: str | None) -> Recipe:
    merged = _merge(chain)

    def value(key, default=None):
        if key not in merged:
            return default, None, None
        mapping, file = merged[key][-1]
        return mapping[key], mapping, file

    top, _ = chain[-1]  # the name is the recipe's own, not its parent's: default, the file name
    recipe = Recipe(name=_check_name(top, path), path=path)
    description, mapping, file = value("description", "")
    if not isinstance(description, (str, type(None))):
        raise _error("'description' must be text", _value_mark(mapping, "description"), file=file)
    recipe.description = description or ""
    target, mapping, file = value("target", "onnxruntime")
    if not isinstance(target, str):
        raise _error("'target' must be a target name such as 'tensorrt-8.6'", _value_mark(mapping, "target"), file=file)
    recipe.target = _resolve_target(target, mapping, file)
    recipe.target_given_at = (file, _value_mark(mapping, "target")) if mapping is not None else None
    checker, mapping, file = value("checker", True)
    if not isinstance(checker, bool):
        raise _error("'checker' must be true or false", _value_mark(mapping, "checker"), file=file)
    recipe.checker = checker
    model, mapping, file = value("model")
    if model is not None:
        if not isinstance(model, str):
            raise _error("'model' must be a path", _value_mark(mapping, "model"), file=file)
        recipe.model = _join(file.parent if file else Path.cwd(), model)

    parsed: dict = {}
    recipe.steps = _chain_steps(merged, parsed, plugins_looked_at)

    # Each level's `set` edits that level's own view of the recipe, as if written in its file, before the
    # levels below it replace what they write: its step 2 is its own step 2 (whatever a child prepends), and
    # it changes a section as that level sees it, so a child's section (or its empty one) replaces the
    # result, the way it replaces a section its parent wrote.
    for depth, (mapping, file) in enumerate(chain, start=1):
        for section, fields in SECTIONS.items():
            if section in mapping:
                body = mapping[section]
                checked = None if body is None else _parse_section(section, body, mapping, file, fields)
                setattr(recipe, section, checked)
        if "set" not in mapping:
            continue
        sets = mapping["set"]
        if not isinstance(sets, dict):
            raise _error("'set' must map STEP.PARAM to a value", _value_mark(mapping, "set"), file=file)
        own_steps = (_chain_steps(_merge(chain[:depth]), parsed, plugins_looked_at) if depth < len(chain)
                     else recipe.steps)
        for key, val in sets.items():
            try:
                step = apply_override(recipe, (str(key), val), steps=own_steps,
                                      base=file.parent if file else None, source="set",
                                      given_at=(file, _key_mark(sets, key)))
            except RecipeError as exc:
                raise _error(exc.message, _key_mark(sets, key), exc.hint, file=file) from None
            if step is not None and not any(step is kept for kept in recipe.steps):
                _, replaced_by = merged["steps"][-1]
                raise _error(f"set {key}: its step ({step.label or step.pass_name}, {step.file}:{step.line}) is "
                             f"not in the recipe: {replaced_by} replaces the steps", _key_mark(sets, key),
                             "add your steps with prepend_steps or append_steps instead of replacing them, "
                             "extend a recipe without this set, or copy the steps you need instead of extending",
                             file=file)
    return recipe


# A recipe name, as the loader and the JSON schema check it: a file name (out/NAME.onnx), never a path.
_CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
_CONTROL_CHARACTER = re.compile(f"[{_CONTROL_CHARACTERS}]")
_PLAIN_NAME = re.compile(rf"(?!\.\.?$)[^/\\{_CONTROL_CHARACTERS}]+")


def _check_name(top: dict, path: Path | None) -> str:
    """The recipe's `name`, which names its default output (out/NAME.onnx): a file name, never a path."""
    name = top.get("name")
    if name is None:
        return path.stem if path else "recipe"
    if not isinstance(name, str):
        raise _error("'name' must be a string", _value_mark(top, "name"), file=path)
    if _CONTROL_CHARACTER.search(name):  # a file name cannot hold a NUL, and the others hide in listings
        raise _error(f"'name' must not contain control characters: {name!r}", _value_mark(top, "name"), file=path)
    if not _PLAIN_NAME.fullmatch(name):
        raise _error(f"'name' must be a plain name, not a path: {name!r}", _value_mark(top, "name"),
                     "it names the default output out/NAME.onnx; choose another output with -o", file=path)
    return name


def _chain_steps(merged: dict, parsed: dict, plugins_looked_at: str | None) -> list[Step]:
    """The steps of a (part of a) chain: every level's prepend_steps, the nearest level's steps, every level's
    append_steps. `parsed` keeps each list parsed once, so every part of the chain shares its Step objects."""
    def steps_of(key: str, mapping, file) -> list[Step]:
        if id(mapping) not in parsed.setdefault(key, {}):
            parsed[key][id(mapping)] = _parse_steps(mapping, key, file, plugins_looked_at)
        return parsed[key][id(mapping)]

    steps: list[Step] = []
    for mapping, file in merged.get("prepend_steps", []):
        steps += steps_of("prepend_steps", mapping, file)
    if "steps" in merged:
        steps += steps_of("steps", *merged["steps"][-1])
    for mapping, file in merged.get("append_steps", []):
        steps += steps_of("append_steps", mapping, file)
    return steps


def _resolve_target(target: str, mapping, file) -> str:
    """The recipe's target: a built-in name, or a profile file relative to the recipe file that names it.
    The profile is loaded here, so an unknown name, a missing file or a malformed profile fails at load time."""
    from surgeon.errors import SurgeonError
    from surgeon.targets import load_target, resolve_target

    mark = _value_mark(mapping, "target")
    try:
        resolved = resolve_target(target, file.parent if file is not None else None)
    except SurgeonError as exc:
        raise _error(exc.message, mark, exc.hint, file=file) from None
    try:
        load_target(resolved)
    except SurgeonError as exc:  # a problem inside the profile: its file:line, and the recipe line naming it
        named_at = f" (the target of {file}:{mark.line + 1})" if file is not None and mark is not None else ""
        raise RecipeError(exc.message + named_at, file=exc.file, line=exc.line, column=exc.column,
                          hint=exc.hint) from None
    return resolved


def _parse_steps(mapping, key: str, file, plugins_looked_at: str | None) -> list[Step]:
    raw = mapping[key]
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _error(f"'{key}' must be a list of steps (- pass: NAME)", _value_mark(mapping, key), file=file)
    passes = discover()
    steps = []
    marks = getattr(raw, "item_marks", [None] * len(raw))
    for i, (item, mark) in enumerate(zip(raw, marks), start=1):
        where = f" ({key} item {i})"
        if not isinstance(item, dict):
            raise _error(f"a step must be a mapping like '- pass: cleanup'{where}", mark, file=file)
        _check_keys(item, STEP_KEYS, "step", file, where)
        if "pass" not in item:
            raise _error(f"step has no 'pass'{where}", getattr(item, "mark", mark), file=file)
        name = item["pass"]
        if not isinstance(name, str) or name not in passes:
            raise _error(f"unknown pass '{name}'{where}", _value_mark(item, "pass"),
                         hint=unknown_pass_hint(str(name), passes, plugins_looked_at), file=file)
        params = item.get("with") or {}
        if not isinstance(params, dict):
            raise _error(f"'with' must map parameter names to values{where}", _value_mark(item, "with"), file=file)
        try:
            checked = passes[name].check_params(dict(params))
        except ParamError as exc:
            at = _key_mark(params, exc.param) if exc.param in params else _key_mark(item, "with")
            raise _error(f"{exc.message}{where}", at, exc.hint, file=file) from None
        label = item.get("name")
        if label is not None and (not isinstance(label, str) or label.isdigit()):
            # `--set 3.mode=...` means step number 3: a label of digits could never be addressed
            raise _error(f"a step's 'name' must be a label, not a number: got {label!r}{where}",
                         _value_mark(item, "name"), "STEP in --set and set: is a number, a label or a pass name",
                         file=file)
        mark = getattr(item, "mark", mark)
        steps.append(Step(name, checked, label=label, file=str(file) if file else None,
                          line=mark.line + 1 if mark else None,
                          given_at={key: (file, _key_mark(params, key)) for key in params}))
    return steps


def _coerce_field(section: str, key: str, value) -> Any:
    """`value` as `section.key`: of its declared type and one the stage can use (validate: no NaN or negative
    tolerance, a quantile in [0, 1], ...: surgeon.validation.settings; build: sizes, profiles, levels
    TensorRT takes: surgeon.build); ValueError says why."""
    value = SECTIONS[section][key].coerce(value)
    if section == "validate":
        from surgeon.validation.settings import check_validate_value

        check_validate_value(key, value)
    else:
        from surgeon.build import check_build_value

        check_build_value(key, value)
    return value


def _parse_section(section: str, body, mapping, file, fields: dict[str, Param]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _error(f"'{section}' must be a mapping", _value_mark(mapping, section), file=file)
    _check_keys(body, tuple(fields), f"the {section} section", file)
    checked = {}
    for key, param in fields.items():
        if key not in body:
            checked[key] = param.default
            continue
        try:
            checked[key] = _coerce_field(section, key, body[key])
        except ValueError as exc:
            raise _error(f"{section}.{key}: {exc}", _value_mark(body, key), getattr(exc, "hint", None),
                         file=file) from None
    base = file.parent if file else Path.cwd()
    for key in _INPUT_PATHS.get(section, ()):
        checked[key] = _relative_to(base, section, key, checked[key])
    if section == "build":
        from surgeon.build import check_build_combination
        from surgeon.errors import SurgeonError

        try:
            check_build_combination(checked)
        except SurgeonError as exc:
            blamed = "strongly_typed" if "strongly_typed" in body else "precision"
            raise _error(exc.message, _value_mark(body, blamed), file=file) from None
    return checked


def _relative_to(base: Path, section: str, key: str, value):
    """`section.key` = `value` as a recipe file in folder `base` wrote it: a path in it is joined to `base`."""
    if key not in _INPUT_PATHS.get(section, ()):
        return value
    if section == "build" and key == "plugins" and isinstance(value, list):
        return [path if path == "builtin" else str(_join(base, path)) for path in value]
    if section == "build" and key == "calibration" and isinstance(value, dict):
        return {name: str(_join(base, path)) for name, path in value.items()}
    if not isinstance(value, str):
        return value
    if section == "validate" and key == "against" and value in ("original", "none"):
        return value
    return str(_join(base, value))


def _join(base: Path, relative: str) -> Path:
    """`relative` read from a recipe in folder `base`, without `dir/../` detours in messages."""
    return Path(os.path.normpath(base / relative))


# ---------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[str, Any]:
    """`STEP.PARAM=VALUE` from the command line; VALUE is read as a YAML scalar (1e-3, true, [1,2])."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise RecipeError(f"--set expects STEP.PARAM=VALUE, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except RecipeError as exc:  # an ambiguous number, a duplicate key, deep nesting: its position in VALUE says little
        shown = text if len(text) <= 80 else text[:60] + "..."  # a value nested too deep runs to thousands
        raise RecipeError(f"--set {shown}: {exc.message}", hint=exc.hint) from None
    return key, value


def apply_override(recipe: Recipe, override, steps: list[Step] | None = None, base: Path | None = None,
                   source: str = "--set", given_at=None) -> Step | None:
    """Set one parameter: `STEP.PARAM` where STEP is a 1-based index, a step name or a pass name in `steps`
    (default: the recipe's), or `validate.KEY` / `build.KEY`; return the step changed (None: a section).

    A recipe's own `set` gives the folder of its file as `base`: paths in sections are relative to it.
    `source` is how messages call the override (`--set`, or a recipe's `set`); `given_at` is where a recipe's
    `set` wrote it, (file, mark), recorded in the step's `given_at` (default: the `--set KEY` text)."""
    key, value = parse_override(override) if isinstance(override, str) else override
    if "." not in key:
        raise RecipeError(f"{source} {key}: expected STEP.PARAM, such as 2.mode or validate.atol")
    step_ref, param = key.rsplit(".", 1)
    if step_ref in SECTIONS:
        fields = SECTIONS[step_ref]
        if param not in fields:
            raise RecipeError(f"unknown key '{param}' in the {step_ref} section", hint=suggest(param, fields))
        section = getattr(recipe, step_ref) or {k: p.default for k, p in fields.items()}
        try:
            section[param] = _coerce_field(step_ref, param, value)
        except ValueError as exc:
            raise RecipeError(f"{step_ref}.{param}: {exc}", hint=getattr(exc, "hint", None)) from None
        if base is not None:
            section[param] = _relative_to(base, step_ref, param, section[param])
        setattr(recipe, step_ref, section)
        return None
    step = _find_step(recipe.steps if steps is None else steps, step_ref)
    cls = get_pass(step.pass_name)
    try:
        step.params = cls.check_params({**step.params, param: value})
    except ParamError as exc:
        raise RecipeError(f"{source} {key}: {exc.message}", hint=exc.hint) from None
    step.given_at[param] = given_at or f"{source} {key}"
    return step


def _find_step(steps: list[Step], ref: str) -> Step:
    if ref.isdigit():
        index = int(ref)
        if not 1 <= index <= len(steps):
            raise RecipeError(f"step {index} does not exist: the recipe has {len(steps)} step(s), numbered from 1")
        return steps[index - 1]
    by_label = [s for s in steps if s.label == ref]
    if by_label:
        return by_label[0]
    by_pass = [(i, s) for i, s in enumerate(steps, 1) if s.pass_name == ref]
    if len(by_pass) == 1:
        return by_pass[0][1]
    if len(by_pass) > 1:
        raise RecipeError(f"pass '{ref}' is used by steps {', '.join(str(i) for i, _ in by_pass)}; "
                          f"address one by its number, e.g. {by_pass[0][0]}.PARAM")
    names = [s.label or s.pass_name for s in steps]
    raise RecipeError(f"no step named '{ref}' in the recipe", hint=suggest(ref, names + list(SECTIONS)))


def json_schema(builtin_only: bool = False) -> dict[str, Any]:
    """A JSON Schema of recipes (for editors), generated from the declared passes and sections.

    `builtin_only` leaves out passes that plugin files or other packages registered.
    """
    passes = discover()
    if builtin_only:
        passes = {n: c for n, c in passes.items() if c.__module__.startswith(f"{BUILTIN_PACKAGE}.")}

    def param_schema(p: Param) -> dict[str, Any]:
        types = p.type if isinstance(p.type, tuple) else (p.type,)
        names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}
        schema: dict[str, Any] = {"description": p.help}
        schema["type"] = [names[t] for t in types] + (["null"] if p.default is None or p.nullable else [])
        if len(schema["type"]) == 1:
            schema["type"] = schema["type"][0]
        if p.choices and "object" in schema["type"]:
            schema["anyOf"] = [{"enum": list(p.choices)},
                               {"type": "object", "additionalProperties": {"enum": list(p.choices)}}]
        elif p.choices:
            schema["enum"] = list(p.choices)
        if p.items is not None and p.type is list:
            schema["items"] = {"type": names[p.items]}
        elif p.items is not None and p.type is dict and not p.choices:
            schema["additionalProperties"] = {"type": names[p.items]}
        if p.default is not None and not p.required:
            schema["default"] = p.default
        if p.minimum is not None:
            schema["minimum"] = p.minimum
        if p.maximum is not None:
            schema["maximum"] = p.maximum
        return schema

    step_variants = []
    for name, cls in sorted(passes.items()):
        required = [k for k, p in cls.params.items() if p.required]
        with_schema = {"type": "object" if required else ["object", "null"], "additionalProperties": False,
                       "properties": {k: param_schema(p) for k, p in cls.params.items()}, "required": required}
        step_variants.append({"if": {"properties": {"pass": {"const": name}}},
                              "then": {"properties": {"with": with_schema}, "required": ["with"] if required else []}})
    step = {"type": "object", "additionalProperties": False, "required": ["pass"],
            "properties": {"pass": {"enum": sorted(passes)}, "with": {"type": ["object", "null"]},
                           "name": {"type": "string", "pattern": "[^0-9]",
                                    "description": "a label for --set and set: (a number means the step's position)"}},
            "allOf": step_variants}
    steps = {"type": ["array", "null"], "items": {"$ref": "#/$defs/step"}}
    section = lambda fields: {"type": ["object", "null"], "additionalProperties": False,  # noqa: E731
                              "properties": {k: param_schema(p) for k, p in fields.items()}}
    from surgeon.targets import available_targets

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/surgeon/surgeon/docs/recipe.schema.json",
        "title": "surgeon recipe", "type": "object", "additionalProperties": False,
        "properties": {
            "name": {"type": ["string", "null"], "pattern": f"^{_PLAIN_NAME.pattern}$",
                     "description": "the recipe's name (default: the file's), its default output out/NAME.onnx"},
            "description": {"type": ["string", "null"]},
            "model": {"type": ["string", "null"], "description": "model path, relative to the recipe file"},
            "target": {"type": "string", "examples": available_targets(),
                       "description": "a built-in target, or a profile file (.yaml) relative to the recipe file"},
            "extends": {"type": "string", "description": "path of a recipe to inherit from"},
            "steps": steps, "prepend_steps": steps, "append_steps": steps,
            "set": {"type": "object", "description": "STEP.PARAM: VALUE overrides"},
            "checker": {"type": "boolean"},
            "validate": section(VALIDATE_FIELDS), "build": section(BUILD_FIELDS),
        },
        "$defs": {"step": step},
    }

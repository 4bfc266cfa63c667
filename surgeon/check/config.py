"""`[tool.surgeon]` in the nearest pyproject.toml (searched upward from the working directory).

    [tool.surgeon]
    target = "tensorrt-8.6"          # default target of `surgeon check` (a profile file: relative to pyproject.toml)
    ignore = ["SG011"]               # rule ids never reported
    select = ["SG0"]                 # only these rule ids (prefixes allowed), per family: SR rules still run
    static-shapes = true             # report dynamic input dims (SG006) whatever the target says
    max-initializer-mb = 256         # SG013 threshold
    plugins = ["tools/passes.py"]    # pass files recipes use (as `--plugin`), relative to pyproject.toml

    [[tool.surgeon.overrides]]       # later entries win; paths are globs relative to pyproject.toml
    files = ["models/legacy/*.onnx"]
    target = "onnxruntime"
    ignore = ["SG007"]

`surgeon check` reads all of it (`load_config`). The other commands read only `plugins` (`project_plugins`),
and skip a pyproject.toml that is not surgeon's to read: it may belong to the project around the model.
"""
from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from surgeon.errors import SurgeonError, first_line, suggest

UNREADABLE_FILE_ID = "SG000"  # findings.UNREADABLE_FILE: never filtered out
SETTING_KEYS = ("target", "select", "ignore", "static-shapes", "max-initializer-mb")
_LIST_KEYS = ("select", "ignore")
SIZE_LIMIT = "a finite number of MiB, 0 or more"  # what `max-initializer-mb` takes
SKIP_HINT = "--no-config skips pyproject.toml"  # in every error of the file's: it may be another project's


def is_size_limit(value) -> bool:
    """Whether `value` is a `max-initializer-mb`: NaN would turn SG013 off without a word, and a negative
    limit flags every initializer."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@dataclass(frozen=True)
class Settings:
    """Check settings for one file: target, rule filters and rule options."""

    target: str | None = None
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    static_shapes: bool | None = None
    max_initializer_mb: float = 512.0

    def __post_init__(self):
        """`select`/`ignore` checked as the command line and pyproject.toml check them: a string would be
        taken as one prefix per character (`ignore="SG007"` would ignore every rule), a typo would select
        or ignore nothing."""
        for key in _LIST_KEYS:
            ids = getattr(self, key)
            if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
                raise SurgeonError(f"Settings: '{key}' must be a list or tuple of rule ids, got {ids!r}",
                                   hint=f"e.g. {key}=(\"SG007\",)")
            check_rule_ids(ids, f"Settings: '{key}'")
            object.__setattr__(self, key, tuple(ids))

    def wants(self, rule_id: str) -> bool:
        """Whether findings of `rule_id` are reported. SG000 (an unreadable file) always is. `select`
        restricts each rule family on its own: its SG… entries choose among the model rules, its SR…
        entries among the recipe rules, and a family it has no entry for (`select = ["SG0"]`: the
        recipe rules) is not restricted; `S` selects both."""
        if rule_id == UNREADABLE_FILE_ID:
            return True
        family = rule_id[:2]
        chosen = [prefix for prefix in self.select if prefix[:2] == family or family.startswith(prefix)]
        if chosen and not any(rule_id.startswith(prefix) for prefix in chosen):
            return False
        return not any(rule_id.startswith(prefix) for prefix in self.ignore)


@dataclass(frozen=True)
class Config:
    """The settings of a pyproject.toml (or the defaults when there is none)."""

    base: Settings = field(default_factory=Settings)
    overrides: tuple[tuple[tuple[str, ...], dict], ...] = ()
    root: Path | None = None
    source: Path | None = None
    plugins: tuple[Path, ...] = ()

    def for_file(self, path) -> Settings:
        settings = self.base
        if self.root is None:
            return settings
        try:
            relative = Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return settings
        for patterns, values in self.overrides:
            if any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
                settings = replace(settings, **values)
        return settings


def find_pyproject(start=None) -> Path | None:
    folder = Path(start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate / "pyproject.toml"
    return None


def load_config(start=None) -> Config:
    """The `[tool.surgeon]` settings of the nearest pyproject.toml (`surgeon check`'s configuration): a file it
    cannot read, or unknown keys, are errors naming the file."""
    path = find_pyproject(start)
    if path is None:
        return Config()
    with _naming_no_config():
        table = _surgeon_table(path)
        if table is None:
            return Config(source=path)
        overrides = []
        for index, entry in enumerate(table.get("overrides") or (), start=1):
            where = f"[[tool.surgeon.overrides]] entry {index}"
            if not isinstance(entry, dict) or not isinstance(entry.get("files"), list) or not entry["files"]:
                raise SurgeonError(f"{where} needs files = [\"glob\", ...]", file=path)
            values = _settings_values({k: v for k, v in entry.items() if k != "files"}, path, where)
            overrides.append((tuple(map(str, entry["files"])), values))
        base = _settings_values({k: v for k, v in table.items() if k not in ("overrides", "plugins")}, path,
                                "[tool.surgeon]")
        return Config(base=Settings(**base), overrides=tuple(overrides), root=path.parent, source=path,
                      plugins=_plugin_files(table.get("plugins", []), path))


@dataclass(frozen=True)
class ProjectPlugins:
    """The plugin files `[tool.surgeon] plugins` lists, and what was found where, in words (`looked_at`: an
    unknown pass is often a plugin file that was not loaded, so the error says which pyproject.toml was read)."""

    files: tuple[Path, ...]
    looked_at: str
    #: A pyproject.toml that mentions [tool.surgeon] but was skipped as unreadable: a typo there would
    #: otherwise hide the user's passes and references behind errors that never name the file.
    skipped_ours: bool = False


def project_plugins(start=None) -> ProjectPlugins:
    """`[tool.surgeon] plugins` of the nearest pyproject.toml, for the commands other than `check`, which read
    nothing else of it. A pyproject.toml they cannot read as surgeon's (not TOML, not UTF-8, no [tool.surgeon]
    table) is skipped: it may be another project's, and its settings are `check`'s to report. A wrong
    `plugins` value in a readable [tool.surgeon] is an error naming the file."""
    path = find_pyproject(start)
    if path is None:
        return ProjectPlugins((), f"no pyproject.toml in {Path(start or Path.cwd()).resolve()} or above")
    try:
        table = _surgeon_table(path)
    except SurgeonError as exc:
        return ProjectPlugins((), f"{path} skipped, {exc.message}", skipped_ours=_mentions_surgeon(path))
    if table is None:
        return ProjectPlugins((), f"{path} has no [tool.surgeon] table")
    with _naming_no_config():
        files = _plugin_files(table.get("plugins", []), path)
    return ProjectPlugins(files, f"{path} lists {', '.join(table.get('plugins', [])) or 'no plugins'}")


def _mentions_surgeon(path: Path) -> bool:
    try:
        return b"tool.surgeon" in path.read_bytes()
    except OSError:
        return False


@contextmanager
def _naming_no_config():
    """An error in pyproject.toml also says how to go on without the file: it may be another project's."""
    try:
        yield
    except SurgeonError as exc:
        exc.hint = f"{exc.hint}; {SKIP_HINT}" if exc.hint else SKIP_HINT
        raise


def _surgeon_table(path: Path) -> dict | None:
    """The `[tool.surgeon]` table of `path`, None when it has none; a file that is no UTF-8 TOML, or a `tool`
    or `tool.surgeon` that is no table, is a SurgeonError naming the file."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise SurgeonError(f"cannot be read: {exc.strerror or first_line(exc)}", file=path) from None
    except UnicodeDecodeError as exc:
        raise SurgeonError(f"not UTF-8 text (byte {exc.start}), as TOML must be", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise SurgeonError(f"not valid TOML: {exc}", file=path) from None
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise SurgeonError("'tool' must be a table ([tool.surgeon] holds surgeon's settings)", file=path,
                           line=_line_of(path, r"\s*tool\s*="))
    table = tool.get("surgeon")
    if table is not None and not isinstance(table, dict):
        raise SurgeonError("'tool.surgeon' must be a table ([tool.surgeon] holds surgeon's settings)", file=path,
                           line=_line_of(path, r"\s*(tool\.)?surgeon\s*="))
    return table


def _line_of(path: Path, pattern: str) -> int | None:
    """The number of the first line of `path` that `pattern` matches at its start (an error's location):
    within a `[tool.surgeon...]` section where one matches (another tool's `plugins =` may come first), else
    anywhere."""
    section, anywhere = "", None
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        header = re.match(r"\s*\[\[?\s*([^\]]+?)\s*\]", text)
        if header:
            section = header.group(1)
        elif re.match(pattern, text):
            if section == "tool.surgeon" or section.startswith("tool.surgeon."):
                return number
            anywhere = anywhere or number
    return anywhere


def _plugin_files(value, path: Path) -> tuple[Path, ...]:
    """`plugins = [...]`: pass files, relative to the pyproject's folder; each must exist."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SurgeonError("[tool.surgeon]: 'plugins' must be a list of Python file paths", file=path,
                           line=_line_of(path, r"\s*plugins\s*="))
    files = tuple(path.parent / v for v in value)
    for name, file in zip(value, files):
        if not file.is_file():
            raise SurgeonError(f"[tool.surgeon]: plugin file '{name}' not found (looked at {file})", file=path,
                               line=_line_of(path, f".*{re.escape(name)}"))
    return files


def _settings_values(table: dict, path: Path, where: str) -> dict:
    values = {}
    for key, value in table.items():
        if key not in SETTING_KEYS:
            hint = ("'plugins' belongs in [tool.surgeon] itself: passes are loaded for every file" if key == "plugins"
                    else suggest(key, SETTING_KEYS + ("overrides", "plugins")))
            raise SurgeonError(f"unknown key '{key}' in {where}", file=path, hint=hint)
        attr = key.replace("-", "_")
        if key in _LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SurgeonError(f"{where}: '{key}' must be a list of rule ids", file=path)
            check_rule_ids(value, f"{where}: '{key}'", path)
            value = tuple(value)
        elif key == "static-shapes" and not isinstance(value, bool):
            raise SurgeonError(f"{where}: 'static-shapes' must be true or false", file=path)
        elif key == "max-initializer-mb" and not is_size_limit(value):
            raise SurgeonError(f"{where}: 'max-initializer-mb' must be {SIZE_LIMIT} (got {value!r})", file=path)
        elif key == "target" and not isinstance(value, str):
            raise SurgeonError(f"{where}: 'target' must be a target name such as 'tensorrt-8.6'", file=path)
        elif key == "target":
            value = _target(value, path, where)
        values[attr] = value
    return values


def _target(name: str, path: Path, where: str) -> str:
    """A built-in target name as it is, or a profile file joined to the pyproject's folder, as `plugins` and
    the override globs are (from a subfolder the working directory would miss it). An unknown name or a
    missing file is an error naming the pyproject file and line, not only the name."""
    from surgeon.targets import is_profile_path, load_target, resolve_target

    try:
        if is_profile_path(name):  # its contents are read (and reported) where it is used
            return resolve_target(name, path.parent)
        load_target(name)
        return name
    except SurgeonError as exc:
        line = _line_of(path, rf"\s*target\s*=.*{re.escape(name)}")
        raise SurgeonError(f"{where}: 'target': {exc.message}", file=path, line=line, hint=exc.hint) from None


def check_rule_ids(ids, where: str, path: Path | None = None) -> None:
    """A SurgeonError saying `where` (the option, or the pyproject file `path` and its line) for an id
    or prefix that matches no rule: a typo (`SG0O8`) would otherwise select nothing, or ignore nothing,
    without a word, and an empty one would match every rule."""
    from surgeon.check.findings import all_rules

    known = all_rules()
    for rule_id in ids:
        if not rule_id or not any(k.startswith(rule_id) for k in known):
            line = path and _line_of(path, rf".*[\"']{re.escape(rule_id)}[\"']")
            raise SurgeonError(f"{where}: no rule '{rule_id}'", file=path, line=line,
                               hint=suggest(rule_id, known) or "see `surgeon check --list-rules`")

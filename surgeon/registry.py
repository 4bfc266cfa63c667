"""Finding passes: the built-in ones, those of installed packages, and those in files named by the user.

- Built-in passes are the modules of `surgeon.passes` (the repository's `passes/` folder); each module
  registers its pass with `@register_pass`, so no list is kept by hand.
- Installed packages contribute passes through the `surgeon.passes` entry-point group; each entry
  point names a module (or a Pass class) to import.
- `--plugin FILE` loads a Python file the user names explicitly. A recipe never imports code itself.

A pass name belongs to one file: a second pass of that name, from a plugin file or a package, is an error
naming both files (so a built-in pass is never replaced). Loading the same file again does nothing, also
where it was imported as a module (an installed entry point's) before. surgeon's references are loaded
before a plugin file runs, so a reference of the file's that clashes with one of them is reported as that
file's error.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from importlib import metadata
from pathlib import Path

from surgeon.errors import SurgeonError, suggest
from surgeon.pass_api import BUILTIN_PACKAGE, Pass, registered_passes
from surgeon.reference import load_references

ENTRY_POINT_GROUP = "surgeon.passes"
_discovered = False
#: Top-level package of each loaded entry point's module -> (distribution name, version), so a run records where
#: a third-party pass comes from (`pipeline._pass_origin`) without walking the installed packages again.
_distributions: dict[str, tuple[str, str]] = {}


def shipped_dir(name: str) -> Path:
    """Folder of shipped data (`passes`, `recipes`): inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise SurgeonError(f"surgeon is installed without its '{name}' folder (looked in {here} and {here.parent})")


def _builtin_package():
    try:
        return importlib.import_module(BUILTIN_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != BUILTIN_PACKAGE:
            raise
    # A source checkout used without installing: `passes/` sits beside `surgeon/`.
    folder = shipped_dir("passes")
    spec = importlib.util.spec_from_file_location(BUILTIN_PACKAGE, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[BUILTIN_PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def discover() -> dict[str, type[Pass]]:
    """Import built-in and entry-point passes once; return the registry."""
    global _discovered
    if not _discovered:
        _discovered = True
        package = _builtin_package()
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}")
        load_entry_points()
    return registered_passes()


def load_entry_points() -> list[str]:
    """Import what installed packages declare in the `surgeon.passes` group; return the passes added."""
    before = set(registered_passes())
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            entry.load()
        except (Exception, SystemExit) as exc:  # a broken third-party package must say which one
            raise SurgeonError(f"entry point '{entry.name}' ({entry.value}) of group {ENTRY_POINT_GROUP} "
                               f"failed to load: {type(exc).__name__}: {exc}") from None
        if entry.dist is not None:
            _distributions.setdefault(entry.module.partition(".")[0], (entry.dist.name, entry.dist.version))
    return sorted(set(registered_passes()) - before)


def distribution_of(module: str) -> tuple[str, str] | None:
    """(name, version) of the installed distribution whose `surgeon.passes` entry point brought in `module`'s
    top-level package, or None (a built-in module, a plugin file's)."""
    return _distributions.get(module.partition(".")[0])


def load_plugin_file(path) -> list[str]:
    """Import a user's Python file of passes (and references); return the names of the passes it defines.

    A file already loaded (named by `--plugin` and by `[tool.surgeon] plugins`, say) is not run again."""
    path = Path(path)
    if not path.is_file():
        raise SurgeonError(f"plugin file not found: {path}")
    if path.suffix != ".py":
        raise SurgeonError("a plugin file is Python source ending in .py (TensorRT plugin libraries go in "
                           "the recipe's build.plugins)", file=path)
    discover()
    load_references()
    module_name = _module_imported_from(path.resolve())
    if module_name is None:
        # Named after the file, the same in every process: the same file is the same module.
        module_name = f"surgeon_plugin_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}"
        before = set(registered_passes())
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:  # a file that failed leaves nothing behind: neither module nor passes
            del sys.modules[module_name]
            for name in set(registered_passes()) - before:
                del registered_passes()[name]
            if isinstance(exc, SystemExit):  # else the command would end here, silently, as if it succeeded
                raise SurgeonError(f"plugin file exited during import (sys.exit({exc.code!r}))", file=path) from None
            if isinstance(exc, SurgeonError) or not isinstance(exc, Exception):
                raise
            raise SurgeonError(f"plugin file failed to import: {type(exc).__name__}: {exc}", file=path) from None
    defined = sorted(name for name, cls in registered_passes().items() if cls.__module__ == module_name)
    for name in defined:
        registered_passes()[name].origin = str(path)
    return defined


def _module_imported_from(file: Path) -> str | None:
    """The name of the module already imported from `file` (resolved), or None."""
    for name, module in list(sys.modules.items()):
        loaded = getattr(module, "__file__", None)
        if loaded and Path(loaded).name == file.name and Path(loaded).resolve() == file:
            return name
    return None


def get_pass(name: str, plugins_looked_at: str | None = None) -> type[Pass]:
    """The pass class registered under `name`; a SurgeonError suggests the nearest name otherwise
    (`plugins_looked_at`: see `unknown_pass_hint`)."""
    passes = discover()
    if name not in passes:
        raise SurgeonError(f"unknown pass '{name}'", hint=unknown_pass_hint(name, passes, plugins_looked_at))
    return passes[name]


def unknown_pass_hint(name: str, passes, plugins_looked_at: str | None = None) -> str:
    """The hint of an unknown pass `name`: the nearest of `passes`, and where a pass of the user's own comes from.
    `plugins_looked_at`: what the caller made of pyproject.toml's plugins, in words (`ProjectPlugins.looked_at`),
    given by a command that read it: a pass that is not a typo is mostly one whose file was not loaded (a recipe
    run from outside its project does not find the project's pyproject.toml). None (an API caller, which reads
    no pyproject.toml) adds nothing."""
    close = suggest(name, passes) or "see 'surgeon passes'"
    looked_at = f"; {plugins_looked_at}" if plugins_looked_at else ""
    return f"{close}; a pass of your own needs --plugin FILE or [tool.surgeon] plugins in pyproject.toml{looked_at}"


def passes_handling(label: str) -> list[type[Pass]]:
    """The passes that declare they rewrite nodes with this op label (see `Pass.handles`)."""
    return [cls for _, cls in sorted(discover().items()) if label in cls.handles]

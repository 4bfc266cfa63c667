"""Finding passes: the built-in ones, those of installed packages, and those in files named by the user.

- Built-in passes are the modules of `surgeon.passes` (the repository's `passes/` folder); each module
  registers its pass with `@register_pass`, so no list is kept by hand.
- Installed packages contribute passes through the `surgeon.passes` entry-point group; each entry
  point names a module (or a Pass class) to import.
- `--plugin FILE` loads a Python file the user names explicitly. A recipe never imports code itself.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from importlib import metadata
from pathlib import Path

from surgeon.errors import SurgeonError, suggest
from surgeon.pass_api import Pass, registered_passes

ENTRY_POINT_GROUP = "surgeon.passes"
_SHIPPED_PACKAGE = "surgeon.passes"
_discovered = False


def shipped_dir(name: str) -> Path:
    """Folder of shipped data (`passes`, `recipes`): inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parent / name):
        if candidate.is_dir():
            return candidate
    raise SurgeonError(f"surgeon is installed without its '{name}' folder (looked in {here} and {here.parent})")


def _builtin_package():
    try:
        return importlib.import_module(_SHIPPED_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != _SHIPPED_PACKAGE:
            raise
    # A source checkout used without installing: `passes/` sits beside `surgeon/`.
    folder = shipped_dir("passes")
    spec = importlib.util.spec_from_file_location(_SHIPPED_PACKAGE, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[_SHIPPED_PACKAGE] = module
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
                importlib.import_module(f"{_SHIPPED_PACKAGE}.{info.name}")
        load_entry_points()
    return registered_passes()


def load_entry_points() -> list[str]:
    """Import what installed packages declare in the `surgeon.passes` group; return the passes added."""
    before = set(registered_passes())
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            entry.load()
        except Exception as exc:  # a broken third-party package must say which one
            raise SurgeonError(f"entry point '{entry.name}' ({entry.value}) of group {ENTRY_POINT_GROUP} "
                               f"failed to load: {type(exc).__name__}: {exc}") from None
    return sorted(set(registered_passes()) - before)


def load_plugin_file(path) -> list[str]:
    """Import a user's Python file of passes (and references); return the names of passes it added."""
    path = Path(path)
    if not path.is_file():
        raise SurgeonError(f"plugin file not found: {path}")
    before = set(discover())
    module_name = f"surgeon_plugin_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SurgeonError:
        raise
    except Exception as exc:
        raise SurgeonError(f"plugin file failed to import: {type(exc).__name__}: {exc}", file=path) from None
    added = sorted(set(registered_passes()) - before)
    for name in added:
        registered_passes()[name].origin = str(path)
    return added


def get_pass(name: str) -> type[Pass]:
    """The pass class registered under `name`; a SurgeonError suggests the nearest name otherwise."""
    passes = discover()
    if name not in passes:
        raise SurgeonError(f"unknown pass '{name}'", hint=suggest(name, passes))
    return passes[name]


def passes_handling(label: str) -> list[type[Pass]]:
    """The passes that declare they rewrite nodes with this op label (see `Pass.handles`)."""
    return [cls for _, cls in sorted(discover().items()) if label in cls.handles]

"""Argument groups shared by several commands (Polygraphy style): each adds its options and parses them."""
from __future__ import annotations

import argparse
import json
import math
import sys


class PluginArgs:
    """`--plugin FILE`: load passes and references from a Python file the user names explicitly."""

    @staticmethod
    def add_to(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--plugin", action="append", default=[], metavar="FILE",
                            help="Python file defining extra passes or reference ops (repeatable)")

    @staticmethod
    def parse(args) -> None:
        from surgeon.registry import load_plugin_file

        args.plugin_passes = [name for path in args.plugin for name in load_plugin_file(path)]


class ProjectPluginArgs:
    """`--no-config`; without it, the plugin files `[tool.surgeon] plugins` lists, loaded as `surgeon check`
    loads them, so a recipe that lints clean there runs here. Only `plugins` is read: the other settings are
    `check`'s, and a pyproject.toml that is not surgeon's to read is skipped (see `check.config.project_plugins`).
    What was found where, in words, goes to `args.plugins_looked_at`: an unknown pass names it (see
    `registry.unknown_pass_hint`). Listed before RecipeArgs: the recipe's passes must be known when it is read."""

    @staticmethod
    def add_to(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--no-config", action="store_true",
                            help="do not load the plugin files [tool.surgeon] in pyproject.toml lists")

    @staticmethod
    def parse(args) -> None:
        from surgeon.check.config import ProjectPlugins, project_plugins
        from surgeon.registry import load_plugin_file

        project = ProjectPlugins((), "--no-config left pyproject.toml out") if args.no_config else project_plugins()
        if project.skipped_ours:
            print(f"surgeon: warning: {project.looked_at}; its [tool.surgeon] plugins are not loaded",
                  file=sys.stderr)
        args.project_plugins = list(project.files)
        for path in project.files:
            load_plugin_file(path)
        args.plugins_looked_at = project.looked_at


class RecipeArgs:
    """`RECIPE [MODEL] --set STEP.PARAM=VALUE`: loads the recipe into `args.loaded_recipe`.

    List it after PluginArgs and ProjectPluginArgs, so passes from plugin files are known when the recipe is
    checked, and an unknown pass says what was made of pyproject.toml.
    """

    @staticmethod
    def add_to(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("recipe", help="recipe file, or the name of a shipped recipe (e.g. bevformer-tiny)")
        parser.add_argument("model", nargs="?", help="input model (default: the recipe's 'model')")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STEP.PARAM=VALUE",
                            help="override a step parameter (STEP: 1-based index, step name or pass name), "
                                 "or validate.KEY / build.KEY (e.g. validate.atol=1e-4)")

    @staticmethod
    def parse(args) -> None:
        from surgeon.recipe import load_recipe

        args.loaded_recipe = load_recipe(args.recipe, overrides=args.overrides, model=args.model,
                                         plugins_looked_at=args.plugins_looked_at)


class OutputArgs:
    """`--json` for machine-readable output and `--quiet` to print nothing but errors."""

    @staticmethod
    def add_to(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print a JSON document instead of text")
        parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    @staticmethod
    def parse(args) -> None:
        if args.json and args.quiet:
            raise_usage("--json and --quiet cannot be combined")


def raise_usage(message: str):
    from surgeon.errors import SurgeonError

    raise SurgeonError(message)


def print_json(data) -> None:
    sys.stdout.write(json_text(data))


def json_text(data) -> str:
    """`data` as standard JSON (indented, keys sorted, ending in a newline): what every JSON document
    surgeon prints or writes goes through. JSON has no NaN or infinities (Python's `json` would write
    the non-standard `NaN`/`Infinity`, which strict parsers refuse): they become the strings "nan",
    "inf" and "-inf" (`float()` reads them back). NumPy scalars become numbers; other objects their
    `str`."""
    return json.dumps(json_safe(data), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"


def json_safe(value):
    """`value` with every non-finite float replaced by "nan", "inf" or "-inf" (see `json_text`)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float) or type(value).__module__ == "numpy":
        return _json_number(value)
    return value


def _json_number(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    return value


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain text table: columns padded to the widest cell."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""Argument groups shared by several commands (Polygraphy style): each adds its options and parses them."""
from __future__ import annotations

import argparse
import json
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


class RecipeArgs:
    """`RECIPE [MODEL] --set STEP.PARAM=VALUE`: loads the recipe into `args.loaded_recipe`.

    List it after PluginArgs, so passes from plugin files are known when the recipe is checked.
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

        args.loaded_recipe = load_recipe(args.recipe, overrides=args.overrides, model=args.model)


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
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain text table: columns padded to the widest cell."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""Print the JSON Schema of recipes (published as docs/recipe.schema.json for editors)."""
from __future__ import annotations

from surgeon.cli_args import PluginArgs, ProjectPluginArgs, print_json

NAME = "schema"
HELP = "print the JSON Schema of recipe files"
ARG_GROUPS = (PluginArgs, ProjectPluginArgs)


def add_arguments(parser) -> None:
    parser.add_argument("--builtin-only", action="store_true",
                        help="only surgeon's own passes (how docs/recipe.schema.json is made)")


def run(args) -> int:
    from surgeon.recipe import json_schema

    print_json(json_schema(builtin_only=args.builtin_only))
    return 0

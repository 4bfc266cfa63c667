"""Print the JSON Schema of recipes (published as docs/recipe.schema.json for editors)."""
from __future__ import annotations

from surgeon.cli_args import PluginArgs, ProjectPluginArgs, print_json

NAME = "schema"
HELP = "print the JSON Schema of recipe files"
ARG_GROUPS = (PluginArgs,)


def add_arguments(parser) -> None:
    ProjectPluginArgs.add_to(parser)
    parser.add_argument("--builtin-only", action="store_true",
                        help="only surgeon's own passes (how docs/recipe.schema.json is made; pyproject.toml's "
                             "plugin files are not loaded)")


def run(args) -> int:
    from surgeon.recipe import json_schema

    if not args.builtin_only:  # the schema would leave their passes out: their code need not run
        ProjectPluginArgs.parse(args)
    print_json(json_schema(builtin_only=args.builtin_only))
    return 0

"""List the available passes with their one-line docs."""
from __future__ import annotations

from surgeon.cli_args import OutputArgs, PluginArgs, ProjectPluginArgs, print_json, table

NAME = "passes"
HELP = "list the available passes"
ARG_GROUPS = (PluginArgs, ProjectPluginArgs, OutputArgs)


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from surgeon.registry import discover

    passes = discover()
    if args.json:
        print_json([{"name": n, "summary": c.summary(), "origin": c.origin} for n, c in sorted(passes.items())])
    else:
        print(table([[n, c.summary()] for n, c in sorted(passes.items())], ["pass", "what it does"]))
    return 0

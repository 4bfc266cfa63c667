"""Find the recipe step that breaks the outputs: `surgeon bisect RECIPE [MODEL]`.

Re-runs the recipe's steps, keeps the graph after each, and bisects for the first step after
which the outputs leave the recipe's `validate:` tolerance (defaults when it has none). Exit code
1 when a step is found, 0 when every step stays within tolerance, 2 for bad input.
"""
from __future__ import annotations

import sys
from pathlib import Path

from surgeon.cli_args import OutputArgs, PluginArgs, ProjectPluginArgs, RecipeArgs, print_json, table
from surgeon.errors import CheckFailed, SurgeonError

NAME = "bisect"
HELP = "find the first recipe step after which the outputs leave tolerance"
ARG_GROUPS = (PluginArgs, ProjectPluginArgs, RecipeArgs, OutputArgs)


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from surgeon.commands.run import TerminalProgress
    from surgeon.modelio import load_model
    from surgeon.pipeline import renamed_tensors
    from surgeon.recipe import VALIDATE_FIELDS
    from surgeon.validation import bisect_steps
    from surgeon.validation.validate import cuts_graph, prepare_validation

    recipe = args.loaded_recipe
    if recipe.model is None:
        raise SurgeonError(f"recipe '{recipe.name}' names no model: give MODEL on the command line")
    config = recipe.validate or {key: field.default for key, field in VALIDATE_FIELDS.items()}
    original = load_model(recipe.model)
    # Bisection compares each step's graph with the original model (a recipe that cuts a stage out of it is
    # refused by `bisect_steps`, which checks the tolerances' names of one that cuts); expected outputs play
    # no part.
    cuts = cuts_graph(recipe)
    prepared = prepare_validation({**config, "expected": None, "each_step": False}, original, str(recipe.model),
                                  cuts=cuts, renames=renamed_tensors(recipe.steps))
    progress = None if (args.quiet or args.json) else TerminalProgress(stream=sys.stderr)
    result = bisect_steps(recipe, original, prepared.feeds, prepared.tolerance, prepared.runner,
                          model_dir=Path(recipe.model).parent, progress=progress, cuts=cuts)
    if args.json:
        print_json(result.to_dict())
    elif not args.quiet:
        rows = [[str(r["step"]), r["name"], "within" if r["passed"] else "OUTSIDE",
                 "-" if r["max_abs"] is None else f"{r['max_abs']:.3g}"] for r in result.checked]
        if rows:
            print(table(rows, ["#", "step", "tolerance", "max abs"]))
        print(result.describe())
    return CheckFailed.exit_code if result.found else 0


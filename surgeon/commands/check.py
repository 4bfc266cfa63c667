"""Lint models against a target profile (and recipes against the pass registry) before anything runs.

    surgeon check model.onnx --target tensorrt-8.6
    surgeon check models/*.onnx --format sarif --output surgeon.sarif
    surgeon check recipes/bevformer-tiny.yaml          # .yaml/.yml files are linted as recipes

Settings come from `[tool.surgeon]` in the nearest pyproject.toml (docs/check.md); options given here win.
Recipes that use passes from your own files need those files: `--plugin FILE`, or `plugins = [...]` there.
Exit codes: 0 no errors, 1 errors found, 2 bad usage or a file that cannot be read.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from surgeon.cli_args import PluginArgs

NAME = "check"
HELP = "lint models for a target (ops, dtypes, order, names, data) and recipes; CI and pre-commit friendly"
ARG_GROUPS = (PluginArgs,)


def add_arguments(parser) -> None:
    from surgeon.check.formatters import FORMATS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples of the docstring
    parser.add_argument("paths", nargs="*", metavar="FILE", help="ONNX models; .yaml/.yml files are linted as recipes")
    parser.add_argument("--recipe", action="append", default=[], metavar="RECIPE",
                        help="lint RECIPE as a recipe whatever its extension (repeatable)")
    parser.add_argument("--as-recipes", action="store_true",
                        help="lint every FILE as a recipe whatever its extension (the pre-commit recipe hook)")
    parser.add_argument("-t", "--target", help="target profile name or YAML file (default: pyproject, else onnxruntime)")
    parser.add_argument("--select", action="append", default=[], metavar="IDS",
                        help="report only these rule ids or id prefixes, comma-separated (e.g. SG001,SG01)")
    parser.add_argument("--ignore", action="append", default=[], metavar="IDS",
                        help="never report these rule ids or id prefixes, comma-separated")
    parser.add_argument("--format", choices=sorted(FORMATS), default="text", help="output format (default text)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    parser.add_argument("--static-shapes", action=argparse.BooleanOptionalAction, default=None,
                        help="report dynamic input dims (SG006) even if the target allows them, or never")
    parser.add_argument("--max-initializer-mb", type=_size_limit, metavar="MB", help="SG013 threshold (default 512)")
    parser.add_argument("--no-config", action="store_true",
                        help="ignore [tool.surgeon] in pyproject.toml (settings and plugin files)")
    parser.add_argument("--list-rules", action="store_true", help="print the rules and exit")


def _size_limit(text: str) -> float:
    from surgeon.check.config import SIZE_LIMIT, is_size_limit

    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not is_size_limit(value):
        raise argparse.ArgumentTypeError(f"expected {SIZE_LIMIT}, got '{text}'")
    return value


def run(args) -> int:
    from surgeon.check.config import Config, check_rule_ids, load_config
    from surgeon.check.findings import all_rules
    from surgeon.check.formatters import FORMATS
    from surgeon.check.runner import check_file, exit_code
    from surgeon.cli_args import raise_usage, table
    from surgeon.registry import load_plugin_file
    from surgeon.targets import load_target

    rules = all_rules()
    if args.list_rules:
        print(table([[r.id, r.severity, r.name, r.summary, r.fix or "-"] for r in rules.values()],
                    ["id", "severity", "name", "what", "fix"]))
        return 0
    inputs = [(path, args.as_recipes) for path in args.paths] + [(_shipped_or_path(p), True) for p in args.recipe]
    if not inputs:
        raise_usage("surgeon check needs at least one model or recipe (or --list-rules)")
    cli = _command_line_settings(args)
    for option in ("select", "ignore"):
        check_rule_ids(cli.get(option, ()), f"--{option}")
    if args.target:
        load_target(args.target)  # an unknown target is a usage error before any file is read

    config = Config() if args.no_config else load_config()
    if args.output is not None:  # before any file is checked: the report must not replace one of them
        from surgeon.modelio import guard_outputs

        guard_outputs([(args.output, "the report", "-o")], *_checked_files(inputs, args, config),
                      discard="leave out -o to print the report")
    for path in config.plugins:  # after --plugin's files, as every command loads them; one named by both runs once
        load_plugin_file(path)
    findings = []
    for path, as_recipe in inputs:
        settings = replace(config.for_file(path), **cli)
        findings.extend(check_file(path, settings, as_recipe=as_recipe))

    report = FORMATS[args.format](findings, rules, len(inputs))
    if args.output is not None:
        from surgeon.modelio import write_text_atomic

        write_text_atomic(args.output, report + "\n")
    elif report:
        sys.stdout.write(report + "\n")
    return exit_code(findings)


def _shipped_or_path(name_or_path: str) -> str:
    """`--recipe bevformer-tiny` names a shipped recipe, as `surgeon run` reads it; a path that does not
    exist and names none stays as given, for the SG000 finding."""
    from surgeon.errors import SurgeonError
    from surgeon.recipe import find_recipe

    try:
        return str(find_recipe(name_or_path))
    except SurgeonError:
        return name_or_path


def _checked_files(inputs, args, config) -> tuple[list, list]:
    """(files, models) that `check` reads, as `modelio.guard_outputs` takes them: recipes (with the recipes
    they extend and their target profile files), the target files (`--target`, and every one pyproject.toml
    names: the overrides' too), the plugin files, and the models (their external data counts too)."""
    from surgeon.check.runner import is_recipe
    from surgeon.errors import SurgeonError
    from surgeon.recipe import load_recipe
    from surgeon.targets import profile_files

    files, models = [], []
    for path, as_recipe in inputs:
        if not (as_recipe or is_recipe(path)):
            models.append((path, "the checked model"))
            continue
        chain, targets = [path], []
        if Path(args.output).exists():  # the files it loads: only an existing file can be one of them
            try:
                recipe = load_recipe(path)
                chain, targets = recipe.files, profile_files(recipe.target)
            except SurgeonError:  # reported by the recipe rules
                pass
        files += [(f, "the checked recipe") for f in chain]
        files += [(f, "the target profile") for f in targets]
    named_targets = [args.target, config.base.target, *(values.get("target") for _, values in config.overrides)]
    files += [(f, "the target file") for name in named_targets if name for f in profile_files(name)]
    files += [(f, "the plugin file") for f in (*args.plugin, *config.plugins)]
    return files, models


def _command_line_settings(args) -> dict:
    """The settings given on the command line; they replace the pyproject ones."""
    values = {}
    if args.target:
        values["target"] = args.target
    for option in ("select", "ignore"):
        ids = tuple(i.strip() for text in getattr(args, option) for i in text.split(",") if i.strip())
        if ids:
            values[option] = ids
    if args.static_shapes is not None:
        values["static_shapes"] = args.static_shapes
    if args.max_initializer_mb is not None:
        values["max_initializer_mb"] = args.max_initializer_mb
    return values

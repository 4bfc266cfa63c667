"""Run a recipe over a model: `surgeon run RECIPE [MODEL] -o OUT`.

    surgeon run bevformer-tiny model.onnx -o out/bevformer-tiny.onnx
    surgeon run my-recipe.yaml --set grid-sample.mode=decompose --dry-run
    surgeon run my-recipe.yaml -o out/model.onnx --require-build     # CI: no engine is a failure

The input model is never modified; OUT is written atomically and only when every step and the
checker passed. A JSON run report is written beside OUT (`<OUT stem>.surgeon.json`). Without
TensorRT a `build:` section is skipped (exit code 0); with --require-build the run stops with exit
code 2 instead, before it reads the model or writes anything.
Passes of your own come from `--plugin FILE` and from `plugins = [...]` in `[tool.surgeon]` of the
nearest pyproject.toml (as `surgeon check` loads them; --no-config skips those).
"""
from __future__ import annotations

import sys
from pathlib import Path

from surgeon.cli_args import OutputArgs, PluginArgs, ProjectPluginArgs, RecipeArgs, print_json, table
from surgeon.errors import CheckFailed, SurgeonError

NAME = "run"
HELP = "run a recipe over a model and write the rewritten model"


ARG_GROUPS = (PluginArgs, ProjectPluginArgs, RecipeArgs, OutputArgs)


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", help="output model path (default: out/<recipe name>.onnx)")
    parser.add_argument("--dry-run", action="store_true", help="run everything, write nothing, show what changes")
    parser.add_argument("--no-validate", action="store_true", help="skip the recipe's validate section")
    parser.add_argument("--no-build", action="store_true", help="skip the recipe's build section")
    parser.add_argument("--require-build", action="store_true",
                        help="fail (exit 2, nothing written) where the build section would be skipped for want "
                             "of TensorRT, instead of running the other stages")
    parser.add_argument("--validate-each-step", action="store_true",
                        help="validate after every step and name the first step whose outputs diverge")


def run(args) -> int:
    from surgeon.pipeline import run_recipe

    recipe = args.loaded_recipe
    if args.output == "":
        raise SurgeonError("-o/--output is empty: give the path of the output model")
    if args.require_build:
        _check_build_will_run(recipe, args)
    if args.validate_each_step:
        if not recipe.validate:
            raise SurgeonError("--validate-each-step needs a 'validate' section in the recipe")
        recipe.validate["each_step"] = True
    # As given (a trailing slash says "a folder", which the output guard refuses by name).
    output = args.output if args.output is not None else str(Path("out") / f"{recipe.name}.onnx")
    progress = None if (args.quiet or args.json) else TerminalProgress(dry_run=args.dry_run)
    result = run_recipe(recipe, output=output, dry_run=args.dry_run, validate=not args.no_validate,
                        build=not args.no_build, progress=progress,
                        inputs=[(path, "the plugin file") for path in [*args.plugin, *args.project_plugins]],
                        quiet=args.quiet)
    if args.json:
        print_json(result.report())
    elif not args.quiet:
        print(summary(result, args.dry_run))
    elif not result.ok:  # -q prints errors only: a failed validation is one
        print(result.validation.summary.splitlines()[0], file=sys.stderr)
    if not result.ok:
        return CheckFailed.exit_code
    return 0


def _check_build_will_run(recipe, args) -> None:
    """--require-build: refuse, before the run reads or writes anything, a run that would build no engine."""
    from surgeon.build import tensorrt_missing

    if args.no_build or args.dry_run:
        raise SurgeonError(f"--require-build cannot be combined with {'--no-build' if args.no_build else '--dry-run'}, "
                           "which builds no engine")
    if not recipe.build:
        raise SurgeonError("--require-build needs a 'build' section in the recipe")
    reason = tensorrt_missing()
    if reason:
        raise SurgeonError(f"--require-build: the TensorRT build cannot run, so nothing was written: {reason}")


def summary(result, dry_run: bool) -> str:
    rows = []
    for r in result.steps:
        delta = ", ".join(f"{k} {v:+d}" for k, v in list(r.op_delta.items())[:4])
        if len(r.op_delta) > 4:
            delta += ", ..."
        rows.append([str(r.index), r.title, str(len(r.rewritten)), f"{r.nodes_before}->{r.nodes_after}",
                     delta or "-", f"{r.seconds:.2f}s"])
    lines = [table(rows, ["#", "step", "rewrites", "nodes", "op changes", "time"])] if rows else ["(no steps)"]
    before, after = len(result.original.graph.node), len(result.model.graph.node)
    pruned = _pruned_between_steps(result)
    if pruned:
        lines.append("unused nodes removed between steps (in no row above): "
                     + ", ".join(f"{count} {where}" for where, count in pruned))
    if dry_run:
        lines.append(f"dry run: {before} -> {after} nodes; nothing was written")
    else:
        lines.append(f"wrote {result.output} ({before} -> {after} nodes) in {result.seconds:.2f}s; "
                     f"report {result.report_path}")
    validation = result.validation
    if validation is not None:
        lines.append(getattr(validation, "summary", str(validation)))
    if result.build is not None:
        lines.append(getattr(result.build, "summary", str(result.build)))
    return "\n".join(lines)


def _pruned_between_steps(result) -> list[tuple[str, int]]:
    """(where, how many): the pipeline removes unused nodes lazily, when a step needs a tidy graph, and
    at the end; those removals belong to no step's row."""
    pruned = [(f"before step {r.index}", r.pruned_before) for r in result.steps if r.pruned_before]
    if result.pruned_at_end:
        pruned.append(("at the end", result.pruned_at_end))
    return pruned


class TerminalProgress:
    """Prints one line per step to stderr: `[2/5] grid-sample ... 12 rewrites (0.31s)`."""

    def __init__(self, dry_run: bool = False, stream=None):
        self.stream = stream or sys.stderr  # looked up now: callers may have redirected stderr
        self.dry_run = dry_run

    def run_started(self, recipe, model_path, steps) -> None:
        mode = " (dry run)" if self.dry_run else ""
        self._say(f"surgeon: recipe {recipe.name} on {model_path}, {steps} step(s), target {recipe.target}{mode}")

    def step_started(self, index, total, step) -> None:
        if self.stream.isatty():
            self.stream.write(f"[{index}/{total}] {step.label or step.pass_name} ...\r")
            self.stream.flush()

    def step_finished(self, record, total) -> None:
        what = f"{len(record.rewritten)} rewrite(s)" if record.rewritten else "nothing to do"
        self._say(f"[{record.index}/{total}] {record.title}: {what} ({record.seconds:.2f}s)")
        if self.dry_run:
            for name in record.rewritten[:20]:
                self._say(f"      would rewrite {name}")
            if len(record.rewritten) > 20:
                self._say(f"      ... and {len(record.rewritten) - 20} more")
        for note in record.notes:
            self._say(f"      note: {note}")

    def message(self, text) -> None:
        self._say(f"surgeon: {text}")

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

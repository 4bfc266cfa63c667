"""Compare two models numerically through Polygraphy: `surgeon compare A.onnx B.onnx`.

Both models run on the same inputs (recorded with --data, else seeded random ones), each through
ONNX Runtime or, for graphs with ATen/custom/plugin nodes, surgeon's reference runner. With --trt, B
is a TensorRT engine (or an ONNX model built into one in memory, with surgeon's plugins) run by
Polygraphy's TensorRT runner. Exit code 0 when every output of B is within tolerance of A's (and of
--expected), 1 when not, 2 for bad input (or --trt without TensorRT).
"""
from __future__ import annotations

import sys
from pathlib import Path

from surgeon.cli_args import OutputArgs, PluginArgs, ProjectPluginArgs, print_json
from surgeon.errors import CheckFailed, SurgeonError

NAME = "compare"
HELP = "compare two models' outputs on the same inputs (Polygraphy), with reports"
ARG_GROUPS = (PluginArgs, ProjectPluginArgs, OutputArgs)


def add_arguments(parser) -> None:
    from surgeon.recipe import VALIDATE_FIELDS
    from surgeon.validation.runners import RUNNER_KINDS

    parser.add_argument("model_a", metavar="A.onnx", help="reference model (e.g. the original export)")
    parser.add_argument("model_b", metavar="B.onnx", help="model to check (e.g. the rewritten one); with --trt "
                        "an engine (.engine/.plan) or an ONNX model to build")
    parser.add_argument("--trt", action="store_true", help="run B through TensorRT (needs the trt extra)")
    parser.add_argument("--plugin-lib", action="append", default=None, metavar="LIB.so",
                        help="with --trt: plugin libraries to load (default: surgeon's own, 'builtin')")
    parser.add_argument("--atol", action="append", metavar="[OUTPUT:]VALUE",
                        help=f"absolute tolerance, for all outputs or one (repeatable; default "
                             f"{VALIDATE_FIELDS['atol'].default:g})")
    parser.add_argument("--rtol", action="append", metavar="[OUTPUT:]VALUE",
                        help=f"relative tolerance, likewise (default {VALIDATE_FIELDS['rtol'].default:g})")
    parser.add_argument("--error-stat", action="append", metavar="[OUTPUT:]STAT",
                        help="error statistic held to the tolerance, likewise: "
                             f"{', '.join(VALIDATE_FIELDS['error_stat'].choices)} (default: elemwise)")
    parser.add_argument("--quantile", type=float, default=VALIDATE_FIELDS["quantile"].default,
                        help="quantile checked with --error-stat quantile")
    parser.add_argument("--data", action="append", metavar="INPUTS",
                        help="recorded inputs: .npz or Polygraphy JSON, or NAME=FILE per input from libspconv tensor "
                             "files (repeated: --data features=voxels.tensor --data indices=coors.tensor)")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:1x3x224x224",
                        help="shape of a dynamic input for random data (repeatable)")
    parser.add_argument("--input-range", action="append", default=[], metavar="NAME:LO,HI",
                        help="value range of an input for random data (repeatable)")
    parser.add_argument("--iterations", type=int, default=1, help="random input sets to run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--expected", action="append", metavar="OUTPUTS",
                        help="reference outputs (e.g. PyTorch) B must match: .npz or Polygraphy JSON, or NAME=FILE "
                             "per output from libspconv tensor files (repeated)")
    parser.add_argument("--report", metavar="PREFIX", help="write PREFIX.{md,html,json,polygraphy.json,inputs.json}")
    parser.add_argument("--runner", default="auto", choices=RUNNER_KINDS,
                        help="ONNX Runtime, the reference runner, or whichever can run each model")


def per_output_option(values: list[str] | None, kind, option: str):
    """`--atol 1e-4 --atol boxes:1e-3` as Polygraphy spells it: a value, or {output: value, "": default}.

    Checked like the recipe's validate section (a wrong statistic, a NaN or negative tolerance is an
    error naming the option)."""
    from surgeon.recipe import VALIDATE_FIELDS

    key = option[2:].replace("-", "_")
    field = VALIDATE_FIELDS[key]
    if not values:
        return field.default
    parsed = {}
    for text in values:
        name, _, raw = text.rpartition(":")
        try:
            parsed[name] = kind(raw)
        except ValueError:
            raise SurgeonError(f"{option} {text}: '{raw}' is not a {kind.__name__}") from None
    value = parsed[""] if list(parsed) == [""] else {"": field.default, **parsed}
    try:
        value = field.coerce(value)
        check_option(key, value, option)
    except ValueError as exc:
        raise SurgeonError(f"{option}: {exc}") from None
    return value


def check_option(key: str, value, option: str) -> None:
    """A command-line value for validate.`key` that validation cannot use is an error naming `option`."""
    from surgeon.validation.settings import check_validate_value

    try:
        check_validate_value(key, value)
    except ValueError as exc:
        raise SurgeonError(f"{option}: {exc}") from None


def run(args) -> int:
    from surgeon.modelio import load_model
    from surgeon.validation.data import array_files, parse_array_files, parse_input_options
    from surgeon.validation.report import write_reports
    from surgeon.validation.validate import ORIGINAL, REWRITTEN, prepare_validation, validate_models

    if args.plugin_lib and not args.trt:  # only TensorRT loads them: without --trt they would do nothing
        raise SurgeonError("--plugin-lib loads TensorRT plugin libraries, which only --trt uses",
                           hint="add --trt to run B through TensorRT; CPU references of custom ops come from "
                                "--plugin FILE")
    data, expected = parse_array_files(args.data, "--data"), parse_array_files(args.expected, "--expected")
    if args.report is not None:  # before any work: no report may replace an input (or a folder, a device)
        from surgeon.modelio import guard_outputs
        from surgeon.validation.report import report_paths

        guard_outputs([(path, "the report", "--report") for path in report_paths(args.report)],
                      [*((path, "the --data file") for path in array_files(data)),
                       *((path, "the --expected file") for path in array_files(expected)),
                       *((p, "the plugin file") for p in args.plugin),
                       *((p, "the plugin library") for p in args.plugin_lib or () if p != "builtin")],
                      models=[(args.model_a, "model A"), (args.model_b, "model B")])
    model_a = load_model(args.model_a)
    if args.trt:
        from surgeon.build import trt_runner  # raises SurgeonError (exit 2) saying how to install TensorRT

        candidate, candidate_runner = None, trt_runner(args.model_b, plugins=args.plugin_lib or ["builtin"])
    else:
        candidate, candidate_runner = load_model(args.model_b), None
    config = {key: getattr(args, key) for key in ("iterations", "seed", "quantile", "runner")}
    config.update(data=data, expected=expected)
    for key in ("iterations", "seed", "quantile"):
        check_option(key, config[key], f"--{key}")
    for key, kind in (("atol", float), ("rtol", float), ("error_stat", str)):
        config[key] = per_output_option(getattr(args, key), kind, f"--{key.replace('_', '-')}")
    config["inputs"] = parse_input_options(args.input_shape, args.input_range)
    # Everything read and checked (both models, A's inputs and B's, the expected outputs) before either runs.
    prepared = prepare_validation(config, model_a, args.model_a, keep_sessions=True)
    prepared.check_candidate(candidate, args.model_b, file=args.model_b)
    result = validate_models(model_a, candidate, prepared.feeds, prepared.tolerance, args.runner, prepared.expected,
                             prepared.data, rewritten_runner=candidate_runner, sessions=prepared.sessions,
                             files={ORIGINAL: args.model_a, REWRITTEN: args.model_b})
    result.tolerance_hint = ("compare does not read a recipe's validate tolerances: give them with --atol / --rtol "
                             "(e.g. --atol 1e-4 --rtol 1e-4)")
    if args.report:
        result.reports = write_reports(result, Path(args.report))
    if args.json:
        print_json(result.to_dict())
    elif not args.quiet:
        print(result.summary)
    elif not result.passed:  # -q prints errors only: a failed comparison is one
        print(result.summary.splitlines()[0], file=sys.stderr)
    return 0 if result.passed else CheckFailed.exit_code

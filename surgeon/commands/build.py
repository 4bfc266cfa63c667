"""Build a TensorRT engine from an ONNX model: `surgeon build MODEL -o ENGINE [options]`.

Options mirror a recipe's `build:` section (docs/build.md); `--recipe` takes that section from a recipe
file and the other options override it. Needs TensorRT; without it the command exits with code 2
and says how to install it. A JSON build report is written beside the engine.
"""
from __future__ import annotations

from pathlib import Path

from surgeon.cli_args import OutputArgs, print_json
from surgeon.errors import SurgeonError

NAME = "build"
HELP = "build a TensorRT engine (with surgeon's plugins) from an ONNX model"
ARG_GROUPS = (OutputArgs,)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="ONNX model")
    parser.add_argument("-o", "--output", metavar="ENGINE", help="engine path (default: MODEL with .engine)")
    parser.add_argument("--recipe", help="take the build options from this recipe's 'build:' section")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8", "best"))
    parser.add_argument("--strongly-typed", action="store_true", default=None,
                        help="build a strongly typed network (precisions from the model's types)")
    parser.add_argument("--profile", action="append", metavar="INPUT=MIN:OPT:MAX",
                        help="one optimization profile entry, shapes as 1x3x224x224 (repeat for each input)")
    parser.add_argument("--workspace", help="workspace limit: bytes or with a unit (4GiB)")
    parser.add_argument("--optimization-level", type=int, choices=range(6), metavar="0-5")
    parser.add_argument("--timing-cache", metavar="FILE", help="timing cache to read and update")
    parser.add_argument("--plugins", nargs="+", metavar="LIB",
                        help="plugin libraries to load ('builtin' = libsurgeon_plugins.so, the default)")
    parser.add_argument("--calibration-data", metavar="NPZ", help="int8 calibration inputs (.npz or Polygraphy JSON)")
    parser.add_argument("--calibration-cache", metavar="FILE", help="int8 calibration cache to read or write")


def run(args) -> int:
    from surgeon.build import build_engine, build_options, default_engine_path

    section = {}
    if args.recipe:
        from surgeon.recipe import load_recipe

        section = load_recipe(args.recipe).build or {}
    calibration = None
    if args.calibration_data or args.calibration_cache:
        calibration = {**(section.get("calibration") or {}),
                       **{k: v for k, v in (("data", args.calibration_data), ("cache", args.calibration_cache)) if v}}
    options = build_options(section, engine=args.output, precision=args.precision, strongly_typed=args.strongly_typed,
                            profiles=[parse_profile_args(args.profile)] if args.profile else None,
                            workspace=args.workspace, optimization_level=args.optimization_level,
                            timing_cache=args.timing_cache, plugins=args.plugins, calibration=calibration)
    engine = options["engine"] or default_engine_path(args.model)
    _guard(Path(engine), args, options)
    result = build_engine(args.model, engine, options, progress=None)
    if args.json:
        print_json(result.to_dict())
    elif not args.quiet:
        print(result.summary)
    return 0


def _guard(engine: Path, args, options) -> None:
    """The engine and its build report must not replace the model, the recipe or a build input."""
    from surgeon.build import build_files
    from surgeon.modelio import guard_outputs

    option = "-o" if args.output or not options.get("engine") else "build.engine"
    outputs, inputs = build_files(options, engine, option, where="the build's ")
    recipe = [(args.recipe, "the recipe")] if args.recipe else []
    guard_outputs(outputs, recipe + inputs, models=[(args.model, "the input model")])


def parse_profile_args(entries: list[str]) -> dict[str, dict[str, list[int]]]:
    """['image=1x3x64x96:1x3x64x96:2x3x64x96'] -> {image: {min: [...], opt: [...], max: [...]}}."""
    profile = {}
    for entry in entries:
        name, _, shapes = entry.rpartition("=")
        parts = shapes.split(":")
        try:
            dims = [[int(d) for d in part.lower().split("x")] for part in parts]
        except ValueError:
            dims = []
        if not name or len(dims) != 3:
            raise SurgeonError(f"--profile {entry!r}: expected INPUT=MIN:OPT:MAX with shapes like 1x3x224x224")
        profile[name] = dict(zip(("min", "opt", "max"), dims))
    return profile

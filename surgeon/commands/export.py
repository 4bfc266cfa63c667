r"""Export models torch.onnx.export cannot trace, by hooking module forwards on a real input.

    surgeon export spconv --model centerpoint-scn --features in_features.fp16.tensor \
        --indices in_indices_zyx.int32.tensor --flavour libspconv -o scn.onnx --save-tensors scn --check

`--flavour libspconv` writes what NVIDIA's 3DSparseConvolution parser reads (float16, implicit
coordinates, `Reshape(dims=)`); `standard` passes onnx.checker and runs on surgeon's CPU references.
`--features` / `--indices` are libspconv tensor files (.tensor) or .npy arrays: [N, C] features and
[N, 4] int32 (batch, z, y, x) coordinates. `--check` runs the exported graph's ops on the CPU
references and compares with PyTorch (exit 1 above --tolerance, and nothing is written); for the
libspconv flavour it also reports the error with the float16 weights and input that engine gets.
Needs torch and spconv (the zoo extra).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from surgeon.cli_args import OutputArgs, print_json
from surgeon.errors import CheckFailed, SurgeonError
from surgeon.export import FLAVOURS, MISSING_SPCONV, SPCONV_MODELS

NAME = "export"
HELP = "export a spconv lidar backbone to ONNX by hooking its module forwards (needs torch + spconv)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="export_kind", metavar="KIND", required=True)
    spconv = sub.add_parser("spconv", help="a spconv 2.x sparse backbone (CenterPoint, BEVFusion lidar)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    spconv.add_argument("--model", required=True, choices=sorted(SPCONV_MODELS),
                        help="; ".join(f"{k}: {v}" for k, v in SPCONV_MODELS.items()))
    spconv.add_argument("--checkpoint", metavar="FILE.pth",
                        help="OpenPCDet checkpoint whose backbone_3d.* weights to export (default: seeded random "
                             "weights); spconv 1.x weight layouts are converted")
    spconv.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle a --checkpoint that safe loading refuses (it holds more than tensors, "
                             "Python values and NumPy arrays): this runs any code the file names, so only for "
                             "files you trust")
    spconv.add_argument("--features", required=True, metavar="FILE", help="voxel features [N, C] (.tensor or .npy)")
    spconv.add_argument("--indices", required=True, metavar="FILE",
                        help="voxel coordinates [N, 4] int32 as batch, z, y, x (.tensor or .npy)")
    spconv.add_argument("--flavour", choices=FLAVOURS, default="libspconv",
                        help="graph conventions (default libspconv)")
    spconv.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the model")
    spconv.add_argument("--save-tensors", metavar="STEM",
                        help="also write STEM.voxels/.coors/.output (libspconv tensor files) and STEM.npz")
    spconv.add_argument("--no-fold-batchnorm", action="store_true",
                        help="keep BatchNormalization nodes (standard flavour only: libspconv has none)")
    spconv.add_argument("--no-fold-relu", action="store_true", help="keep Relu nodes instead of activation=ReLU")
    spconv.add_argument("--batch-size", type=int, default=1,
                        help="batch size the model is called with (default 1; the libspconv flavour takes 1 only)")
    spconv.add_argument("--check", action="store_true",
                        help="run the graph on the CPU references and compare with PyTorch's output")
    OutputArgs.add_to(spconv)  # on the subcommand, so `--json` goes after `spconv` like every other option
    spconv.add_argument("--tolerance", type=float, default=1e-3,
                        help="--check fails above this max abs error relative to the output's scale (default 1e-3)")


def load_array(path) -> np.ndarray:
    from surgeon.export.tensor_file import read_tensor

    path = Path(path)
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SurgeonError(f"cannot read .npy array: {exc}", file=path) from None
    return read_tensor(path)


def _guard_outputs(args) -> None:
    """Before any work: no file written may replace an input, a folder or a device (modelio.guard_outputs)."""
    from surgeon.modelio import guard_outputs

    out = Path(args.output)
    outputs = [(args.output, "the output model", "-o"),
               (out.with_name(out.name + ".data"), "the output model's external data", "-o")]
    if args.save_tensors:
        outputs += [(f"{args.save_tensors}{ext}", "a --save-tensors file", "--save-tensors")
                    for ext in (".voxels", ".coors", ".output", ".npz")]
    guard_outputs(outputs, [(args.features, "the --features file"), (args.indices, "the --indices file"),
                            (args.checkpoint, "the --checkpoint file")])


def run(args) -> int:
    OutputArgs.parse(args)
    _guard_outputs(args)
    try:
        from surgeon.export.spconv_export import (build_zoo_model, check_batch_size, check_with_references,
                                                  export_spconv, layers_over_output_bound, save_tensors)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("torch", "spconv", "cumm"):
            raise SurgeonError(MISSING_SPCONV) from exc
        raise
    from surgeon.graphinfo import op_histogram
    from surgeon.modelio import save_model_atomic

    check_batch_size(args.flavour, args.batch_size, "--batch-size")
    features, indices = load_array(args.features), load_array(args.indices)
    fold = {"fold_batchnorm": not args.no_fold_batchnorm, "fold_relu": not args.no_fold_relu}
    model = build_zoo_model(args.model, args.checkpoint, args.trust_checkpoint)
    result = export_spconv(model, features, indices, args.flavour, args.batch_size, **fold,
                           files=(args.features, args.indices))
    report = {
        "model": args.model, "flavour": args.flavour, "voxels": int(len(features)),
        "nodes": len(result.model.graph.node), "ops": op_histogram(result.model.graph.node),
        "output_shape": list(result.output.shape),
        "over_output_bound": [{"node": n, "voxels": v, "output_bound": b}
                              for n, v, b in layers_over_output_bound(result.model)],
    }
    if args.check:
        report["check"] = check_with_references(result, **fold)
        if args.flavour == "libspconv":
            report["check_float16_weights"] = check_with_references(result, **fold, float16_weights=True)
        if not report["check"]["relative_error"] <= args.tolerance:
            raise CheckFailed(f"the CPU references differ from PyTorch by {report['check']['relative_error']:.3g} "
                              f"of the output's scale (tolerance {args.tolerance:g}); nothing was written")
    written = save_model_atomic(result.model, args.output)
    if args.save_tensors:
        written += save_tensors(result, args.save_tensors)
    report["written"] = [str(p) for p in written]
    if args.json:
        print_json(report)
    elif not args.quiet:
        ops = ", ".join(f"{op} x{count}" for op, count in report["ops"].items())
        print(f"{args.output}: {report['nodes']} nodes ({ops}), output {report['output_shape']}, "
              f"{report['voxels']} voxels, flavour {args.flavour}")
        for path in written[1:]:
            print(f"  {path}")
        for layer in report["over_output_bound"]:
            print(f"warning: {layer['node']} outputs {layer['voxels']} voxels on this input, more than its "
                  f"output_bound {layer['output_bound']} (set the module's output_bound before exporting)",
                  file=sys.stderr)
        if args.check:
            c = report["check"]
            print(f"check: max abs error {c['max_abs_error']:.3g} against output scale {c['output_scale']:.3g} "
                  f"(relative {c['relative_error']:.3g}, tolerance {args.tolerance:g})")
            if "check_float16_weights" in report:
                h = report["check_float16_weights"]
                print(f"       with the float16 weights and input libspconv gets: max abs error "
                      f"{h['max_abs_error']:.3g} (relative {h['relative_error']:.3g}; its float16 arithmetic "
                      f"adds to this)")
    return 0

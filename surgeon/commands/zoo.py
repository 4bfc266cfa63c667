"""Export the zoo's BEV models as users export them: `surgeon zoo list`, `surgeon zoo export MODEL`.

    surgeon zoo export bevformer-tiny --size fixture --opset 11 --aten-fallback -o out/
    surgeon zoo export sparse4d-head --size full --opset 16

Writes `<model>.<size>.opset<N>[-aten].onnx` with `.inputs.npz` and `.outputs.npz` (seeded sample
inputs and the PyTorch outputs, keyed by ONNX input and output names). Needs the `zoo` extra (torch).
Some combinations fail by design, as they do for users: grid_sample without the ATen fallback
below opset 16, the NMS-free coder's `&=` and `inverse` without the fallback at any opset.
"""
from __future__ import annotations

import argparse

NAME = "zoo"
HELP = "export BEVFormer, BEVFusion and Sparse4D re-implementations to ONNX (needs the zoo extra)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from surgeon.zoo import OPSETS, SIZES

    sub = parser.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the models")
    export = sub.add_parser("export", help="export one model with sample inputs and outputs")
    export.add_argument("model", help="model name (see `surgeon zoo list`)")
    export.add_argument("--size", choices=SIZES, default="fixture",
                        help="fixture: narrow channels, small images; full: upstream dimensions (default fixture)")
    export.add_argument("--opset", type=int, choices=OPSETS, default=16, help="ONNX opset (default 16)")
    export.add_argument("--aten-fallback", action="store_true",
                        help="export with ONNX_ATEN_FALLBACK: unsupported ops become org.pytorch.aten::ATen nodes")
    export.add_argument("-o", "--output-dir", default=".", metavar="DIR", help="where to write (default .)")


def run(args) -> int:
    from surgeon.zoo import MODELS, export

    if args.zoo_command == "list":
        width = max(map(len, MODELS))
        for name, description in MODELS.items():
            print(f"{name:<{width}}  {description}")
        return 0
    from surgeon.modelio import guard_outputs
    from surgeon.zoo import export_paths

    planned = export_paths(args.output_dir, args.model, args.size, args.opset, args.aten_fallback)
    guard_outputs([(planned["onnx"], "the exported model", "-o"), (planned["inputs"], "the sample inputs", "-o"),
                   (planned["outputs"], "the sample outputs", "-o")])  # before any work: no folder, device, ...
    paths = export(args.model, args.size, args.opset, args.aten_fallback, args.output_dir)
    for path in paths.values():
        print(path)
    return 0

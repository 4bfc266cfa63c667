"""Rewrite the committed zoo fixtures: `python -m surgeon.zoo.regenerate [OUT_DIR]`.

Fixture-size exports for the tests: every model at opset 11 with the ATen fallback, BEVFormer-tiny
also at opset 13 with the fallback and at opset 16 without it, and the whole BEVFusion camera branch
at opset 16 (its bev_pool exports as a Loop there, as an ATen repeat_interleave at opset 11). Seeds are fixed,
so re-running gives identical npz files and identical ONNX bytes.
"""
from __future__ import annotations

import sys
from pathlib import Path

from . import MODELS, export_paths

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "zoo"
FIXTURES = tuple((name, 11, True) for name in MODELS) + (("bevformer-tiny", 13, True), ("bevformer-tiny", 16, False),
                                                          ("bevfusion-camera", 16, False))


def fixture_paths(name: str, opset: int, aten_fallback: bool) -> dict[str, Path]:
    """{"onnx", "inputs", "outputs"}: where the committed fixture files of one export lie."""
    return export_paths(FIXTURE_DIR, name, "fixture", opset, aten_fallback)


def main(argv: list[str] | None = None) -> int:
    from .exporter import export
    from .ophist import print_histogram

    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else FIXTURE_DIR
    for name, opset, aten in FIXTURES:
        print_histogram(export(name, "fixture", opset, aten, out_dir)["onnx"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The model zoo: PyTorch re-implementations of BEV perception models, exported as users export them.

This package imports without torch (names, sizes, opsets); `export` and the model modules need the
`zoo` extra. See docs/zoo.md for what each export contains and which targets its ops break.
"""
from __future__ import annotations

from pathlib import Path

from surgeon.errors import SurgeonError, suggest

MODELS = {
    "bevformer-tiny": "BEVFormer-tiny: ResNet-50, FPN, 3 encoder and 6 decoder layers, 6 cameras",
    "bevformer-nmsfree": "BEVFormer's NMS-free box coder (topk, &=, atan2, inverse) as post-processing",
    "bevfusion-camera-backbone": "BEVFusion camera backbone: ResNet-50, LSS FPN, depthnet (before bev_pool)",
    "bevfusion-camera-vtransform": "BEVFusion camera BEV downsampling after bev_pool",
    "bevfusion-camera": "BEVFusion's whole camera branch: backbone, bev_pool (index arrays as inputs), vtransform",
    "bevfusion-fuser-head": "BEVFusion conv fuser, SECOND decoder and TransFusion head",
    "sparse4d-head": "Sparse4D head: deformable feature aggregation with grid_sample over 6 cameras",
}
SIZES = ("fixture", "full")
OPSETS = (11, 13, 16)
MISSING_TORCH = "surgeon zoo needs the zoo extra: pip install 'surgeon[zoo]'"


def check_choice(what: str, value, choices) -> None:
    """Raise a SurgeonError naming the parameter when `value` is not one of `choices`."""
    if value not in choices:
        same_text = [choice for choice in choices if str(choice) == str(value)]
        if same_text:  # opset="16" from Python: say the type, not "did you mean '16'?"
            raise SurgeonError(f"{what} must be of type {type(same_text[0]).__name__}, not {type(value).__name__}: "
                               f"{value!r}; choose one of: {', '.join(map(str, choices))}")
        raise SurgeonError(f"unknown {what} {value!r}; choose one of: {', '.join(map(str, choices))}",
                           hint=suggest(value, choices))


def export_paths(out_dir: str | Path, model_name: str, size: str, opset: int, aten_fallback: bool) -> dict[str, Path]:
    """{"onnx", "inputs", "outputs"}: the files one export writes, named after the stem
    `<model>.<size>.opset<N>[-aten]` (e.g. `bevformer-tiny.fixture.opset11-aten.inputs.npz`)."""
    stem = f"{model_name}.{size}.opset{opset}{'-aten' if aten_fallback else ''}"
    return {kind: Path(out_dir) / f"{stem}{suffix}"
            for kind, suffix in (("onnx", ".onnx"), ("inputs", ".inputs.npz"), ("outputs", ".outputs.npz"))}


def export(model_name: str, size: str = "fixture", opset: int = 16, aten_fallback: bool = False,
           out_dir: str | Path = ".") -> dict[str, Path]:
    """Export one zoo model; see `surgeon.zoo.exporter.export`. Needs torch."""
    check_choice("model", model_name, MODELS)
    try:
        from .exporter import export as _export
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise SurgeonError(MISSING_TORCH) from exc
    return _export(model_name, size, opset, aten_fallback, out_dir)

"""Export a zoo model the way users do: TorchScript `torch.onnx.export`, seeded weights and inputs.

Every export writes three files next to each other (see `export_paths`): the graph, its sample
inputs keyed by ONNX input names and the PyTorch outputs keyed by ONNX output names.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from surgeon.errors import SurgeonError

from . import MODELS, OPSETS, SIZES, bevformer, bevfusion, check_choice, export_paths, sparse4d

SEED = 0

EXAMPLES = {
    "bevformer-tiny": bevformer.tiny_example,
    "bevformer-nmsfree": bevformer.nmsfree_example,
    "bevfusion-camera-backbone": bevfusion.backbone_example,
    "bevfusion-camera-vtransform": bevfusion.vtransform_example,
    "bevfusion-camera": bevfusion.camera_example,
    "bevfusion-fuser-head": bevfusion.fuser_head_example,
    "sparse4d-head": sparse4d.head_example,
}


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1: on failure the TorchScript exporter prints the whole Torch IR graph
    there from C++ (thousands of lines), which would bury the one-line error."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def build(model_name: str, size: str):
    """(module in eval mode, {input name: tensor}, [output names]) with seeded weights and inputs."""
    check_choice("model", model_name, MODELS)
    check_choice("size", size, SIZES)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        module, inputs, output_names = EXAMPLES[model_name](size, torch.Generator().manual_seed(SEED + 1))
    return module.eval(), inputs, output_names


def export(model_name: str, size: str = "fixture", opset: int = 16, aten_fallback: bool = False,
           out_dir: str | Path = ".") -> dict[str, Path]:
    """Write the ONNX graph and its sample inputs and outputs; returns {"onnx", "inputs", "outputs"}: paths."""
    check_choice("opset", opset, OPSETS)
    module, inputs, output_names = build(model_name, size)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = export_paths(out_dir, model_name, size, opset, aten_fallback)
    args = tuple(inputs.values())
    export_type = (torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK if aten_fallback
                   else torch.onnx.OperatorExportTypes.ONNX)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = module(*args)
        try:
            with _quiet_stdout():
                torch.onnx.export(module, args, str(paths["onnx"]), dynamo=False, opset_version=opset,
                                  operator_export_type=export_type, do_constant_folding=True,
                                  input_names=list(inputs), output_names=output_names,
                                  dynamic_axes=getattr(module, "dynamic_axes", None))
        except torch.onnx.errors.OnnxExporterError as exc:
            how = "with the ATen fallback" if aten_fallback else "without the ATen fallback"
            raise SurgeonError(f"exporting {model_name} at opset {opset} {how} failed: {exc}") from exc
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    np.savez(paths["inputs"], **{name: t.numpy() for name, t in inputs.items()})
    np.savez(paths["outputs"], **{name: t.numpy() for name, t in zip(output_names, outputs)})
    return paths

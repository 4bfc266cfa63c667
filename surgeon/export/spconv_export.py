"""Export a spconv backbone: trace it on real voxels, write the ONNX graph and the tensors to check it with.

    result = export_spconv(model, features, indices, flavour="libspconv")
    save_model_atomic(result.model, "scn.onnx"); save_tensors(result, "scn")   # scn.voxels/.coors/.output

The model is called as `model(features, indices, batch_size)` (OpenPCDet / CenterPoint backbones)
and must return a tensor built from the traced ops (the dense BEV map, or a SparseConvTensor).
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from spconv.pytorch.conv import SparseConvolution

import surgeon.export.spconv_handlers  # noqa: F401  (registers the spconv handlers)
from surgeon.errors import SurgeonError, first_line, suggest
from surgeon.export import SPCONV_MODELS
from surgeon.export.graph import build_model
from surgeon.export.tensor_file import write_tensor
from surgeon.export.tracer import Trace, trace_model
from surgeon.modelio import write_bytes_atomic


@dataclass
class SpconvExport:
    """The exported model, the trace it came from, the inputs it was traced on and PyTorch's output."""

    model: onnx.ModelProto
    trace: Trace
    features: np.ndarray
    indices: np.ndarray
    output: np.ndarray


def build_zoo_model(name: str, checkpoint=None, trust_checkpoint: bool = False) -> torch.nn.Module:
    """The named model with seeded random weights, or the weights of an OpenPCDet `checkpoint` file
    (`trust_checkpoint`: see `load_checkpoint`)."""
    if name != "centerpoint-scn":
        raise SurgeonError(f"unknown spconv model '{name}'; known: {', '.join(SPCONV_MODELS)}",
                           hint=suggest(name, SPCONV_MODELS))
    from surgeon.zoo.centerpoint import build_centerpoint_scn, load_backbone_checkpoint

    model = build_centerpoint_scn()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, trust_checkpoint)
        if not isinstance(state, dict):
            raise SurgeonError(f"checkpoint holds a {type(state).__name__}, not a state dict", file=checkpoint)
        try:
            load_backbone_checkpoint(model, state)
        except SurgeonError as exc:
            raise SurgeonError(exc.message, file=checkpoint) from None
    return model.eval()


def load_checkpoint(path, trust: bool = False):
    """What `torch.save` wrote to `path`, unpickled safely: tensors, Python values and NumPy scalars and
    arrays (OpenPCDet checkpoints keep `it`/`epoch` as NumPy scalars beside the weights), nothing that
    could run code. `trust` unpickles anything, which runs whatever code the file names: only for files
    whose source you trust."""
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  torch's unpickler raises anything (KeyError on junk bytes)
        text = _ANSI_ESCAPE.sub("", str(exc))
        if _WEIGHTS_ONLY_ERROR not in text:
            message = _ANSI_ESCAPE.sub("", first_line(exc))
            raise SurgeonError(f"cannot read checkpoint: {type(exc).__name__}: {message}", file=path) from None
        reason = _weights_only_reason(text)
        if "global" not in reason.lower():  # not a pickle at all ("Unsupported operand"): trusting it won't help
            raise SurgeonError(f"cannot read checkpoint: {reason}", file=path) from None
        raise SurgeonError(f"checkpoint refused by safe loading: {reason}", file=path,
                           hint="--trust-checkpoint loads it anyway, running any code the file names: only for "
                                "files you trust") from None


_WEIGHTS_ONLY_ERROR = "WeightsUnpickler error:"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _numpy_safe_globals() -> list:
    """The NumPy globals that rebuild scalars, arrays and dtypes, under NumPy 2's and NumPy 1's module
    names (most checkpoints were saved with NumPy 1). Object arrays stay out: their items are arbitrary
    Python objects."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1
        from numpy.core import multiarray

    names = [(f, f"{module}.{f.__name__}") for f in (multiarray.scalar, multiarray._reconstruct)
             for module in ("numpy._core.multiarray", "numpy.core.multiarray")]
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"] if code != "O"}
    return [np.dtype, np.ndarray, *names, *sorted(dtype_classes, key=str)]


def _weights_only_reason(text: str) -> str:
    """The line of torch's weights-only error that says what it refused (e.g. `Unsupported global: GLOBAL
    argparse.Namespace was not an allowed global by default.`), without its advice on torch.load's
    Python arguments."""
    reason = text.split(_WEIGHTS_ONLY_ERROR, 1)[1].strip()
    return reason.splitlines()[0].split(" Please use ", 1)[0].rstrip()


@contextlib.contextmanager
def spconv_cpu_quirks(model: torch.nn.Module, device: torch.device):
    """Work around two spconv 2.3.8 CPU defects for the duration of the block.

    - Its CPU kernels refuse a bias in eval mode ("cpu don't support act and bias") but add it after
      the GEMM in training mode; a convolution has no other train/eval difference under no_grad, so
      biased convolutions run with `training=True` (BatchNorm stays in eval).
    - Its CPU scatter-add races when torch runs more than one thread: the same input gave outputs
      0.16 apart on 2 threads (measured on the CenterPoint backbone); one thread is exact and faster.
    """
    if device.type != "cpu":
        yield
        return
    switched = [m for m in model.modules()
                if isinstance(m, SparseConvolution) and m.bias is not None and not m.training]
    threads = torch.get_num_threads()
    for module in switched:
        module.training = True
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for module in switched:
            module.training = False


def check_voxels(model: torch.nn.Module, features: np.ndarray, indices: np.ndarray, batch_size: int = 1,
                 features_file=None, indices_file=None) -> None:
    """One clear error naming the file when the voxels cannot be what `model` reads: features [N, C] with
    the channels of its first sparse convolution, indices [N, 1 + ndim] integers (batch, z, y, x) inside
    the batch and the model's grid (`sparse_shape`), finite features, no two voxels at one coordinate.
    spconv fails on such input with an assertion, or a C++ error and its debug output, or (repeated or
    non-finite voxels) returns an output the CPU references cannot reproduce."""
    first = next((m for m in model.modules() if isinstance(m, SparseConvolution)), None)
    grid = next((list(m.sparse_shape) for m in model.modules() if getattr(m, "sparse_shape", None) is not None),
                None)
    ndim = len(grid) if grid is not None else first.ndim if first is not None else 3
    channels = first.in_channels if first is not None else None
    if features.ndim != 2 or features.dtype.kind not in "fiu" or (channels and features.shape[1] != channels):
        wanted = f"[N, {channels}]" if channels else "[N, C]"
        raise SurgeonError(f"voxel features must be a {wanted} float array (the model reads {channels or 'C'} "
                           f"channels per voxel), got {list(features.shape)} {features.dtype}", file=features_file)
    not_finite = np.argwhere(~np.isfinite(features))
    if len(not_finite):
        row, channel = (int(i) for i in not_finite[0])
        rows = len(np.unique(not_finite[:, 0]))
        raise SurgeonError(f"voxel {row}: feature {channel} is {features[row, channel]}; {rows} voxel(s) with NaN "
                           f"or infinite features", file=features_file)
    if indices.ndim != 2 or indices.shape[1] != 1 + ndim:
        raise SurgeonError(f"voxel coordinates must be [N, {1 + ndim}] as batch, {', '.join('zyx'[-ndim:])}"
                           f"{'' if ndim <= 3 else ', ...'}, got {list(indices.shape)}", file=indices_file)
    if indices.dtype.kind not in "iu":
        raise SurgeonError(f"voxel coordinates must be integers (int32), got {indices.dtype}", file=indices_file)
    if len(indices) != len(features):
        raise SurgeonError(f"{len(indices)} voxel coordinates for {len(features)} voxel features"
                           + (f" in {features_file}" if features_file else ""), file=indices_file)
    if len(indices) == 0:
        raise SurgeonError("no voxels: the arrays are empty", file=indices_file)
    axes = ["batch index"] + [f"{axis} coordinate" for axis in ("zyx"[-ndim:] if ndim <= 3 else range(1, ndim + 1))]
    limits = [batch_size] + (grid or [None] * ndim)
    for column, (axis, limit) in enumerate(zip(axes, limits)):
        values = indices[:, column].astype(np.int64)
        bad = np.flatnonzero((values < 0) | (values >= limit if limit is not None else False))
        if bad.size:
            row = int(bad[0])
            where = f"0..{limit - 1}" if limit is not None else ">= 0"
            what = f"batch size {batch_size}" if column == 0 else f"the model's grid {grid} as z, y, x"
            raise SurgeonError(f"voxel {row}: {axis} {int(values[row])} is outside {where} ({what}); "
                               f"{bad.size} voxel(s) out of range", file=indices_file)
    repeated = repeated_voxels(indices)
    if repeated.size:
        row = int(repeated[0])
        earlier = int(np.flatnonzero((indices == indices[row]).all(axis=1))[0])
        raise SurgeonError(f"voxel {row}: coordinates {indices[row].tolist()} repeat voxel {earlier}'s; "
                           f"{repeated.size} voxel(s) repeat an earlier one (one row per grid cell: merge them "
                           f"when voxelizing)", file=indices_file)


def repeated_voxels(indices: np.ndarray) -> np.ndarray:
    """The rows whose coordinates an earlier row has, ascending. Rows are sorted lexicographically rather
    than by a linear key, so no coordinate range can overflow it."""
    order = np.lexsort(indices.T[::-1])  # stable: rows with equal coordinates keep their order
    ordered = indices[order]
    return np.sort(order[1:][(ordered[1:] == ordered[:-1]).all(axis=1)])


@contextlib.contextmanager
def _quiet_fx_deprecation():
    """Silence torch 2.13's one-time log line that `is_fx_tracing` is deprecated: spconv 2.3.8's
    SparseConvTensor class asks it on construction, and the line says nothing about the user's export."""
    logger = logging.getLogger("torch.fx._symbolic_trace")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def trace_spconv(model: torch.nn.Module, features: torch.Tensor, indices: torch.Tensor,
                 batch_size: int = 1) -> Trace:
    """Trace `model(features, indices, batch_size)` with graph inputs `features` and `indices`."""
    with spconv_cpu_quirks(model, features.device), warnings.catch_warnings(), _quiet_fx_deprecation():
        # spconv 2.3.8's dense() indexes with a list, which torch 2.13 deprecates on every call
        warnings.filterwarnings("ignore", "Using a non-tuple sequence for multidimensional indexing")
        return trace_model(model, (features, indices, batch_size), inputs={"features": features},
                           sparse_indices={"features": ("indices", indices)})


def check_batch_size(flavour: str, batch_size: int, name: str = "batch_size") -> None:
    """Refuse a batch the flavour cannot run, naming the parameter (`name`) it came from."""
    if flavour == "libspconv" and batch_size != 1:
        raise SurgeonError(f"{name} {batch_size}: the libspconv flavour takes batch size 1 only: libspconv runs "
                           f"one scan at a time (engine.hpp: the batch 'must be 1 now')",
                           hint="use batch size 1, or the standard flavour")


def export_spconv(model: torch.nn.Module, features, indices, flavour: str = "standard", batch_size: int = 1,
                  fold_batchnorm: bool = True, fold_relu: bool = True, files=(None, None)) -> SpconvExport:
    """Trace `model` on (features [N, C], indices [N, 4] int32 as batch, z, y, x) in float32 on the CPU.

    The batch size is checked against the flavour and the arrays against the model first (`check_batch_size`,
    `check_voxels`); `files`: where they came from, for the messages."""
    check_batch_size(flavour, batch_size)
    features, indices = np.asarray(features), np.asarray(indices)
    check_voxels(model, features, indices, batch_size, *files)
    features_t = torch.from_numpy(features.astype(np.float32))
    indices_t = torch.from_numpy(indices.astype(np.int32))
    trace = trace_spconv(model.eval(), features_t, indices_t, batch_size)
    onnx_model = build_model(trace, flavour, fold_batchnorm, fold_relu)
    output = trace.outputs_data[0].detach().cpu().numpy()
    return SpconvExport(onnx_model, trace, features, indices, output)


def save_tensors(result: SpconvExport, stem) -> list[Path]:
    """Write `<stem>.voxels`, `.coors`, `.output` (libspconv tensor files, float16 / int32 / float16, as
    its demo reads them) and `<stem>.npz` (float32 features and output, int32 indices)."""
    stem = Path(stem)
    written = [
        write_tensor(f"{stem}.voxels", result.features.astype(np.float16)),
        write_tensor(f"{stem}.coors", result.indices.astype(np.int32)),
        write_tensor(f"{stem}.output", result.output.astype(np.float16)),
    ]
    arrays = {"features": result.features.astype(np.float32), "indices": result.indices.astype(np.int32),
              "output": result.output.astype(np.float32)}
    npz = io.BytesIO()
    np.savez(npz, **arrays)
    return written + [write_bytes_atomic(f"{stem}.npz", npz.getvalue())]


def check_with_references(result: SpconvExport, fold_batchnorm: bool = True, fold_relu: bool = True,
                          float16_weights: bool = False) -> dict:
    """Run the `standard` graph of the same trace on the CPU references; compare with PyTorch's output.

    With `float16_weights` the weights and input features are rounded to float16 first, as the
    libspconv flavour stores them (activations stay float32, so libspconv's own float16 arithmetic
    adds to this). Returns max_abs_error, output_scale (max |PyTorch output|), relative_error.
    """
    from surgeon.validation.runners import ReferenceRunner

    if result.trace.outputs[0].is_sparse:
        raise SurgeonError("the check compares dense outputs; this model returns a sparse tensor (end it with "
                           ".dense() or compare the standard graph's features and indices yourself)")
    standard = build_model(result.trace, "standard", fold_batchnorm, fold_relu)
    features = result.features.astype(np.float32)
    if float16_weights:
        features = features.astype(np.float16).astype(np.float32)
        for index, tensor in enumerate(standard.graph.initializer):
            if tensor.data_type == onnx.TensorProto.FLOAT:
                rounded = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
                standard.graph.initializer[index].CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    feeds = {"features": features, "indices": result.indices.astype(np.int32)}
    with ReferenceRunner(standard, name="spconv-reference") as runner:
        actual = runner.infer(feeds)[result.trace.outputs[0].name]
    error = float(np.abs(actual.astype(np.float32) - result.output).max())
    scale = float(np.abs(result.output).max())
    return {"max_abs_error": error, "output_scale": scale, "relative_error": error / scale if scale else error}


def layers_over_output_bound(model: onnx.ModelProto) -> list[tuple[str, int, int]]:
    """(node, traced output voxels, output_bound) for every SparseConvolution whose traced output is
    larger than the `output_bound` libspconv allocates for it: such a layer overflows on that input."""
    over = []
    for node in model.graph.node:
        if node.op_type == "SparseConvolution":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            voxels, bound = int(attrs["output_shape"][0]), int(attrs["output_bound"])
            if voxels > bound:
                over.append((node.name, voxels, bound))
    return over

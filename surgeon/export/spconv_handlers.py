"""Handlers for spconv.pytorch 2.x backbones and the tensor ops around them.

One op per call, with the attribute names NVIDIA's exporter (3DSparseConvolution
`tool/*/exptool.py`) writes and its ONNX parser reads:

    SubMConv3d, SparseConv3d, SparseInverseConv3d,
    SparseConvTranspose3d                            ─►  SparseConvolution (weight [O, k.., I], bias)
    nn.BatchNorm1d on the features                   ─►  BatchNormalization  (folded by the builder)
    nn.ReLU on the features                          ─►  Relu                (folded as `activation`)
    features + features, SparseConvTensor + ...      ─►  Add
    SparseConvTensor.dense()                         ─►  ScatterDense        ([B, C, D, H, W])
    .view / .reshape / .permute of a traced tensor   ─►  Reshape / Transpose

Importing this module registers the handlers.
"""
from __future__ import annotations

import spconv.pytorch as spconv
import torch
from cumm import tensorview as tv
from spconv.pytorch.conv import SparseConvolution
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.export.tracer import SPARSE_DOMAIN, Call, handler

DEFAULT_OUTPUT_BOUND = 200000  # exptool's default: the most voxels a layer may output in libspconv
ACTIVATION_NAMES = {
    tv.gemm.Activation.None_: "None",
    tv.gemm.Activation.ReLU: "ReLU",
    tv.gemm.Activation.Sigmoid: "Sigmoid",
    tv.gemm.Activation.LeakyReLU: "LeakyReLU",
}


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _numpy(tensor: torch.Tensor):
    return tensor.detach().cpu().numpy().copy()


def sparse_convolution(call: Call) -> None:
    conv: SparseConvolution = call.target
    x = call.args[0]
    if len(call.args) > 1 and call.args[1] is not None or call.kwargs.get("add_input") is not None:
        raise SurgeonError(f"'{call.name}': SparseConvolution with a fused add_input has no libspconv form")
    y = call.output
    source = call.input(x)
    # A convolution without indice_key gets its own rule book: libspconv shares rule books by this name.
    rulebook = conv.indice_key or call.name
    extra = {}
    if conv.inverse:
        made_by = call.trace.rulebooks.get(conv.indice_key)
        if made_by is None:
            raise SurgeonError(f"'{call.name}': inverse convolution with indice_key '{conv.indice_key}' "
                               f"but no traced forward convolution made that rule book")
        extra = {"index_inputs": [made_by["indices"]],
                 "standard_attrs": {f"rulebook_{k}": v for k, v in made_by.items() if k != "indices"}}
    weights = {"weight": _numpy(conv.weight)}
    if conv.bias is not None:
        weights["bias"] = _numpy(conv.bias)
    attrs = {
        "ndim": int(conv.ndim),
        "input_spatial_shape": _ints(x.spatial_shape),
        "output_spatial_shape": _ints(y.spatial_shape),
        "in_channels": int(conv.in_channels),
        "out_channels": int(conv.out_channels),
        "kernel_size": _ints(conv.kernel_size),
        "output_bound": int(getattr(conv, "output_bound", DEFAULT_OUTPUT_BOUND)),
        "stride": _ints(conv.stride),
        "dilation": _ints(conv.dilation),
        "padding": _ints(conv.padding),
        "transposed": int(conv.transposed),
        "inverse": int(conv.inverse),
        "output_padding": _ints(conv.output_padding),
        "groups": int(conv.groups),
        "subm": int(conv.subm),
        "rulebook": rulebook,
        "activation": ACTIVATION_NAMES[conv.act_type],
        "input_shape": _ints(x.features.shape),
        "output_shape": _ints(y.features.shape),
    }
    call.emit("SparseConvolution", [source], attrs, weights, domain=SPARSE_DOMAIN, indices="new", **extra)
    if not conv.subm and not conv.inverse and conv.indice_key and conv.indice_key not in call.trace.rulebooks:
        call.trace.rulebooks[conv.indice_key] = {
            "indices": source.indices, "kernel_size": attrs["kernel_size"], "stride": attrs["stride"],
            "padding": attrs["padding"], "dilation": attrs["dilation"],
            "spatial_shape": attrs["input_spatial_shape"]}


for _conv_type in (spconv.SubMConv3d, spconv.SparseConv3d, spconv.SparseInverseConv3d,
                   spconv.SparseConvTranspose3d):
    handler(_conv_type)(sparse_convolution)


@handler(nn.BatchNorm1d)
def batch_norm(call: Call) -> None:
    bn: nn.BatchNorm1d = call.target
    if bn.training or bn.running_mean is None:
        raise SurgeonError(f"'{call.name}': BatchNorm1d must be in eval mode with running statistics "
                           f"(call model.eval())")
    c = bn.num_features
    weights = {
        "scale": _numpy(bn.weight) if bn.weight is not None else torch.ones(c).numpy(),
        "B": _numpy(bn.bias) if bn.bias is not None else torch.zeros(c).numpy(),
        "mean": _numpy(bn.running_mean),
        "var": _numpy(bn.running_var),
    }
    call.emit("BatchNormalization", [call.input(call.args[0])], {"epsilon": float(bn.eps)}, weights)


@handler(nn.ReLU)
def relu(call: Call) -> None:
    call.emit("Relu", [call.input(call.args[0])])


def _add_if_traced(call: Call) -> None:
    """`a + b` where both sides are traced (a residual connection); other additions are not the model's graph."""
    a, b = call.trace.value_of(call.target), call.trace.value_of(call.args[0])
    if a is not None and b is not None:
        call.emit("Add", [a, b])


handler(torch.Tensor, "__add__")(_add_if_traced)
handler(spconv.SparseConvTensor, "__add__")(_add_if_traced)


@handler(spconv.SparseConvTensor, "dense")
def scatter_dense(call: Call) -> None:
    x = call.target
    channels_first = call.args[0] if call.args else call.kwargs.get("channels_first", True)
    if not channels_first:
        raise SurgeonError(f"'{call.name}': dense(channels_first=False) has no libspconv form; use dense()")
    attrs = {"input_spatial_shape": _ints(x.spatial_shape), "format": "zyx", "output_shape": _ints(call.output.shape)}
    call.emit("ScatterDense", [call.input(x)], attrs, domain=SPARSE_DOMAIN, indices=None)


def _reshape_if_traced(call: Call) -> None:
    source = call.trace.value_of(call.target)
    if source is not None and not source.is_sparse:
        call.emit("Reshape", [source], {"dims": _ints(call.output.shape)}, indices=None)


for _method in ("view", "reshape"):
    handler(torch.Tensor, _method)(_reshape_if_traced)


@handler(torch.Tensor, "permute")
def permute(call: Call) -> None:
    source = call.trace.value_of(call.target)
    if source is not None and not source.is_sparse:
        dims = call.args[0] if len(call.args) == 1 and isinstance(call.args[0], (tuple, list)) else call.args
        call.emit("Transpose", [source], {"dims": _ints(dims)}, indices=None)

"""Handlers for spconv.pytorch 2.x backbones and the tensor ops around them.

One op per call, with the attribute names NVIDIA's exporter (3DSparseConvolution
`tool/*/exptool.py`) writes and its ONNX parser reads:

    SubMConv3d, SparseConv3d, SparseInverseConv3d,
    SparseConvTranspose3d                            ─►  SparseConvolution (weight [O, k.., I], bias)
    SparseConvTensor + SparseConvTensor              ─►  Add
    SparseConvTensor.dense()                         ─►  ScatterDense        ([B, C, D, H, W])

and, from `surgeon.export.torch_handlers`, BatchNorm1d / ReLU on the features (folded into the
convolution by the graph builder), `features + features`, and view / reshape / permute of the dense
map. Importing this module registers all of them.
"""
from __future__ import annotations

import numpy as np
import spconv.pytorch as spconv
from cumm import tensorview as tv
from spconv.pytorch import conv as spconv_conv
from spconv.pytorch.conv import SparseConvolution

from surgeon.errors import SurgeonError
from surgeon.export.torch_handlers import add_if_traced, as_ints, to_numpy
from surgeon.export.tracer import SPARSE_DOMAIN, Call, handler

DEFAULT_OUTPUT_BOUND = 200000  # exptool's default: the most voxels a layer may output in libspconv
ACTIVATION_NAMES = {
    tv.gemm.Activation.None_: "None",
    tv.gemm.Activation.ReLU: "ReLU",
    tv.gemm.Activation.Sigmoid: "Sigmoid",
    tv.gemm.Activation.LeakyReLU: "LeakyReLU",
}


def effective_weight(conv: SparseConvolution) -> np.ndarray:
    """The weight [Cout, k.., Cin] of the convolution `conv` computes, y = x @ W[o, i]^T per offset.

    spconv 2.3 runs a 1x1 convolution (`conv.conv1x1`: kernel 1, and stride 1 unless submanifold) as
    one matmul that, with FILTER_HWIO off (its default), reads the [Cout, 1, 1, 1, Cin] storage as a
    [Cin, Cout] matrix: the module computes x @ weight.view(Cin, Cout), on the CPU and GPU alike. The
    matrix of that product is what libspconv and the CPU references must get.
    """
    weight = to_numpy(conv.weight)
    if conv.conv1x1 and not spconv_conv.FILTER_HWIO:
        matrix = weight.reshape(conv.in_channels, conv.out_channels)
        return np.ascontiguousarray(matrix.T).reshape(weight.shape)
    return weight


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
    weights = {"weight": effective_weight(conv)}
    if conv.bias is not None:
        weights["bias"] = to_numpy(conv.bias)
    attrs = {
        "ndim": int(conv.ndim),
        "input_spatial_shape": as_ints(x.spatial_shape),
        "output_spatial_shape": as_ints(y.spatial_shape),
        "in_channels": int(conv.in_channels),
        "out_channels": int(conv.out_channels),
        "kernel_size": as_ints(conv.kernel_size),
        "output_bound": int(getattr(conv, "output_bound", DEFAULT_OUTPUT_BOUND)),
        "stride": as_ints(conv.stride),
        "dilation": as_ints(conv.dilation),
        "padding": as_ints(conv.padding),
        "transposed": int(conv.transposed),
        "inverse": int(conv.inverse),
        "output_padding": as_ints(conv.output_padding),
        "groups": int(conv.groups),
        "subm": int(conv.subm),
        "rulebook": rulebook,
        "activation": ACTIVATION_NAMES[conv.act_type],
        "input_shape": as_ints(x.features.shape),
        "output_shape": as_ints(y.features.shape),
    }
    call.emit("SparseConvolution", [source], attrs, weights, domain=SPARSE_DOMAIN, indices="new", **extra)
    if not conv.subm and not conv.inverse and conv.indice_key and conv.indice_key not in call.trace.rulebooks:
        call.trace.rulebooks[conv.indice_key] = {
            "indices": source.indices, "kernel_size": attrs["kernel_size"], "stride": attrs["stride"],
            "padding": attrs["padding"], "dilation": attrs["dilation"]}


for _conv_type in (spconv.SubMConv3d, spconv.SparseConv3d, spconv.SparseInverseConv3d,
                   spconv.SparseConvTranspose3d):
    handler(_conv_type)(sparse_convolution)


handler(spconv.SparseConvTensor, "__add__")(add_if_traced)


@handler(spconv.SparseConvTensor, "dense")
def scatter_dense(call: Call) -> None:
    x = call.target
    channels_first = call.args[0] if call.args else call.kwargs.get("channels_first", True)
    if not channels_first:
        raise SurgeonError(f"'{call.name}': dense(channels_first=False) has no libspconv form; use dense()")
    attrs = {"input_spatial_shape": as_ints(x.spatial_shape), "format": "zyx",
             "output_shape": as_ints(call.output.shape)}
    call.emit("ScatterDense", [call.input(x)], attrs, domain=SPARSE_DOMAIN, indices=None)

"""Handlers for the plain torch operations around custom modules: ReLU, BatchNorm1d, +, view/reshape/permute.

    nn.ReLU                                  ─►  Relu
    nn.BatchNorm1d (eval)                    ─►  BatchNormalization (scale, B, mean, var initializers)
    a + b, a += b, both traced (residuals)   ─►  Add
    .view / .reshape / .permute of a traced
    dense tensor                             ─►  Reshape / Transpose (`dims`: target shape / permutation)

Operations on tensors the trace does not know (shapes, index arithmetic) pass through unrecorded.
Importing this module registers the handlers; `surgeon.export.spconv_handlers` imports it.
"""
from __future__ import annotations

import torch
from torch import nn

from surgeon.errors import SurgeonError
from surgeon.export.tracer import Call, handler


def as_ints(values) -> list[int]:
    return [int(v) for v in values]


def to_numpy(tensor: torch.Tensor):
    return tensor.detach().cpu().numpy().copy()


@handler(nn.BatchNorm1d)
def batch_norm(call: Call) -> None:
    bn: nn.BatchNorm1d = call.target
    if bn.training or bn.running_mean is None:
        raise SurgeonError(f"'{call.name}': BatchNorm1d must be in eval mode with running statistics "
                           f"(call model.eval())")
    c = bn.num_features
    weights = {
        "scale": to_numpy(bn.weight) if bn.weight is not None else torch.ones(c).numpy(),
        "B": to_numpy(bn.bias) if bn.bias is not None else torch.zeros(c).numpy(),
        "mean": to_numpy(bn.running_mean),
        "var": to_numpy(bn.running_var),
    }
    call.emit("BatchNormalization", [call.input(call.args[0])], {"epsilon": float(bn.eps)}, weights)


@handler(nn.ReLU)
def relu(call: Call) -> None:
    call.emit("Relu", [call.input(call.args[0])])


def add_if_traced(call: Call) -> None:
    """`a + b` where both sides are traced (a residual connection); other additions are not the model's graph."""
    a, b = call.trace.value_of(call.target), call.trace.value_of(call.args[0])
    if a is not None and b is not None:
        call.emit("Add", [a, b])


handler(torch.Tensor, "__add__")(add_if_traced)
# `out += identity` (spconv 1.x style blocks, SparseConvTensor.__iadd__): the tensor keeps its identity
# and becomes the Add's output, so later uses read the sum.
handler(torch.Tensor, "__iadd__")(add_if_traced)


def _reshape_if_traced(call: Call) -> None:
    source = call.trace.value_of(call.target)
    if source is not None and not source.is_sparse:
        call.emit("Reshape", [source], {"dims": as_ints(call.output.shape)}, indices=None)


for _method in ("view", "reshape"):
    handler(torch.Tensor, _method)(_reshape_if_traced)


@handler(torch.Tensor, "permute")
def permute(call: Call) -> None:
    source = call.trace.value_of(call.target)
    if source is not None and not source.is_sparse:
        dims = call.args[0] if len(call.args) == 1 and isinstance(call.args[0], (tuple, list)) else call.args
        rank = len(source.shape)
        call.emit("Transpose", [source], {"dims": [int(d) % rank for d in dims]}, indices=None)

"""Replace Clip on integer tensors, which opset 11 (float-only Clip) and TensorRT reject.

Before:  x:int64 ─► Clip(x, lo, hi) ─► y
After (mode minmax, opset >= 12):   x ─► Max(x, lo) ─► Min(·, hi) ─► y
After (mode minmax, opset <= 11, or int64 on ONNX Runtime):
                                    x ─► Where(x < lo, lo, x) ─► Where(· > hi, hi, ·) ─► y
After (mode cast):                  x ─► Cast(float64) ─► Clip ─► Cast(int64) ─► y

`minmax` is exact for every integer type. Max and Min accept integers only from opset 12, so below
that (the graph's opset or the target's, whichever is lower) the same min/max is spelled with
Less/Greater and Where, which opset 9 already defines for integers. The Where spelling is also used for
int64 on ONNX Runtime: its int64 Max/Min with a scalar operand are wrong near +-2**31 (1.31, measured:
Min(-2147483649, -1) = -1, Min(2147483648, 0) = 0; Less/Greater are right). As in Clip, the lower bound is
applied first, so lo > hi gives hi everywhere (torch.clamp does the same).

`cast` goes through float64, which holds every int32 and every int64 up to 2**53 exactly (float32
would already round integers above 2**24). TensorRT has no float64, so `cast` is refused there.

Missing bounds (an empty input name, or no such input) are simply not applied. Float bounds (opset
< 11 attributes, or the float constants torch 2.13 writes next to an int64 input) become ceil(min)
and floor(max) in the input's type, saturated to its range, which clips an integer exactly as the
float bound would; a bound at the type's limit clips nothing and is dropped. Float Clips are left alone.
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from surgeon.errors import PassError
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import Rewrite, const_value, dtype_of, find_nodes, is_op

INTEGER_MAX_MIN_SINCE = 12  # Max-12 / Min-12 added the integer types


def integer_bound(value: float, rounding, dtype, node_name: str) -> int:
    """`rounding(value)` (ceil or floor) saturated to the integer type's range."""
    info = np.iinfo(dtype)
    if math.isnan(value):
        raise PassError(f"Clip node '{node_name}' has a NaN bound, which means nothing for integers")
    if math.isinf(value):
        return info.min if value < 0 else info.max
    return max(info.min, min(info.max, rounding(value)))


@register_pass("clip-int")
class ClipInt(Pass):
    """Replace Clip on int32/int64 (any integer type) by Max/Min (or Where) with constants of that type."""

    params = {
        "mode": Param(str, "minmax", choices=("minmax", "cast"),
                      help="minmax: exact Max/Min (Where below opset 12); cast: Clip in float64 between Casts"),
    }
    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        if self.mode == "cast" and ctx.target.is_tensorrt:
            raise PassError(f"clip-int mode 'cast' needs float64, which target '{ctx.target.name}' lacks; "
                            "use mode 'minmax'")
        opset = min(ctx.opset, ctx.target.opset)
        for node in find_nodes(graph, lambda n: is_op(n, "Clip")):
            dtype = dtype_of(node.inputs[0])
            if dtype is None or dtype.kind not in "iu":
                if dtype is None:
                    result.note(f"{node.name}: left alone, the input's type is unknown")
                continue
            rw = Rewrite(graph, ctx, node)
            if self.mode == "cast":
                self.through_float64(rw, node, dtype)
            else:
                use_max_min = opset >= INTEGER_MAX_MIN_SINCE and not (
                    dtype == np.int64 and ctx.target.runtime == "onnxruntime")
                self.minmax(rw, node.inputs[0], *self.bounds(node, dtype), dtype, use_max_min)
            result.rewrote(node)
        return result

    @staticmethod
    def through_float64(rw, node, dtype):
        """Cast, the same Clip (bounds cast alike, attributes of opset < 11 kept), Cast back."""
        as_float = rw.op("Cast", [node.inputs[0]], {"to": onnx.TensorProto.DOUBLE}, suffix="to_float64",
                         dtype=np.float64)
        bounds = [rw.op("Cast", [b], {"to": onnx.TensorProto.DOUBLE}, suffix=f"{name}_float64", dtype=np.float64)
                  if b.name else b for name, b in zip(("min", "max"), node.inputs[1:])]
        clipped = rw.op("Clip", [as_float, *bounds], node.attrs, suffix="Clip_float64", dtype=np.float64)
        rw.finish("Cast", [clipped], {"to": onnx.helper.np_dtype_to_tensor_dtype(dtype)})

    @staticmethod
    def bounds(node, dtype):
        """(lower, upper): a tensor of the input's type, an integer array, or None where nothing is clipped.

        Float bounds (opset < 11 attributes, or float constants as torch's exporter writes them) become
        ceil(lower) and floor(upper) in the integer type, which clip integers exactly as the float would.
        """
        if "min" in node.attrs or "max" in node.attrs:
            found = [node.attrs.get("min"), node.attrs.get("max")]
        else:
            found = [t if t.name else None for t in node.inputs[1:3]] + [None] * (3 - len(node.inputs))
        bounds = []
        info = np.iinfo(dtype)
        for value, rounding, no_op in zip(found, (math.ceil, math.floor), (info.min, info.max)):
            if value is not None and not isinstance(value, (int, float)):
                constant = const_value(value)
                if constant is None:
                    bounds.append(value)
                    continue
                value = constant
            if value is None:
                bounds.append(None)
                continue
            values = np.asarray(value)
            if values.dtype.kind == "f":
                values = np.array([integer_bound(v, rounding, dtype, node.name) for v in values.ravel()],
                                  dtype=dtype).reshape(values.shape)
            bounds.append(None if values.size == 1 and values.item() == no_op else values.astype(dtype))
        return bounds

    @staticmethod
    def constant(rw, values, name):
        tensor = rw.const(values, name)
        tensor.values = tensor.values.reshape(values.shape)  # Rewrite.const makes 0-d values 1-d
        return tensor

    @staticmethod
    def as_type(rw, bound, dtype, name):
        """A runtime bound in the input's type (a float bound rounded inward first, as in `bounds`)."""
        bound_type = dtype_of(bound)
        if bound_type == dtype:
            return bound
        if bound_type is not None and bound_type.kind == "f":
            bound = rw.op("Ceil" if name == "min" else "Floor", [bound], suffix=f"{name}_inward", dtype=bound_type)
        return rw.op("Cast", [bound], {"to": onnx.helper.np_dtype_to_tensor_dtype(dtype)}, suffix=f"{name}_cast",
                     dtype=dtype)

    @staticmethod
    def minmax(rw, x, lo, hi, dtype, use_max_min):
        steps = [("min", lo, "Max", "Less"), ("max", hi, "Min", "Greater")]
        steps = [(name, ClipInt.constant(rw, b, name) if isinstance(b, np.ndarray) else
                  ClipInt.as_type(rw, b, dtype, name), op, compare) for name, b, op, compare in steps if b is not None]
        if not steps:
            rw.bypass(x)
            return
        value = x
        for i, (name, bound, op, compare) in enumerate(steps):
            last = i == len(steps) - 1
            if use_max_min:
                inputs, op_type = [value, bound], op
            else:
                beyond = rw.op(compare, [value, bound], suffix=f"beyond_{name}")
                inputs, op_type = [beyond, bound, value], "Where"
            if last:
                rw.finish(op_type, inputs, suffix=f"{op_type}_{name}")
            else:
                value = rw.op(op_type, inputs, suffix=f"{op_type}_{name}", dtype=dtype)

"""Replace Clip on integer tensors, which opset 11 (float-only Clip) and TensorRT reject.

Before:  x:int64 ─► Clip(x, lo, hi) ─► y
After (mode minmax, opset >= 12):   x ─► Max(x, lo) ─► Min(·, hi) ─► y
After (mode minmax, opset <= 11, or int64):
                                    x ─► Where(x < lo, lo, x) ─► Where(· > hi, hi, ·) ─► y
After (mode cast):       x ─► Cast(float64) ─► Max(·, lo) ─► Min(·, hi) ─► Cast(int64) ─► y
A type the runtime has no such kernels for (int16 on ONNX Runtime, uint8 on TensorRT 10) is clipped in a
wider one:                          x ─► Cast(int32) ─► (as above, in int32) ─► Cast(int16) ─► y

`minmax` is exact for every integer type. Max and Min accept integers only from opset 12, so below
that (the graph's opset or the target's, whichever is lower) the same min/max is spelled with
Less/Greater and Where, which opset 9 already defines for integers. The Where spelling is also used for
int64 on every target, since validation runs on ONNX Runtime: its int64 Max/Min are wrong near +-2**31 (1.31, measured from two elements on: Min([-2147483649] * 2, -1) = [-1, -1],
Min(2147483648, 0) = 0; Less/Greater are right). As in Clip, the lower bound is applied first, so lo > hi
gives hi everywhere (torch.clamp does the same). Every rewrite must load on ONNX Runtime (the project
validates on it), whose CPU kernels lack int16/uint16 Max, Min and Where and uint64 Where: those types go
through int32 (uint64 has no wider type: below opset 12 it is left alone with a note).

`cast` clips in float64 with Max/Min (ONNX Runtime's Clip-11 and older are float32-only; its Max-8 and later
take float64). float64 holds every integer of up to 32 bits, so `cast` is exact for those. For int64 and
uint64 it is exact only with both bounds constant within +-2**53 (rounding is monotone, so values
beyond a bound still land on it); other 64-bit Clips get the minmax form and a note. TensorRT has no
float64, so `cast` is refused there.

Missing bounds (an empty input name, or no such input) are simply not applied. Float bounds (opset
< 11 attributes, float constants or float tensors at run time) become ceil(min) and floor(max) in the
input's type, saturated to its range, which clips an integer exactly as the float bound would; a
constant bound at the type's limit clips nothing and is dropped. A NaN constant bound is an error; a NaN
at run time clips nothing. Float Clips are left alone, except torch's opset-11 export of an integer clamp,
Cast(float) -> Clip -> Cast(int), rounded through float (16777217 -> 16777216): it is clipped in the integer
type from the Cast back, exactly, when its bounds are float constants holding integers of that type.
"""
from __future__ import annotations

import math

import numpy as np

from surgeon.errors import PassError
from surgeon.pass_api import Param, ParamError, Pass, PassResult, register_pass
from surgeon.rewrite import (INTEGER_MAX_MIN_SINCE, Rewrite, const_value, dtype_of, find_nodes, is_op,
                             max_min_is_wrong, onnx_dtype, producer, validation_runtime)

WHERE_SINCE = 9  # Where-9; Less/Greater take integers from opset 9 too
FLOAT64_EXACT = 2**53  # float64 holds every integer of at most this magnitude
WIDER_TYPES = (np.dtype(np.int32), np.dtype(np.int64))


class LeftAlone(Exception):
    """Why a Clip cannot be rewritten exactly; it becomes a note."""


def integer_bound(value, rounding, dtype, node_name: str) -> int:
    """`rounding(value)` (ceil or floor; integers as they are) saturated to the integer type's range."""
    info = np.iinfo(dtype)
    if isinstance(value, float):
        if math.isnan(value):
            raise PassError(f"Clip node '{node_name}' has a NaN bound, which means nothing for integers")
        if math.isinf(value):
            return info.min if value < 0 else info.max
        value = rounding(value)
    return max(info.min, min(info.max, int(value)))


@register_pass("clip-int")
class ClipInt(Pass):
    """Replace Clip on integer tensors by Max/Min (or Where) of that type, or by Max/Min in float64."""

    params = {
        "mode": Param(str, "minmax", choices=("minmax", "cast"),
                      help="minmax: exact Max/Min (Where below opset 12); cast: Max/Min in float64 between Casts"),
    }
    needs = ("shapes",)

    @classmethod
    def check_params_for(cls, values, target):
        if values["mode"] == "cast" and target.is_tensorrt:
            raise ParamError("mode", f"parameter 'mode' of pass '{cls.name}': 'cast' needs float64, which target "
                             f"'{target.name}' lacks", hint="use mode 'minmax'")

    def run(self, graph, ctx):
        result = PassResult()
        self.check_params_for(self.values, ctx.target)  # a Recipe built in code skips load_recipe's check
        opset = min(ctx.opset, ctx.target.opset)
        for node in find_nodes(graph, lambda n: is_op(n, "Clip")):
            # torch's own integer clamp at opset 11 rounds through float: rewritten from the Cast back.
            x, replaced = float_rounded_clamp(node) or (node.inputs[0], node)
            dtype = dtype_of(x)
            if dtype is None or dtype.kind not in "iu":
                if dtype is None:
                    result.note(f"{node.name}: left alone, the input's type is unknown")
                continue
            try:
                if opset < WHERE_SINCE:
                    raise LeftAlone(f"opset {opset} has no Where and no integer Less/Greater")
                if replaced is not node:
                    self.check_float_rounded_bounds(node, dtype, result)
                lo, hi = self.bounds(node, dtype)
                if self.mode == "cast" and self.float64_is_exact(dtype, lo, hi):
                    self.through_float64(Rewrite(graph, ctx, replaced), x, lo, hi, dtype)
                else:
                    if self.mode == "cast":
                        result.note(f"{node.name}: minmax form instead of cast, float64 rounds {dtype} beyond "
                                    "+-2**53 (cast is exact there only with both bounds constant within it)")
                    compute, use_max_min = self.compute_type(dtype, lo, hi, opset, ctx.target)
                    self.minmax(Rewrite(graph, ctx, replaced), x, lo, hi, dtype, compute, use_max_min)
            except LeftAlone as why:
                result.note(f"{node.name}: left alone, {why}")
                continue
            result.rewrote(node)
        return result

    @staticmethod
    def bounds(node, dtype):
        """(lower, upper): an array of the input's type, a runtime tensor, or None where nothing is clipped.

        Constant bounds become ceil(lower) and floor(upper), saturated to the integer type, which clip
        integers exactly as the float would. Runtime bounds are checked here and converted in `bound_tensor`.
        """
        bounds = []
        info = np.iinfo(dtype)
        for value, rounding, no_op in zip(given_bounds(node), (math.ceil, math.floor), (info.min, info.max)):
            if value is not None and not isinstance(value, (int, float)):
                constant = const_value(value)
                if constant is None:
                    bound_type = dtype_of(value)
                    if bound_type is None or not (is_float(bound_type) or np.can_cast(bound_type, dtype)):
                        raise LeftAlone(f"its bound '{value.name}' is {bound_type or 'of unknown type'}, "
                                        f"which does not convert to {dtype} exactly")
                    bounds.append(value)
                    continue
                value = constant
            if value is None:
                bounds.append(None)
                continue
            values = np.asarray(value)
            if values.dtype.kind not in "iu":
                values = values.astype(np.float64)  # holds every float16, bfloat16 and float32 exactly
            values = np.array([integer_bound(v, rounding, dtype, node.name) for v in values.ravel().tolist()],
                              dtype=dtype).reshape(values.shape)
            bounds.append(None if values.size == 1 and values.item() == no_op else values)
        return bounds

    @staticmethod
    def check_float_rounded_bounds(node, dtype, result):
        """torch writes the integer bounds of its Cast(float) -> Clip -> Cast(int) export as float constants:
        they must be integers of `dtype` to be clipped with exactly. One beyond the float type's integer
        precision may have been rounded by the exporter already, which no rewrite can undo: a note says so."""
        float_type = dtype_of(node.inputs[0])
        precise = 2 ** (np.finfo(float_type).nmant + 1)  # every integer up to this is a float of the type
        info = np.iinfo(dtype)
        for bound in given_bounds(node):
            if bound is None:
                continue
            value = bound if isinstance(bound, float) else const_value(bound)
            if value is None:
                raise LeftAlone(f"its bound '{bound.name}' is computed at run time in {float_type}, so torch's "
                                "integer bound is not known")
            values = np.asarray(value, np.float64).ravel().tolist()
            if not all(v.is_integer() and info.min <= v <= info.max for v in values):
                raise LeftAlone(f"torch's export rounds it through {float_type} and its bound {values} is not "
                                f"a {dtype} integer, so the integer clamp it stands for is not known")
            if any(abs(v) > precise for v in values):
                shown = ", ".join(str(int(v)) for v in values)
                result.note(f"{node.name}: bound {shown} is beyond 2**{int(math.log2(precise))}, where "
                            f"{float_type} skips integers: if torch's bound was another integer, the exporter "
                            "rounded it and torch's result cannot be recovered (the rewrite uses the stored one)")

    @staticmethod
    def float64_is_exact(dtype, lo, hi) -> bool:
        """Whether clipping in float64 gives exactly the integer clip (see the module docstring)."""
        if dtype.itemsize <= 4 or (lo is None and hi is None):
            return True
        return all(isinstance(b, np.ndarray) and all(abs(v) <= FLOAT64_EXACT for v in b.ravel().tolist())
                   for b in (lo, hi))

    @staticmethod
    def compute_type(dtype, lo, hi, opset, target):
        """(type to clip in, whether with Max/Min): the input's own type, else the narrowest wider one the
        target and ONNX Runtime (validation runs the rewrite there, whatever the target) have the ops for,
        as their profiles say (ONNX Runtime 1.31 lacks int16/uint16 Max, Min and Where and uint64 Where)."""
        runtime_float_bound = any(not isinstance(b, (np.ndarray, type(None))) and is_float(dtype_of(b))
                                  for b in (lo, hi))

        runtimes = (target, validation_runtime(target))

        def available(op, candidate):
            return all(runtime.supports(op, dtype=candidate, opset=opset) for runtime in runtimes)

        candidates = [dtype] + [t for t in WIDER_TYPES if t.itemsize > dtype.itemsize and np.can_cast(dtype, t)]
        for candidate in candidates:
            use_max_min = opset >= INTEGER_MAX_MIN_SINCE and not max_min_is_wrong(target, candidate)
            ops = ["Max", "Min"] if use_max_min else ["Less", "Greater", "Where"]
            if runtime_float_bound:
                ops.append("Where")  # saturating the bound to the input's range
            casts_fit = candidate == dtype or (available("Cast", dtype) and available("Cast", candidate))
            if casts_fit and all(available(op, candidate) for op in ops):
                return candidate, use_max_min
        raise LeftAlone(f"no integer type holding every {dtype} has {'/'.join(dict.fromkeys(ops))} at opset "
                        f"{opset} both on target '{target.name}' and on ONNX Runtime (a wider type also needs "
                        f"Casts from and to {dtype})")

    @staticmethod
    def minmax(rw, x, lo, hi, dtype, compute, use_max_min):
        """Max/Min or Less/Greater/Where in `compute`, between Casts where that is not x's type."""
        if lo is None and hi is None:
            rw.bypass(x)
            return
        value = rw.cast(x, compute, f"to_{compute.name}")
        steps = [(name, ClipInt.bound_tensor(rw, bound, name, lower, dtype, compute), op, compare)
                 for name, lower, bound, op, compare in (("min", True, lo, "Max", "Less"),
                                                         ("max", False, hi, "Min", "Greater"))
                 if bound is not None]
        for i, (name, bound, op, compare) in enumerate(steps):
            if use_max_min:
                inputs, op_type = [value, bound], op
            else:
                beyond = rw.op(compare, [value, bound], suffix=f"beyond_{name}")
                inputs, op_type = [beyond, bound, value], "Where"
            if i == len(steps) - 1 and compute == dtype:
                rw.finish(op_type, inputs, suffix=f"{op_type}_{name}")
                return
            value = rw.op(op_type, inputs, suffix=f"{op_type}_{name}", dtype=compute)
        rw.finish_cast(value, dtype, suffix=f"to_{dtype.name}")

    @staticmethod
    def bound_tensor(rw, bound, name, lower, dtype, compute):
        """A bound (the `lower` one or the upper) as a tensor of `compute` holding a value of `dtype`'s range
        (a float rounded inward)."""
        if isinstance(bound, np.ndarray):
            return rw.const(bound.astype(compute), name)
        if is_float(dtype_of(bound)):
            rounded = rounded_inward(rw, bound, name, lower)
            return saturated(rw, rounded, rw.cast(rounded, compute, f"{name}_cast"), name, lower, dtype, compute)
        return rw.cast(bound, compute, f"{name}_cast")

    @staticmethod
    def through_float64(rw, x, lo, hi, dtype):
        """Cast, Max/Min in float64 (bounds converted alike, runtime floats rounded and saturated), Cast back."""
        if lo is None and hi is None:
            rw.bypass(x)
            return
        float64 = np.dtype(np.float64)
        value = rw.cast(x, float64, "to_float64")
        for name, lower, bound, op in (("min", True, lo, "Max"), ("max", False, hi, "Min")):
            if bound is None:
                continue
            if isinstance(bound, np.ndarray):
                bound = rw.const(bound.astype(float64), name)
            else:
                from_float = is_float(dtype_of(bound))
                bound = rw.cast(bound, float64, f"{name}_float64")
                if from_float:
                    rounded = rounded_inward(rw, bound, name, lower)
                    bound = saturated(rw, rounded, rounded, name, lower, dtype, float64)
            value = rw.op(op, [value, bound], suffix=f"{op}_{name}", dtype=float64)
        rw.finish_cast(value, dtype, suffix=f"to_{dtype.name}")


def given_bounds(node) -> list:
    """[lower, upper] of a Clip: float attributes (before opset 11), input tensors, or None where absent."""
    if "min" in node.attrs or "max" in node.attrs:
        return [node.attrs.get("min"), node.attrs.get("max")]
    return [t if t.name else None for t in node.inputs[1:3]] + [None] * (3 - len(node.inputs))


def float_rounded_clamp(clip):
    """(integer input, Cast back) where `clip` is the middle of torch's opset-11 export of an integer clamp,
    Cast(int -> float) -> Clip -> Cast(back to that int type), else None."""
    cast = producer(clip.inputs[0])
    readers = clip.outputs[0].outputs
    if cast is None or not is_op(cast, "Cast") or len(readers) != 1 or not is_op(readers[0], "Cast"):
        return None
    x, cast_back = cast.inputs[0], readers[0]
    dtype, float_type = dtype_of(x), dtype_of(clip.inputs[0])
    if dtype is None or dtype.kind not in "iu" or float_type is None or float_type.kind != "f":
        return None
    return (x, cast_back) if cast_back.attrs.get("to") == onnx_dtype(dtype) else None


def is_float(dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"  # ml_dtypes' bfloat16 has kind 'V'


def rounded_inward(rw, bound, name, lower: bool):
    """Ceil of a `lower` bound, Floor of an upper one, in float32 or float64 (what Ceil/Floor run on)."""
    float_type = dtype_of(bound)
    if float_type not in (np.float32, np.float64):  # float16, bfloat16: float32 holds them exactly
        float_type = np.dtype(np.float32)
        bound = rw.cast(bound, float_type, f"{name}_float32")
    return rw.op("Ceil" if lower else "Floor", [bound], suffix=f"{name}_inward", dtype=float_type)


def saturated(rw, rounded, in_range, name, lower: bool, dtype, out_type):
    """`in_range` where the integer-valued float `rounded` lies in `dtype`'s range, else the limit it passes.

    The comparisons are in float against min and max + 1, powers of two (or 0) that every float type holds
    exactly (float32 does not hold 2**31 - 1); `in_range` is read only where it is exact. A NaN bound
    fails both comparisons and gets the limit that clips nothing (torch.clamp gives a float NaN there,
    which no integer holds).
    """
    info = np.iinfo(dtype)
    float_type = dtype_of(rounded)
    bottom = rw.const(np.array(float(info.min), float_type), f"{name}_bottom")
    past_top = rw.const(np.array(float(info.max + 1), float_type), f"{name}_past_top")
    low = rw.const(np.array(info.min, out_type), f"{name}_type_min")
    high = rw.const(np.array(info.max, out_type), f"{name}_type_max")
    below_top = rw.op("Less", [rounded, past_top], suffix=f"{name}_below_top")
    if lower:
        capped = rw.op("Where", [below_top, in_range, high], suffix=f"{name}_capped", dtype=out_type)
        above_bottom = rw.op("Greater", [rounded, bottom], suffix=f"{name}_above_bottom")
        return rw.op("Where", [above_bottom, capped, low], suffix=f"{name}_saturated", dtype=out_type)
    under_bottom = rw.op("Less", [rounded, bottom], suffix=f"{name}_under_bottom")
    floored = rw.op("Where", [under_bottom, low, in_range], suffix=f"{name}_floored", dtype=out_type)
    return rw.op("Where", [below_top, floored, high], suffix=f"{name}_saturated", dtype=out_type)

"""Replace atan2 (ATen fallback or a custom `Atan2` op) by standard ops that match `torch.atan2`.

Before:  y ─┐
            ├─► ATen(operator="atan2") ─► angle          (or Atan2 in any domain, or torch's own export)
         x ─┘
After:   |y|, |x| ─► ratio = small/large ─► Atan ─► fold into the quadrant of (x, y) ─► angle

The ratio is min(|x|,|y|) / max(|x|,|y|), always in [0, 1], so Atan works where it is most accurate
and nothing overflows: x = 1e-30, y = 1 gives pi/2 exactly as torch does. Then

    a = atan(ratio)                     in [0, pi/4]
    a = pi/2 - a   where |y| > |x|      in [0, pi/2]
    a = 0          where x == y == 0    (torch: atan2(±0, +0) = ±0)
    a = pi - a     where x is negative  (sign bit set, so x = -0.0 counts: atan2(±0, -0) = ±pi)
    angle = a * (-1 where y is negative else 1)  (sign bit set: y = -0.0 gives -0 or -pi)

Equal magnitudes give ratio 1 exactly, which covers atan2(±inf, ±inf) = ±pi/4, ±3pi/4. NaN in
either input gives NaN. A sign bit is read as `min(v, 1/v) < 0`, true for negative numbers, -0.0
(1/-0 = -inf) and -inf; ONNX has no other way to see the sign of a zero. `signed_zeros: false` uses
`v < 0` instead (four nodes fewer; -0.0 is then treated as +0.0).

Also replaced (`match_exported: true`): torch 2.13's own export of atan2,
`Where(x < 0, Where(y > 0, atan(y/x) + pi, atan(y/x) - pi), atan(y/x))`, which is NaN at the origin and
-pi instead of pi for y = +0, x < 0. Known wrong rewrites this avoids: `atan(y / (x + 1e-6))` (no
quadrant) and sigmoid tricks.

Types follow torch: operands are Cast to the result type (the output's recorded type, else
torch.result_type: float16 with float32 is float32). float16/bfloat16 are computed in float32 and
cast back where the target lacks the ops in them (ONNX Runtime) or ONNX's schema at the graph's opset
does (Where before opset 16 has no bfloat16), as torch itself computes them; an operand of another type
is Cast to the result type first (atan2(int32, float16): torch rounds the integer to float16).
float64 is left alone, with a note, where the target cannot run the ops in float64 (ONNX Runtime has
no double Atan, TensorRT no double at all): float32 would not be exact, and the result would not load.
"""
from __future__ import annotations

import numpy as np

from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.promotion import TORCH_FLOATS, torch_result_type
from surgeon.rewrite import (HALF_FLOATS, Rewrite, aten_operator, const_value, dtype_of, find_nodes, is_op, producer,
                             takes_dtype)


#: Every op the rewrite writes (computed in one float type; Where, Less, Greater, Equal read it too).
REWRITE_OPS = ("Abs", "Greater", "Where", "Div", "Equal", "Atan", "Sub", "Add", "Min", "Less", "Mul")


def is_atan2(node) -> bool:
    return aten_operator(node) == "atan2" or node.op == "Atan2"


def exported_operands(node):
    """(y, x) when `node` ends torch's own atan2 export, else None. torch 2.13 writes (opsets 11, 13)

        a = Atan(Div(y, x));  Where(Less(x, 0), Where(Greater(y, 0), a + pi, a - pi), a)

    which is NaN at the origin and gives -pi instead of pi for y = +0, x < 0. Operands of different types are
    Cast, each comparison's apart from the Div's (int32 y, float16 x: Div(Cast(y, float16), x) but
    Greater(Cast(y, int64), 0)); the Div's operands, promoted to the result type, are returned.
    """
    skeleton = _exported_skeleton(node)
    if skeleton is None:
        return None
    less, shifted, atan, divide = skeleton
    y, x = divide.inputs
    greater, plus, minus = (producer(t) for t in shifted.inputs)
    a = atan.outputs[0]
    shape_ok = (same_source(less.inputs[0], x) and is_constant(less.inputs[1], 0)
                and greater is not None and is_op(greater, "Greater") and same_source(greater.inputs[0], y)
                and is_constant(greater.inputs[1], 0)
                and plus is not None and is_op(plus, "Add") and plus.inputs[0] is a and is_constant(plus.inputs[1], np.pi)
                and minus is not None and is_op(minus, "Sub") and minus.inputs[0] is a
                and is_constant(minus.inputs[1], np.pi))
    return (y, x) if shape_ok else None


def _exported_skeleton(node):
    """(Less, inner Where, Atan, Div) where `node` is Where(Less(..), Where(..), Atan(Div(..))), the frame of
    torch's atan2 export, else None."""
    if not is_op(node, "Where") or len(node.inputs) != 3:
        return None
    less, shifted, atan = (producer(t) for t in node.inputs)
    if not (less and shifted and atan and is_op(less, "Less") and is_op(shifted, "Where") and is_op(atan, "Atan")):
        return None
    divide = producer(atan.inputs[0])
    return (less, shifted, atan, divide) if divide is not None and is_op(divide, "Div") else None


def same_source(tensor, operand) -> bool:
    """Whether `tensor` is `operand`, or either is a Cast of the other or both Casts of one tensor, each Cast
    one that keeps the sign of every value (`keeps_sign`): a comparison with 0 then reads the Div's signs."""
    def source(t):
        cast = producer(t)
        return cast.inputs[0] if cast is not None and is_op(cast, "Cast") and keeps_sign(cast) else t

    return source(tensor) is source(operand) or tensor is source(operand) or source(tensor) is operand


#: Each float type and the floats its values keep their sign in, zeros included (float16's smallest subnormal
#: is a bfloat16 normal; bfloat16 -> float16 flushes 1e-30 to 0).
_SIGN_KEEPING_FLOATS = {"float16": ("float16", "bfloat16", "float32", "float64"),
                        "bfloat16": ("bfloat16", "float32", "float64"), "float32": ("float32", "float64"),
                        "float64": ("float64",)}


def keeps_sign(cast) -> bool:
    """Whether every value keeps its sign (negative, zero, positive) through `cast`, as in the Casts torch's
    export writes (bool or integer -> wider integer or any float, float -> wider float). Not float -> integer
    (it truncates: -0.5 -> 0), narrowing (1e-30 -> float16 0, int64 -> int8 wraps) or signed -> unsigned."""
    source, target = dtype_of(cast.inputs[0]), dtype_of(cast.outputs[0])
    if source is None or target is None:
        return False
    if target.name in TORCH_FLOATS:
        return source.kind in "biu" or target.name in _SIGN_KEEPING_FLOATS.get(source.name, ())
    if source.kind == "b":
        return target.kind in "iu"
    if source.kind not in "iu" or target.kind not in "iu":
        return False
    if source.kind == target.kind:
        return target.itemsize >= source.itemsize
    return source.kind == "u" and target.itemsize > source.itemsize  # uint8 -> int16, not int8 -> uint16


def is_constant(tensor, expected: float) -> bool:
    """Whether `tensor` is a constant holding `expected` rounded to the constant's own type (torch's float16
    export holds pi as 3.140625)."""
    value = const_value(tensor)
    return value is not None and value.size == 1 and value.ravel()[0] == np.array(expected, dtype=value.dtype)


@register_pass("atan2")
class Atan2(Pass):
    """Replace ATen atan2 / custom Atan2 by Atan, Div and Where, exact in all quadrants and on the axes."""

    handles = ("ATen:atan2", "Atan2", "mmdeploy::Atan2")  # as exporters write them (is_atan2: any domain)

    params = {
        "signed_zeros": Param(bool, True, help="treat -0.0 like torch (atan2(0, -0.0) = pi); false saves four nodes"),
        "match_exported": Param(bool, True, help="also replace torch's own Atan/Div/Where export, wrong on the axes"),
    }
    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        if self.match_exported:  # before any rewrite, which leaves the replaced nodes dead in the graph
            for node in find_nodes(graph, lambda n: _exported_skeleton(n) and not exported_operands(n)):
                result.note(f"{node.name}: left alone, Where(Less, Where, Atan(Div)) as torch's atan2 export "
                            "writes, but its Less, Greater, Add or Sub do not read the Div's operands (or Casts of "
                            "them that keep every sign), the Atan, 0 and pi as that export does")
        for node in find_nodes(graph, lambda n: is_atan2(n) or self.match_exported and exported_operands(n)):
            y, x = node.inputs[:2] if is_atan2(node) else exported_operands(node)
            # torch's result type: the output's recorded type, else torch.result_type of the operands
            dtype = dtype_of(node.outputs[0])
            recorded = dtype is not None
            if not recorded:
                dtype = torch_result_type([y, x])
            if dtype is None or dtype.name not in TORCH_FLOATS:
                if recorded:
                    why = f"its recorded result type {dtype} is not a float"
                elif dtype is None:
                    why = "its result type is unknown"
                else:  # torch.result_type of integer/bool operands is not atan2's: torch returns its default float
                    why = ("with no float operand, torch returns its default float type, which the graph must "
                           "record as the output's type")
                inputs = ", ".join(str(dtype_of(t) or "unknown") for t in (y, x))
                result.note(f"{node.name}: left alone, {why} (inputs: {inputs})")
                continue
            computed_in = self.computed_in(dtype, ctx)
            if computed_in is None:
                missing = next(op for op in REWRITE_OPS if not takes_dtype(ctx, op, dtype))
                result.note(f"{node.name}: left alone, target '{ctx.target.name}' at opset {ctx.opset} has no {dtype} "
                            f"{missing}, which "
                            f"the rewrite needs" + ("" if dtype.name in HALF_FLOATS else
                                                    f" (computed in float32 it would not match torch's {dtype})"))
                continue
            self.rewrite(graph, ctx, node, y, x, dtype, computed_in)
            result.rewrote(node)
        return result

    @staticmethod
    def computed_in(dtype, ctx) -> np.dtype | None:
        """`dtype` where the target runs every op of the rewrite in it and ONNX's schema at the graph's opset
        takes it (`takes_dtype`); float32 for float16/bfloat16 where not (torch computes those in float32 too,
        rounding once at the end); else None (float64 on ONNX Runtime, which has no double Atan kernel, or on
        TensorRT, which has no double at all)."""
        candidates = [dtype] + ([np.dtype(np.float32)] if dtype.name in HALF_FLOATS else [])
        for candidate in candidates:
            # The target asked at its own opset: only the type is this pass's question (a graph whose opset
            # the target lacks is the check's to report, and rewriting it stays right).
            if all(takes_dtype(ctx, op, candidate) for op in REWRITE_OPS):
                return candidate
        return None

    def rewrite(self, graph, ctx, node, y, x, result_dtype, dtype):
        """Replace `node` by the rewrite computed in `dtype`, its result cast to `result_dtype`."""
        rw = Rewrite(graph, ctx, node)
        if dtype != result_dtype:  # torch promotes first (int32 2049 -> float16 2048), then computes in float32
            y, x = rw.cast(y, result_dtype, "promote_y"), rw.cast(x, result_dtype, "promote_x")
        y, x = rw.cast(y, dtype, "cast_y"), rw.cast(x, dtype, "cast_x")

        def const(value, suffix):
            return rw.const(value, suffix, dtype)

        def sign_set(v, suffix):
            zero = const(0, f"{suffix}_zero")
            if not self.signed_zeros:
                return rw.op("Less", [v, zero], suffix=f"{suffix}_negative")
            reciprocal = rw.op("Div", [const(1, f"{suffix}_one"), v], suffix=f"{suffix}_reciprocal", dtype=dtype)
            smaller = rw.op("Min", [v, reciprocal], suffix=f"{suffix}_min", dtype=dtype)
            return rw.op("Less", [smaller, zero], suffix=f"{suffix}_negative")

        abs_x = rw.op("Abs", [x], suffix="abs_x", dtype=dtype)
        abs_y = rw.op("Abs", [y], suffix="abs_y", dtype=dtype)
        steep = rw.op("Greater", [abs_y, abs_x], suffix="steep")
        small = rw.op("Where", [steep, abs_x, abs_y], suffix="small", dtype=dtype)
        large = rw.op("Where", [steep, abs_y, abs_x], suffix="large", dtype=dtype)
        quotient = rw.op("Div", [small, large], suffix="quotient", dtype=dtype)
        # 0/0 and inf/inf are NaN; both mean equal magnitudes, whose ratio is 1 (the origin is fixed below).
        same = rw.op("Equal", [small, large], suffix="same_magnitude")
        ratio = rw.op("Where", [same, const(1, "one"), quotient], suffix="ratio", dtype=dtype)
        angle = rw.op("Atan", [ratio], suffix="atan", dtype=dtype)
        angle = rw.op("Where", [steep, rw.op("Sub", [const(np.pi / 2, "half_pi"), angle], suffix="complement",
                                            dtype=dtype), angle], suffix="first_quadrant", dtype=dtype)
        # Tested on |x| + |y| rather than on `large`, so NaN in `small` is not taken for the origin.
        magnitude_sum = rw.op("Add", [abs_x, abs_y], suffix="magnitude_sum", dtype=dtype)
        origin = rw.op("Equal", [magnitude_sum, const(0, "zero")], suffix="origin")
        angle = rw.op("Where", [origin, const(0, "origin_angle"), angle], suffix="origin_fixed", dtype=dtype)
        angle = rw.op("Where", [sign_set(x, "x"), rw.op("Sub", [const(np.pi, "pi"), angle], suffix="supplement",
                                                       dtype=dtype), angle], suffix="upper_half", dtype=dtype)
        # A multiplication, not Where(negative, -angle, angle): ONNX Runtime 1.31 returns +0.0 for a -0.0
        # selected from Where's second input (measured), which would lose atan2(-0.0, 1) = -0.0.
        y_sign = rw.op("Where", [sign_set(y, "y"), const(-1, "minus_one"), const(1, "plus_one")], suffix="y_sign",
                       dtype=dtype)
        if dtype == result_dtype:
            rw.finish("Mul", [angle, y_sign], suffix="angle")
        else:
            angle = rw.op("Mul", [angle, y_sign], suffix="angle", dtype=dtype)
            rw.finish_cast(angle, result_dtype, suffix="cast_back")

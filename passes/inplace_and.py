"""Replace ATen and/or/xor (in-place `m &= ...` included) by standard ops the target runs.

Before:  a, b ─► ATen(operator="__iand_", overload_name="Tensor") ─► m
After (bool, or logical_*):           a, b ─► And ─► m              (Or, Xor alike)
After (integers, mode bitwise):       a, b ─► BitwiseAnd ─► m       (opset >= 18)
After (integers, mode bits):          a, b ─► 32 bit planes ─► per-plane And ─► weighted sum ─► m
After (integers, mode masks):         a, b ─► Cast(bool) ─► And ─► Cast ─► m   (0/1 operands only)
mode auto (the default) takes bitwise where the graph's opset and the target run BitwiseX on the operand
type, else the form the `integers` parameter names (bits unless told).

Recognised: ATen `__iand_`, `__ior_`, `__ixor_`, `__and_`, `__or_`, `__xor_`, `bitwise_and|or|xor`,
`logical_and|or|xor`, and standard `BitwiseAnd|Or|Xor` where the graph's opset or the target lacks them
(TensorRT has none), or where mode bits or masks asks for them to go. The result keeps the original
output's type (in-place ops: the first operand's).

The exact integer form (`bits`) takes 32 0/1 planes of each operand on a new last axis (named by its
positive index where the ranks are known), combines them per plane and sums them with weights 2**i, bit 31
weighing -2**31 for signed values. Where the target holds int64 (its profile's `int64: native`: ONNX
Runtime, opset-11, TensorRT 10) it computes in int64: bit i of a v of 32 bits is (v mod 2**(i+1)) >= 2**i,
the bool planes combine with And/Or/Xor; narrower types are cast to int64, and int64 is split exactly into
hi = (v - lo) / 2**32 and lo = v mod 2**32, each summed so, and rejoined as hi * 2**32 + lo. A target that
holds int64 in int32 (`int64: int32`: TensorRT before 10, whose ReduceSum is float-only too) gets an
int32-only form on the operands cast to int32, with a note for int64 and uint32 (exact within the int32
range, which is all such a target holds): for an int32 v, s = v < 0 and m = v - s * -2**31 (in [0, 2**31),
no intermediate overflows) holds bits 0..30: bit i = Mod(Div(m, 2**i), 2); and = a·b, or = a + b - a·b, xor
= |a - b|; every partial sum of the weighted planes lies in the int32 range, so the sum is exact in any
order. The sum is a ReduceSum where the target and ONNX Runtime (validation) sum the form's type, else
halving Split/Add steps; ONNX Runtime leaves an empty tensor unreduced over a negative axis, so where a
rank is unknown (axis -1) the ReduceSum is reshaped to the planes' shape less the plane axis. uint64 needs
BitwiseX (it does not fit int64 arithmetic).
"""
from __future__ import annotations

import numpy as np

from surgeon.errors import PassError
from surgeon.pass_api import Param, ParamError, Pass, PassResult, register_pass
from surgeon.rewrite import Rewrite, aten_operator, dtype_of, find_nodes, is_op, validation_runtime

KINDS = {"and": "And", "or": "Or", "xor": "Xor"}
#: ATen operator -> (kind, logical: the operands count as booleans whatever their type)
ATEN_OPERATORS = {name.format(kind): (kind, name.startswith("logical"))
                  for kind in KINDS for name in ("__i{}_", "__{}_", "bitwise_{}", "logical_{}")}
BITWISE_OPS = {f"Bitwise{op}": kind for kind, op in KINDS.items()}
BITWISE_SINCE = 18
SPLIT_NUM_OUTPUTS_SINCE = 18
INPLACE = tuple(f"__i{kind}_" for kind in KINDS)
INT32_SIGN = -2**31
#: Types with values beyond the int32 range, which a target holding int64 in int32 narrows (with a note).
WIDE_TYPES = (np.dtype(np.int64), np.dtype(np.uint32))


def bitwise_available(ctx, dtype) -> bool:
    return ctx.opset >= BITWISE_SINCE and ctx.target.supports("BitwiseAnd", dtype=dtype, opset=ctx.opset)


def holds_int64(target) -> bool:
    """Whether `target` computes int64 as int64: its profile's `int64` (`int32` on TensorRT before 10, which
    casts INT64 down to INT32, clamping to +-INT_MAX)."""
    return target.int64 == "native"


def cast_operand(rw, tensor, dtype, name):
    """`Rewrite.cast`, the Cast named after the operand and the type (`a_to_bool`)."""
    return rw.cast(tensor, dtype, f"{name}_to_{np.dtype(dtype).name}")


@register_pass("inplace-and")
class InplaceAnd(Pass):
    """Replace ATen and/or/xor (in-place, bitwise, logical) and unsupported Bitwise* by And/Or/Xor forms."""

    handles = tuple(f"ATen:{name}" for name in ATEN_OPERATORS)

    params = {
        "mode": Param(str, "auto", choices=("auto", "bitwise", "bits", "masks"),
                      help="integer operands; auto: BitwiseX where the target runs it, else the `integers` form; "
                           "bitwise: BitwiseX (opset 18); bits: exact int32 bit planes; masks: Cast/And/Cast "
                           "(0/1 operands only)"),
        "integers": Param(str, "bits", choices=("bits", "masks"),
                          help="the form mode auto takes where the target lacks BitwiseX: bits (exact for any "
                               "value) or masks (0/1 only)"),
    }
    needs = ("shapes",)

    @classmethod
    def check_params(cls, values):
        """The declared checks, then: `integers: masks` only with mode auto, the one mode it chooses for."""
        checked = super().check_params(values)
        if checked["integers"] != cls.params["integers"].default and checked["mode"] != "auto":
            raise ParamError("integers", f"parameter 'integers' of pass '{cls.name}' applies to mode auto only; "
                             f"mode '{checked['mode']}' already names the integer form",
                             hint=f"drop 'integers', or use mode '{checked['integers']}'")
        return checked

    def run(self, graph, ctx):
        result = PassResult()
        for node in find_nodes(graph, lambda n: self.kind(n, ctx) is not None):
            kind, logical = self.kind(node, ctx)
            dtype = self.result_type(node)
            if dtype is None:
                result.note(f"{node.name}: left alone, the operand types are unknown (run infer-shapes first?)")
                continue
            rw = Rewrite(graph, ctx, node)
            a, b = node.inputs[:2]
            if logical or dtype == np.bool_:
                value = self.logical(rw, kind, a, b)
            elif dtype.kind not in "iu":
                raise PassError(f"node '{node.name}': {kind} of {dtype} operands has no meaning")
            else:
                value = self.integer_form(rw, kind, a, b, dtype, result)
            out_dtype = dtype_of(node.outputs[0]) or dtype
            if out_dtype == dtype_of(value):
                rw.bypass(value)
            else:
                rw.finish_cast(value, out_dtype)
            result.rewrote(node)
        return result

    def integer_form(self, rw, kind, a, b, dtype, result):
        ctx, node = rw.ctx, rw.node
        form = self.mode
        if form == "auto":
            form = "bitwise" if bitwise_available(ctx, dtype) else self.integers
        if form == "bitwise":
            if ctx.opset < BITWISE_SINCE:
                raise PassError(f"node '{node.name}': mode bitwise needs Bitwise{KINDS[kind]} (opset "
                                f"{BITWISE_SINCE}), the graph is opset {ctx.opset}", hint="use mode bits or auto")
            if not bitwise_available(ctx, dtype):
                result.note(f"{node.name}: Bitwise{KINDS[kind]} on {dtype} as mode bitwise asks, which target "
                            f"'{ctx.target.name}' does not run")
            operands = [cast_operand(rw, a, dtype, "a"), cast_operand(rw, b, dtype, "b")]
            return rw.op(f"Bitwise{KINDS[kind]}", operands, suffix=f"Bitwise{KINDS[kind]}", dtype=dtype)
        if form == "masks":
            return cast_operand(rw, self.logical(rw, kind, a, b), dtype, "mask")
        if dtype == np.uint64:
            raise PassError(f"node '{node.name}': uint64 {kind} needs Bitwise{KINDS[kind]} (opset 18), which "
                            f"target '{ctx.target.name}' at opset {ctx.opset} lacks", hint="mode bitwise at "
                            "opset 18 where the runtime has it, or mode masks for 0/1 operands")
        if holds_int64(ctx.target):
            return Int64BitPlanes(rw, a, b).combine(kind, dtype)
        if dtype in WIDE_TYPES:
            result.note(f"{node.name}: {dtype} {kind} computed in int32, as target '{ctx.target.name}' holds "
                        f"{dtype} in int32: exact for operands within the int32 range (TensorRT before 10 clamps "
                        "int64 beyond it to +-INT_MAX; ONNX Runtime wraps it)")
        return Int32BitPlanes(rw, a, b).combine(kind, dtype)

    @staticmethod
    def logical(rw, kind, a, b):
        """And/Or/Xor of the operands taken as booleans (non-zero is true)."""
        return rw.op(KINDS[kind], [cast_operand(rw, a, np.bool_, "a"), cast_operand(rw, b, np.bool_, "b")],
                     suffix=KINDS[kind], dtype=np.bool_)

    def kind(self, node, ctx):
        """(kind, logical) when `node` is an and/or/xor this pass replaces, else None."""
        operator = aten_operator(node)
        if operator in ATEN_OPERATORS:
            return ATEN_OPERATORS[operator]
        if is_op(node, tuple(BITWISE_OPS)) and self.lowers_standard(node, ctx):
            return BITWISE_OPS[node.op], False
        return None

    def lowers_standard(self, node, ctx) -> bool:
        """Whether a standard BitwiseX node goes: the mode names another form, or auto and the target lacks it."""
        if self.mode == "auto":
            return not bitwise_available(ctx, dtype_of(node.inputs[0]))
        return self.mode != "bitwise"

    @staticmethod
    def result_type(node):
        known = dtype_of(node.outputs[0])
        if known is not None:
            return known
        if (aten_operator(node) or "").startswith("logical_"):
            return np.dtype(np.bool_)
        operands = [dtype_of(t) for t in node.inputs[:2]]
        if aten_operator(node) in INPLACE and operands[0] is not None:
            return operands[0]  # an in-place op keeps its first operand's type
        return None if None in operands else np.result_type(*operands)


class BitPlanes:
    """The exact integer form (see the module docstring) into one Rewrite: 32 0/1 planes of each operand on a
    new last axis, combined per plane, weighted and summed. A subclass names the arithmetic type (`dtype`) and
    how the operands become planes (`combine`, `planes`) and how planes combine (`combine_planes`)."""

    dtype: np.dtype

    def __init__(self, rw, a, b):
        self.rw = rw
        self.a, self.b = a, b
        # The planes' axis is the last one, of each operand's planes and of the broadcast result; named
        # positively where the ranks are known: ONNX Runtime returns an empty tensor unreduced when it is
        # reduced over a negative axis.
        self.operand_axes = [len(t.shape) if t.shape is not None else -1 for t in (a, b)]
        self.plane_axis = -1 if -1 in self.operand_axes else max(self.operand_axes)

    def const(self, value, suffix, dtype=None):
        return self.rw.const(value, suffix, dtype or self.dtype)

    def op(self, op_type, inputs, attrs=None, *, suffix, dtype=None):
        """`Rewrite.op`, in the form's type unless told otherwise."""
        return self.rw.op(op_type, inputs, attrs, suffix=suffix, dtype=dtype or self.dtype)

    def column(self, value, suffix):
        """`value` with a last axis of 1, for its planes."""
        return self.rw.unsqueeze(value, [-1], suffix=f"{suffix}_column", axes_suffix=f"{suffix}_axes",
                                 dtype=self.dtype)

    def combine32(self, kind, a, b, signed, suffix):
        """`kind` of `a` and `b` (the form's type, each holding 32 bits: two's complement if `signed`)."""
        planes = [self.planes(t, axis, f"{suffix}_{name}") for t, axis, name in zip((a, b), self.operand_axes, "ab")]
        weights = 2 ** np.arange(32, dtype=np.int64)
        if signed:
            weights[31] = INT32_SIGN
        combined = self.combine_planes(kind, *planes, suffix)
        weighted = self.op("Mul", [combined, self.const(weights, f"{suffix}_weights")], suffix=f"{suffix}_weighted")
        return self.sum_planes(weighted, suffix)

    def sum_planes(self, weighted, suffix):
        ctx = self.rw.ctx
        if not all(runtime.supports("ReduceSum", dtype=self.dtype, opset=ctx.opset)
                   for runtime in (ctx.target, validation_runtime(ctx.target))):
            return self.add_halves(weighted, suffix)
        total = self.rw.reduce("ReduceSum", weighted, [self.plane_axis], keepdims=0, suffix=f"{suffix}_sum",
                               axes_suffix=f"{suffix}_sum_axes", dtype=self.dtype)
        if self.plane_axis != -1:
            return total
        # Rank unknown: ONNX Runtime leaves an empty tensor unreduced over axis -1, so the sum is reshaped to
        # the planes' shape less the plane axis (a no-op otherwise; a 0 there copies the input's 0)
        plane_shape = self.op("Shape", [weighted], suffix=f"{suffix}_plane_shape", dtype=np.int64)
        sum_shape = self.op("Slice", [plane_shape, self.const([0], f"{suffix}_shape_start", np.int64),
                                      self.const([-1], f"{suffix}_shape_end", np.int64)],
                            suffix=f"{suffix}_sum_shape", dtype=np.int64)
        return self.op("Reshape", [total, sum_shape], suffix=f"{suffix}_sum_reshaped")

    def add_halves(self, weighted, suffix):
        """The sum over the plane axis in halving Split/Add steps, for where ReduceSum does not run the form's
        type: Add runs int32 everywhere (TensorRT 8's ReduceSum and ONNX Runtime's Sum are float-only)."""
        attrs = {"axis": self.plane_axis}
        if self.rw.ctx.opset >= SPLIT_NUM_OUTPUTS_SINCE:
            attrs["num_outputs"] = 2
        for step in range(5):  # 32 planes, halved five times
            halves = self.rw.op("Split", [weighted], attrs, suffix=f"{suffix}_halves_{step}", dtype=self.dtype,
                                num_outputs=2)
            weighted = self.op("Add", halves, suffix=f"{suffix}_sum_{step}")
        return self.rw.squeeze(weighted, [self.plane_axis], suffix=f"{suffix}_sum", axes_suffix=f"{suffix}_sum_axes",
                               dtype=self.dtype)


class Int64BitPlanes(BitPlanes):
    """Where the target holds int64: bool planes (v mod 2**(i+1)) >= 2**i of values held in int64."""

    dtype = np.dtype(np.int64)

    def combine(self, kind, dtype):
        """`kind` of the operands (of integer type `dtype`), as int64."""
        a, b = (cast_operand(self.rw, t, np.int64, name) for t, name in ((self.a, "a"), (self.b, "b")))
        if dtype.itemsize < 8:
            return self.combine32(kind, a, b, signed=dtype.kind == "i", suffix="bits")
        halves = [self.split(a, "a"), self.split(b, "b")]
        high = self.combine32(kind, halves[0][0], halves[1][0], signed=True, suffix="high")
        low = self.combine32(kind, halves[0][1], halves[1][1], signed=False, suffix="low")
        high_shifted = self.op("Mul", [high, self.const(2**32, "two_pow_32")], suffix="high_shifted")
        return self.op("Add", [high_shifted, low], suffix="joined")

    def split(self, value, suffix):
        """(high, low) with value = high * 2**32 + low, low in [0, 2**32), high in [-2**31, 2**31)."""
        low = self.op("Mod", [value, self.const(2**32, f"{suffix}_modulus")], {"fmod": 0}, suffix=f"{suffix}_low")
        high_part = self.op("Sub", [value, low], suffix=f"{suffix}_high_part")
        high = self.op("Div", [high_part, self.const(2**32, f"{suffix}_divisor")], suffix=f"{suffix}_high")
        return high, low

    def planes(self, value, axis, suffix):
        """[..., 32] bool: bit i of `value` at i (Mod with a positive divisor is never negative)."""
        places = 2 ** np.arange(32, dtype=np.int64)
        remainder = self.op("Mod", [self.column(value, suffix), self.const(places * 2, f"{suffix}_modulus")],
                            {"fmod": 0}, suffix=f"{suffix}_remainder")
        return self.op("Greater", [remainder, self.const(places - 1, f"{suffix}_below_place")],
                       suffix=f"{suffix}_planes", dtype=np.bool_)

    def combine_planes(self, kind, a, b, suffix):
        combined = self.op(KINDS[kind], [a, b], suffix=f"{suffix}_{KINDS[kind]}", dtype=np.bool_)
        return self.rw.cast(combined, np.int64, f"{suffix}_as_int64")


class Int32BitPlanes(BitPlanes):
    """Where the target holds int64 in int32 (TensorRT before 10): int32 planes, no constant beyond int32."""

    dtype = np.dtype(np.int32)

    def combine(self, kind, dtype):
        """`kind` of the operands cast to int32 (whatever their type `dtype`), as int32."""
        a, b = (cast_operand(self.rw, t, np.int32, name) for t, name in ((self.a, "a"), (self.b, "b")))
        return self.combine32(kind, a, b, signed=True, suffix="bits")

    def planes(self, value, axis, suffix):
        """[..., 32] int32 0/1 on `axis` (the last): bits 0..30 of `value`, then its sign bit."""
        column = self.column(value, suffix)
        negative = self.op("Less", [column, self.const(0, f"{suffix}_zero")], suffix=f"{suffix}_negative",
                           dtype=np.bool_)
        sign = self.rw.cast(negative, np.int32, f"{suffix}_sign")
        magnitude = self.op("Sub", [column, self.op("Mul", [sign, self.const(INT32_SIGN, f"{suffix}_sign_weight")],
                                                    suffix=f"{suffix}_sign_part")], suffix=f"{suffix}_magnitude")
        shifted = self.op("Div", [magnitude, self.const(2 ** np.arange(31), f"{suffix}_places")],
                          suffix=f"{suffix}_shifted")
        low_bits = self.op("Mod", [shifted, self.const(2, f"{suffix}_two")], {"fmod": 0}, suffix=f"{suffix}_bits")
        return self.op("Concat", [low_bits, sign], {"axis": axis}, suffix=f"{suffix}_planes")

    def combine_planes(self, kind, a, b, suffix):
        if kind == "xor":
            return self.op("Abs", [self.op("Sub", [a, b], suffix=f"{suffix}_difference")], suffix=f"{suffix}_one_of")
        both = self.op("Mul", [a, b], suffix=f"{suffix}_both")
        if kind == "and":
            return both
        return self.op("Sub", [self.op("Add", [a, b], suffix=f"{suffix}_either_sum"), both], suffix=f"{suffix}_either")

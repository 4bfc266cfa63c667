"""Replace ATen and/or/xor (in-place `m &= ...` included) by standard ops the target runs.

Before:  a, b ─► ATen(operator="__iand_", overload_name="Tensor") ─► m
After (bool, or logical_*):           a, b ─► And ─► m              (Or, Xor alike)
After (integers, mode bitwise):       a, b ─► BitwiseAnd ─► m       (opset >= 18)
After (integers, mode bits):          a, b ─► int32 bit planes ─► a·b ─► weighted sum ─► m
After (integers, mode masks):         a, b ─► Cast(bool) ─► And ─► Cast ─► m   (0/1 operands only)
mode auto (the default) takes bitwise where the graph's opset and the target run BitwiseX on the operand
type, else the form the `integers` parameter names (bits unless told).

Recognised: ATen `__iand_`, `__ior_`, `__ixor_`, `__and_`, `__or_`, `__xor_`, `bitwise_and|or|xor`,
`logical_and|or|xor`, and standard `BitwiseAnd|Or|Xor` where the graph's opset or the target lacks them
(TensorRT has none), or where mode bits or masks asks for them to go. The result keeps the original
output's type (in-place ops: the first operand's).

The exact integer form (`bits`) computes in int32 only, so it runs where integer arithmetic is 32-bit
(TensorRT 8: int64 is cast down to int32 there, and ReduceSum is float-only). For an int32 v, its sign
bit is s = v < 0 and m = v - s * -2**31 (in [0, 2**31), no intermediate overflows) holds bits 0..30:
bit i = Mod(Div(m, 2**i), 2). The 32 planes (bits 0..30, then s) of both operands, on a new last axis
(named by its positive index where the rank is known: ONNX Runtime leaves an empty tensor unreduced over
a negative axis), combine as and = a·b, or = a + b - a·b, xor = |a - b|, and are summed with weights
2**i, bit 31 weighing -2**31. Every partial sum of such terms lies in the int32 range, so the sum is
exact in any order: a ReduceSum where the target and ONNX Runtime (validation) sum int32, else halving
Split/Add steps. int8/16 and uint8/16 go through int32. int64 and uint32 are split exactly (in int64)
into hi = (v - lo) / 2**32 and lo = v mod 2**32, lo taken as the int32 of the same bits; each half goes
through the int32 form and they are rejoined as hi * 2**32 + (lo mod 2**32). A target that holds int64
in int32 (TensorRT before 10) gets the int32 form on the operands cast to int32 instead, with a note:
exact within the int32 range, which is all such a target holds. uint64 needs BitwiseX (it does not fit
int64 arithmetic).
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
#: Types split into two int32 halves (or cast to int32 where the target holds int64 in int32).
WIDE_TYPES = (np.dtype(np.int64), np.dtype(np.uint32))


def bitwise_available(ctx, dtype) -> bool:
    return ctx.opset >= BITWISE_SINCE and ctx.target.supports("BitwiseAnd", dtype=dtype, opset=ctx.opset)


def holds_int64(target) -> bool:
    """Whether `target` computes int64 as int64: TensorRT before 10 casts INT64 down to INT32, clamping to
    +-INT_MAX (the tensorrt-8.x profiles' type note); TensorRT 10 has INT64."""
    return not (target.is_tensorrt and target.version_tuple() < (10,))


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
        planes = BitPlanes(rw, a, b)
        if dtype in WIDE_TYPES and holds_int64(ctx.target):
            return planes.combine64(kind, a, b)
        if dtype in WIDE_TYPES:
            result.note(f"{node.name}: {dtype} {kind} computed in int32, as target '{ctx.target.name}' holds "
                        f"{dtype} in int32: exact for operands within the int32 range (TensorRT before 10 clamps "
                        "int64 beyond it to +-INT_MAX; ONNX Runtime wraps it)")
        return planes.combine32(kind, cast_operand(rw, a, np.int32, "a"), cast_operand(rw, b, np.int32, "b"), "bits")

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
    """The exact integer form (see the module docstring), built in int32 (int64 only to split and rejoin
    wide types) into one Rewrite."""

    def __init__(self, rw, a, b):
        self.rw = rw
        # The planes' axis is the last one, of each operand's planes and of the broadcast result; named
        # positively where the ranks are known: ONNX Runtime returns an empty tensor unreduced when it is
        # reduced over a negative axis.
        self.operand_axes = [len(t.shape) if t.shape is not None else -1 for t in (a, b)]
        self.plane_axis = -1 if -1 in self.operand_axes else max(self.operand_axes)

    def const(self, value, suffix, dtype=np.int32):
        return self.rw.const(value, suffix, dtype)

    def op(self, op_type, inputs, attrs=None, *, suffix, dtype=np.int32):
        """`Rewrite.op`, int32 unless told otherwise."""
        return self.rw.op(op_type, inputs, attrs, suffix=suffix, dtype=dtype)

    def combine64(self, kind, a, b):
        """int64 (or uint32) operands: int32 halves through `combine32`, rejoined in int64."""
        halves = [self.split(cast_operand(self.rw, t, np.int64, name), name) for t, name in ((a, "a"), (b, "b"))]
        high = self.combine32(kind, halves[0][0], halves[1][0], "high")
        low = self.combine32(kind, halves[0][1], halves[1][1], "low")
        two_pow_32 = self.const(2**32, "two_pow_32", np.int64)
        low_unsigned = self.op("Mod", [self.rw.cast(low, np.int64, "low_as_int64"), two_pow_32], {"fmod": 0},
                               suffix="low_unsigned", dtype=np.int64)
        high_shifted = self.op("Mul", [self.rw.cast(high, np.int64, "high_as_int64"), two_pow_32],
                               suffix="high_shifted", dtype=np.int64)
        return self.op("Add", [high_shifted, low_unsigned], suffix="joined", dtype=np.int64)

    def split(self, value, suffix):
        """int32 (high, low) with value = high * 2**32 + (low mod 2**32)."""
        two_pow_32 = self.const(2**32, f"{suffix}_modulus", np.int64)
        low = self.op("Mod", [value, two_pow_32], {"fmod": 0}, suffix=f"{suffix}_low", dtype=np.int64)
        high_part = self.op("Sub", [value, low], suffix=f"{suffix}_high_part", dtype=np.int64)
        high = self.op("Div", [high_part, two_pow_32], suffix=f"{suffix}_high", dtype=np.int64)
        # low in [0, 2**32) as the int32 of the same bits: minus 2**32 from 2**31 on
        wraps = self.op("Div", [low, self.const(2**31, f"{suffix}_low_sign_place", np.int64)],
                        suffix=f"{suffix}_low_wraps", dtype=np.int64)
        low_signed = self.op("Sub", [low, self.op("Mul", [wraps, two_pow_32], suffix=f"{suffix}_low_wrap",
                                                   dtype=np.int64)], suffix=f"{suffix}_low_signed", dtype=np.int64)
        return (self.rw.cast(high, np.int32, f"{suffix}_high_as_int32"),
                self.rw.cast(low_signed, np.int32, f"{suffix}_low_as_int32"))

    def planes(self, value, axis, suffix):
        """[..., 32] int32 0/1 on `axis` (the last): bits 0..30 of `value` (int32), then its sign bit."""
        column = self.rw.unsqueeze(value, [-1], suffix=f"{suffix}_column", axes_suffix=f"{suffix}_axes",
                                   dtype=np.int32)
        negative = self.op("Less", [column, self.const(0, f"{suffix}_zero")], suffix=f"{suffix}_negative",
                           dtype=np.bool_)
        sign = self.rw.cast(negative, np.int32, f"{suffix}_sign")
        magnitude = self.op("Sub", [column, self.op("Mul", [sign, self.const(INT32_SIGN, f"{suffix}_sign_weight")],
                                                    suffix=f"{suffix}_sign_part")], suffix=f"{suffix}_magnitude")
        shifted = self.op("Div", [magnitude, self.const(2 ** np.arange(31), f"{suffix}_places")],
                          suffix=f"{suffix}_shifted")
        low_bits = self.op("Mod", [shifted, self.const(2, f"{suffix}_two")], {"fmod": 0}, suffix=f"{suffix}_bits")
        return self.op("Concat", [low_bits, sign], {"axis": axis}, suffix=f"{suffix}_planes")

    def combine32(self, kind, a, b, suffix):
        """`kind` of int32 `a` and `b`, exactly, as int32."""
        a, b = (self.planes(t, axis, f"{suffix}_{name}") for t, axis, name in zip((a, b), self.operand_axes, "ab"))
        both = self.op("Mul", [a, b], suffix=f"{suffix}_both")
        if kind == "and":
            combined = both
        elif kind == "or":
            combined = self.op("Sub", [self.op("Add", [a, b], suffix=f"{suffix}_either_sum"), both],
                               suffix=f"{suffix}_either")
        else:
            combined = self.op("Abs", [self.op("Sub", [a, b], suffix=f"{suffix}_difference")],
                               suffix=f"{suffix}_one_of")
        weights = 2 ** np.arange(32, dtype=np.int64)
        weights[31] = INT32_SIGN
        weighted = self.op("Mul", [combined, self.const(weights, f"{suffix}_weights")], suffix=f"{suffix}_weighted")
        return self.sum_planes(weighted, suffix)

    def sum_planes(self, weighted, suffix):
        ctx = self.rw.ctx
        if all(runtime.supports("ReduceSum", dtype=np.int32, opset=ctx.opset)
               for runtime in (ctx.target, validation_runtime(ctx.target))):
            return self.rw.reduce("ReduceSum", weighted, [self.plane_axis], keepdims=0, suffix=f"{suffix}_sum",
                                  axes_suffix=f"{suffix}_sum_axes", dtype=np.int32)
        # Halving Split/Add steps: Add runs int32 everywhere (TensorRT 8's ReduceSum and ONNX Runtime's Sum are
        # float-only)
        attrs = {"axis": self.plane_axis}
        if ctx.opset >= SPLIT_NUM_OUTPUTS_SINCE:
            attrs["num_outputs"] = 2
        for step in range(5):  # 32 planes, halved five times
            halves = self.rw.op("Split", [weighted], attrs, suffix=f"{suffix}_halves_{step}", dtype=np.int32,
                                num_outputs=2)
            weighted = self.op("Add", halves, suffix=f"{suffix}_sum_{step}")
        return self.rw.squeeze(weighted, [self.plane_axis], suffix=f"{suffix}_sum", axes_suffix=f"{suffix}_sum_axes",
                               dtype=np.int32)

"""Replace ATen and/or/xor (in-place `m &= ...` included) by standard ops the target runs.

Before:  a, b ─► ATen(operator="__iand_", overload_name="Tensor") ─► m
After (bool, or logical_*):          a, b ─► And ─► m              (Or, Xor alike)
After (integers, opset >= 18):       a, b ─► BitwiseAnd ─► m       (where the target runs it)
After (integers, below, mode bits):  a, b ─► 32-bit planes ─► And ─► weighted ReduceSum ─► m

Recognised: ATen `__iand_`, `__ior_`, `__ixor_`, `__and_`, `__or_`, `__xor_`, `bitwise_and|or|xor`,
`logical_and|or|xor`, and standard `BitwiseAnd|Or|Xor` where the graph's opset or the target lacks them
(TensorRT has none). The result keeps the original output's type (in-place ops: the first operand's).

Exact integer form without Bitwise* (opset 11 ops only, `integers: bits`, the default): for a value v
held in int64 and known to fit 32 bits, bit i of its two's complement is `(v mod 2**(i+1)) >= 2**i`
(Mod with a positive divisor is never negative), computed for i = 0..31 at once along a new last axis
(named by its positive index where the rank is known: ONNX Runtime leaves an empty tensor unreduced over a
negative axis).
The planes are combined with And/Or/Xor and summed with weights 2**i, bit 31 weighing -2**31 for signed
types. int8/16/32 and uint8/16/32 go through int64 this way; int64 is split exactly into
hi = (v - lo) / 2**32 and lo = v mod 2**32, each handled as above, and rejoined as hi * 2**32 + lo.
uint64 is refused (it does not fit int64 arithmetic). `integers: masks` is a cheaper form for operands
known to hold only 0 and 1: Cast to bool, And/Or/Xor, Cast back; other values give wrong results.
"""
from __future__ import annotations

import numpy as np

from surgeon.errors import PassError
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import Rewrite, aten_operator, dtype_of, find_nodes, is_op

KINDS = {"and": "And", "or": "Or", "xor": "Xor"}
#: ATen operator -> (kind, logical: the operands count as booleans whatever their type)
ATEN_OPERATORS = {name.format(kind): (kind, name.startswith("logical"))
                  for kind in KINDS for name in ("__i{}_", "__{}_", "bitwise_{}", "logical_{}")}
BITWISE_OPS = {f"Bitwise{op}": kind for kind, op in KINDS.items()}
BITWISE_SINCE = 18
INPLACE = tuple(f"__i{kind}_" for kind in KINDS)


def bitwise_available(ctx, dtype) -> bool:
    return ctx.opset >= BITWISE_SINCE and ctx.target.supports("BitwiseAnd", dtype=dtype, opset=ctx.opset)


def cast_operand(rw, tensor, dtype, name):
    """`Rewrite.cast`, the Cast named after the operand and the type (`a_to_bool`)."""
    return rw.cast(tensor, dtype, f"{name}_to_{np.dtype(dtype).name}")


@register_pass("inplace-and")
class InplaceAnd(Pass):
    """Replace ATen and/or/xor (in-place, bitwise, logical) and unsupported Bitwise* by And/Or/Xor forms."""

    handles = tuple(f"ATen:{name}" for name in ATEN_OPERATORS)

    params = {
        "integers": Param(str, "bits", choices=("bits", "masks"),
                          help="integer operands below opset 18: bits (exact for any value) or masks (0/1 only)"),
    }
    needs = ("shapes",)

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
                value = rw.op(KINDS[kind], [cast_operand(rw, a, np.bool_, "a"), cast_operand(rw, b, np.bool_, "b")],
                              suffix=KINDS[kind], dtype=np.bool_)
            elif dtype.kind not in "iu":
                raise PassError(f"node '{node.name}': {kind} of {dtype} operands has no meaning")
            elif bitwise_available(ctx, dtype):
                operands = [cast_operand(rw, a, dtype, "a"), cast_operand(rw, b, dtype, "b")]
                value = rw.op(f"Bitwise{KINDS[kind]}", operands, suffix=f"Bitwise{KINDS[kind]}", dtype=dtype)
            elif self.integers == "masks":
                flags = rw.op(KINDS[kind], [cast_operand(rw, a, np.bool_, "a"), cast_operand(rw, b, np.bool_, "b")],
                              suffix=KINDS[kind], dtype=np.bool_)
                value = cast_operand(rw, flags, dtype, "mask")
            elif dtype == np.uint64:
                raise PassError(f"node '{node.name}': uint64 {kind} needs Bitwise{KINDS[kind]} (opset 18), which "
                                f"target '{ctx.target.name}' at opset {ctx.opset} lacks")
            else:
                value = BitPlanes(rw).combine(kind, a, b, dtype)
            out_dtype = dtype_of(node.outputs[0]) or dtype
            if out_dtype == dtype_of(value):
                rw.bypass(value)
            else:
                rw.finish_cast(value, out_dtype)
            result.rewrote(node)
        return result

    @staticmethod
    def kind(node, ctx):
        """(kind, logical) when `node` is an and/or/xor this pass replaces, else None."""
        operator = aten_operator(node)
        if operator in ATEN_OPERATORS:
            return ATEN_OPERATORS[operator]
        if is_op(node, tuple(BITWISE_OPS)) and not bitwise_available(ctx, dtype_of(node.inputs[0])):
            return BITWISE_OPS[node.op], False
        return None

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
    """The exact opset-11 integer form (see the module docstring), built in int64 into one Rewrite."""

    def __init__(self, rw):
        self.rw = rw

    def const(self, value, suffix):
        return self.rw.const(value, suffix, np.int64)

    def op(self, op_type, inputs, attrs=None, *, suffix, dtype=np.int64):
        """`Rewrite.op`, int64 unless told otherwise."""
        return self.rw.op(op_type, inputs, attrs, suffix=suffix, dtype=dtype)

    def combine(self, kind, a, b, dtype):
        # The planes' axis is the last one of the broadcast result; named positively where the rank is
        # known: ONNX Runtime returns an empty tensor unreduced when it is reduced over a negative axis.
        ranks = [len(t.shape) if t.shape is not None else None for t in (a, b)]
        plane_axis = -1 if None in ranks else max(ranks)
        a, b = (cast_operand(self.rw, t, np.int64, name) for t, name in ((a, "a"), (b, "b")))
        if np.dtype(dtype).itemsize < 8:
            value = self.combine32(kind, a, b, plane_axis, signed=np.dtype(dtype).kind == "i", suffix="bits")
            return cast_operand(self.rw, value, dtype, "result")
        halves = [self.split(a, "a"), self.split(b, "b")]
        high = self.combine32(kind, halves[0][0], halves[1][0], plane_axis, signed=True, suffix="high")
        low = self.combine32(kind, halves[0][1], halves[1][1], plane_axis, signed=False, suffix="low")
        high_shifted = self.op("Mul", [high, self.const(2**32, "two_pow_32")], suffix="high_shifted")
        return self.op("Add", [high_shifted, low], suffix="joined")

    def split(self, value, suffix):
        """(high, low) with value = high * 2**32 + low, low in [0, 2**32), high in [-2**31, 2**31)."""
        low = self.op("Mod", [value, self.const(2**32, f"{suffix}_modulus")], {"fmod": 0}, suffix=f"{suffix}_low")
        high_part = self.op("Sub", [value, low], suffix=f"{suffix}_high_part")
        high = self.op("Div", [high_part, self.const(2**32, f"{suffix}_divisor")], suffix=f"{suffix}_high")
        return high, low

    def combine32(self, kind, a, b, plane_axis, signed, suffix):
        places = 2 ** np.arange(32, dtype=np.int64)
        modulus = self.const(places * 2, f"{suffix}_modulus")
        below_place = self.const(places - 1, f"{suffix}_below_place")
        planes = []
        for operand, name in ((a, "a"), (b, "b")):
            column = self.rw.unsqueeze(operand, [-1], suffix=f"{suffix}_{name}_column",
                                       axes_suffix=f"{suffix}_{name}_axes", dtype=np.int64)
            remainder = self.op("Mod", [column, modulus], {"fmod": 0}, suffix=f"{suffix}_{name}_remainder")
            planes.append(self.op("Greater", [remainder, below_place], suffix=f"{suffix}_{name}_planes",
                                  dtype=np.bool_))
        combined = self.op(KINDS[kind], planes, suffix=f"{suffix}_{KINDS[kind]}", dtype=np.bool_)
        weights = places.copy()
        if signed:
            weights[31] = -2**31
        weighted = self.op("Mul", [self.rw.cast(combined, np.int64, f"{suffix}_as_int64"),
                                   self.const(weights, f"{suffix}_weights")], suffix=f"{suffix}_weighted")
        return self.rw.reduce("ReduceSum", weighted, [plane_axis], keepdims=0, suffix=f"{suffix}_sum",
                              axes_suffix=f"{suffix}_sum_axes", dtype=np.int64)

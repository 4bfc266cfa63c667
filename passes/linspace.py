"""Replace ATen linspace by a constant (bit-exact to torch) or, for runtime bounds, a Range subgraph.

Before:  start, end, steps ─► ATen(operator="linspace") ─► values
After (all three constant):  initializer `values`
After (otherwise):           Range(0, steps) ─► two-sided fill below ─► values

"Constant" includes bounds computed from constants (Add of a Constant node and an initializer, a Cast of
the steps, static Shape dims), evaluated here with constant folding's exact evaluators (the values ONNX
Runtime would compute), so no fold-constants step is needed first.

torch's CPU kernel (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp) converts start and end to the
output type (float bounds truncate for integer outputs), then fills the first half from `start` and
the second half from `end`, so both ends are exact:

    step = (end - start) / (steps - 1)              in the output type (double for integer outputs)
    values[i] = start + step * i                    for i <  steps // 2
    values[i] = end - step * (steps - 1 - i)        for i >= steps // 2
    steps == 1 gives [start], steps == 0 gives []

x86-64 builds of torch run this kernel compiled for AVX2/AVX512, where the compiler fuses each
`a + b * c` into one fused multiply-add (one rounding instead of two); both forms do the same
(`fused_multiply_add: true`, the default; measured bit-exact against torch 2.13 on AVX512 and AVX2).
Set it to false for torch builds that dispatch to the baseline kernel
(torch.backends.cpu.get_cpu_capability() == "DEFAULT"). Integer outputs are computed in double and
truncated toward zero, as torch does; one rounding of difference is a whole unit after truncation.

The Range form is bit-exact too, from opset-11 nodes that each round once to nearest-even (as ONNX
Runtime's CPU kernels do): float64 multiply-add from Dekker's exact product, Knuth's exact sum and a
round-to-odd step (Boldo & Melquiond); float32 from the exact float64 product rounded to odd, then to
float32. Limits (docs/passes/linspace.md): float64 bounds from 2^994 up fall back to separate rounding;
bounds torch refuses for an integer output (out of range, inf, NaN) are not checked at runtime; targets
without float64 (TensorRT) get a float32 form with separate rounding for float32 outputs and no rewrite,
with a note, for the others.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from surgeon.errors import PassError
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.passes.chunk import IntegerFolder
from surgeon.rewrite import Rewrite, aten_operator, const_value, dtype_of, find_nodes

#: c10::ScalarType codes an ATen node may carry in its `dtype` input.
SCALAR_TYPES = {3: np.int32, 4: np.int64, 6: np.float32, 7: np.float64}
SUPPORTED = tuple(np.dtype(t) for t in SCALAR_TYPES.values())
#: Ops the Range form runs in float64: all of it for float64 and integer outputs, the exact multiply-add
#: for float32 outputs. Targets without them (TensorRT has no float64) get float32 or no rewrite.
FLOAT64_OPS = ("Cast", "Reshape", "Concat", "Gather", "Neg", "Add", "Sub", "Mul", "Div", "Floor", "Abs", "Sign",
               "Equal", "Where", "IsNaN")


@np.errstate(invalid="ignore", over="ignore")  # non-finite bounds give inf and NaN, as in torch
def torch_linspace(start: float, end: float, steps: int, dtype, fused_multiply_add: bool = True) -> np.ndarray:
    """The values torch.linspace(start, end, steps, dtype=dtype) gives on the CPU, bit for bit."""
    dtype = np.dtype(dtype)
    if steps <= 1:
        return np.array([start] * steps).astype(dtype)
    index = np.arange(steps)
    from_start = index < steps // 2
    multiple = np.where(from_start, index, steps - 1 - index)
    if dtype == np.float32:
        first, last = np.float32(start), np.float32(end)
        step = np.float32(np.float32(last - first) / np.float32(steps - 1))
    else:  # float64 and integer outputs compute in double (integers: converted first, truncated after)
        first, last = float(dtype.type(start)), float(dtype.type(end))
        step = (last - first) / (steps - 1)
    arithmetic = np.float32 if dtype == np.float32 else np.float64
    base = np.where(from_start, first, last).astype(arithmetic)
    signed_step = np.where(from_start, step, -step).astype(arithmetic)
    multiple = multiple.astype(arithmetic)
    if not fused_multiply_add:
        values = base + signed_step * multiple
    elif dtype == np.float32:
        values = fma_float32(signed_step, multiple, base)
    else:
        values = np.array([fma_float64(*abc) for abc in zip(signed_step, multiple, base)], np.float64)
    return np.trunc(values).astype(dtype) if dtype.kind in "iu" else values


def fma_float64(a: float, b: float, c: float) -> float:
    """a * b + c rounded once to float64 (exact rational arithmetic), with IEEE signed zeros."""
    if not all(np.isfinite((a, b, c))):
        return float(a) * float(b) + float(c)  # inf or NaN, the same as with one rounding
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    if exact == 0:
        # An exact zero is -0.0 only for (-0.0) + (-0.0); the float product is exact when it is zero.
        return a * b + c if a * b == 0 and Fraction(a) * Fraction(b) == 0 else 0.0
    return float(exact)


def fma_float32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a * b + c rounded once to float32.

    a * b of two float32 is exact in float64; the float64 sum is made round-to-odd (its last bit set
    when inexact), after which rounding to float32 is the correctly rounded result.
    """
    product = a.astype(np.float64) * b.astype(np.float64)
    addend = np.asarray(c, np.float64)
    total = product + addend
    high = total - product
    error = (product - (total - high)) + (addend - high)  # TwoSum: the exact rounding error of `total`
    even = (total.view(np.int64) & 1) == 0
    total = np.where((error != 0) & even, np.nextafter(total, np.where(error > 0, np.inf, -np.inf)), total)
    return total.astype(np.float32)


def output_dtype(node) -> np.dtype | None:
    known = dtype_of(node.outputs[0])
    if known is not None:
        return known
    code = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    if code is not None and code.size == 1:
        return np.dtype(SCALAR_TYPES[int(code)]) if int(code) in SCALAR_TYPES else None
    return np.dtype(np.float32)  # torch's default dtype


@register_pass("linspace")
class Linspace(Pass):
    """Replace ATen linspace by a bit-exact constant, or a bit-exact Range-based opset-11 subgraph."""

    handles = ("ATen:linspace",)

    params = {
        "mode": Param(str, "auto", choices=("auto", "range"),
                      help="auto: a constant when start, end and steps are constant, else Range; range: always Range"),
        "fused_multiply_add": Param(bool, True, help="match torch kernels built with FMA (x86-64 AVX2/AVX512)"),
    }
    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        for node in find_nodes(graph, lambda n: aten_operator(n) == "linspace"):
            dtype = output_dtype(node)
            if dtype not in SUPPORTED:
                result.note(f"{node.name}: left alone, linspace to {dtype} is not supported")
                continue
            fold = IntegerFolder()  # per node: it memoises by id(tensor), and rewrites free tensors
            start, end, steps = (fold(t) for t in node.inputs[:3])
            if self.mode == "auto" and start is not None and end is not None and steps is not None:
                count = int(steps)
                if count < 0:
                    raise PassError(f"linspace node '{node.name}' has steps = {count}; torch requires steps >= 0")
                values = torch_linspace(start.item(), end.item(), count, dtype, self.fused_multiply_add)
                rw = Rewrite(graph, ctx, node)
                rw.bypass(rw.const(values, "values"))
                result.rewrote(node)
                continue
            fused_multiply_add = self.fused_multiply_add
            missing = next((op for op in FLOAT64_OPS if not ctx.target.supports(op, dtype=np.float64)), None)
            if missing is not None and dtype != np.float32:
                result.note(f"{node.name}: left alone, target '{ctx.target.name}' has no float64 {missing}, which the "
                            f"runtime form needs for {dtype} outputs (in float32 it would not match torch)")
                continue
            if missing is not None and fused_multiply_add:
                result.note(f"{node.name}: float32 Mul and Add, target '{ctx.target.name}' has no float64 {missing} "
                            f"for the exact multiply-add; values may differ from torch by one rounding")
                fused_multiply_add = False
            self.range_form(Rewrite(graph, ctx, node), node, dtype, fused_multiply_add)
            result.rewrote(node)
        return result

    @staticmethod
    def range_form(rw, node, dtype, fused_multiply_add):
        arithmetic = np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)
        nodes = RangeFormNodes(rw)
        start, end, steps = node.inputs[:3]
        scalar_shape = rw.const(np.zeros(0, np.int64), "scalar_shape")
        count = rw.op("Reshape", [rw.cast(steps, np.int64, "steps_int64"), scalar_shape], suffix="steps_scalar",
                      dtype=np.int64)  # Range needs 0-d inputs
        index = rw.op("Range", [rw.const(0, "zero", np.int64), count, rw.const(1, "one", np.int64)],
                      suffix="index", dtype=np.int64)
        last_index = rw.op("Sub", [count, rw.const(1, "one_end", np.int64)], suffix="last_index", dtype=np.int64)
        # i < steps // 2  <=>  2 i < steps - 1
        twice_index = rw.op("Add", [index, index], suffix="twice_index", dtype=np.int64)
        first_half = rw.op("Less", [twice_index, last_index], suffix="first_half", dtype=np.bool_)
        # torch converts the int64 multiple of the step (i, or steps - 1 - i) to the arithmetic type.
        remaining = rw.op("Sub", [last_index, index], suffix="remaining", dtype=np.int64)
        multiple = rw.op("Where", [first_half, index, remaining], suffix="multiple_int64", dtype=np.int64)
        multiple = rw.cast(multiple, arithmetic, "multiple")
        # torch converts the bounds to the output type first: float bounds truncate for integer outputs.
        start, end = rw.cast(start, dtype, "start_typed"), rw.cast(end, dtype, "end_typed")
        start_float, end_float = rw.cast(start, arithmetic, "start"), rw.cast(end, arithmetic, "end")
        span = rw.op("Sub", [end_float, start_float], suffix="span", dtype=arithmetic)
        step = rw.op("Div", [span, rw.cast(last_index, arithmetic, "intervals")], suffix="step", dtype=arithmetic)
        # Gather picks the start or the end side: ONNX Runtime's Where turns a selected -0.0 into +0.0.
        side = rw.cast(rw.op("Not", [first_half], suffix="end_side", dtype=np.bool_), np.int64, "side")
        bounds = nodes.vector([start_float, end_float], "bounds", arithmetic)
        base = rw.op("Gather", [bounds, side], suffix="base", dtype=arithmetic)
        step_vector = nodes.vector([step], "step_vector", arithmetic)
        minus_step = rw.op("Neg", [step_vector], suffix="minus_step", dtype=arithmetic)
        steps_by_side = rw.op("Concat", [step_vector, minus_step], {"axis": 0}, suffix="steps_by_side",
                              dtype=arithmetic)
        signed_step = rw.op("Gather", [steps_by_side, side], suffix="signed_step", dtype=arithmetic)
        offset = rw.op("Mul", [signed_step, multiple], suffix="offset", dtype=arithmetic)
        values = rw.op("Add", [offset, base], suffix="values", dtype=arithmetic)
        if fused_multiply_add:
            fused = (nodes.fused_multiply_add if arithmetic == np.float64 else nodes.fused_multiply_add_float32)(
                signed_step, multiple, base)
            # Infinite bounds make the exact arithmetic NaN; with a non-finite operand the separate
            # Mul and Add give what the fused multiply-add gives.
            fused_is_nan = rw.op("IsNaN", [fused], suffix="fma_is_nan", dtype=np.bool_)
            values = rw.op("Where", [fused_is_nan, values, fused], suffix="fused_values", dtype=arithmetic)
        values = rw.cast(values, dtype, "values_typed")
        # torch fills [start] for steps = 1 (the formula would divide by zero): element i is
        # Concat([start], values)[i + 1], or [0] when steps = 1 -- in the output type, so large int64
        # bounds keep every digit and -0.0 its sign.
        single_step = rw.op("Equal", [count, rw.const(1, "one_step", np.int64)], suffix="single_step", dtype=np.bool_)
        shift = rw.cast(rw.op("Not", [single_step], suffix="several_steps", dtype=np.bool_), np.int64, "shift")
        start_and_values = rw.op("Concat", [nodes.vector([start], "start_vector", dtype), values], {"axis": 0},
                                 suffix="start_and_values", dtype=dtype)
        pick = rw.op("Add", [index, shift], suffix="pick", dtype=np.int64)
        rw.finish("Gather", [start_and_values, pick], suffix="values")


class RangeFormNodes:
    """Builds the Range form's nodes into one Rewrite, torch's fused multiply-add among them, from
    elementwise opset-11 ops (float64 unless a dtype is given).

    The fused multiply-add relies on each node rounding once, to nearest-even (ONNX Runtime's CPU
    kernels do; a runtime that contracts Mul and Add across nodes would not). ONNX Runtime's Where
    returns +0.0 for a -0.0 taken from its first value input, and fuses a Not condition into Where by
    swapping the values: a value that may be -0.0 goes second, under a condition without Not.
    """

    def __init__(self, rw):
        self.rw = rw

    def op(self, op_type, inputs, attrs=None, *, suffix, dtype=np.float64):
        """`Rewrite.op`, float64 unless told otherwise."""
        return self.rw.op(op_type, inputs, attrs, suffix=suffix, dtype=dtype)

    def float64(self, value, suffix):
        return self.rw.const(value, suffix, np.float64)

    def vector(self, scalars, suffix, dtype):
        """Concat of 0-d tensors into a 1-d one (Reshape, not Unsqueeze, whose signature changes at opset 13)."""
        one = self.rw.const(np.ones(1, np.int64), f"{suffix}/shape")
        parts = [self.op("Reshape", [scalar, one], suffix=f"{suffix}/part", dtype=dtype) for scalar in scalars]
        return parts[0] if len(parts) == 1 else self.op("Concat", parts, {"axis": 0}, suffix=suffix, dtype=dtype)

    def fused_multiply_add(self, a, b, c):
        """RN(a * b + c) for float64 a, b, c (Boldo & Melquiond, IEEE Trans. Computers 57(4), 2008):
        the exact product and sum leave c + a * b = high + low + product_error exactly, and rounding
        the small part to odd keeps the sticky bit the final rounding needs."""
        product, product_error = self.two_product(a, b)
        high, low = self.two_sum(c, product, "sum")
        small = self.round_to_odd(*self.two_sum(low, product_error, "small"))
        # high - (0 - small) is high + small, except that a zero small leaves a -0.0 high alone (0 - ±0
        # is +0, and x - +0 is x), where high + 0.0 would give +0.0.
        return self.op("Sub", [high, self.op("Sub", [self.float64(0.0, "zero_f"), small], suffix="minus_small")],
                       suffix="fma")

    def fused_multiply_add_float32(self, a, b, c):
        """RN32(a * b + c) for float32 a, b, c: the product is exact in float64, and rounding the float64
        sum to odd first makes the final rounding to float32 correct (no double rounding)."""
        a, b, c = (self.rw.cast(x, np.float64, f"{name}_float64")
                   for x, name in ((a, "step"), (b, "multiple"), (c, "base")))
        total = self.round_to_odd(*self.two_sum(c, self.op("Mul", [a, b], suffix="product"), "sum"))
        return self.rw.cast(total, np.float32, "fma")

    def two_sum(self, a, b, name):
        """(s, e) with s = RN(a + b) and s + e = a + b exactly (Knuth)."""
        total = self.op("Add", [a, b], suffix=name)
        b_part = self.op("Sub", [total, a], suffix=f"{name}/b_part")
        a_part = self.op("Sub", [total, b_part], suffix=f"{name}/a_part")
        error = self.op("Add", [self.op("Sub", [a, a_part], suffix=f"{name}/a_error"),
                                self.op("Sub", [b, b_part], suffix=f"{name}/b_error")], suffix=f"{name}/error")
        return total, error

    def split(self, x, name):
        """(high, low) with x = high + low exactly and 26 significant bits each (Veltkamp)."""
        scaled = self.op("Mul", [x, self.float64(2.0 ** 27 + 1, f"{name}/splitter")], suffix=f"{name}/scaled")
        high = self.op("Sub", [scaled, self.op("Sub", [scaled, x], suffix=f"{name}/excess")], suffix=f"{name}/high")
        return high, self.op("Sub", [x, high], suffix=f"{name}/low")

    def two_product(self, a, b):
        """(p, e) with p = RN(a * b) and p + e = a * b exactly (Dekker)."""
        product = self.op("Mul", [a, b], suffix="product")
        (a_high, a_low), (b_high, b_low) = self.split(a, "step_split"), self.split(b, "multiple_split")
        error = self.op("Sub", [self.op("Mul", [a_high, b_high], suffix="high_high"), product],
                        suffix="product_error_hh")
        for x, y, part in ((a_high, b_low, "high_low"), (a_low, b_high, "low_high"), (a_low, b_low, "low_low")):
            error = self.op("Add", [error, self.op("Mul", [x, y], suffix=part)], suffix=f"product_error_{part}")
        return product, error

    def round_to_odd(self, value, error):
        """value + error rounded to odd, given value = RN(value + error): value when the sum is exact or
        value's last significand bit is 1, else value's neighbour on the side of error."""
        # Rump's ufp, 2 ** floor(log2 |value|): q = (2^52 + 1) value, ufp = |q - RN((1 - 2^-53) q)|. The
        # second product is spelled q - q 2^-53 (the same rounding): ONNX Runtime removes a Mul by a
        # constant that is 1.0 in float32.
        lifted = self.op("Mul", [value, self.float64(2.0 ** 52 + 1, "ufp_lift")], suffix="ufp_lifted")
        low_part = self.op("Mul", [lifted, self.float64(2.0 ** -53, "two_minus_53")], suffix="ufp_low")
        dropped = self.op("Sub", [lifted, low_part], suffix="ufp_dropped")
        unit = self.op("Abs", [self.op("Sub", [lifted, dropped], suffix="ufp_difference")], suffix="ufp")
        # value / unit is in [1, 2) with 52 fraction bits; times 2^51 it is an integer exactly when the last is 0.
        normalised = self.op("Div", [value, unit], suffix="normalised")
        significand = self.op("Mul", [normalised, self.float64(2.0 ** 51, "two_51")], suffix="significand_half")
        floor = self.op("Floor", [significand], suffix="significand_floor")
        even = self.op("Equal", [floor, significand], suffix="even", dtype=np.bool_)
        # 5/8 ulp lands nearest the neighbour on either side, also below a power of two where the spacing
        # halves; Sign(error) = 0 (exact sum) leaves value as it is. value = 0 gives NaN, never `even`.
        direction = self.op("Sign", [error], suffix="direction")
        size = self.op("Mul", [unit, self.float64(0.625 * 2.0 ** -52, "five_eighths_ulp")], suffix="nudge_size")
        nudge = self.op("Mul", [direction, size], suffix="nudge")
        return self.op("Where", [even, self.op("Add", [value, nudge], suffix="neighbour"), value],
                       suffix="round_to_odd")

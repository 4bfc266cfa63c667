"""Replace ATen linspace by a constant (bit-exact to torch) or, for runtime bounds, a Range subgraph.

Before:  start, end, steps ─► ATen(operator="linspace") ─► values
After (all three constant):  initializer `values`
After (otherwise):           Range(0, steps) ─► two-sided fill below ─► values

torch's CPU kernel (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp) fills the first half from
`start` and the second half from `end`, so both ends are exact:

    step = (end - start) / (steps - 1)              in the output type (double for integer outputs)
    values[i] = start + step * i                    for i <  steps // 2
    values[i] = end - step * (steps - 1 - i)        for i >= steps // 2
    steps == 1 gives [start], steps == 0 gives []

x86-64 builds of torch run this kernel compiled for AVX2/AVX512, where the compiler fuses each
`a + b * c` into one fused multiply-add (one rounding instead of two); the constant form does the same
(`fused_multiply_add: true`, the default; measured bit-exact against torch 2.13 on AVX512). Set it to
false for torch builds that dispatch to the baseline kernel (torch.backends.cpu.get_cpu_capability()
== "DEFAULT"). Integer outputs are computed in double and truncated toward zero, as torch does.

The Range form computes the same formula with separate Mul and Add, in float32 for float32 outputs
and float64 otherwise, so it may differ from torch by one rounding: at most 1e-6 * max(1, |start|,
|end|) for float32. `steps` = 1 there uses max(steps - 1, 1) as the divisor and takes element 0 from
the `start` side, which gives [start].
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx

from surgeon.errors import PassError
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import Rewrite, aten_operator, const_value, dtype_of, find_nodes

#: c10::ScalarType codes an ATen node may carry in its `dtype` input.
SCALAR_TYPES = {3: np.int32, 4: np.int64, 6: np.float32, 7: np.float64}
SUPPORTED = tuple(np.dtype(t) for t in SCALAR_TYPES.values())


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
    """Replace ATen linspace by a bit-exact constant, or a Range-based opset-11 subgraph."""

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
            start, end, steps = (const_value(t) for t in node.inputs[:3])
            rw = Rewrite(graph, ctx, node)
            if self.mode == "auto" and start is not None and end is not None and steps is not None:
                count = int(steps)
                if count < 0:
                    raise PassError(f"linspace node '{node.name}' has steps = {count}; torch requires steps >= 0")
                values = torch_linspace(start.item(), end.item(), count, dtype, self.fused_multiply_add)
                rw.bypass(rw.const(values, "values"))
            else:
                self.range_form(rw, node, dtype)
            result.rewrote(node)
        return result

    @staticmethod
    def range_form(rw, node, dtype):
        compute = np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)
        to_compute = {"to": onnx.helper.np_dtype_to_tensor_dtype(compute)}
        start, end, steps = node.inputs[:3]

        def const(value, suffix, dtype=compute):
            scalar = rw.const(value, suffix, dtype=dtype)
            scalar.values = scalar.values.reshape(())  # Rewrite.const makes 0-d values 1-d; Range needs 0-d
            return scalar

        def op(op_type, inputs, suffix, attrs=None, dtype=compute):
            return rw.op(op_type, inputs, attrs, suffix=suffix, dtype=dtype)

        count = op("Reshape", [op("Cast", [steps], "steps_int64", {"to": onnx.TensorProto.INT64}, np.int64),
                               rw.const(np.zeros(0, np.int64), "scalar_shape")], "steps_scalar", dtype=np.int64)
        index = op("Cast", [op("Range", [const(0, "zero", np.int64), count, const(1, "one", np.int64)],
                               "index_int64", dtype=np.int64)], "index", to_compute)
        first = op("Cast", [start], "start", to_compute)
        last = op("Cast", [end], "end", to_compute)
        count_f = op("Cast", [count], "steps", to_compute)
        intervals = op("Max", [op("Sub", [count_f, const(1, "one_f")], "steps_minus_one"), const(1, "at_least_one")],
                       "intervals")
        step = op("Div", [op("Sub", [last, first], "span"), intervals], "step")
        from_start = op("Add", [first, op("Mul", [step, index], "start_offset")], "from_start")
        remaining = op("Sub", [op("Sub", [count_f, const(1, "one_end")], "last_index"), index], "remaining")
        from_end = op("Sub", [last, op("Mul", [step, remaining], "end_offset")], "from_end")
        # i < steps // 2  <=>  2 i < steps - 1 for steps >= 2; with `intervals` steps = 1 takes the start side.
        first_half = op("Less", [op("Add", [index, index], "twice_index"), intervals], "first_half", dtype=np.bool_)
        if compute == dtype:
            rw.finish("Where", [first_half, from_start, from_end], suffix="values")
        else:
            values = op("Where", [first_half, from_start, from_end], "values_float")
            rw.finish("Cast", [values], {"to": onnx.helper.np_dtype_to_tensor_dtype(dtype)})

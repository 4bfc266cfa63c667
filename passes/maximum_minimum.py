"""Rewrite torch.maximum/minimum/fmax/fmin into standard Max/Min, or Where where Max/Min cannot take the dtype.

Before (ATEN_FALLBACK export):            After (floats, and integers from opset 12):
  a, b ─► ATen(operator="maximum") ─► y     a, b ─► Max ─► y

Integers before opset 12, where Max/Min accept floats only:
  a, b ─► Greater(a, b) ─► Where(·, a, b) ─► y          (minimum: Less)
uint64, for which ONNX Runtime has no Where: b + (a - b) * Cast(Greater(a, b)), exact in wrap-around.

torch's own opset-11 export of an integer maximum rounds through float32, exact only below 2**24:
  a ─► Cast(float) ─┐
                    Max ─► Cast(int64) ─► y    becomes    a, b ─► Where(Greater(a, b), a, b) ─► y
  b ─► Cast(float) ─┘                                   (or Max(a, b) from opset 12)
b may also be a float constant holding integers (torch.maximum(a, torch.tensor(3))): it becomes an integer
constant, with a note where it is beyond the float's integer precision (the exporter may have rounded it).

fmax/fmin return the other operand where one is NaN (maximum/minimum, like ONNX Max/Min, propagate it):
  fmax(a, b) = Max(Where(IsNaN(a), b, a), Where(IsNaN(b), a, b))
Boolean maximum/minimum (ATen, or the bool Max/Min torch writes from opset 13, which no runtime loads)
are Or/And. Standard integer Max/Min nodes a target cannot run are rewritten too; int64 ones on every
target, since validation runs on ONNX Runtime, whose int64 Max/Min are wrong past the int32 range.

ATen operands of different dtypes are first Cast to torch's result dtype (the ATen output's recorded
type, else torch.result_type of the operands), which then picks the form: fmax(int64, float32) is a
float32 fmax, NaN handling included. Integers ONNX Runtime's profile gives neither Max/Min nor Where
(int16, uint16) are computed in int32 and cast back; uint64 selects with the wrap-around arithmetic above.
bfloat16, which ONNX Runtime has no Max/Min/IsNaN/Where for (and ONNX no Where before opset 16), is computed
in float32 and cast back, exactly.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from surgeon.errors import PassError
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.promotion import aten_result_dtype
from surgeon.rewrite import (INTEGER_MAX_MIN_SINCE, Rewrite, aten_operator, attr_text, bfloat16_compute_dtype,
                             const_value, dtype_of, is_op, max_min_is_wrong, producer, validation_runtime)

#: ATen operator -> (standard op, NaN-ignoring?)
ATEN_FORMS = {"maximum": ("Max", False), "minimum": ("Min", False), "fmax": ("Max", True),
              "fmin": ("Min", True)}
#: torch.max(a, b) / torch.min(a, b) arrive as ATen max/min with overload "other".
ATEN_OTHER_FORMS = {"max": "Max", "min": "Min"}
WHERE_COMPARE = {"Max": "Greater", "Min": "Less"}
BOOL_FORM = {"Max": "Or", "Min": "And"}
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)


@register_pass("maximum-minimum")
class MaximumMinimum(Pass):
    """Rewrite ATen maximum/minimum/fmax/fmin (and int Max/Min a target lacks) into Max/Min or Where."""

    handles = ("ATen:maximum", "ATen:minimum", "ATen:fmax", "ATen:fmin")

    params = {
        "mode": Param(str, "auto", choices=("auto", "where"),
                      help="integer inputs: 'auto' uses Max/Min where opset and target allow, else "
                           "Where(Greater); 'where' always uses Where(Greater/Less)"),
    }
    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        for node in list(graph.nodes):
            site = self._match(node, ctx, result)
            if site is None:
                continue
            op_type, ignore_nan, operands, dtype, reported = site
            if len(operands) < 2:
                raise PassError(f"node '{node.name}' ({node.op}) has {len(operands)} input(s); "
                                f"{op_type} needs two")
            if dtype is None:
                known = ", ".join(str(dtype_of(t) or "unknown") for t in operands)
                result.note(f"{node.name}: left alone, torch's result type of its operands ({known}) is unknown "
                            f"here (run infer-shapes first?)")
                continue
            computed_in = _computed_in(op_type, ignore_nan, dtype, ctx)
            if computed_in is None:
                result.note(f"{node.name}: left alone, target '{ctx.target.name}' at opset {ctx.opset} has no "
                            f"{' / '.join(_float_ops(op_type, ignore_nan))} on {dtype}, nor on float32")
                continue
            rw = Rewrite(graph, ctx, node)
            operands = [rw.const(t, f"operand_{i}", dtype=computed_in) if isinstance(t, np.ndarray)
                        else rw.cast(t, computed_in, f"cast_{i}") for i, t in enumerate(operands)]
            combined = operands[0]
            for i, operand in enumerate(operands[1:], start=1):
                last = i == len(operands) - 1 and computed_in == dtype
                combined = self._combine(rw, op_type, ignore_nan, combined, operand, computed_in, ctx, last)
            if computed_in != dtype:
                rw.finish_cast(combined, dtype, suffix="cast_back")
            result.rewrote(reported)
        return result

    def _match(self, node, ctx, result):
        """(op_type, ignores NaN, operands, dtype, name to report) of a site to rewrite, or None."""
        operator = aten_operator(node)
        if operator in ATEN_FORMS:
            op_type, ignore_nan = ATEN_FORMS[operator]
            return op_type, ignore_nan, list(node.inputs[:2]), aten_result_dtype(node), node.name
        if operator in ATEN_OTHER_FORMS and attr_text(node, "overload_name", "") == "other":
            op_type = ATEN_OTHER_FORMS[operator]
            return op_type, False, list(node.inputs[:2]), aten_result_dtype(node), node.name
        if is_op(node, "Cast"):
            # Anchored at the Cast back, whose output already has the integer type.
            minmax = producer(node.inputs[0])
            rounded = _float_rounded_integer_operands(minmax, node, result) if minmax is not None else None
            if rounded is not None:
                dtype = next(dtype_of(t) for t in rounded if not isinstance(t, np.ndarray))
                return minmax.op, False, rounded, dtype, minmax.name
        elif is_op(node, ("Max", "Min")):
            dtype = dtype_of(node.inputs[0])
            if dtype == np.bool_:  # torch.maximum(bool, bool) at opset >= 13; no Max/Min takes bool
                return node.op, False, list(node.inputs), dtype, node.name
            if dtype is not None and _is_integer(dtype) and self._integer_form(node.op, dtype, ctx) == "where":
                return node.op, False, list(node.inputs), dtype, node.name
        return None

    def _integer_form(self, op_type, dtype, ctx) -> str:
        if self.mode == "where" or ctx.opset < INTEGER_MAX_MIN_SINCE or max_min_is_wrong(ctx.target, dtype):
            return "where"
        return "minmax" if ctx.target.supports(op_type, dtype=dtype, opset=ctx.opset) else "where"

    def _combine(self, rw, op_type, ignore_nan, a, b, dtype, ctx, last):
        def emit(kind, inputs):
            return rw.finish(kind, inputs) if last else rw.op(kind, inputs, dtype=dtype)

        if dtype == np.bool_:
            return emit(BOOL_FORM[op_type], [a, b])
        if _is_integer(dtype):
            if self._integer_form(op_type, dtype, ctx) == "minmax":
                return emit(op_type, [a, b])
            takes_a = rw.op(WHERE_COMPARE[op_type], [a, b], dtype=np.bool_)
            if validation_runtime(ctx.target).supports("Where", dtype=dtype, opset=ctx.opset):
                return emit("Where", [takes_a, a, b])
            # No Where for it (ONNX Runtime: uint64) and no wider type to compute in: select with
            # wrap-around arithmetic, exact for unsigned integers: b + (a - b) * [a is taken].
            taken = rw.cast(takes_a, dtype, "select")
            return emit("Add", [b, rw.op("Mul", [rw.op("Sub", [a, b], dtype=dtype), taken], dtype=dtype)])
        if ignore_nan:
            a, b = (rw.op("Where", [rw.op("IsNaN", [a], dtype=np.bool_), b, a], dtype=dtype),
                    rw.op("Where", [rw.op("IsNaN", [b], dtype=np.bool_), a, b], dtype=dtype))
        return emit(op_type, [a, b])


def _computed_in(op_type, ignore_nan, dtype, ctx) -> np.dtype | None:
    """The dtype to compute in: `dtype`; float32 for a bfloat16 that the target or ONNX at the graph's opset
    does not take for the ops of the float form (no runtime has a bfloat16 Max before opset 13, Where takes it
    from opset 16, ONNX Runtime has neither), exact, as max/min/NaN tests are; None where float32 will not do
    either. Or int32 for an integer type int32 holds where ONNX Runtime has
    neither the Max/Min (from opset 12) nor the Where kernel for it at the opset: its profile says so, the
    target's own where the target is ONNX Runtime, else the built-in one, since validation runs the rewrite
    there (1.31 lacks int16/uint16; the tests pin it). Cast(int32) -> Max -> Cast back is exact."""
    if dtype != np.bool_ and not _is_integer(dtype):
        return bfloat16_compute_dtype(ctx, _float_ops(op_type, ignore_nan), dtype)
    if not _is_integer(dtype) or not np.can_cast(dtype, np.int32):
        return dtype
    runtime = validation_runtime(ctx.target)
    runs_max_min = ctx.opset >= INTEGER_MAX_MIN_SINCE and runtime.supports(op_type, dtype=dtype, opset=ctx.opset)
    if runs_max_min or runtime.supports("Where", dtype=dtype, opset=ctx.opset):
        return dtype
    return np.dtype(np.int32)


def _float_ops(op_type, ignore_nan) -> tuple[str, ...]:
    """The ops of the float form: Max/Min, and for fmax/fmin the IsNaN tests and the Where picking the other."""
    return (op_type, "IsNaN", "Where") if ignore_nan else (op_type,)


def _is_integer(dtype) -> bool:
    return np.issubdtype(np.dtype(dtype), np.integer)


def _float_rounded_integer_operands(minmax, cast_back, result):
    """The integer operands of torch's Cast(float) -> Max/Min -> Cast(int) export, or None. One operand may
    be a float constant (torch.maximum(x, torch.tensor(3))), returned as an array of the integer type when
    its values are integers of that type; one beyond the float's integer precision gets a note."""
    if not is_op(minmax, ("Max", "Min")) or len(minmax.inputs) != 2 or len(minmax.outputs[0].outputs) != 1:
        return None
    operands = []
    for tensor in minmax.inputs:
        cast = producer(tensor)
        if cast is not None and is_op(cast, "Cast") and cast.attrs.get("to") in FLOAT_TYPES:
            operands.append(cast.inputs[0])
        elif (constant := const_value(tensor)) is not None and np.asarray(constant).dtype.kind == "f":
            operands.append(np.asarray(constant))
        else:
            return None
    dtypes = {dtype_of(t) for t in operands if not isinstance(t, np.ndarray)}
    if len(dtypes) != 1 or None in dtypes or not _is_integer(next(iter(dtypes))):
        return None
    dtype = next(iter(dtypes))
    if dtype_of(cast_back.outputs[0]) != dtype:
        return None
    info = np.iinfo(dtype)
    for i, constant in enumerate(operands):
        if not isinstance(constant, np.ndarray):
            continue
        values = constant.astype(np.float64).ravel().tolist()  # float64 holds every float16/32 exactly
        if not all(v.is_integer() and info.min <= v <= info.max for v in values):
            return None
        precise = 2 ** (np.finfo(constant.dtype).nmant + 1)  # every integer up to this is a float of the type
        if any(abs(v) > precise for v in values):
            shown = ", ".join(str(int(v)) for v in values)
            result.note(f"{minmax.name}: constant {shown} is beyond 2**{int(np.log2(precise))}, where "
                        f"{constant.dtype} skips integers: if torch's operand was another integer, the exporter "
                        "rounded it and torch's result, computed from the unrounded value, cannot be recovered "
                        "(the rewrite uses the stored one)")
        operands[i] = np.array([int(v) for v in values], dtype).reshape(constant.shape)
    return operands

"""Rewrite torch.any/torch.all into a float ReduceMax/ReduceMin that every runtime reduces.

Also the count of true values (`mask.sum(dim)`, same Cast/ReduceSum cluster without the Greater) where
the target lacks ReduceSum on the integer type (TensorRT 8.6 reduces float only):
  x: bool ─► Cast(int64) ─► ReduceSum(axes) ─► n    becomes    x ─► Cast(float) ─► ReduceSum ─► Cast(int64) ─► n
exact while the reduced extent is below 2**24 (float32 counts exactly up to there): a count over an
unknown or larger extent is left alone with a note; its axes are named, non-negative (see below).

Before (ATEN_FALLBACK export of older exporters, dim and keepdim as constant inputs or attributes):
  x ─► ATen(operator="any", dim, keepdim) ─► y
Before (torch 2.13's own export: an int64 count, which TensorRT reduces poorly):
  any:  x ─► Cast(int64) ─► ReduceSum(axes) ─► Greater(·, 0) ─► y
  all:  x ─► Not ─► Cast(int64) ─► ReduceSum(axes) ─► Greater(·, 0) ─► Not ─► y

After:
  any:  x ─► Cast(float) ─► ReduceMax(axes) ─► Greater(·, 0) ─► y
  all:  x ─► Cast(float) ─► ReduceMin(axes) ─► Greater(·, 0) ─► y
A non-bool x is first Cast to bool (non-zero, NaN included, is true); axes are an attribute before
opset 18 and an input from 18. The final test is Greater(·, 0), not a Cast back to bool: ONNX Runtime
reduces an empty set to -inf (ReduceMax) and +inf (ReduceMin), so an empty any is False and an empty
all is True, as in torch, where a Cast of -inf would give True. `dim=()` reduces nothing (as in torch);
the result has the output's recorded type, else uint8 for a uint8 input (torch's legacy rule) and bool
otherwise. Negative axes are made positive where the rank is known: ONNX Runtime 1.31 returns an empty
tensor unreduced when it is reduced over a negative axis.
torch reads dim 0 and -1 of a 0-d tensor as the element itself, so there they reduce nothing (torch's own
export, ReduceSum over axis 0 of a rank-0 input, fails in ONNX Runtime; the rewrite repairs it); a dim
outside torch's range for a known rank is an error naming the node.

torch 2.13 mis-exports both on non-bool tensors: `all` applies Not to the float/int tensor (an invalid
graph, which this rewrite repairs), `any` truncates it to int64 (0.5 counts as false, NaN as INT64_MIN,
-1 and 1 cancel). That any graph is also what `x.long().sum() > 0` exports, so it is rewritten only
with `float_any: true`.
"""
from __future__ import annotations

from functools import partial

import numpy as np
from onnx import TensorProto

from surgeon.errors import PassError
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import Rewrite, aten_operator, const_value, dtype_of, is_op, producer

REDUCTION = {"any": "ReduceMax", "all": "ReduceMin"}
#: float32 represents every integer count below this exactly.
FLOAT_EXACT_COUNT = 2 ** 24


@register_pass("any-all")
class AnyAll(Pass):
    """Rewrite ATen any/all (and torch's Cast/ReduceSum/Greater export) into a float ReduceMax/ReduceMin."""

    handles = ("ATen:any", "ATen:all", "ReduceSum")  # and the integer ReduceSum torch exports for them

    params = {
        "match_exported": Param(bool, True, help="also rewrite the int64 Cast/ReduceSum/Greater(0) cluster "
                                                 "torch 2.13 exports for any/all"),
        "float_any": Param(bool, False, help="also read Greater(ReduceSum(Cast(float x, int64)), 0) as torch.any "
                                             "of a float tensor, which torch 2.13 exports so, wrongly; off "
                                             "because x.long().sum() > 0 exports the same graph"),
        "float_counts": Param(bool, True, help="sum bool masks (Cast(int)/ReduceSum) in float where the target "
                                               "lacks ReduceSum on that integer type"),
    }
    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        # `all` clusters first: their inner Greater alone would read as an `any` of Not(x).
        finders = [_aten_site]
        if self.match_exported:
            finders += [_exported_all_site, partial(_exported_any_site, float_inputs=self.float_any)]
        for finder in finders:
            for node in list(graph.nodes):
                site = None if _is_dead(graph, node) else finder(node)
                if site is not None:
                    _rewrite(graph, ctx, node, *site)
                    result.rewrote(node)
        if self.float_counts:
            # After any/all: the counts left are not part of an any/all cluster.
            for node in list(graph.nodes):
                if _is_dead(graph, node) or not _is_bool_count(node):
                    continue
                if ctx.target.supports("ReduceSum", dtype=dtype_of(node.outputs[0]), opset=ctx.opset):
                    continue
                extent = _reduced_extent(node)
                if extent is None or extent >= FLOAT_EXACT_COUNT:
                    result.note(f"{node.name}: left alone, the count's reduced extent ({extent or 'unknown'}) "
                                f"is not known to be below 2**24, where float32 counts stop being exact")
                    continue
                _rewrite_count(graph, ctx, node)
                result.rewrote(node)
        return result


def _is_dead(graph, node) -> bool:
    """True for a node nothing reads any more, such as the inner Greater of an `all` just rewritten."""
    graph_outputs = {id(t) for t in graph.outputs}
    return not any(t.outputs or id(t) in graph_outputs for t in node.outputs)


def _rewrite(graph, ctx, node, kind, x, axes, keepdims):
    """y = Greater(Reduce{Max,Min}(Cast(x, float), axes), 0); axes None reduces all, [] nothing."""
    rank = len(x.shape) if getattr(x, "shape", None) is not None else None
    if axes and rank is not None:
        axes = _checked_axes(node, kind, axes, rank)
    rw = Rewrite(graph, ctx, node)
    dtype = dtype_of(x)
    values = rw.cast(rw.cast(x, np.bool_), np.float32)  # through bool: any non-zero value (NaN too) counts as 1
    if axes != []:
        values = rw.reduce(REDUCTION[kind], values, axes, keepdims, dtype=np.float32)
    zero = rw.const(0, "zero", np.float32)
    # The recorded output type wins: torch's export of all(uint8) declares a bool result.
    result_type = dtype_of(node.outputs[0]) or (np.dtype(np.uint8) if dtype == np.uint8 else np.dtype(np.bool_))
    if result_type == np.bool_:
        rw.finish("Greater", [values, zero])
    else:
        rw.finish_cast(rw.op("Greater", [values, zero], dtype=np.bool_), result_type)


def _checked_axes(node, kind, axes, rank) -> list[int]:
    """The axes made non-negative, [] for a 0-d input; an axis out of torch's range is an error."""
    # torch wraps the dim of a 0-d tensor as if it had one dim: 0 and -1 both name the element itself,
    # and reducing over it gives that element's truth (keepdim or not).
    extent = max(rank, 1)
    wrong = [axis for axis in axes if not -extent <= axis < extent]
    if wrong:
        raise PassError(f"node '{node.name}': {kind} over dim {wrong[0]} of a rank-{rank} input, outside "
                        f"[{-extent}, {extent - 1}] (torch raises 'Dimension out of range')")
    # ONNX Runtime 1.31 returns an empty input unreduced when an axis is negative.
    return [] if rank == 0 else [axis % rank for axis in axes]


def _is_bool_count(node) -> bool:
    """ReduceSum(Cast(x: bool, to an integer type)): torch's export of mask.sum()."""
    if not is_op(node, "ReduceSum"):
        return False
    cast = producer(node.inputs[0])
    dtype = dtype_of(node.outputs[0])
    return (cast is not None and is_op(cast, "Cast") and dtype_of(cast.inputs[0]) == np.bool_
            and dtype is not None and np.issubdtype(dtype, np.integer))


def _reduced_extent(reduce_sum) -> int | None:
    """How many values each output of the ReduceSum adds up, if the shapes say."""
    axes = _reduced_axes(reduce_sum)
    if axes is None:
        return None
    dims = [reduce_sum.inputs[0].shape[axis] for axis in axes]
    if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))


def _reduced_axes(reduce_sum) -> list[int] | None:
    """The axes the ReduceSum adds up, non-negative and explicit ([] for none), if the shapes say."""
    shape = reduce_sum.inputs[0].shape
    axes = reduce_sum.attrs.get("axes")
    axes_input = len(reduce_sum.inputs) > 1 and reduce_sum.inputs[1].name
    if axes_input:
        axes = const_value(reduce_sum.inputs[1])
    if shape is None or (axes_input and axes is None):
        return None
    rank = len(shape)
    if axes is None or len(axes) == 0:
        return [] if reduce_sum.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    if rank == 0 or not all(-rank <= int(axis) < rank for axis in axes):
        return None
    return [int(axis) % rank for axis in axes]


def _rewrite_count(graph, ctx, reduce_sum):
    """Cast(x: bool, float) ─► ReduceSum (same axes, named and non-negative) ─► Cast back.

    ONNX Runtime 1.31 returns an empty input unreduced over a negative axis.
    """
    rw = Rewrite(graph, ctx, reduce_sum)
    mask = producer(reduce_sum.inputs[0]).inputs[0]
    total = rw.cast(mask, np.float32)
    axes = _reduced_axes(reduce_sum)  # known: the count is rewritten only over a known extent
    if axes:
        total = rw.reduce("ReduceSum", total, axes, reduce_sum.attrs.get("keepdims", 1), dtype=np.float32)
    rw.finish_cast(total, dtype_of(reduce_sum.outputs[0]))


def _aten_site(node):
    """(kind, x, axes, keepdims) of ATen any/all; dim and keepdim are constant inputs or attributes."""
    kind = aten_operator(node)
    if kind not in REDUCTION:
        return None
    dims = _aten_argument(node, 1, "dim")
    keepdim = _aten_argument(node, 2, "keepdim")
    axes = None if dims is None else [int(d) for d in np.atleast_1d(dims)]  # dim=() gives []: no reduction
    return kind, node.inputs[0], axes, bool(keepdim) if keepdim is not None else False


def _aten_argument(node, index, name):
    if index < len(node.inputs) and node.inputs[index].name:
        value = const_value(node.inputs[index])
        if value is None:
            raise PassError(f"node '{node.name}': {aten_operator(node)}'s {name} (input {index}) is not a constant")
        return value
    return node.attrs.get(name)


def _exported_any_site(node, float_inputs: bool):
    """('any', x, axes, keepdims) for Greater(ReduceSum(Cast(x: bool)), 0), or x float if `float_inputs`."""
    count = _bool_count(node, float_inputs)
    return None if count is None else ("any",) + count


def _exported_all_site(node):
    """('all', x, axes, keepdims) for Not(Greater(ReduceSum(Cast(Not(x))), 0))."""
    if not is_op(node, "Not"):
        return None
    inner = producer(node.inputs[0])
    count = _bool_count(inner) if inner is not None else None
    negation = producer(count[0]) if count is not None else None
    if negation is None or not is_op(negation, "Not"):
        return None
    return ("all", negation.inputs[0]) + count[1:]


def _bool_count(greater, float_inputs: bool = False):
    """(x, axes, keepdims) when `greater` is Greater(ReduceSum(Cast(x)), 0) counting true values, else None.

    x must be boolean (or made by Not, which torch's `all` applies even to non-bool x, invalidly); with
    `float_inputs`, x may be a float tensor truncated to int64, torch's export of any(float x).
    """
    if not is_op(greater, "Greater") or not _is_zero(greater.inputs[1]):
        return None
    reduce_sum = producer(greater.inputs[0])
    if reduce_sum is None or not is_op(reduce_sum, "ReduceSum"):
        return None
    cast = producer(reduce_sum.inputs[0])
    if cast is None or not is_op(cast, "Cast"):
        return None
    x = cast.inputs[0]
    negation, dtype = producer(x), dtype_of(x)
    counts_truth = dtype == np.bool_ or (negation is not None and is_op(negation, "Not"))
    truncated_float = (float_inputs and dtype is not None and np.issubdtype(dtype, np.floating)
                       and cast.attrs.get("to") == TensorProto.INT64)
    if not (counts_truth or truncated_float):
        return None
    axes = reduce_sum.attrs.get("axes")
    if len(reduce_sum.inputs) > 1 and reduce_sum.inputs[1].name:
        axes = const_value(reduce_sum.inputs[1])
        if axes is None:
            return None
    axes = None if axes is None else [int(a) for a in axes]
    if not axes:  # no axes: all of them, unless the node says to reduce nothing
        axes = [] if reduce_sum.attrs.get("noop_with_empty_axes", 0) else None
    return x, axes, bool(reduce_sum.attrs.get("keepdims", 1))


def _is_zero(tensor) -> bool:
    value = const_value(tensor)
    return value is not None and value.size == 1 and value.item() == 0

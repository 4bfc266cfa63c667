"""Rewrite torch.nan_to_num into six standard opset-11 ops, exact, or remove it when the user says it is dead.

torch 2.13 exports `torch.nan_to_num(x)` as a 21-node cluster that runs IsInf on a float64 copy (which
TensorRT cannot hold) and tests each stage on the previous stage's output; ATEN_FALLBACK graphs from
older exporters carry `ATen(operator="nan_to_num")` instead.

Before (torch export, opset 11 and 13):
  x ─► IsNaN ─► Where(·, nan, x) ─► w0
  w0 ─► Cast(double) ─► IsInf ─► Cast(bool) ─┐
  w0 ─► Greater(·, 0) ─► Cast(bool) ─────────And ─► Where(·, posinf, w0) ─► w1
  w1 ─► ... IsInf ... Less(·, 0) ... And ─► Where(·, neginf, w1) ─► y

After, mode "exact" (every test reads the original x, as torch does):
  y = Where(IsNaN(x), nan, Where(Equal(x, +inf), posinf, Where(Equal(x, -inf), neginf, x)))
  (a -0.0 replacement as Where(test, 0, kept) * Where(test, -1, 1): see `_replace`)

After, mode "remove" (the user asserts no NaN/inf reaches it):  y = x

torch's defaults are posinf = the dtype's largest finite value and neginf = its lowest (float16:
±65504, float32: ±3.4028235e38); the cluster carries them as constants, for ATen they come from the
input's dtype. Equal(x, ±inf) rather than IsInf because ONNX Runtime's IsInf takes float16 only from
opset 20. A lone Where(IsNaN(x), 0, x) is not a nan_to_num and is left alone. bfloat16 (defaults ±3.3895e38)
runs in float32 between Casts where the target or the opset lacks bfloat16 Equal/IsNaN/Where: exact, as
float32 holds every bfloat16.
"""
from __future__ import annotations

from functools import partial

import ml_dtypes  # onnx's own dependency, whose finfo knows bfloat16 (NumPy's does not)
import numpy as np
from onnx import TensorProto

from surgeon.errors import PassError
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.promotion import TORCH_FLOATS
from surgeon.rewrite import Rewrite, aten_operator, bfloat16_compute_dtype, const_value, dtype_of, is_op, producer

KINDS = ("nan", "posinf", "neginf")
#: Every op the exact form writes (Mul for a -0.0 replacement).
EXACT_OPS = ("Equal", "IsNaN", "Where", "Mul")
#: The Cast torch puts before IsInf: to float64, which keeps every value, infinities included.
WIDENING_CASTS = (TensorProto.DOUBLE,)


@register_pass("nan-to-num")
class NanToNum(Pass):
    """Rewrite torch.nan_to_num (ATen or the exported IsNaN/IsInf/Where cluster) exactly, or remove it."""

    handles = ("ATen:nan_to_num", "IsNaN", "IsInf")  # and the IsNaN/IsInf cluster torch exports

    params = {
        "mode": Param(str, "exact", choices=("exact", "remove"),
                      help="'exact': opset-11 ops matching torch bit for bit; 'remove': wire the input "
                           "to the output (only when no NaN/inf can reach it)"),
    }
    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        claimed: set[int] = set()
        for node in list(graph.nodes):
            if id(node) in claimed:
                continue
            site = _aten_site(node) or _cluster_site(node, claimed)
            if site is None:
                continue
            x, replacements, cluster = site
            claimed.update(id(n) for n in cluster)
            if self.mode == "exact" and _is_canonical(cluster, x):
                continue
            rw = Rewrite(graph, ctx, node)
            dtype = dtype_of(x)
            if self.mode == "remove" or (dtype is not None and dtype.name not in TORCH_FLOATS):
                rw.bypass(x)  # nan_to_num of an integer tensor is a copy
            else:
                values = _resolve(replacements, dtype, node)
                computed_in = bfloat16_compute_dtype(ctx, EXACT_OPS, values["nan"].dtype)
                if computed_in is None:
                    result.note(f"{node.name}: left alone, target '{ctx.target.name}' or ONNX at opset {ctx.opset} "
                                f"has no {values['nan'].dtype} {' / '.join(EXACT_OPS)}, even computed in float32")
                    continue
                self._exact(rw, x, values, computed_in)
            claimed.update(id(n) for n in rw.nodes)
            result.rewrote(node)
        return result

    @staticmethod
    def _exact(rw: Rewrite, x, values: dict, dtype):
        """The exact form computed in `dtype`: the input's type, or float32 for a bfloat16 input the target or
        the opset has no kernels for (float32 holds every bfloat16 and the replacements, which are bfloat16
        values: Cast there and back changes no bit)."""
        result_dtype = values["nan"].dtype
        values = {kind: value.astype(dtype) for kind, value in values.items()}
        x = rw.cast(x, dtype, "cast_x")
        kept = _replace(rw, rw.op("Equal", [x, rw.const(-np.inf, "minus_inf", dtype)], dtype=np.bool_),
                        values["neginf"], x, "neginf")
        kept = _replace(rw, rw.op("Equal", [x, rw.const(np.inf, "inf", dtype)], dtype=np.bool_),
                        values["posinf"], kept, "posinf")
        cast_back = dtype != result_dtype
        replaced = _replace(rw, rw.op("IsNaN", [x], dtype=np.bool_), values["nan"], kept, "nan", last=not cast_back)
        if cast_back:
            rw.finish_cast(replaced, result_dtype, suffix="cast_back")


def _replace(rw: Rewrite, condition, value: np.ndarray, kept, label: str, last: bool = False):
    """Where(condition, value, kept), keeping the sign of a -0.0 value; `last` takes over the node's output.

    ONNX Runtime 1.31's Where returns +0.0 where it selects a -0.0 from its second input (measured), so a
    -0.0 is written Where(condition, 0, kept) * Where(condition, -1, 1): exact, as `kept * 1` is `kept`.
    """
    dtype = value.dtype
    emit = rw.finish if last else partial(rw.op, dtype=dtype)
    if value != 0 or not np.signbit(value):
        return emit("Where", [condition, rw.const(value, label, dtype), kept])
    zeroed = rw.op("Where", [condition, rw.const(0, f"{label}_zero", dtype), kept], suffix=f"{label}_zeroed",
                   dtype=dtype)
    sign = rw.op("Where", [condition, rw.const(-1, f"{label}_minus_one", dtype), rw.const(1, f"{label}_one", dtype)],
                 suffix=f"{label}_sign", dtype=dtype)
    return emit("Mul", [zeroed, sign], suffix=f"{label}_negative_zero")


def _resolve(replacements: dict, dtype, node) -> dict:
    """The three replacement values as arrays of the input's dtype, filling torch's defaults."""
    known = {k: v for k, v in replacements.items() if v is not None}
    if dtype is None:  # a cluster's constants have x's dtype (Where requires it); ATen's are Python floats
        dtype = next((v.dtype for v in known.values() if isinstance(v, np.ndarray)), None)
    if dtype is None:
        raise PassError(f"node '{node.name}': cannot tell the dtype of nan_to_num's input, which sets the "
                        "default posinf/neginf; run shape inference on the model first")
    defaults = {"nan": 0.0, "posinf": ml_dtypes.finfo(dtype).max, "neginf": ml_dtypes.finfo(dtype).min}
    with np.errstate(over="ignore"):  # like torch, a replacement beyond the dtype's range becomes ±inf
        return {k: np.asarray(known.get(k, defaults[k]), dtype=dtype) for k in KINDS}


def _aten_site(node):
    """(x, replacements, cluster) for ATen(operator="nan_to_num"): scalars as inputs 1-3 or attributes."""
    if aten_operator(node) != "nan_to_num":
        return None
    replacements = {}
    for index, kind in enumerate(KINDS, start=1):
        value = node.attrs.get(kind)
        if index < len(node.inputs) and node.inputs[index].name:
            value = const_value(node.inputs[index])
            if value is None:
                raise PassError(f"node '{node.name}': nan_to_num's {kind} (input {index}) is not a constant")
            value = value.item() if value.size else None  # an empty tensor is torch's None
        replacements[kind] = value
    return node.inputs[0], replacements, [node]


def _cluster_site(last, claimed):
    """(x, replacements, cluster) when `last` ends three Where stages replacing NaN, +inf and -inf."""
    stages, node = [], last
    for _ in KINDS:  # walk back through the value each stage passes on
        stage = _stage(node) if node is not None and id(node) not in claimed else None
        if stage is None:
            return None
        stages.append(stage)
        node = producer(stage["passed"])
    if sorted(s["kind"] for s in stages) != sorted(KINDS):
        return None
    root = stages[-1]["passed"]
    for stage in stages:  # each test reads its own stage's input (torch) or the cluster's input (ours)
        if stage["subject"] is not stage["passed"] and stage["subject"] is not root:
            return None
    return root, {s["kind"]: s["value"] for s in stages}, [s["node"] for s in stages]


def _stage(node):
    """A Where(test(subject), constant, passed) stage, with the kind of value its test replaces."""
    if not is_op(node, "Where") or len(node.inputs) != 3:
        return None
    condition, replacement, passed = node.inputs
    value = const_value(replacement)
    if value is None or value.size != 1:
        return None
    test = _classify(condition)
    if test is None:
        return None
    kind, subject = test
    return {"node": node, "kind": kind, "subject": subject, "passed": passed, "value": value}


def _classify(condition):
    """(kind, subject) when `condition` is true exactly where subject is NaN/+inf/-inf."""
    test = producer(condition)
    if test is None:
        return None
    if is_op(test, "IsNaN"):
        return "nan", _unwiden(test.inputs[0])
    if is_op(test, "Not"):
        inner = producer(test.inputs[0])
        if inner is not None and is_op(inner, "Equal") and inner.inputs[0] is inner.inputs[1]:
            return "nan", inner.inputs[0]
        return None
    if is_op(test, "IsInf"):
        positive, negative = test.attrs.get("detect_positive", 1), test.attrs.get("detect_negative", 1)
        if positive != negative:
            return ("posinf" if positive else "neginf"), _unwiden(test.inputs[0])
        return None
    if is_op(test, "Equal"):
        for subject, other in (test.inputs, test.inputs[::-1]):
            bound = const_value(other)
            if bound is not None and bound.size == 1 and np.isinf(bound).all():
                return ("posinf" if bound.item() > 0 else "neginf"), subject
        return None
    if is_op(test, "And"):
        return _classify_signed_inf(test)
    return None


def _classify_signed_inf(conjunction):
    """torch's And(IsInf(x), Greater(x, 0)) (+inf) or And(IsInf(x), Less(x, 0)) (-inf), through Casts."""
    parts = [_unwrap_bool_cast(t) for t in conjunction.inputs]
    if any(p is None for p in parts):
        return None
    infs = [p for p in parts if is_op(p, "IsInf") and p.attrs.get("detect_positive", 1)
            and p.attrs.get("detect_negative", 1)]
    signs = [p for p in parts if is_op(p, ("Greater", "Less")) and _is_zero(p.inputs[1])]
    if len(infs) != 1 or len(signs) != 1:
        return None
    subject = signs[0].inputs[0]
    if _unwiden(infs[0].inputs[0]) is not subject:
        return None
    return ("posinf" if signs[0].op == "Greater" else "neginf"), subject


def _unwrap_bool_cast(tensor):
    node = producer(tensor)
    if node is not None and is_op(node, "Cast") and node.attrs.get("to") == TensorProto.BOOL:
        node = producer(node.inputs[0])
    return node


def _unwiden(tensor):
    """The tensor before torch's exact widening Cast to float64, if any."""
    node = producer(tensor)
    if node is not None and is_op(node, "Cast") and node.attrs.get("to") in WIDENING_CASTS:
        return node.inputs[0]
    return tensor


def _is_zero(tensor) -> bool:
    value = const_value(tensor)
    return value is not None and value.size == 1 and value.item() == 0


def _is_canonical(cluster, x) -> bool:
    """True for the exact form this pass writes (so running it twice changes nothing)."""
    wheres = [n for n in cluster if is_op(n, "Where")]
    tests = [producer(w.inputs[0]) for w in wheres]
    return (len(wheres) == 3 and [t.op for t in tests] == ["IsNaN", "Equal", "Equal"]
            and all(t.inputs[0] is x for t in tests) and wheres[2].inputs[2] is x)

"""Rewrite torch.inverse / torch.linalg.inv of 2x2, 3x3 and 4x4 matrices into closed-form opset-11 ops.

torch 2.13 exports both as `ATen(operator="linalg_inv")` (older exporters: `"inverse"`), which no runtime
runs; BEV models invert [..., 4, 4] lidar2img and ego-pose matrices with it. ONNX Runtime's contrib
`com.microsoft::Inverse` (what onnxruntime-extensions style exporters emit) runs on ORT only: it is
rewritten where the target lacks it, kept where the target runs it (mode auto; mode closed-form always
rewrites it). BEVFormer_tensorrt's `InverseTRT` (default domain, no attributes; forward torch.linalg.inv)
runs only where its TensorRT plugin library is loaded: the same rule, kept only where the target profile
lists it under `plugins` (no built-in profile does).

Before:  M [..., n, n] ─► ATen(operator="linalg_inv"), com.microsoft::Inverse or InverseTRT ─► Y

After (adjugate over determinant of M / s, on the n*n entries gathered from the last axis):
  a   = Reshape(M, [..., n*n])
  s   = Pow(2, Floor(Log(ReduceMax(Abs(a), axis -1)) / ln 2 - 1/2))   a power of two near max |a|
  b   = a / s
  low = Gather(b, i) * Gather(b, j) - Gather(b, k) * Gather(b, l)      the 12 2x2 minors of rows 0-1, 2-3
  adj = sign * (Gather(b, .) * Gather(low, .) - ... + ...)             each 3x3 cofactor, expanded
  det = MatMul(Gather(b, row 0) * Gather(adj, column 0), ones[n, 1])  Laplace expansion along row 0
  Y   = Reshape(adj / det / s, [..., n, n])                            inv(M) = inv(M / s) / s
(3x3: adj entries are the 2x2 minors themselves; 2x2: adj is a signed permutation of b.)

The determinant is a product of n entries: unscaled, it overflows or underflows for matrices that are
merely large or small (float32 1e10 * I gave zeros). Dividing by a power of two is exact, so the result is
the closed form of M / s, exactly rescaled, and its relative error does not depend on the magnitude of M.

Only Reshape, Abs, ReduceMax, Log, Sub, Floor, Pow, Gather, Mul, Add, MatMul and Div: opset 11 and later,
any number of leading (also dynamic) dimensions. Accuracy, tested in float32 against a float64 inverse:
relative error (max abs error over max abs entry, per matrix) within 2e-6 on well-conditioned matrices with
entries from 1e-30 to 1e30 and on lidar2img projections (docs/passes/inverse.md has the measurements). A
singular or zero matrix gives inf/NaN where torch raises; a NaN or inf entry gives NaN like torch. Other
sizes are an error naming the node and the shape. bfloat16 matrices, which torch refuses to invert, are
inverted in float32 and cast back (inv(M.float()).bfloat16()) where the target or ONNX lacks bfloat16 ops.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

from surgeon.errors import PassError
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import Rewrite, aten_operator, bfloat16_compute_dtype, dtype_of, is_op

ATEN_OPERATORS = ("linalg_inv", "inverse")
CONTRIB_DOMAIN = "com.microsoft"
TRT_OP = "InverseTRT"  # BEVFormer_tensorrt's plugin (det2trt/models/functions/inverse.py)
SIZES = (2, 3, 4)
#: Every op the closed form writes.
CLOSED_FORM_OPS = ("Reshape", "Abs", "ReduceMax", "Log", "Div", "Sub", "Floor", "Pow", "Gather", "Mul", "Add",
                   "MatMul")


@register_pass("inverse")
class Inverse(Pass):
    """Rewrite ATen inverse/linalg_inv, com.microsoft::Inverse and InverseTRT of 2x2-4x4 matrices: adjugate / det."""

    handles = ("ATen:inverse", "ATen:linalg_inv", "com.microsoft::Inverse", TRT_OP)

    params = {
        "mode": Param(str, "auto", choices=("auto", "closed-form"),
                      help="com.microsoft::Inverse and InverseTRT: 'auto' keeps them where the target runs them "
                           "(ONNX Runtime; a profile listing the InverseTRT plugin) and rewrites them elsewhere; "
                           "'closed-form' always rewrites them. ATen inverse is always rewritten"),
    }
    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        for node in list(graph.nodes):
            if is_op(node, "Inverse", (CONTRIB_DOMAIN,)) or is_op(node, TRT_OP):
                if self.mode == "auto" and ctx.target.supports(node.op, node.domain):
                    spelling = f"{node.domain}::{node.op}" if node.domain else node.op
                    result.note(f"{node.name}: {spelling} kept, target '{ctx.target.name}' runs it "
                                f"(mode closed-form rewrites it)")
                    continue
            elif aten_operator(node) not in ATEN_OPERATORS:
                continue
            matrix = node.inputs[0]
            shape = list(matrix.shape) if matrix.shape is not None else None
            if shape is None or len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] not in SIZES:
                raise PassError(f"node '{node.name}' ({aten_operator(node) or node.op}) inverts a matrix of shape "
                                f"{shape}; the closed form covers [..., n, n] with n in {SIZES} and a known rank")
            dtype = np.dtype(np.float32) if dtype_of(matrix) is None else dtype_of(matrix)
            # torch refuses bfloat16 matrices ("linalg.inv: Low precision dtypes not supported"): such a graph can
            # only mean inv(M.float()).bfloat16(), which float32 between Casts computes where bfloat16 is lacking.
            computed_in = bfloat16_compute_dtype(ctx, CLOSED_FORM_OPS, dtype)
            if computed_in is None:
                result.note(f"{node.name}: left alone, target '{ctx.target.name}' at opset {ctx.opset} has no "
                            f"{dtype} or float32 {' / '.join(CLOSED_FORM_OPS)}")
                continue
            rw = Rewrite(graph, ctx, node)
            if computed_in == dtype:
                _closed_form_inverse(rw, matrix, len(shape), shape[-1], dtype)
            else:
                inverse = _closed_form_inverse(rw, rw.cast(matrix, computed_in, "cast_matrix"), len(shape),
                                               shape[-1], computed_in, last=False)
                rw.finish_cast(inverse, dtype, suffix="cast_back")
            result.rewrote(node)
        return result


def _closed_form_inverse(rw: Rewrite, matrix, rank: int, n: int, dtype, last: bool = True):
    """The inverse of `matrix`, computed in `dtype`; `last`: it takes over the node's output (else returned)."""
    leading = [0] * (rank - 2)  # Reshape's 0 keeps a dimension, so leading dims may be dynamic
    flat = rw.op("Reshape", [matrix, rw.const(leading + [n * n], "flat_shape", np.int64)], dtype=dtype)
    scale = _power_of_two_scale(rw, flat, dtype)
    scaled = rw.op("Div", [flat, scale], dtype=dtype)

    def gather(data, indices, suffix):
        return rw.op("Gather", [data, rw.const(indices, suffix, np.int64)], {"axis": -1}, dtype=dtype)

    def products(left, right, terms, suffix):
        """gather(left, i_0) * gather(right, j_0) ± ... for terms [(+1, i_0, j_0), (sign, i_1, j_1), ...]."""
        total = None
        for k, (sign, i, j) in enumerate(terms):
            product = rw.op("Mul", [gather(left, i, f"{suffix}_{k}_i"), gather(right, j, f"{suffix}_{k}_j")],
                            dtype=dtype)
            total = product if total is None else rw.op("Add" if sign > 0 else "Sub", [total, product], dtype=dtype)
        return total

    if n == 2:
        adjugate = rw.op("Mul", [gather(scaled, [3, 1, 2, 0], "adj_entries"),
                                 rw.const([1, -1, -1, 1], "adj_sign", dtype)], dtype=dtype)
    elif n == 3:
        adjugate = products(scaled, scaled, _minor_terms(_adjugate_3x3_pairs()), "adj")
    else:
        minors = products(scaled, scaled, _minor_terms(_minor_4x4_pairs()), "minor")
        expansion = products(scaled, minors, _cofactor_4x4_terms(), "cofactor")
        signs = [(-1) ** (i + j) for i in range(4) for j in range(4)]
        adjugate = rw.op("Mul", [expansion, rw.const(signs, "adj_sign", dtype)], dtype=dtype)
    row0 = gather(scaled, list(range(n)), "row0")
    column0 = gather(adjugate, [i * n for i in range(n)], "adj_column0")
    det = rw.op("MatMul", [rw.op("Mul", [row0, column0], dtype=dtype), rw.const(np.ones((n, 1)), "ones", dtype)],
                dtype=dtype)
    # Two divisions, not adj / (det * s): det * s can leave the float range where the inverse does not.
    inverse = rw.op("Div", [rw.op("Div", [adjugate, det], dtype=dtype), scale], dtype=dtype)
    reshaped = [inverse, rw.const(leading + [n, n], "matrix_shape", np.int64)]
    return rw.finish("Reshape", reshaped) if last else rw.op("Reshape", reshaped, dtype=dtype)


def _power_of_two_scale(rw: Rewrite, flat, dtype):
    """2 ** floor(log2(max |a|) - 1/2) per matrix, shape [..., 1]: max |a| / s lies in [1.4, 2.9).

    Log is not exact, so floor(log2(max |a|)) itself could come out one too high at the top of the float
    range (log2(3.4e38) rounds to 128 in float32) and give s = inf; half a binade of margin keeps s finite.
    Pow(2, integer) is exact (ONNX Runtime: every float16/32/64 power of two). A zero matrix gives s = 0
    and an inf entry s = inf, so NaN everywhere: torch raises for the first and returns NaN for the second.
    """
    magnitude = rw.op("Abs", [flat], dtype=dtype)
    largest = rw.reduce("ReduceMax", magnitude, [-1], dtype=dtype)
    log2 = rw.op("Div", [rw.op("Log", [largest], dtype=dtype), rw.const(np.log(2.0), "ln2", dtype)], dtype=dtype)
    exponent = rw.op("Floor", [rw.op("Sub", [log2, rw.const(0.5, "half", dtype)], dtype=dtype)], dtype=dtype)
    return rw.op("Pow", [rw.const(2.0, "two", dtype), exponent], dtype=dtype)


def _entry(row: int, col: int, n: int) -> int:
    return row * n + col


def _minor_terms(pairs):
    """Terms of the 2x2 determinants a[p]*a[q] - a[r]*a[s] for index quadruples (p, q, r, s)."""
    p, q, r, s = (list(column) for column in zip(*pairs))
    return [(+1, p, q), (-1, r, s)]


def _adjugate_3x3_pairs():
    """adj[i][j] = a[j+1][i+1] a[j+2][i+2] - a[j+1][i+2] a[j+2][i+1] (indices mod 3): cofactor signs built in."""
    pairs = []
    for i in range(3):
        for j in range(3):
            r1, r2, c1, c2 = (j + 1) % 3, (j + 2) % 3, (i + 1) % 3, (i + 2) % 3
            pairs.append((_entry(r1, c1, 3), _entry(r2, c2, 3), _entry(r1, c2, 3), _entry(r2, c1, 3)))
    return pairs


COLUMN_PAIRS = list(combinations(range(4), 2))  # minor k of rows (2, 3) is index k, of rows (0, 1) is 6 + k


def _minor_4x4_pairs():
    """The 2x2 minors of rows 2-3 (first six) and rows 0-1 (last six), one per pair of columns."""
    return [(_entry(top, c1, 4), _entry(top + 1, c2, 4), _entry(top, c2, 4), _entry(top + 1, c1, 4))
            for top in (2, 0) for c1, c2 in COLUMN_PAIRS]


def _cofactor_4x4_terms():
    """adj[i][j] = ±det of M without row j and column i, expanded along its one row outside the minors' pair.

    Without row j in {0, 1} the 3x3 keeps rows (other of 0/1, 2, 3): expand along its first row with the
    rows-2-3 minors. Without row j in {2, 3} it keeps (0, 1, other of 2/3): expand along its last row with
    the rows-0-1 minors. Both expansions have signs (+, -, +); the (-1)^(i+j) comes after.
    """
    terms = [(+1, [], []), (-1, [], []), (+1, [], [])]
    for i in range(4):
        for j in range(4):
            columns = [c for c in range(4) if c != i]
            row, offset = (1 - j, 0) if j < 2 else (5 - j, 6)
            for k in range(3):
                rest = tuple(c for c in columns if c != columns[k])
                terms[k][1].append(_entry(row, columns[k], 4))
                terms[k][2].append(offset + COLUMN_PAIRS.index(rest))
    return terms

"""Constant folding in one walk: NumPy for the ops shape computations are made of, ONNX Runtime per node
for the rest.

Exported graphs compute shapes at run time: `Shape -> Gather -> Unsqueeze -> Concat -> Reshape`,
thousands of times in a large model. onnx-graphsurgeon's folder evaluates such chains with ONNX
Runtime after copying the whole graph, which costs seconds on 20,000 nodes (docs/performance.md).
`fold_graph` folds them in one walk over the sorted graph instead:

- `Constant` nodes become constant tensors (as graphsurgeon's folder does first);
- a node whose inputs are all known is evaluated in NumPy when its op is in the table below;
- `Shape` of a tensor with a static shape is known, and so are the static dimensions that a
  `Gather` or `Slice` picks out of a partly dynamic shape.

The table holds only evaluations whose NumPy result is bit-identical to ONNX Runtime's (each one
tested against it, NaN, infinities, signed zeros, subnormals and the integer extremes included): data
movement for every dtype, integer and boolean arithmetic, the correctly rounded float32/float64
+ - * /, comparisons, casts that are exact or wrap the same way in C++. Where ONNX Runtime's integer
kernels go through float64 (Mod with fmod=1, ReduceSum, ReduceProd: 64-bit values past 2**53 round,
int32 sums past the range saturate), NumPy evaluates only values float64 holds exactly and results in
range, and leaves the rest to `fallback`, normally `evaluate_with_onnxruntime`: ONNX Runtime's own
kernel on a one-node model, as for any constant node outside the table (MatMul, Exp, float16 math, ...).
What neither evaluates is reported in `FoldResult.remaining`. An int32/int64 Div or Mod (fmod=0) of the
type's minimum by -1 is undefined in C++ (ONNX Runtime dies of SIGFPE on it): never folded, and such a
node with constant inputs is reported in `FoldResult.refused`, with why.

    result = fold_graph(graph, size_threshold=1 << 20,
                        fallback=lambda node, inputs: evaluate_with_onnxruntime(node, inputs, opset=17))
    result.remaining   # nodes with constant inputs that nothing here evaluated
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

Evaluator = Callable[[gs.Node, list], "list[np.ndarray] | None"]
_EVALUATORS: dict[str, Evaluator] = {}

# Never folded: quantisation ops (graphsurgeon's rule: their scales belong to the quantised model), ops
# whose output is a sequence, which a constant tensor cannot hold (graphsurgeon's folder crashes on them),
# and random ops, which draw new values at every run: folded, they would draw once and repeat that forever.
RANDOM_OPS = {"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial", "Bernoulli"}
NOT_FOLDED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
              "SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SplitToSequence",
              *RANDOM_OPS}


#: The ops whose integer kernels in ONNX Runtime divide as C++ does.
DIVISIONS = ("Div", "Mod")


def never_folded(node: gs.Node) -> bool:
    """An op of NOT_FOLDED, a Dropout given `training_mode`, which may drop values at random, or a division
    that is undefined on its constant inputs (`undefined_division`), which ONNX Runtime dies evaluating (this
    is graphsurgeon's folder's `should_exclude_node` too)."""
    if node.op == "Dropout":
        return len(node.inputs) > 2 and not node.inputs[2].is_empty()
    if node.op in DIVISIONS and all(isinstance(t, gs.Constant) for t in node.inputs[:2]):
        return undefined_division(node, [t.values for t in node.inputs[:2]]) is not None
    return node.op in NOT_FOLDED


def undefined_division(node: gs.Node, inputs: list) -> str | None:
    """Why Div or Mod (fmod=0) of `inputs` is undefined, where one divides an int32/int64 minimum by -1 (the
    quotient does not fit: undefined in C++, SIGFPE in ONNX Runtime 1.31, measured; narrower types are promoted
    to int first and wrap); None where it is defined."""
    if node.op not in DIVISIONS or len(inputs) < 2 or inputs[0] is None or inputs[1] is None:
        return None
    a, b = (np.asarray(v) for v in inputs[:2])
    if node.op == "Mod" and node.attrs.get("fmod", 0):
        return None
    if a.dtype != b.dtype or a.dtype.kind != "i" or a.dtype.itemsize < 4:
        return None
    minimum = np.iinfo(a.dtype).min
    if not np.any((a == minimum) & (b == -1)):
        return None
    return (f"{node.op} of {a.dtype} {minimum} by -1 is undefined (the quotient does not fit; ONNX Runtime dies "
            "of SIGFPE on it)")


@dataclass
class FoldResult:
    folded: list[gs.Node] = field(default_factory=list)      # evaluated here: now without consumers
    remaining: list[gs.Node] = field(default_factory=list)   # constant inputs, not evaluated here
    constants: list[str] = field(default_factory=list)       # tensors that became constants
    #: Nodes with constant inputs that must not fold (`undefined_division`), with why; not in `remaining`.
    refused: list[tuple[gs.Node, str]] = field(default_factory=list)


def fold_graph(graph: gs.Graph, fold_shapes: bool = True, size_threshold: int | None = None,
               fallback: Evaluator | None = None) -> FoldResult:
    """Fold what NumPy evaluates exactly, in place. The graph must be sorted and hold no subgraphs.

    `fallback(node, inputs)` evaluates constant nodes outside the NumPy table (for example
    `evaluate_with_onnxruntime`); what neither evaluates is reported in `remaining`.
    """
    result = FoldResult()
    known: dict[int, np.ndarray] = {}
    partial_shapes: dict[int, list] = {}  # Shape outputs of partly dynamic shapes: dims, None where dynamic
    folded_ids: set[int] = set()
    for node in graph.nodes:
        if node.op == "Constant" and not node.domain:
            _lower_constant_node(node, result)
            continue
        if _inputs_known(node, known):
            values = [_value(t, known) for t in node.inputs]
            why = undefined_division(node, values)
            if why is not None:
                result.refused.append((node, why))
                continue
            if never_folded(node) or _has_attribute_refs(node):
                continue
            outputs = evaluate(node, values)
            if outputs is None and fallback is not None:
                outputs = fallback(node, values)
            if outputs is None:
                result.remaining.append(node)
                continue
        elif fold_shapes and (node.op == "Shape" or (node.inputs and id(node.inputs[0]) in partial_shapes)):
            outputs = _fold_shape(node, known, partial_shapes)
            if outputs is None:
                continue
        else:
            continue
        for tensor, value in zip(node.outputs, outputs):
            known[id(tensor)] = value
        folded_ids.add(id(node))
        result.folded.append(node)

    graph_outputs = {id(t) for t in graph.outputs}
    for node in result.folded:
        for tensor in list(node.outputs):  # clearing a tensor's inputs takes it out of node.outputs
            value = known[id(tensor)]
            needed = id(tensor) in graph_outputs or any(id(c) not in folded_ids for c in tensor.outputs)
            if not needed or tensor.is_empty():
                continue
            if size_threshold is not None and value.nbytes > size_threshold:
                continue
            tensor.to_constant(np.array(value, copy=True))
            tensor.inputs.clear()
            result.constants.append(tensor.name)
    return result


def _lower_constant_node(node: gs.Node, result: FoldResult) -> None:
    if len(node.attrs) != 1 or len(node.outputs) != 1:
        return
    (key, value), = node.attrs.items()
    if isinstance(value, gs.Node.AttributeRef):
        return
    if key == "value" and isinstance(value, gs.Constant):
        array = value._values  # graphsurgeon's LazyValues: loaded on first use, not here
    elif key in ("value_float", "value_floats"):
        array = np.array(value, dtype=np.float32)
    elif key in ("value_int", "value_ints"):
        array = np.array(value, dtype=np.int64)
    else:
        return  # sparse and string values stay as they are
    tensor = node.outputs[0]
    tensor.to_constant(array)
    tensor.inputs.clear()
    result.constants.append(tensor.name)


def _inputs_known(node: gs.Node, known: dict) -> bool:
    for tensor in node.inputs:  # a loop, not all(...): this runs for every node of the graph
        if not (isinstance(tensor, gs.Constant) or id(tensor) in known or tensor.name == ""):
            return False
    return True


def _has_attribute_refs(node: gs.Node) -> bool:
    """Attributes taken from an enclosing function's: their values are not known here."""
    return any(isinstance(v, gs.Node.AttributeRef) for v in node.attrs.values())


def _value(tensor: gs.Tensor, known: dict):
    if tensor.is_empty():
        return None
    if isinstance(tensor, gs.Constant):
        return tensor.values
    return known[id(tensor)]


def evaluate_with_onnxruntime(node: gs.Node, inputs: list, opset: int, ir_version: int = 10) -> list | None:
    """Evaluate one node on ONNX Runtime's CPU provider, its inputs given as values; None if it fails.

    A one-node model: ONNX Runtime computes it with the kernel the deployed model would use, so
    floating-point ops (MatMul, Exp, ...) fold to exactly what ONNX Runtime computes at run time.
    """
    import onnxruntime as ort

    from surgeon.graphio import export_model
    from surgeon.rewrite import dismantle_graph

    graph = gs.Graph(
        nodes=[gs.Node(node.op, name="node", attrs=dict(node.attrs), domain=node.domain,
                       inputs=[gs.Constant(f"in{i}", v) if v is not None else gs.Variable.empty()
                               for i, v in enumerate(inputs)],
                       outputs=[gs.Variable(f"out{i}") if not t.is_empty() else gs.Variable.empty()
                                for i, t in enumerate(node.outputs)])],
        opset=opset, ir_version=ir_version)
    graph.outputs = [t for t in graph.nodes[0].outputs if not t.is_empty()]
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # no thread pool per folded node
    model = export_model(graph, do_type_check=False)
    dismantle_graph(graph)
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = iter(session.run(None, {}))
    except Exception:  # an op ONNX Runtime lacks, an invalid constant computation: left unfolded
        return None
    outputs = [next(values) if not t.is_empty() else np.zeros(0) for t in node.outputs]
    return outputs if all(isinstance(v, np.ndarray) for v in outputs) else None


def evaluate(node: gs.Node, inputs: list) -> list[np.ndarray] | None:
    """`node`'s outputs from its input values (None for an absent optional input) where the NumPy table
    evaluates it bit-identical to ONNX Runtime; else None (also for an invalid computation)."""
    evaluator = _EVALUATORS.get(node.op) if node.domain in ("", "ai.onnx", None) else None
    if evaluator is None:
        return None
    try:
        outputs = evaluator(node, inputs)
    except (ValueError, IndexError, TypeError, OverflowError, ZeroDivisionError):
        return None  # ONNX Runtime decides what an invalid constant computation means
    if outputs is None or len(outputs) != len(node.outputs):
        return None
    return [np.asarray(v) for v in outputs]


def _fold_shape(node: gs.Node, known: dict, partial_shapes: dict) -> list[np.ndarray] | None:
    """Shape of a static tensor; static dims that Gather/Slice take from a partly dynamic shape."""
    if node.op == "Shape" and node.inputs and node.inputs[0].shape is not None:
        dims = _shape_slice(list(node.inputs[0].shape), node)
        if all(_is_static(d) for d in dims):
            return [np.array(dims, dtype=np.int64)]
        partial_shapes[id(node.outputs[0])] = dims
        return None
    source = node.inputs[0] if node.inputs else None
    if source is None or id(source) not in partial_shapes:
        return None
    dims = partial_shapes[id(source)]
    picked = None
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0 and isinstance(node.inputs[1], gs.Constant):
        indices = node.inputs[1].values
        try:
            picked = np.array(dims, dtype=object)[indices]
        except IndexError:
            return None
        picked = picked.tolist() if isinstance(picked, np.ndarray) else picked
    elif node.op == "Slice" and all(t.is_empty() or isinstance(t, gs.Constant) for t in node.inputs[1:]):
        params = [None if t.is_empty() else t.values for t in node.inputs[1:]]
        window = _slice_window(node, [np.array(dims, dtype=object), *params])
        picked = window.tolist() if window is not None else None
    if picked is None:
        return None
    flat = picked if isinstance(picked, list) else [picked]
    if not all(_is_static(d) for d in flat):
        return None
    return [np.array(picked, dtype=np.int64)]


def _is_static(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and dim >= 0


def _shape_slice(dims: list, node: gs.Node) -> list:
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return dims[start:end]


def _evaluates(*ops: str):
    def register(fn: Evaluator) -> Evaluator:
        for op in ops:
            _EVALUATORS[op] = fn
        return fn
    return register


def _is_int(*arrays) -> bool:
    return all(a.dtype.kind in "iub" for a in arrays)


def _axes(node: gs.Node, inputs: list, index: int = 1):
    """Axes from the input (newer opsets) or the attribute (older ones); None when absent.

    An empty list is returned as such, not as None: NumPy reads `axis=()` as "no axes", whereas ONNX
    Squeeze and Reduce* read empty axes as absent (all axes), and Unsqueeze as nothing to insert.
    """
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in np.atleast_1d(inputs[index])]
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


# Data movement: exact for every dtype.

@_evaluates("Identity")
def _identity(node, inputs):
    return [inputs[0]]


@_evaluates("Shape")
def _shape(node, inputs):
    return [np.array(_shape_slice(list(inputs[0].shape), node), dtype=np.int64)]


@_evaluates("Size")
def _size(node, inputs):
    return [np.array(inputs[0].size, dtype=np.int64)]


@_evaluates("Gather")
def _gather(node, inputs):
    data, indices = inputs
    axis = node.attrs.get("axis", 0)
    size = data.shape[axis]
    if np.any(indices < -size) or np.any(indices >= size):
        return None
    return [np.take(data, indices.astype(np.int64), axis=axis)]


@_evaluates("Unsqueeze")
def _unsqueeze(node, inputs):
    axes = _axes(node, inputs)
    return None if axes is None else [np.expand_dims(inputs[0], tuple(axes))]


@_evaluates("Squeeze")
def _squeeze(node, inputs):
    axes = _axes(node, inputs)
    return [np.squeeze(inputs[0], axis=tuple(axes) if axes else None)]  # empty axes: every size-1 dim


@_evaluates("Concat")
def _concat(node, inputs):
    return [np.concatenate([v for v in inputs if v is not None], axis=node.attrs["axis"])]


@_evaluates("Reshape")
def _reshape(node, inputs):
    data, shape = inputs
    shape = [int(d) for d in shape]
    if not node.attrs.get("allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [np.reshape(data, shape)]


@_evaluates("Flatten")
def _flatten(node, inputs):
    data = inputs[0]
    axis = node.attrs.get("axis", 1) % (data.ndim + 1) if data.ndim else 0
    return [np.reshape(data, (int(np.prod(data.shape[:axis])), int(np.prod(data.shape[axis:]))))]


@_evaluates("Transpose")
def _transpose(node, inputs):
    return [np.transpose(inputs[0], node.attrs.get("perm"))]


@_evaluates("Expand")
def _expand(node, inputs):
    data, shape = inputs
    return [np.broadcast_to(data, np.broadcast_shapes(data.shape, tuple(int(d) for d in shape)))]


@_evaluates("Tile")
def _tile(node, inputs):
    data, repeats = inputs
    if repeats.shape != (data.ndim,):  # NumPy would pad the repeats; ONNX refuses the node
        return None
    return [np.tile(data, [int(r) for r in repeats])]


@_evaluates("Slice")
def _slice(node, inputs):
    window = _slice_window(node, inputs)
    return None if window is None else [window]


def _slice_window(node, inputs):
    data = inputs[0]
    if len(inputs) >= 3:  # opset 10+: starts, ends, axes, steps as inputs
        params = inputs[1:]
        starts, ends = params[0], params[1]
        axes = params[2] if len(params) > 2 else None
        steps = params[3] if len(params) > 3 else None
    else:
        starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
        axes, steps = node.attrs.get("axes"), None
        if starts is None or ends is None:
            return None
    starts, ends = [int(s) for s in np.atleast_1d(starts)], [int(e) for e in np.atleast_1d(ends)]
    axes = list(range(len(starts))) if axes is None else [int(a) for a in np.atleast_1d(axes)]
    steps = [1] * len(starts) if steps is None else [int(s) for s in np.atleast_1d(steps)]
    if 0 in steps or not len(starts) == len(ends) == len(axes) == len(steps) or \
            any(not -data.ndim <= a < data.ndim for a in axes) or len({a % data.ndim for a in axes}) < len(axes):
        return None  # invalid: ONNX Runtime says what it means (zip would silently drop the extra values)
    axes = [a % data.ndim for a in axes]
    window = [slice(None)] * data.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        window[axis] = slice(start, end, step)
    return data[tuple(window)]


@_evaluates("ConstantOfShape")
def _constant_of_shape(node, inputs):
    value = node.attrs.get("value")
    fill = value.values.reshape(-1)[0] if isinstance(value, gs.Constant) else np.float32(0)
    return [np.full([int(d) for d in inputs[0]], fill, dtype=fill.dtype)]


@_evaluates("Where")
def _where(node, inputs):
    condition, x, y = inputs
    if condition.dtype != np.bool_ or x.dtype != y.dtype:
        return None
    if x.dtype.kind == "f" and np.any(condition & (x == 0) & np.signbit(x)):
        return None  # ONNX Runtime returns +0.0 for a -0.0 picked from X (measured; from Y it keeps -0.0)
    return [np.where(condition, x, y)]


# Arithmetic: integers wrap around and divide truncating toward zero, as C++ does; float32/float64
# add, subtract, multiply and divide are correctly rounded (IEEE 754) in NumPy and ONNX Runtime alike.

_ARITHMETIC = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}
_LOGICAL = {"And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
            "BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor}


def _is_exact_float(*arrays) -> bool:
    return all(a.dtype in (np.float32, np.float64) for a in arrays)


@_evaluates(*_ARITHMETIC)
def _arithmetic(node, inputs):
    a, b = inputs
    if a.dtype != b.dtype or not (_is_int(a) and a.dtype != np.bool_ or _is_exact_float(a)):
        return None
    with np.errstate(all="ignore"):  # overflow wraps (integers) or gives inf (floats), as in C++
        return [np.asarray(_ARITHMETIC[node.op](a, b)).astype(a.dtype, copy=False)]


@_evaluates(*_LOGICAL)
def _logical(node, inputs):
    a, b = inputs
    if not _is_int(a, b) or a.dtype != b.dtype:
        return None
    return [_LOGICAL[node.op](a, b)]


@_evaluates("Div")
def _div(node, inputs):
    a, b = inputs
    if a.dtype != b.dtype:
        return None
    if _is_exact_float(a):
        with np.errstate(all="ignore"):  # x/0 is inf or nan, as in C++
            return [np.asarray(np.divide(a, b)).astype(a.dtype, copy=False)]
    if not _is_int(a, b) or a.dtype == np.bool_ or np.any(b == 0) or undefined_division(node, inputs):
        return None
    return [_truncating_divide(*_as_cpp_int(a, b)).astype(a.dtype)]


def _as_cpp_int(*arrays):
    """The arrays as C++ computes with them: types narrower than int promoted (to int64 here, which holds every
    int8/int16/uint8/uint16 quotient and remainder; the result cast back wraps, as C++ stores it)."""
    return tuple(a.astype(np.int64) if a.dtype.itemsize < 4 else a for a in arrays)


def _truncating_divide(a, b):
    """a / b rounded toward zero, as C++ divides integers: NumPy's floor division, plus one where it rounded a
    negative inexact quotient down. No |a| // |b|: |INT_MIN| is INT_MIN again."""
    with np.errstate(over="ignore"):
        quotient = np.floor_divide(a, b)
        inexact = quotient * b != a  # wraps alike on both sides; an inexact product differs by less than |b|
    return np.where(inexact & ((a < 0) != (b < 0)), quotient + 1, quotient)


@_evaluates("Mod")
def _integer_mod(node, inputs):
    a, b = inputs
    if not _is_int(a, b) or a.dtype != b.dtype or np.any(b == 0) or undefined_division(node, inputs):
        return None
    fmod = node.attrs.get("fmod", 0)
    if fmod and not (_float64_exact(a) and _float64_exact(b)):
        return None  # ONNX Runtime's integer fmod goes through float64, which rounds these
    wide_a, wide_b = _as_cpp_int(a, b)
    return [(np.fmod if fmod else np.mod)(wide_a, wide_b).astype(a.dtype)]


#: Every integer of at most this magnitude is a float64.
FLOAT64_EXACT = 2**53


def _float64_exact(values) -> bool:
    """Whether float64 holds every integer of `values` exactly (below 2**53 in magnitude: a value past it that
    rounds to 2**53 is caught by the strict comparison)."""
    return values.dtype.itemsize < 8 or bool(np.all(np.abs(values.astype(np.float64)) < FLOAT64_EXACT))


@_evaluates("Neg", "Abs")
def _negate_or_abs(node, inputs):
    data = inputs[0]
    if not (_is_int(data) and data.dtype != np.bool_ or _is_exact_float(data)):
        return None
    with np.errstate(over="ignore"):  # -INT_MIN wraps, as in C++
        return [np.asarray((np.negative if node.op == "Neg" else np.abs)(data)).astype(data.dtype)]


@_evaluates("Sign")
def _integer_sign(node, inputs):  # float Sign of NaN differs between NumPy (nan) and ONNX Runtime (0)
    if not _is_int(inputs[0]) or inputs[0].dtype == np.bool_:
        return None
    return [np.sign(inputs[0]).astype(inputs[0].dtype)]


@_evaluates("Split")
def _split(node, inputs):
    data = inputs[0]
    axis = node.attrs.get("axis", 0)
    sizes = inputs[1] if len(inputs) > 1 and inputs[1] is not None else node.attrs.get("split")
    if sizes is None:
        parts = len(node.outputs)
        if "num_outputs" in node.attrs:  # opset 18: the last part may be smaller
            size = -(-data.shape[axis] // parts)
            sizes = [min(size, data.shape[axis] - i * size) for i in range(parts)]
        elif data.shape[axis] % parts:
            return None
        else:
            sizes = [data.shape[axis] // parts] * parts
    sizes = [int(s) for s in sizes]
    if sum(sizes) != data.shape[axis]:
        return None
    bounds = np.cumsum(sizes)[:-1]
    return np.split(data, bounds, axis=axis)


@_evaluates("ScatterND")
def _scatter_nd(node, inputs):
    data, indices, updates = inputs
    if node.attrs.get("reduction", "none") not in ("none", b"none"):
        return None
    depth = indices.shape[-1]
    index_rows = indices.reshape(-1, depth).astype(np.int64)
    index_rows = np.where(index_rows < 0, index_rows + np.array(data.shape[:depth]), index_rows)
    if len(np.unique(index_rows, axis=0)) != len(index_rows):
        return None  # duplicate indices: the result depends on the write order
    result = np.array(data, copy=True)
    result[tuple(index_rows.T)] = updates.reshape((len(index_rows),) + data.shape[depth:])
    return [result]


@_evaluates("Not")
def _not(node, inputs):
    return [np.logical_not(inputs[0])] if inputs[0].dtype == np.bool_ else None


@_evaluates("Max", "Min")
def _integer_extremum(node, inputs):
    values = [v for v in inputs if v is not None]
    if not _is_int(*values) or len({v.dtype for v in values}) != 1:
        return None
    result = values[0]
    for value in values[1:]:
        result = (np.maximum if node.op == "Max" else np.minimum)(result, value)
    return [np.asarray(result)]


_COMPARISONS = {"Equal": np.equal, "Less": np.less, "Greater": np.greater,
                "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal}


@_evaluates(*_COMPARISONS)
def _compare(node, inputs):
    a, b = inputs
    if a.dtype != b.dtype or a.dtype.kind not in "iubf":  # IEEE comparisons are exact, NaN included
        return None
    return [_COMPARISONS[node.op](a, b)]


@_evaluates("Range")
def _range(node, inputs):
    start, limit, delta = inputs
    if not _is_int(start, limit, delta) or int(delta) == 0:
        return None
    return [np.arange(int(start), int(limit), int(delta), dtype=start.dtype)]


_REDUCTIONS = {"ReduceSum": np.sum, "ReduceProd": np.prod, "ReduceMax": np.max, "ReduceMin": np.min}


@_evaluates(*_REDUCTIONS)
def _integer_reduce(node, inputs):
    data = inputs[0]
    if not _is_int(data) or data.dtype == np.bool_:
        return None
    axes = _axes(node, inputs)
    if not axes and node.attrs.get("noop_with_empty_axes", 0):
        return [data]
    axis = tuple(axes) if axes else None  # absent or empty axes: all of them
    if data.size == 0 and node.op in ("ReduceMax", "ReduceMin"):
        return None
    keepdims = bool(node.attrs.get("keepdims", 1))
    reduced = _REDUCTIONS[node.op](data, axis=axis, keepdims=keepdims)
    if node.op in ("ReduceSum", "ReduceProd") and not _reduction_exact(node.op, data, axis, reduced):
        return None  # ONNX Runtime's result rounds or saturates: its own kernel folds it
    return [reduced.astype(data.dtype)]


def _reduction_exact(op: str, data, axis, reduced) -> bool:
    """Whether `reduced`, NumPy's integer ReduceSum/ReduceProd of `data`, is exact and ONNX Runtime's result.
    ONNX Runtime 1.31's results are those of float64 arithmetic converted back (measured: int64 2**62 + 1
    sums to 2**62, an int32 sum past 2**31 - 1 saturates to it), which is exact while every partial result's
    magnitude is within 2**53 and the result fits the type. Partial results are bounded by the sum of the
    magnitudes, or the product of the nonzero ones, computed in float64 with a factor-2 margin for its own
    rounding; within 2**52, NumPy's 64-bit accumulation is exact too."""
    magnitudes = np.abs(data.astype(np.float64))
    if op == "ReduceSum":
        bound = np.sum(magnitudes, axis=axis)
    else:
        bound = np.prod(np.maximum(magnitudes, 1.0), axis=axis)
    if not np.all(bound <= FLOAT64_EXACT // 2):
        return False
    info = np.iinfo(data.dtype)
    return bool(np.all((reduced >= info.min) & (reduced <= info.max)))


@_evaluates("Cast")
def _cast(node, inputs):
    data = inputs[0]
    target = onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
    exact_kinds = "iub"
    if target.kind not in exact_kinds + "f" or target.itemsize < 4 and target.kind == "f":
        return None  # strings, float16/bfloat16: rounding rules not worth reproducing here
    if data.dtype.kind in exact_kinds:
        converted = data.astype(target)
        if target.kind == "f" and not np.array_equal(converted.astype(data.dtype), data):
            return None  # rounded: leave the rounding to ONNX Runtime rather than argue about it
        return [converted]
    if data.dtype.kind != "f" or data.dtype.itemsize < 4:
        return None
    if target.kind == "f":
        with np.errstate(over="ignore"):  # too large for float32: infinity, as in C++
            return [data.astype(target)]  # float32 <-> float64: IEEE round-to-nearest both ways
    if target == np.bool_:
        return [data != 0]
    info = np.iinfo(target)
    if not np.all(np.isfinite(data)) or np.any(data <= info.min - 1.0) or np.any(data >= info.max + 1.0):
        return None  # out of range: undefined behaviour in C++, nothing to reproduce
    return [np.trunc(data).astype(target)]

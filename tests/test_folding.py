"""surgeon.folding: every NumPy evaluation equals ONNX Runtime's bit for bit; what it cannot do exactly,
it leaves for ONNX Runtime; and the fold-constants pass gives the same graphs as graphsurgeon's folder."""
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper, numpy_helper

from surgeon.folding import NOT_FOLDED, evaluate_with_onnxruntime, fold_graph
from surgeon.testing import IR_VERSION, apply_pass, make_model, run_ort

ZOO = Path(__file__).parent / "data" / "zoo"
I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min


def single_node_model(op, inputs, attrs=None, opset=13, outputs=1):
    """A graph whose only node reads constant initializers: ORT evaluates it at run time."""
    names = [f"in{i}" if v is not None else "" for i, v in enumerate(inputs)]
    node = helper.make_node(op, names, [f"out{i}" for i in range(outputs)], name="node", **(attrs or {}))
    graph = helper.make_graph(
        [node], "one", [], [helper.make_value_info(f"out{i}", onnx.TypeProto()) for i in range(outputs)],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, inputs) if v is not None])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)


def i64(*values):
    return np.array(values, dtype=np.int64)


NAN = np.float32("nan")
# signed zeros, infinities, NaN, the smallest subnormal, the largest float, values that round
FLOAT_EDGES = np.array([0.0, -0.0, np.inf, -np.inf, NAN, 1e-45, -1e-45, 3.4028235e38, 0.1, 1 / 3, -7.5, 1e-38],
                       np.float32)
CASES = [  # (id, op, inputs, attrs, opset)
    ("gather-negative", "Gather", [i64(5, 6, 7, 8), i64(-1, 0, 2)], {}, 13),
    ("gather-scalar-index", "Gather", [i64(5, 6, 7, 8), np.array(-4, np.int64)], {}, 13),
    ("gather-axis1-float", "Gather", [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([3, -2], np.int32)],
     {"axis": 1}, 13),
    ("unsqueeze-attr", "Unsqueeze", [np.array(3, np.int64)], {"axes": [0]}, 11),
    ("unsqueeze-attr-negative", "Unsqueeze", [i64(1, 2)], {"axes": [0, -1]}, 11),
    ("unsqueeze-input", "Unsqueeze", [i64(1, 2), i64(-1)], {}, 13),
    ("squeeze-attr", "Squeeze", [np.zeros((1, 3, 1), np.int64)], {"axes": [-1]}, 11),
    ("squeeze-all", "Squeeze", [np.zeros((1, 3, 1), np.int64)], {}, 13),
    # empty axes: ONNX reads them as absent (every size-1 dim, every axis), NumPy's axis=() as none
    ("squeeze-empty-axes", "Squeeze", [np.zeros((1, 3, 1), np.int64), np.zeros(0, np.int64)], {}, 13),
    ("unsqueeze-empty-axes", "Unsqueeze", [i64(1, 2), np.zeros(0, np.int64)], {}, 13),
    ("concat", "Concat", [i64(1), i64(-1, 4)], {"axis": 0}, 13),
    ("concat-float-axis1", "Concat", [np.ones((2, 1), np.float32), np.zeros((2, 2), np.float32)], {"axis": -1}, 13),
    ("reshape-zero-minus-one", "Reshape", [np.arange(24, dtype=np.int64).reshape(2, 3, 4), i64(0, -1)], {}, 13),
    ("flatten-axis2", "Flatten", [np.arange(24, dtype=np.int32).reshape(2, 3, 4)], {"axis": 2}, 13),
    ("flatten-axis0", "Flatten", [np.arange(6, dtype=np.int64).reshape(2, 3)], {"axis": 0}, 13),
    ("transpose-perm", "Transpose", [np.arange(6, dtype=np.int64).reshape(1, 2, 3)], {"perm": [2, 0, 1]}, 13),
    ("transpose-default", "Transpose", [np.arange(6, dtype=np.float32).reshape(2, 3)], {}, 13),
    ("expand-bidirectional", "Expand", [i64(1, 2, 3).reshape(3, 1), i64(2, 1, 4)], {}, 13),
    ("tile", "Tile", [i64(1, 2).reshape(1, 2), i64(3, 2)], {}, 13),
    ("slice-inputs", "Slice", [np.arange(10, dtype=np.int64), i64(-3), i64(I64_MAX), i64(0), i64(1)], {}, 13),
    ("slice-negative-step", "Slice", [np.arange(10, dtype=np.int64), i64(-1), i64(-I64_MAX), i64(0), i64(-2)], {}, 13),
    ("slice-2d-axis1", "Slice", [np.arange(12, dtype=np.int64).reshape(3, 4), i64(1), i64(3), i64(-1)], {}, 13),
    ("slice-attrs", "Slice", [np.arange(10, dtype=np.int64)], {"starts": [2], "ends": [100]}, 9),
    ("constant-of-shape-int", "ConstantOfShape", [i64(2, 3)],
     {"value": numpy_helper.from_array(np.array([7], np.int64))}, 13),
    ("constant-of-shape-default", "ConstantOfShape", [i64(4)], {}, 13),
    ("where-int", "Where", [np.array([True, False, True]), i64(1, 2, 3), i64(-1)], {}, 13),
    # -0.0 in X left, from Y picked: ONNX Runtime keeps it
    ("where-float-negative-zero-from-y", "Where", [np.array([False, False, True]), np.array([-0.0, -0.0, 1.0]),
                                                   np.array([2.0, -0.0, 0.0])], {}, 13),
    ("add-wraps", "Add", [i64(I64_MAX, 1), i64(1, 2)], {}, 13),
    ("add-float-edges", "Add", [FLOAT_EDGES, FLOAT_EDGES[::-1].copy()], {}, 13),
    ("sub-float-broadcast", "Sub", [FLOAT_EDGES, np.array([0.1], np.float32)], {}, 13),
    ("mul-float-edges", "Mul", [FLOAT_EDGES, FLOAT_EDGES[::-1].copy()], {}, 13),
    ("mul-double", "Mul", [np.array([0.1, 1e308, 5e-324]), np.array([3.0, 10.0, 0.5])], {}, 13),
    ("div-float-edges", "Div", [FLOAT_EDGES, FLOAT_EDGES[::-1].copy()], {}, 13),
    ("div-float-by-zero", "Div", [np.array([1, -1, 0], np.float32), np.array([0, 0, 0], np.float32)], {}, 13),
    ("split-attr", "Split", [np.arange(10, dtype=np.float32)], {"axis": 0, "split": [3, 7]}, 11),
    ("split-input", "Split", [np.arange(12, dtype=np.int64).reshape(3, 4), i64(1, 3)], {"axis": -1}, 13),
    ("split-num-outputs", "Split", [np.arange(7, dtype=np.float32)], {"num_outputs": 3}, 18),
    ("split-equal", "Split", [np.arange(6, dtype=np.float32).reshape(2, 3)], {"axis": 0}, 13),
    ("scatter-nd", "ScatterND", [np.zeros((4, 3), np.float32), i64(3, -4).reshape(2, 1),
                                 np.arange(6, dtype=np.float32).reshape(2, 3)], {}, 13),
    ("sub-int32", "Sub", [np.array([1, -5], np.int32), np.array([3], np.int32)], {}, 13),
    ("mul-broadcast", "Mul", [i64(1, 2, 3).reshape(3, 1), i64(-2, 5)], {}, 13),
    ("div-truncates", "Div", [i64(-7, 7, -7, 7, 0), i64(2, -2, -2, 2, 3)], {}, 13),
    # |INT_MIN| is INT_MIN again: truncating division must not go through abs()
    ("div-int64-min", "Div", [i64(I64_MIN, I64_MIN, I64_MIN, -7), i64(10, -10, I64_MIN, I64_MIN)], {}, 14),
    ("div-int32-min", "Div", [np.array([-2**31, -2**31, 2**31 - 1], np.int32), np.array([2, -2, -2**31], np.int32)],
     {}, 14),
    # narrower types divide promoted to int and wrap when stored: -128 / -1 is -128
    ("div-int8-min", "Div", [np.array([-128, -128, -128, 127], np.int8), np.array([3, 2, -1, -128], np.int8)], {}, 14),
    ("div-int16-min", "Div", [np.array([-32768, -32768], np.int16), np.array([7, -1], np.int16)], {}, 14),
    ("mod-int8-min", "Mod", [np.array([-128, -128, 127], np.int8), np.array([-1, 3, -128], np.int8)], {}, 13),
    ("mod-int64-min", "Mod", [i64(I64_MIN, I64_MIN, I64_MAX), i64(10, -3, I64_MIN)], {}, 13),
    ("mod-fmod-int64-exact-in-float64", "Mod", [i64(2**53 - 1, -(2**53) + 1, 12345), i64(-10, 7, 2**53 - 1)],
     {"fmod": 1}, 13),
    ("mod-python-sign", "Mod", [i64(-7, 7, -7, 7), i64(3, -3, -3, 3)], {}, 13),
    ("mod-fmod", "Mod", [i64(-7, 7, -7, 7), i64(3, -3, -3, 3)], {"fmod": 1}, 13),
    ("neg", "Neg", [i64(3, -4, 0)], {}, 13),
    ("neg-float", "Neg", [np.array([0.0, -0.0, NAN, np.inf, 1e-45], np.float32)], {}, 13),
    ("abs-float", "Abs", [np.array([-0.0, -NAN, -np.inf, -1e-45], np.float32)], {}, 13),
    ("abs-int32", "Abs", [np.array([-3, 4], np.int32)], {}, 13),
    ("sign", "Sign", [i64(-9, 0, 9)], {}, 13),
    ("not", "Not", [np.array([True, False])], {}, 13),
    ("and", "And", [np.array([True, True, False]), np.array([True, False, False])], {}, 13),
    ("or", "Or", [np.array([True, False]), np.array([False])], {}, 13),
    ("xor", "Xor", [np.array([True, False]), np.array([True, True])], {}, 13),
    ("max-variadic", "Max", [i64(1, 9), i64(5), i64(-3, 20)], {}, 13),
    ("min-int32", "Min", [np.array([1, 9], np.int32), np.array([5, -5], np.int32)], {}, 13),
    ("equal-float-nan", "Equal", [np.array([1, NAN, 2], np.float32), np.array([1, NAN, 3], np.float32)], {}, 13),
    ("less-int", "Less", [i64(1, 5), i64(3, 3)], {}, 13),
    ("greater-or-equal-float", "GreaterOrEqual", [np.array([1, NAN], np.float32), np.array([1, 0], np.float32)],
     {}, 13),
    ("range-up", "Range", [np.array(2, np.int64), np.array(11, np.int64), np.array(3, np.int64)], {}, 13),
    ("range-down", "Range", [np.array(5, np.int32), np.array(-2, np.int32), np.array(-2, np.int32)], {}, 13),
    ("range-empty", "Range", [np.array(5, np.int64), np.array(1, np.int64), np.array(1, np.int64)], {}, 13),
    ("reduce-prod-all", "ReduceProd", [i64(2, 3, 4)], {"keepdims": 0}, 13),
    ("reduce-sum-int32-near-max", "ReduceSum", [np.array([2**31 - 1, 1, -1], np.int32)], {}, 13),
    ("reduce-prod-int32-near-max", "ReduceProd", [np.array([46340, 46340, -1], np.int32)], {}, 13),
    ("reduce-sum-int64-float64-exact", "ReduceSum", [i64(2**51, 2**50, -(2**50) + 1)], {}, 13),
    ("reduce-sum-attr", "ReduceSum", [np.arange(6, dtype=np.int64).reshape(2, 3)], {"axes": [1]}, 11),
    ("reduce-sum-input", "ReduceSum", [np.arange(6, dtype=np.int64).reshape(2, 3), i64(0)], {"keepdims": 0}, 13),
    ("reduce-max", "ReduceMax", [np.arange(6, dtype=np.int32).reshape(2, 3)], {"axes": [-1]}, 13),
    ("reduce-min-input", "ReduceMin", [np.arange(6, dtype=np.int64).reshape(2, 3), i64(0)], {}, 18),
    ("reduce-sum-empty-axes", "ReduceSum", [np.arange(6, dtype=np.int64).reshape(2, 3), np.zeros(0, np.int64)],
     {"keepdims": 0}, 13),
    ("reduce-max-empty-axes", "ReduceMax", [np.arange(6, dtype=np.int64).reshape(2, 3), np.zeros(0, np.int64)],
     {"keepdims": 0}, 18),
    ("reduce-prod-empty-axes-keepdims", "ReduceProd", [i64(2, 3, 4).reshape(3, 1), np.zeros(0, np.int64)], {}, 18),
    ("reduce-sum-empty-axes-noop", "ReduceSum", [np.arange(6, dtype=np.int64).reshape(2, 3), np.zeros(0, np.int64)],
     {"noop_with_empty_axes": 1}, 13),
    ("cast-int64-int32-wraps", "Cast", [i64(2**40 + 5, -1)], {"to": onnx.TensorProto.INT32}, 13),
    ("cast-int-float-exact", "Cast", [i64(3, -8, 2**24)], {"to": onnx.TensorProto.FLOAT}, 13),
    ("cast-float-int-truncates", "Cast", [np.array([2.7, -2.7, 0.0, -0.5], np.float32)],
     {"to": onnx.TensorProto.INT64}, 13),
    ("cast-float-double", "Cast", [np.array([0.1, -1e30], np.float32)], {"to": onnx.TensorProto.DOUBLE}, 13),
    ("cast-double-float-rounds", "Cast", [np.array([0.1, 1e300], np.float64)], {"to": onnx.TensorProto.FLOAT}, 13),
    ("cast-int-bool", "Cast", [i64(0, 3, -1)], {"to": onnx.TensorProto.BOOL}, 13),
    ("cast-float-bool-nan", "Cast", [np.array([0.0, NAN, -0.0, 2.0], np.float32)], {"to": onnx.TensorProto.BOOL}, 13),
    ("cast-bool-float", "Cast", [np.array([True, False])], {"to": onnx.TensorProto.FLOAT}, 13),
    ("shape-start-end", "Shape", [np.zeros((2, 3, 4, 5), np.float32)], {"start": 1, "end": -1}, 15),
    ("size", "Size", [np.zeros((2, 3), np.float32)], {}, 13),
    ("identity", "Identity", [np.array([1.5], np.float32)], {}, 13),
]


@pytest.mark.parametrize("op, inputs, attrs, opset", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_numpy_evaluation_is_bit_identical_to_onnxruntime(op, inputs, attrs, opset):
    outputs = 2 if op == "Split" and len(attrs.get("split", [0, 0])) == 2 else 3 if "num_outputs" in attrs else 1
    model = single_node_model(op, inputs, attrs, opset, outputs=outputs)
    expected = run_ort(model, {})
    graph = gs.import_onnx(model)
    result = fold_graph(graph)
    assert result.remaining == [] and [n.name for n in result.folded] == ["node"]
    for folded, want in zip(graph.outputs, expected, strict=True):
        assert isinstance(folded, gs.Constant)
        assert folded.values.dtype == want.dtype and folded.values.shape == want.shape
        assert folded.values.tobytes() == want.tobytes()  # bit for bit: NaN payloads and signed zeros too


LEFT_TO_ONNXRUNTIME = [  # evaluations NumPy could get wrong, or that are invalid: not folded here
    ("float16-add", "Add", [np.array([0.1], np.float16), np.array([0.2], np.float16)], {}),
    ("float-sign", "Sign", [np.array([NAN, -2.0], np.float32)], {}),
    ("scatter-nd-duplicates", "ScatterND", [np.zeros(3, np.float32), i64(1, 1).reshape(2, 1),
                                            np.array([1, 2], np.float32)], {}),
    ("integer-division-by-zero", "Div", [i64(1), i64(0)], {}),
    ("cast-int-float-rounds", "Cast", [i64(2**60 + 1)], {"to": onnx.TensorProto.FLOAT}),
    ("cast-float-int-out-of-range", "Cast", [np.array([1e20], np.float32)], {"to": onnx.TensorProto.INT32}),
    ("cast-to-float16", "Cast", [np.array([0.1], np.float32)], {"to": onnx.TensorProto.FLOAT16}),
    ("gather-out-of-range", "Gather", [i64(1, 2), i64(2)], {}),
    ("tile-repeats-too-few", "Tile", [i64(1, 2).reshape(1, 2), i64(3)], {}),  # NumPy would pad them
    ("slice-axis-out-of-range", "Slice", [i64(1, 2, 3), i64(0), i64(2), i64(1)], {}),  # NumPy: axis 1 % 1 = 0
    ("float-exp", "Exp", [np.array([1.0], np.float32)], {}),
    # ONNX Runtime returns +0.0 for a -0.0 picked from X (measured, float16/32/64)
    *((f"where-{np.dtype(dtype).name}-negative-zero-from-x", "Where",
       [np.array([True, False]), np.array([-0.0, 1.0], dtype), np.array([2.0, 3.0], dtype)], {})
      for dtype in (np.float16, np.float32, np.float64)),
    # ONNX Runtime computes these in float64 (measured): 64-bit values past 2**53 round, int32 sums saturate
    ("mod-fmod-int64-past-2**53", "Mod", [i64(2**60 + 12345), i64(10)], {"fmod": 1}),
    ("mod-fmod-uint64-past-2**53", "Mod", [np.array([2**63 + 12345], np.uint64), np.array([10], np.uint64)],
     {"fmod": 1}),
    ("reduce-sum-int64-past-2**53", "ReduceSum", [i64(2**62, 1)], {}),
    ("reduce-prod-int64-past-2**53", "ReduceProd", [i64(2**31 + 1, 2**31 - 1)], {}),
    ("reduce-sum-int32-overflows", "ReduceSum", [np.array([2**30, 2**30], np.int32)], {}),
    ("reduce-prod-int32-overflows", "ReduceProd", [np.array([46341, 46341], np.int32)], {}),
]


@pytest.mark.parametrize("op, inputs, attrs", [c[1:] for c in LEFT_TO_ONNXRUNTIME],
                         ids=[c[0] for c in LEFT_TO_ONNXRUNTIME])
def test_evaluations_numpy_might_get_wrong_are_left_for_onnxruntime(op, inputs, attrs):
    graph = gs.import_onnx(single_node_model(op, inputs, attrs))
    result = fold_graph(graph)
    assert [n.name for n in result.remaining] == ["node"] and result.folded == []
    assert not isinstance(graph.outputs[0], gs.Constant)


INVALID = {"integer-division-by-zero", "gather-out-of-range", "tile-repeats-too-few", "slice-axis-out-of-range"}


@pytest.mark.parametrize("op, inputs, attrs", [c[1:] for c in LEFT_TO_ONNXRUNTIME] +
                         [("MatMul", [np.full((2, 3), 0.1, np.float32), np.full((3, 2), 0.3, np.float32)], {})],
                         ids=[c[0] for c in LEFT_TO_ONNXRUNTIME] + ["matmul"])
def test_onnxruntime_fallback_folds_to_what_onnxruntime_computes(op, inputs, attrs, request):
    model = single_node_model(op, inputs, attrs)
    graph = gs.import_onnx(model)
    result = fold_graph(graph, fallback=lambda node, values: evaluate_with_onnxruntime(node, values, opset=13))
    if request.node.callspec.id in INVALID:  # ONNX Runtime refuses them too: left for the run to report
        assert [n.name for n in result.remaining] == ["node"]
        return
    (expected,) = run_ort(model, {})
    assert result.remaining == [] and isinstance(graph.outputs[0], gs.Constant)
    assert graph.outputs[0].values.tobytes() == expected.tobytes()


@pytest.mark.parametrize("op, opset", [("ReduceSum", 11), ("ReduceMax", 13), ("Squeeze", 11)])
def test_an_empty_axes_attribute_means_all_axes(op, opset):
    """The attribute form of empty axes (older opsets), which helper.make_node cannot write."""
    data = np.zeros((1, 3, 1), np.int64) if op == "Squeeze" else np.arange(6, dtype=np.int64).reshape(2, 3)
    model = single_node_model(op, [data], {}, opset)
    model.graph.node[0].attribute.append(helper.make_attribute("axes", [], attr_type=onnx.AttributeProto.INTS))
    (expected,) = run_ort(model, {})
    graph = gs.import_onnx(model)
    assert [n.name for n in fold_graph(graph).folded] == ["node"]
    assert graph.outputs[0].values.shape == expected.shape and graph.outputs[0].values.tobytes() == expected.tobytes()


RANDOM_NODES = [  # (op, inputs, attrs): constant inputs, yet a new draw at every run
    ("RandomUniform", [], {"shape": [4]}),
    ("RandomNormal", [], {"shape": [4]}),
    ("RandomUniformLike", [np.zeros(4, np.float32)], {}),
    ("RandomNormalLike", [np.zeros(4, np.float32)], {}),
    ("Multinomial", [np.zeros((1, 3), np.float32)], {"sample_size": 4}),
    ("Bernoulli", [np.full(4, 0.5, np.float32)], {}),
    ("Dropout", [np.ones(64, np.float32), np.array(0.5, np.float32), np.array(True)], {}),
]


@pytest.mark.parametrize("op, inputs, attrs", RANDOM_NODES, ids=[c[0] for c in RANDOM_NODES])
def test_random_ops_never_fold(op, inputs, attrs):
    model = single_node_model(op, inputs, attrs, opset=15)
    graph = gs.import_onnx(model)
    result = fold_graph(graph, fallback=lambda node, values: evaluate_with_onnxruntime(node, values, opset=15))
    assert result.folded == [] and not isinstance(graph.outputs[0], gs.Constant)
    assert [n.op_type for n in apply_pass(model, "fold-constants")[0].graph.node] == [op]


def test_random_ops_never_fold_in_graphsurgeons_folder():
    """Graphs with functions go to graphsurgeon's folder, which is told the same."""
    fn = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 13)])
    nodes = [helper.make_node("RandomUniform", [], ["r"], name="random", shape=[4]),
             helper.make_node("Twice", ["r"], ["y"], name="twice", domain="local")]
    model = make_model(nodes, [], [("y", np.float32, [4])], opset=13, extra_opsets={"local": 1})
    model.functions.append(fn)
    out, _ = apply_pass(model, "fold-constants")
    assert [n.op_type for n in out.graph.node] == ["RandomUniform", "Twice"]


def shape_chain_model(batch="N"):
    """x[batch,3,4] -> Shape -> Gather(i) -> Unsqueeze -> Concat -> Reshape, as torch exports
    `x.view(x.size(0), x.size(1), x.size(2))`, plus `x.shape[1:3]` as a second output."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape")]
    for i in range(3):
        nodes += [helper.make_node("Gather", ["s", f"i{i}"], [f"g{i}"], name=f"gather{i}", axis=0),
                  helper.make_node("Unsqueeze", [f"g{i}"], [f"u{i}"], name=f"unsqueeze{i}", axes=[0])]
    nodes += [helper.make_node("Slice", ["s", "one", "three"], ["tail"], name="slice"),
              helper.make_node("Concat", ["u0", "u1", "u2"], ["shape"], name="concat", axis=0),
              helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")]
    return make_model(nodes, [("x", np.float32, [batch, 3, 4])], [("y", np.float32, None), ("tail", np.int64, None)],
                      initializers={"i0": np.array(0), "i1": np.array(1), "i2": np.array(2),
                                    "one": i64(1), "three": i64(3)})


def test_static_dimensions_of_a_partly_dynamic_shape_fold():
    graph = gs.import_onnx(shape_chain_model(batch="N"))
    result = fold_graph(graph)
    folded = {n.name for n in result.folded}
    assert folded == {"gather1", "gather2", "unsqueeze1", "unsqueeze2", "slice"}
    assert result.remaining == []


def test_fold_constants_pass_folds_shape_chains_of_a_graph_without_shapes():
    model = shape_chain_model(batch=2)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out, step = apply_pass(model, "fold-constants")
    assert [n.op_type for n in out.graph.node] == ["Reshape"]
    assert step.rewritten == ["shape", "gather0", "unsqueeze0", "gather1", "unsqueeze1", "gather2", "unsqueeze2",
                              "slice", "concat"]
    shape = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "shape"))
    np.testing.assert_array_equal(shape, [2, 3, 4])
    for got, expected in zip(run_ort(out, {"x": x}), run_ort(model, {"x": x})):
        np.testing.assert_array_equal(got, expected)


def test_size_threshold_keeps_large_folded_values_computed():
    model = single_node_model("ConstantOfShape", [i64(1000)], {"value": numpy_helper.from_array(i64(1))})
    graph = gs.import_onnx(model)
    result = fold_graph(graph, size_threshold=4000)
    assert [n.name for n in result.folded] == ["node"] and result.constants == []
    assert not isinstance(graph.outputs[0], gs.Constant)


def graphsurgeon_folded(model):
    """The pass as it was before surgeon.folding: graphsurgeon's folder over the whole graph, after shape
    inference, again until nothing more folds (folding makes shapes known that let more fold)."""
    from surgeon.inference import infer_graph_shapes
    from surgeon.rewrite import export_graph, stable_toposort

    graph = gs.import_onnx(model)
    stable_toposort(graph)
    for g in (graph, *graph.subgraphs(recursive=True)):
        g.ir_version = 10  # what ONNX Runtime accepts (DESIGN.md)
    nodes = None
    while len(graph.nodes) != nodes:
        nodes = len(graph.nodes)
        infer_graph_shapes(graph)
        graph.fold_constants(error_ok=False, should_exclude_node=lambda node: node.op in NOT_FOLDED)
        graph.cleanup()
    return export_graph(graph)


@pytest.mark.parametrize("fixture", sorted(p.name for p in ZOO.glob("*.onnx")))
def test_fold_constants_matches_graphsurgeons_folder_on_the_zoo(fixture):
    """The same graph as graphsurgeon's folder, and nothing left for a second run (bevformer-tiny left
    6 nodes, bevfusion-fuser-head 45, whose shapes only the end-of-run inference made known)."""
    model = onnx.load(ZOO / fixture)
    ours, _ = apply_pass(model, "fold-constants")
    assert apply_pass(ours, "fold-constants")[1].rewritten == []
    theirs = graphsurgeon_folded(model)
    assert [n.name for n in ours.graph.node] == [n.name for n in theirs.graph.node]
    ours_init = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    theirs_init = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer}
    assert ours_init.keys() == theirs_init.keys()
    for name, value in theirs_init.items():
        assert ours_init[name].dtype == value.dtype and ours_init[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("op, attrs", [("Div", {}), ("Mod", {"fmod": 0})])
def test_undefined_integer_division_never_folds(dtype, op, attrs):
    """INT_MIN / -1 does not fit: undefined in C++, and ONNX Runtime dies of SIGFPE evaluating it (measured), so
    neither NumPy nor the ONNX Runtime fallback may fold it, directly or after folding what feeds it."""
    minimum = np.array([np.iinfo(dtype).min], dtype)
    model = single_node_model(op, [minimum, np.array([-1], dtype)], attrs, opset=14)
    graph = gs.import_onnx(model)
    result = fold_graph(graph, fallback=lambda node, values: pytest.fail("the fallback must not be asked"))
    assert result.folded == [] and result.remaining == []
    assert [(node.name, "undefined" in why) for node, why in result.refused] == [("node", True)]
    out, step = apply_pass(model, "fold-constants")  # graphsurgeon's folder excludes it too (never_folded)
    assert [n.op_type for n in out.graph.node] == [op]
    assert [note for note in step.notes if note.startswith("node: not folded, ") and "undefined" in note]
    computed = helper.make_node("Identity", ["in0"], ["copy"], name="copy")
    model.graph.node[0].input[0] = "copy"
    model.graph.node.insert(0, computed)
    result = fold_graph(gs.import_onnx(model))
    assert [n.name for n in result.folded] == ["copy"] and [n.name for n, _ in result.refused] == ["node"]

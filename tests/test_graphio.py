"""surgeon.graphio must be indistinguishable from onnx-graphsurgeon's own import/export.

Equivalence is the test: for every bundled model and for generated graphs with each feature the
importer handles (or hands back to graphsurgeon), the imported graph has the same objects, fields,
types and link order as `gs.import_onnx`'s, and exports are byte-identical to `gs.export_onnx`'s.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from unittest import mock

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx_graphsurgeon.util.misc import SynchronizedList

from surgeon.graphio import export_model, import_graph, import_graph_noting
from surgeon.rewrite import is_sorted
from surgeon.testing import IR_VERSION, make_model

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
MODEL_FILES = sorted({*REPO.glob("tests/data/**/*.onnx"), *SHARED_DATA.glob("**/*.onnx")})
MAX_MODEL_BYTES = 200 * 2**20
SLOW_MODEL_BYTES = 2 * 2**20  # BEVFormer-tiny's 6,700 nodes: ~5 s each for the four imports and exports


def model_params():
    def name(path: Path) -> str:
        return str(path.relative_to(REPO) if path.is_relative_to(REPO) else "shared" / path.relative_to(SHARED_DATA))

    return [pytest.param(p, id=name(p),
                         marks=[pytest.mark.slow] if p.stat().st_size > SLOW_MODEL_BYTES else [])
            for p in MODEL_FILES]


def fresh(model: onnx.ModelProto) -> onnx.ModelProto:
    """A private copy: graphsurgeon's graphs share (and its export extends) the model's opset list."""
    return onnx.ModelProto.FromString(model.SerializeToString())


def describe(graph: gs.Graph):
    """Everything observable about an imported graph, objects numbered by first appearance."""
    numbers: dict[int, int] = {}

    def ref(obj):
        return type(obj).__name__, numbers.setdefault(id(obj), len(numbers))

    def value(v):
        if isinstance(v, SynchronizedList):
            return "SynchronizedList", ref(v.parent_obj), v.field_name, [ref(x) for x in v]
        if isinstance(v, gs.Tensor):
            return ref(v), [(k, value(x)) for k, x in vars(v).items() if k not in ("inputs", "outputs")]
        if isinstance(v, gs.Graph):
            return whole_graph(v)
        if isinstance(v, LazyValues):
            return type(v).__name__, v.tensor.SerializeToString(), value(v.shape), value(v.dtype), v.nbytes
        if isinstance(v, (dict, OrderedDict)):
            return type(v).__name__, [(k, value(x)) for k, x in v.items()]
        if isinstance(v, (list, tuple)) or type(v).__module__.startswith("google"):
            return type(v).__name__, [value(x) for x in v]
        if isinstance(v, onnx.OperatorSetIdProto):
            return "opsetid", v.domain, v.version
        return type(v).__name__, repr(v)

    def whole_graph(g):
        nodes = [(ref(n), [(k, value(x)) for k, x in vars(n).items()]) for n in g.nodes]
        links = [(value(t.inputs), value(t.outputs)) for n in g.nodes for t in n.inputs + n.outputs]
        fields = [(k, ref(x) if k == "_functions" else value(x)) for k, x in vars(g).items() if k != "nodes"]
        return ref(g), nodes, links, fields

    return whole_graph(graph)


def fast_import(model: onnx.ModelProto, fast: bool = True) -> gs.Graph:
    """import_graph(model), checking whether it handed the model to gs.import_onnx."""
    with mock.patch.object(gs, "import_onnx", wraps=gs.import_onnx) as fallback:
        graph = import_graph(model)
    assert fallback.called != fast
    return graph


def assert_equivalent(model: onnx.ModelProto, do_type_check: bool = False, fast: bool = True,
                      fast_export: bool = True) -> None:
    ours, theirs = fast_import(fresh(model), fast), gs.import_onnx(fresh(model))
    assert describe(ours) == describe(theirs)
    expected = gs.export_onnx(theirs, do_type_check=do_type_check).SerializeToString()
    assert gs.export_onnx(ours, do_type_check=do_type_check).SerializeToString() == expected
    assert_same_export(fast_import(fresh(model), fast), gs.import_onnx(fresh(model)), do_type_check, fast_export)


def assert_same_export(ours: gs.Graph, theirs: gs.Graph, do_type_check: bool = False, fast: bool = True) -> None:
    """export_model on one graph vs gs.export_onnx on an equal one (exporting updates the graph)."""
    expected = gs.export_onnx(theirs, do_type_check=do_type_check).SerializeToString()
    with mock.patch.object(gs, "export_onnx", wraps=gs.export_onnx) as fallback:
        assert export_model(ours, do_type_check=do_type_check).SerializeToString() == expected
    assert fallback.called != fast
    assert describe(ours) == describe(theirs)  # including what export changed in the graph


@pytest.mark.parametrize("path", model_params())
def test_bundled_models(path):
    if path.stat().st_size > MAX_MODEL_BYTES:
        pytest.skip(f"{path.name} is over {MAX_MODEL_BYTES >> 20} MB")
    assert_equivalent(onnx.load(path))


@pytest.mark.parametrize("name", ["bevfusion-camera-backbone.fixture.opset11-aten.onnx",
                                  "bevfusion-fuser-head.fixture.opset11-aten.onnx"])
def test_shape_inferred_models(name):
    """value_info for nearly every tensor, as after onnx shape inference or onnxsim."""
    model = onnx.shape_inference.infer_shapes(onnx.load(REPO / "tests/data/zoo" / name), data_prop=True)
    assert len(model.graph.value_info) > 100
    assert_equivalent(model)


def order_cases():
    """The node orders whose import verdict is checked: bundled models as stored, and shuffled."""
    import random

    rng = random.Random(7)
    for path in MODEL_FILES[:6]:
        if path.stat().st_size > MAX_MODEL_BYTES:
            continue
        model = onnx.load(path, load_external_data=False)
        yield path.name, model
        nodes = list(model.graph.node)
        rng.shuffle(nodes)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        yield path.name + " shuffled", model
    x, y, z = vi("x"), vi("y"), vi("z")
    chain = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])]
    yield "chain", graph_model(chain, [x], [y])
    yield "chain reversed", graph_model(chain[::-1], [x], [y])
    yield "reads its own output", graph_model([helper.make_node("Add", ["x", "y"], ["y"])], [x], [y])
    yield "two readers, one early", graph_model(
        [helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Neg", ["x"], ["a"]),
         helper.make_node("Relu", ["a"], ["z"])], [x], [y, z])
    yield "writes a graph input", graph_model([helper.make_node("Neg", ["x"], ["y"]),
                                               helper.make_node("Relu", ["y"], ["x"])], [x], [y])


def test_import_tells_whether_the_nodes_are_sorted():
    """The order noticed during import is `is_sorted`'s verdict on the imported graph, sorted or not."""
    verdicts = set()
    for name, model in order_cases():
        graph, notes = import_graph_noting(model)
        assert notes is not None, name
        assert notes.in_order == is_sorted(graph.nodes), name
        verdicts.add(notes.in_order)
    assert verdicts == {True, False}
    assert import_graph_noting(if_model())[1] is None  # subgraphs: is_sorted decides
    assert import_graph_noting(function_model())[1] is None  # graphsurgeon's own import


@pytest.mark.parametrize("describe, carries", [
    (lambda node: None, False),
    (lambda node: setattr(node, "doc_string", "from model.py:12"), True),
    (lambda node: node.metadata_props.add(key="source", value="model.py"), True),
    (lambda node: setattr(node.attribute[0], "doc_string", "the slope"), True),
], ids=["none", "node doc", "node metadata", "attribute doc"])
def test_import_tells_whether_a_node_carries_text_graphsurgeon_drops(describe, carries):
    """The pipeline puts such text back after export; where the import saw none, it walks no nodes for it."""
    node = helper.make_node("LeakyRelu", ["x"], ["y"], name="leaky", alpha=0.1)
    describe(node)
    model = graph_model([helper.make_node("Relu", ["x"], ["r"], name="relu"), node], [vi("x")], [vi("y")])
    model.graph.doc_string = "graph text is the graph's, kept by graphsurgeon"
    assert import_graph_noting(model)[1].node_text is carries


def test_bundled_models_found():
    assert len(MODEL_FILES) >= 10 and any("zoo" in str(p) for p in MODEL_FILES)


def graph_model(nodes, inputs, outputs, initializers=(), value_info=(), opsets=(("", 13),), **graph_kwargs):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), value_info=list(value_info),
                              **graph_kwargs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                             ir_version=IR_VERSION)


def vi(name, elem=TensorProto.FLOAT, shape=(2,)):
    return helper.make_tensor_value_info(name, elem, shape)


def test_constant_node_value_kinds():
    kinds = {"value": numpy_helper.from_array(np.arange(3, dtype=np.float32)), "value_float": 1.5,
             "value_floats": [1.0, 2.5], "value_int": 3, "value_ints": [1, 2], "value_string": "ab",
             "value_strings": ["a", "bc"]}
    nodes = [helper.make_node("Constant", [], [f"c_{k}"], name=f"const_{k}", **{k: v}) for k, v in kinds.items()]
    model = graph_model(nodes, [], [vi(f"c_{k}", TensorProto.UNDEFINED, None) for k in kinds])
    assert_equivalent(model)


def test_attribute_kinds_and_node_fields():
    tensor = numpy_helper.from_array(np.ones((2, 2), np.float16))
    node = helper.make_node("Custom", ["x", "", "x"], ["y", ""], name="custom", domain="my.domain",
                            doc_string="dropped by both", f=0.1, i=-(2**40), s="été".encode(), t=tensor,
                            floats=[0.1, -2.0], ints=[3, -1], strings=[b"a", b""])
    unnamed = helper.make_node("Relu", ["y"], ["z"], domain="")  # empty but present domain, no name
    model = graph_model([node, unnamed], [vi("x")], [vi("z")], opsets=(("", 13), ("my.domain", 2)))
    assert_equivalent(model)


def test_empty_list_attribute_imports_alike():
    node = helper.make_node("ATen", ["x"], ["y"], operator="sum")
    node.attribute.append(AttributeProto(name="dim", type=AttributeProto.INTS))  # ATen's `dim=[]`
    model = graph_model([node], [vi("x")], [vi("y")])
    assert describe(import_graph(fresh(model))) == describe(gs.import_onnx(fresh(model)))


def test_initializers_of_every_dtype_and_inputs_that_are_initializers():
    arrays = {"f32": np.ones((2, 3), np.float32), "f16": np.ones(2, np.float16), "b": np.array([True, False]),
              "i64": np.array(7, np.int64), "u8": np.zeros(0, np.uint8), "f64": np.ones(1),
              "s": np.array(["x", "yz"], dtype=object)}
    inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
    inits.append(helper.make_tensor("bf16", TensorProto.BFLOAT16, [2], [1.0, 2.0]))
    inits.append(helper.make_tensor("f8", TensorProto.FLOAT8E4M3FN, [1], [1.0]))
    inits.append(helper.make_tensor("i4", TensorProto.INT4, [3], [1, -2, 3]))
    inits.append(numpy_helper.from_array(np.zeros(2, np.float32), "f32"))  # duplicate name: first wins
    names = [*arrays, "bf16", "f8", "i4"]
    nodes = [helper.make_node("Identity", [k], [f"out_{k}"]) for k in names]
    inputs = [vi("f32", shape=(2, 3)), vi("extra")]  # an input that is also an initializer
    outputs = [vi(f"out_{k}", TensorProto.UNDEFINED, None) for k in names]
    model = graph_model(nodes, inputs, outputs, initializers=inits)
    assert_equivalent(model)


def test_shapes_dim_params_unknowns_and_value_info_merging():
    value_info = [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", None, 3]),
        helper.make_tensor_value_info("b", TensorProto.UNDEFINED, None),
        helper.make_tensor_value_info("b", TensorProto.INT64, [4]),  # a repeat fills in what was unknown
        helper.make_tensor_value_info("c", TensorProto.FLOAT, []),
        onnx.ValueInfoProto(name="d"),  # no type at all
        helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]),  # describes an initializer
    ]
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Shape", ["a"], ["b"]),
             helper.make_node("Neg", ["w"], ["c"]), helper.make_node("Abs", ["c"], ["d"]),
             helper.make_node("SequenceConstruct", ["a"], ["seq"]), helper.make_node("Abs", ["d"], ["e"])]
    model = graph_model(nodes, [vi("x", shape=("batch", 2, 3))], [vi("e", shape=None), vi("seq", shape=[1])],
                        initializers=[numpy_helper.from_array(np.ones(1, np.float32), "w")], value_info=value_info,
                        doc_string="graph doc")
    model.producer_name, model.producer_version, model.doc_string = "torch", "2.13", "model doc"
    assert_equivalent(model)
    assert_equivalent(model, do_type_check=True)


def test_model_without_default_opset_and_with_unimported_domain():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Op", ["r"], ["y"], domain="unlisted")]
    model = graph_model(nodes, [vi("x")], [vi("y")], opsets=(("other", 1),))
    assert_equivalent(model)


def test_external_data_not_loaded(tmp_path):
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [("x", np.float32, [256])],
                       [("y", np.float32, [256])], initializers={"w": np.arange(256, dtype=np.float32)})
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0)
    assert_equivalent(onnx.load(tmp_path / "m.onnx", load_external_data=False))


def if_model():
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["b"])], "branch", [], [vi("b")])
    node = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=branch)
    return graph_model([node], [vi("cond", TensorProto.BOOL, []), vi("x")], [vi("y")])


def loop_model():
    """A Loop whose body reads an outer tensor and holds a nested If."""
    inner = helper.make_graph([helper.make_node("Neg", ["w"], ["n"])], "inner", [], [vi("n")])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("If", ["cond_in"], ["picked"], then_branch=inner, else_branch=inner),
         helper.make_node("Add", ["acc_in", "picked"], ["acc_out"])],
        "body", [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("acc_in")],
        [vi("cond_out", TensorProto.BOOL, []), vi("acc_out")])
    nodes = [helper.make_node("Relu", ["w"], ["w_used_before"]),
             helper.make_node("Loop", ["trip", "", "x"], ["y"], body=body),
             helper.make_node("Abs", ["w"], ["w_used_after"])]
    return graph_model(nodes, [vi("trip", TensorProto.INT64, []), vi("x"), vi("w")],
                       [vi("y"), vi("w_used_before"), vi("w_used_after")])


def function_model():
    function = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                    [helper.make_opsetid("", 13)])
    model = graph_model([helper.make_node("Twice", ["x"], ["y"], domain="local")], [vi("x")], [vi("y")],
                        opsets=(("", 13), ("local", 1)))
    model.functions.append(function)
    return model


def sparse_model():
    values = numpy_helper.from_array(np.array([1.0], np.float32), "sp")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([1], np.int64)), [3])
    model = graph_model([helper.make_node("Relu", ["sp"], ["y"])], [], [vi("y", shape=[3])])
    model.graph.sparse_initializer.append(sparse)
    return model


def sparse_attribute_model():
    values = numpy_helper.from_array(np.array([1.0], np.float32), "v")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([1], np.int64)), [3])
    return graph_model([helper.make_node("Constant", [], ["y"], sparse_value=sparse)], [], [vi("y", shape=[3])])


def function_reference_model():
    node = helper.make_node("Relu", ["x"], ["y"])
    node.attribute.append(helper.make_attribute_ref("alpha", AttributeProto.FLOAT))
    return graph_model([node], [vi("x")], [vi("y")])


def test_subgraphs():
    assert_equivalent(if_model())
    assert_equivalent(loop_model())


@pytest.mark.parametrize("build, fast_export", [(function_model, False), (sparse_model, False),
                                                (sparse_attribute_model, True), (function_reference_model, True)])
def test_graphs_outside_the_fast_path_fall_back(build, fast_export):
    assert_equivalent(build(), fast=False, fast_export=fast_export)


def edited_pair(model: onnx.ModelProto, edit) -> tuple[gs.Graph, gs.Graph]:
    ours, theirs = import_graph(fresh(model)), gs.import_onnx(fresh(model))
    edit(ours)
    edit(theirs)
    return ours, theirs


def small_model():
    nodes = [helper.make_node("Cast", ["x"], ["c"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Add", ["c", "w"], ["y"], name="add"),
             helper.make_node("Identity", ["y"], ["z"], name="identity")]
    return make_model(nodes, [("x", np.float16, [2, 3])], [("z", np.float32, [2, 3])],
                      initializers={"w": np.arange(3, dtype=np.float32)})


def set_python_and_numpy_values(graph: gs.Graph) -> None:
    """Values passes write: NumPy constants and scalars, dtype classes, tuples, empty shapes."""
    cast, add, identity = graph.nodes
    cast.attrs.update(to=np.float32, np_int=np.int64(3), flag=True, raw=b"\x00\xff", mixed=[1, 2.5],
                      tup=(1, 2), floats32=[np.float32(0.5)], empty_strings=["", "a"])
    add.inputs[1].values = np.full(3, 2.0, np.float32)  # loaded and replaced: exported from NumPy
    add.inputs.append(gs.Constant("fresh", np.array([[1.0]], dtype=ml_dtypes.bfloat16)))
    identity.outputs[0].dtype = np.float32  # a dtype class instead of np.dtype
    identity.outputs[0].shape = (2, "n")
    graph.outputs.append(add.inputs[1])  # a Constant as graph output
    graph.inputs[0].shape = []
    graph.nodes.append(gs.Node("Relu", inputs=[identity.outputs[0]], outputs=[gs.Variable("r", shape=[3])]))


@pytest.mark.parametrize("edit", [
    lambda g: None,
    set_python_and_numpy_values,
    lambda g: g.nodes[0].attrs.update(value=g.nodes[2].inputs[0]),  # a Variable where a tensor is expected
    lambda g: g.nodes[2].outputs[0].__setattr__("type", "sparse_tensor_type"),
    lambda g: g.nodes[2].outputs[0].__setattr__("shape", [np.int64(2)]),  # onnx.helper refuses NumPy dims
    lambda g: g.nodes[0].attrs.update(empty=[]),  # onnx.helper cannot type an empty list
    lambda g: g.nodes.append(gs.Node("Relu", name="add", inputs=[g.inputs[0]])),  # duplicate node name
    lambda g: g.nodes.append(gs.Node("Relu", inputs=[gs.Variable("c")])),  # distinct tensors share a name
    lambda g: g.nodes.append(gs.Node("Custom", domain="new.domain", inputs=[g.inputs[0]])),
    lambda g: g.__setattr__("import_domains", None),
    lambda g: g.__setattr__("ir_version", None),
    lambda g: g.__setattr__("doc_string", "now documented"),
    lambda g: g.inputs[0].__setattr__("dtype", None),
    lambda g: g.nodes[0].__setattr__("op", None),
], ids=["unchanged", "python-and-numpy-values", "variable-attr", "sparse-type", "numpy-dim", "empty-list",
        "duplicate-node-name", "duplicate-tensor-name", "new-domain", "no-import-domains", "no-ir-version",
        "doc-string", "untyped-input", "no-op-type"])
@pytest.mark.parametrize("do_type_check", [False, True])
def test_export_of_edited_graphs(edit, do_type_check):
    ours, theirs = edited_pair(small_model(), edit)
    try:
        expected = gs.export_onnx(theirs, do_type_check=do_type_check).SerializeToString()
    except Exception as exc:  # graphsurgeon refuses: so must we, with the same error
        with pytest.raises(type(exc)) as ours_raised:
            export_model(ours, do_type_check=do_type_check)
        assert str(ours_raised.value) == str(exc)
        return
    assert export_model(ours, do_type_check=do_type_check).SerializeToString() == expected
    assert describe(ours) == describe(theirs)


NUMPY_CONSTANTS = [np.arange(6, dtype=dtype).reshape(2, 3) for dtype in (
    np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
    np.uint64)] + [np.array([True, False]), np.array(3, np.int64), np.zeros((0, 4), np.float32),
                   np.arange(4, dtype=np.float32)[::2],  # not contiguous
                   np.array([1.5, 2.0], dtype=">f4"),  # big-endian
                   np.array([1.0], dtype=ml_dtypes.bfloat16), np.array([1, -2], dtype=ml_dtypes.int4),
                   np.array([1.0, 0.5], dtype=ml_dtypes.float8_e4m3fn)]


@pytest.mark.parametrize("values", NUMPY_CONSTANTS, ids=lambda v: f"{v.dtype}{list(v.shape)}")
@pytest.mark.parametrize("located", [False, True])
def test_numpy_constants_export_as_graphsurgeon_does(values, located):
    """Folded graphs carry thousands of NumPy constants; the exporter writes them itself (same bytes)."""
    def edit(graph):
        constant = gs.Constant("folded", values.copy(), data_location=0 if located else None)
        graph.nodes.append(gs.Node("Identity", inputs=[constant], outputs=[gs.Variable("folded_out")]))
    ours, theirs = edited_pair(small_model(), edit)
    try:
        expected = gs.export_onnx(theirs).SerializeToString()
    except ValueError as exc:  # graphsurgeon refuses (big-endian): so must we, with the same error
        with pytest.raises(ValueError, match=str(exc).split("(")[0]):
            export_model(ours)
        return
    assert export_model(ours).SerializeToString() == expected


def test_numpy_constants_with_an_export_dtype_go_to_graphsurgeon():
    def edit(graph):
        constant = gs.Constant("folded", np.array([1.0, 2.0], np.float32), export_dtype=np.float32)
        graph.nodes.append(gs.Node("Identity", inputs=[constant], outputs=[gs.Variable("folded_out")]))
    ours, theirs = edited_pair(small_model(), edit)
    assert export_model(ours).SerializeToString() == gs.export_onnx(theirs).SerializeToString()


attribute_values = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(width=32), st.floats(), st.text(max_size=4), st.binary(max_size=4),
    st.booleans(), st.none(), st.sampled_from([np.float32, np.int64, np.dtype("float16"), np.int64(3),
                                               np.float32(0.5), np.bool_(True)]),
    st.lists(st.integers(-(2**70), 2**70), max_size=3), st.lists(st.floats(), max_size=3),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(-5, 5), st.booleans()), max_size=3),
    st.lists(st.text(max_size=3), max_size=3), st.tuples(st.integers(-5, 5), st.integers(-5, 5)))


@settings(max_examples=150, deadline=None)
@given(value=attribute_values)
def test_any_attribute_value_exports_as_graphsurgeon_does(value):
    ours, theirs = edited_pair(small_model(), lambda g: g.nodes[1].attrs.update(value=value))
    try:
        expected = gs.export_onnx(theirs).SerializeToString()
    except Exception as exc:
        with pytest.raises(type(exc)) as ours_raised:
            export_model(ours)
        assert str(ours_raised.value) == str(exc)
        return
    assert export_model(ours).SerializeToString() == expected


def test_graph_built_with_graphsurgeon_api():
    def build():
        x = gs.Variable("x", np.float32, [1, 4])
        y = gs.Variable("y", np.float32, None)
        w = gs.Constant("w", np.ones((4,), np.float32))
        return gs.Graph(nodes=[gs.Node("Add", "add", inputs=[x, w], outputs=[y])], inputs=[x], outputs=[y], opset=17)

    assert_same_export(build(), build(), do_type_check=True)


def test_export_keyword_arguments_are_passed_to_graphsurgeon():
    ours, theirs = edited_pair(small_model(), lambda g: None)
    kwargs = {"doc_string": "by kwargs", "opset_imports": [helper.make_opsetid("", 17)]}
    assert (export_model(ours, **kwargs).SerializeToString()
            == gs.export_onnx(theirs, **kwargs).SerializeToString())


def test_links_are_live():
    graph = import_graph(small_model())
    cast, add, identity = graph.nodes
    c, w = add.inputs
    assert c.inputs == [cast] and c.outputs == [add] and w.outputs == [add]
    add.inputs[1] = c
    assert w.outputs == [] and c.outputs == [add, add]
    identity.inputs.clear()
    assert add.outputs[0].outputs == []
    add.outputs[0].outputs.append(identity)
    assert identity.inputs == [add.outputs[0]]


@pytest.mark.parametrize("tidy", [
    lambda g: g.cleanup(),
    lambda g: g.toposort(),
    lambda g: g.cleanup(remove_unused_graph_inputs=True).toposort(),
    lambda g: g.fold_constants().cleanup(),
])
@pytest.mark.parametrize("path", [REPO / "tests/data/centerpoint_pfe_sim_unsorted.onnx",
                                  REPO / "tests/data/zoo/bevfusion-camera-vtransform.fixture.opset11-aten.onnx"],
                         ids=lambda p: p.name)
def test_graphsurgeon_methods_give_the_same_result(tidy, path):
    ours, theirs = edited_pair(onnx.load(path), tidy)
    assert_same_export(ours, theirs)


def test_a_branch_reading_a_later_outer_tensor_gets_a_variable_of_its_own():
    """What `rewrite.subgraph_reads` works around, in graphsurgeon's import and ours alike: a subgraph
    links its read of an outer tensor to that tensor only when the producer came first in the file;
    otherwise the branch holds a producer-less Variable of the same name, so only the name connects them."""
    branch = helper.make_graph([helper.make_node("Neg", ["t"], ["b"])], "branch", [], [vi("b")])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=branch),
             helper.make_node("Relu", ["x"], ["t"], name="relu")]
    model = graph_model(nodes, [vi("cond", TensorProto.BOOL, []), vi("x")], [vi("y")])
    for graph in (import_graph(fresh(model)), gs.import_onnx(fresh(model))):
        if_node, relu = graph.nodes
        read = if_node.attrs["then_branch"].nodes[0].inputs[0]
        assert read.name == "t" and read is not relu.outputs[0] and not read.inputs
        assert not is_sorted(graph.nodes)
    graph = import_graph(fresh(model))
    graph.nodes.reverse()
    model = export_model(graph)
    graph = import_graph(model)
    relu, if_node = graph.nodes
    assert if_node.attrs["then_branch"].nodes[0].inputs[0] is relu.outputs[0] and is_sorted(graph.nodes)

"""surgeon.inference: the end-of-run shape inference over only the nodes that left tensors untyped, and
data propagation only where it can find something.

What the first must promise: the same types as inferring the whole model (where it says it is done),
and "not done" wherever it cannot promise that, so the pipeline infers the whole model instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import surgeon
from surgeon import pipeline
from surgeon.graphio import export_model, import_graph
from surgeon.inference import infer_graph_shapes, infer_where_untyped, infer_without_weights, without_weights
from surgeon.testing import IR_VERSION

REPO = Path(__file__).resolve().parents[1]


def types_of(model: onnx.ModelProto) -> dict[str, bytes]:
    """Every value info and graph output, by name (order aside)."""
    return {info.name: info.type.SerializeToString() for info in (*model.graph.value_info, *model.graph.output)}


def whole_and_region(graph: gs.Graph) -> tuple[dict, dict, bool]:
    """Types after whole-model inference, and after region inference (plus whole where it declines)."""
    whole = onnx.shape_inference.infer_shapes(export_model(graph, do_type_check=False), strict_mode=False)
    done = infer_where_untyped(graph)
    region = export_model(graph, do_type_check=False)
    if not done:
        region = onnx.shape_inference.infer_shapes(region, strict_mode=False)
    return types_of(whole), types_of(region), done


def model_of(nodes, inputs, outputs, initializers=(), value_info=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)


def typed(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def folded_chain(n_blocks=6, shape_from="initializer"):
    """Relu -> Reshape(flatten) -> Relu blocks, everything typed but the Reshape outputs (as after
    fold-constants turned their Shape/Gather/Concat shape inputs into constants)."""
    nodes, inits, infos, previous = [], [], [], "x"
    for i in range(n_blocks):
        nodes.append(helper.make_node("Relu", [previous], [f"r{i}"]))
        infos.append(typed(f"r{i}", [2, 3, 4]))
        if shape_from == "initializer":
            inits.append(numpy_helper.from_array(np.array([2, -1], np.int64), f"shape{i}"))
        else:  # a Constant node, typed, outside the untyped region: its value must reach inference
            nodes.append(helper.make_node("Constant", [], [f"shape{i}"],
                                          value=numpy_helper.from_array(np.array([2, -1], np.int64))))
            infos.append(typed(f"shape{i}", [2], TensorProto.INT64))
        nodes.append(helper.make_node("Reshape", [f"r{i}", f"shape{i}"], [f"flat{i}"]))
        nodes.append(helper.make_node("Reshape", [f"flat{i}", "back"], [f"img{i}"]))
        infos.append(typed(f"img{i}", [2, 3, 4]))
        previous = f"img{i}"
    inits.append(numpy_helper.from_array(np.array([2, 3, 4], np.int64), "back"))
    return model_of(nodes, [typed("x", [2, 3, 4])], [typed(previous, [2, 3, 4])], inits, infos)


@pytest.mark.parametrize("shape_from", ["initializer", "constant-node"])
def test_only_the_untyped_nodes_are_inferred_and_the_types_equal_whole_inference(shape_from):
    graph = import_graph(folded_chain(shape_from=shape_from))
    untyped = [t.name for node in graph.nodes for t in node.outputs if t.shape is None]
    assert untyped == [f"flat{i}" for i in range(6)]
    whole, region, done = whole_and_region(graph)
    assert done
    assert region == whole
    assert [graph.tensors()[f"flat{i}"].shape for i in range(6)] == [[2, 12]] * 6


def test_already_typed_graphs_are_done_at_once():
    model = onnx.shape_inference.infer_shapes(folded_chain())
    graph = import_graph(model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx.shape_inference, "infer_shapes", _raise)
        assert infer_where_untyped(graph)


def test_made_up_dim_names_are_left_to_whole_inference():
    """NonZero's count has no value: inference names it (unk__0), a name the rest of the graph may use."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["r"], ["nz"]),
             helper.make_node("Relu", ["x"], ["r2"]), helper.make_node("Relu", ["r2"], ["r3"]),
             helper.make_node("Relu", ["r3"], ["y"])]
    infos = [typed("r", [2, 3]), typed("r2", [2, 3]), typed("r3", [2, 3])]
    model = model_of(nodes, [typed("x", [2, 3])], [typed("y", [2, 3]), typed("nz", None, TensorProto.INT64)],
                     value_info=infos)
    graph = import_graph(model)
    whole, region, done = whole_and_region(graph)
    assert not done
    assert region == whole
    assert graph.outputs[1].shape is None  # not annotated with the made-up name


def test_most_of_the_graph_untyped_goes_to_whole_inference():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])]
    graph = import_graph(model_of(nodes, [typed("x", [2])], [helper.make_tensor_value_info("y", 1, None)]))
    whole, region, done = whole_and_region(graph)
    assert not done and region == whole


def test_subgraphs_go_to_whole_inference():
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [typed("t", [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [typed("e", [2])])
    nodes = [helper.make_node("Relu", ["x"], [f"r{i}"]) for i in range(4)]
    nodes += [helper.make_node("If", ["cond"], ["branch"], then_branch=then, else_branch=other)]
    model = model_of(nodes, [typed("x", [2]), typed("cond", [], TensorProto.BOOL)],
                     [typed(f"r{i}", [2]) for i in range(4)] + [helper.make_tensor_value_info("branch", 1, None)])
    whole, region, done = whole_and_region(import_graph(model))
    assert not done and region == whole


def test_inference_errors_leave_the_graph_as_it_was():
    graph = import_graph(folded_chain())
    before = {t.name: (t.dtype, t.shape) for t in graph.tensors().values()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx.shape_inference, "infer_shapes", _raise)
        assert not infer_where_untyped(graph)
    assert {t.name: (t.dtype, t.shape) for t in graph.tensors().values()} == before


def _raise(*args, **kwargs):
    raise onnx.shape_inference.InferenceError("no")


@pytest.mark.parametrize("recipe", ["bevformer-tiny.yaml", "sparse4d-head.yaml", "bevfusion-fuser-head.yaml"])
def test_recipe_outputs_carry_the_types_whole_inference_gives(recipe, tmp_path, monkeypatch):
    """On real model recipes: whatever the end of the run decided, inferring the result again adds nothing."""
    decisions = []
    region = pipeline.infer_where_untyped

    def recording(graph):
        decisions.append(region(graph))
        return decisions[-1]

    monkeypatch.setattr(pipeline, "infer_where_untyped", recording)
    out = tmp_path / "out.onnx"
    surgeon.run_recipe(REPO / "recipes" / recipe, output=out, validate=False, build=False)
    model = onnx.load(out)
    again = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    assert types_of(again) == types_of(model)
    assert decisions == [decisions[0]] and isinstance(decisions[0], bool)


# Data propagation: kept where it finds shapes, left out where it finds nothing.

def add_chain(n_adds, length):
    """x [length] -> Add(one) * n_adds (opset 17, where Add propagates data)."""
    nodes = [helper.make_node("Add", ["x" if i == 0 else f"a{i - 1}", "one"], [f"a{i}"]) for i in range(n_adds)]
    outputs = [typed(f"a{n_adds - 1}", [length])]
    return model_of(nodes, [typed("x", [length])], outputs, [numpy_helper.from_array(np.ones(1, np.float32), "one")],
                    opset=17)


def flatten_by_shape():
    """Reshape to [x.shape[0], -1] through Shape -> Gather -> Unsqueeze -> Concat: only data propagation
    knows the Reshape's output is [2, 12]."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    return model_of(nodes, [typed("x", [2, 3, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                    inits, opset=17)


@pytest.fixture
def inferences(monkeypatch):
    """The data_prop of each ONNX shape inference call, in order."""
    calls = []
    infer = onnx.shape_inference.infer_shapes

    def recording(model, *args, **kwargs):
        calls.append(kwargs.get("data_prop", False))
        return infer(model, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", recording)
    return calls


def test_shapes_computed_by_shape_chains_are_still_inferred(inferences):
    model = flatten_by_shape()
    inferred = infer_without_weights(model)
    assert types_of(inferred)["y"] == typed("y", [2, 12]).type.SerializeToString()
    graph = infer_graph_shapes(import_graph(model))
    assert graph.outputs[0].shape == [2, 12]
    assert inferences == [True, True]


def test_graphs_without_shape_nodes_are_inferred_without_data_propagation(inferences):
    """Nothing for propagation to find; on a chain of Adds over a 1-D tensor it would cost time and memory
    in proportion to the chain's length times the tensor's (docs/performance.md)."""
    model = add_chain(50, 8)
    inferred = infer_without_weights(model)
    graph = infer_graph_shapes(import_graph(model))
    assert inferences == [False, False] and graph.outputs[0].shape == [8]
    assert types_of(inferred) == types_of(onnx.shape_inference.infer_shapes(without_weights(model), data_prop=True))


@pytest.mark.parametrize("fixture", sorted(p.name for p in (REPO / "tests" / "data" / "zoo").glob("*.onnx")))
def test_zoo_models_keep_every_type_data_propagation_gives(fixture):
    """What the passes got from a run's first inference when it always propagated, they get now."""
    model = onnx.load(REPO / "tests" / "data" / "zoo" / fixture)
    always = onnx.shape_inference.infer_shapes(without_weights(model), strict_mode=False, data_prop=True)
    assert types_of(infer_without_weights(model)) == types_of(always)

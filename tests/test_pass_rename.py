import numpy as np
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model, run_ort


def model():
    nodes = [helper.make_node("Relu", ["input.1"], ["12"], name="Relu_0"),
             helper.make_node("Neg", ["12"], ["47"], name="Neg_1")]
    return make_model(nodes, [("input.1", np.float32, [3])], [("47", np.float32, [3])])


def test_rename_inputs_outputs_tensors_nodes():
    out, step = apply_pass(model(), "rename", inputs={"input.1": "voxels"}, outputs={"47": "features"},
                           tensors={"12": "relu_out"}, nodes={"Relu_0": "relu"})
    assert out.graph.input[0].name == "voxels" and out.graph.output[0].name == "features"
    assert out.graph.node[0].name == "relu" and out.graph.node[0].output[0] == "relu_out"
    x = np.array([-1, 0, 2], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"voxels": x})[0], -np.maximum(x, 0))
    assert len(step.rewritten) == 4


def test_rename_errors():
    with pytest.raises(SurgeonError, match="no input named 'input1'.*input.1"):
        apply_pass(model(), "rename", inputs={"input1": "x"})
    with pytest.raises(SurgeonError, match="'12' is already used"):
        apply_pass(model(), "rename", outputs={"47": "12"})


@pytest.mark.parametrize("params, first, second, new", [
    ({"tensors": {"12": "x", "47": "x"}}, "12", "47", "x"),
    ({"outputs": {"47": "x"}, "tensors": {"12": "x"}}, "47", "12", "x"),
    ({"nodes": {"Relu_0": "n", "Neg_1": "n"}}, "Relu_0", "Neg_1", "n"),
])
def test_two_names_mapped_to_one_new_name_are_both_named(params, first, second, new):
    """The error used to say the new name 'is already used in the graph', which it was not."""
    with pytest.raises(SurgeonError, match=f"rename: the mapping gives '{first}' and '{second}' the same new name '{new}'"):
        apply_pass(model(), "rename", **params)


def test_a_name_used_inside_an_if_branch_is_taken():
    """o1 is the then branch's output: a second 'o1' in the outer graph breaks SSA (ONNX Runtime: not acyclic)."""
    from test_pass_toposort import unsorted_if_model

    with pytest.raises(SurgeonError, match="'o1' is already used"):
        apply_pass(unsorted_if_model(), "rename", tensors={"t": "o1"})


@pytest.mark.parametrize("params, input_names", [
    ({"tensors": {"t": "relu_out"}}, ("x", "c")),
    ({"nodes": {"relu": "r"}}, ("x", "c")),
    ({"inputs": {"x": "points"}}, ("points", "c")),
])
def test_rename_in_an_unsorted_graph_whose_if_branches_read_a_later_tensor(params, input_names):
    """The branches read `t` before its producer in the file; renaming it renames their reads too, and
    the export's tidy-up keeps its producer."""
    from test_pass_toposort import assert_same_on_ort, unsorted_if_model

    model = unsorted_if_model()
    out, _ = apply_pass(model, "rename", **params)
    assert len(out.graph.node) == 2
    assert_same_on_ort(model, out, input_names)


def test_a_renamed_node_keeps_its_metadata_props_and_doc_string():
    relu = helper.make_node("Relu", ["x"], ["y"], name="relu", doc_string="first activation")
    relu.metadata_props.add(key="source", value="backbone.layer1")
    model = make_model([relu], [("x", np.float32, [3])], [("y", np.float32, [3])])
    out, _ = apply_pass(model, "rename", nodes={"relu": "stem"})
    assert out.graph.node[0].name == "stem"
    assert [(p.key, p.value) for p in out.graph.node[0].metadata_props] == [("source", "backbone.layer1")]
    assert out.graph.node[0].doc_string == "first activation"


def test_a_node_renamed_twice_keeps_its_doc_string():
    relu = helper.make_node("Relu", ["x"], ["y"], name="relu", doc_string="first activation")
    model = make_model([relu], [("x", np.float32, [3])], [("y", np.float32, [3])])
    from surgeon.pipeline import finish_graph, run_steps
    from surgeon.recipe import load_recipe

    recipe = load_recipe({"name": "twice", "steps": [{"pass": "rename", "with": {"nodes": {"relu": "a"}}},
                                                     {"pass": "rename", "with": {"nodes": {"a": "b"}}}]})
    graph, records = run_steps(model, recipe)
    out = finish_graph(graph, model, recipe, records)
    assert (out.graph.node[0].name, out.graph.node[0].doc_string) == ("b", "first activation")

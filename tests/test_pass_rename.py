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


@pytest.mark.parametrize("entry, why, hint", [
    ("'12': yes", "the value of '12': expected a string, got a boolean True", "booleans in YAML"),
    ("'12': 47", "the value of '12': expected a string, got an integer 47", "quote it: '47'"),
    ("12: relu_out", "a key: expected a string, got an integer 12", "quote it: '12'"),
    ("on: relu_out", "a key: expected a string, got a boolean True", "booleans in YAML"),
    ("'12': ''", "the new name for '12' is empty", "no tensor"),
    ("'': relu_out", "the entry renaming '' to 'relu_out' has an empty old name", "no tensor")])
def test_a_new_name_that_is_not_text_is_refused_when_the_recipe_loads_at_its_line(tmp_path, entry, why, hint):
    """Before, a boolean (`yes`, which YAML 1.1 reads unquoted as true) and an empty new or old name got as far
    as the run, and a number (older torch exports name tensors `12`) came without the hint to quote it."""
    from surgeon.errors import RecipeError
    from surgeon.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\nsteps:\n  - pass: toposort\n  - pass: rename\n    with:\n      tensors:\n"
                    f"        {entry}\n")
    with pytest.raises(RecipeError) as raised:
        load_recipe(path)
    error = raised.value
    assert (error.file, error.line) == (str(path), 6)
    assert error.message.startswith(f"parameter 'tensors' of pass 'rename': {why}")
    assert hint in error.hint


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
    ({"tensors": {"t": "x", "x": "t"}}, ("t", "c")),  # a swap: the branches read the new 'x'
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


def model_with_three_outputs():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Neg", ["x"], ["b"], name="neg"),
             helper.make_node("Abs", ["x"], ["c"], name="abs")]
    return make_model(nodes, [("x", np.float32, [3])], [(name, np.float32, [3]) for name in "abc"])


def values_by_name(model):
    x = np.array([-1, 0, 2], np.float32)
    return dict(zip((o.name for o in model.graph.output), run_ort(model, {"x": x})))


@pytest.mark.parametrize("key", ["tensors", "outputs"])
@pytest.mark.parametrize("mapping", [
    {"a": "b", "b": "q"},  # a chain: 'b' is free once b is renamed, whichever comes first
    {"b": "q", "a": "b"},
    {"a": "b", "b": "a"},  # a swap
    {"a": "b", "b": "c", "c": "a"},  # a cycle
])
def test_a_name_the_mapping_frees_can_be_taken_in_any_order(key, mapping):
    """{a: b, b: q} was refused ("'b' is already used in the graph") while {b: q, a: b} was accepted."""
    model = model_with_three_outputs()
    out, _ = apply_pass(model, "rename", **{key: mapping})
    before, after = values_by_name(model), values_by_name(out)
    assert after.keys() == {mapping.get(name, name) for name in before}
    for name, value in before.items():
        np.testing.assert_array_equal(after[mapping.get(name, name)], value)


def test_a_name_given_two_new_names_is_refused():
    """inputs {x: a} then tensors {x: b} renamed x to b and left 'a' counted as taken."""
    with pytest.raises(SurgeonError, match="rename: the mapping gives 'input.1' two new names, 'v' and 'w'"):
        apply_pass(model(), "rename", inputs={"input.1": "v"}, tensors={"input.1": "w"})


def test_renaming_into_a_name_the_graph_keeps_is_still_refused():
    with pytest.raises(SurgeonError, match="rename: 'c' is already used in the graph"):
        apply_pass(model_with_three_outputs(), "rename", tensors={"a": "b", "b": "c"})


def test_a_node_name_two_nodes_share_is_refused_naming_both():
    """One of the two nodes named 'n' used to be renamed silently."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="n"), helper.make_node("Sigmoid", ["a"], ["y"], name="n")]
    shared = make_model(nodes, [("x", np.float32, [2])], [("y", np.float32, [2])], opset=17)
    with pytest.raises(SurgeonError, match=r"rename.nodes: 2 nodes are named 'n' \(Relu -> a; Sigmoid -> y\): which "
                                           "one to rename cannot be told by name"):
        apply_pass(shared, "rename", nodes={"n": "n2"})


def test_swapped_node_names_keep_their_own_metadata_and_doc_strings():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="first", doc_string="relu"),
             helper.make_node("Neg", ["r"], ["y"], name="second", doc_string="neg")]
    nodes[0].metadata_props.add(key="source", value="layer1")
    nodes[1].metadata_props.add(key="source", value="layer2")
    model = make_model(nodes, [("x", np.float32, [3])], [("y", np.float32, [3])])
    out, _ = apply_pass(model, "rename", nodes={"first": "second", "second": "first"})
    assert [(n.op_type, n.name, n.doc_string, [(p.key, p.value) for p in n.metadata_props]) for n in out.graph.node] \
        == [("Relu", "second", "relu", [("source", "layer1")]), ("Neg", "first", "neg", [("source", "layer2")])]


def test_renamed_nodes_get_only_their_own_original_metadata():
    """The original's metadata is looked up by each node's name in the input model: after
    {second: z, first: second}, the node now named 'second' must not also get the old 'second''s keys."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="first"), helper.make_node("Neg", ["r"], ["y"], name="second")]
    nodes[0].metadata_props.add(key="source", value="layer1")
    nodes[1].metadata_props.add(key="owner", value="team2")
    model = make_model(nodes, [("x", np.float32, [3])], [("y", np.float32, [3])])
    out, _ = apply_pass(model, "rename", nodes={"second": "z", "first": "second"})
    assert [(n.name, [(p.key, p.value) for p in n.metadata_props]) for n in out.graph.node] \
        == [("second", [("source", "layer1")]), ("z", [("owner", "team2")])]


def test_an_empty_new_node_name_is_refused_before_the_run():
    """Before, the run refused it, without the recipe's file and line."""
    from surgeon.registry import get_pass

    with pytest.raises(SurgeonError, match="parameter 'nodes' of pass 'rename': the new name for 'Relu_0' is empty") \
            as raised:
        get_pass("rename").check_params({"nodes": {"Relu_0": ""}})
    assert raised.value.hint == "give it a name, or drop the entry"


def test_an_empty_old_node_name_is_refused_before_the_run():
    """Before, it renamed whichever unnamed node came last."""
    from surgeon.registry import get_pass

    with pytest.raises(SurgeonError, match="parameter 'nodes' of pass 'rename': the entry renaming '' to 'relu' "
                                           "has an empty old name") as raised:
        get_pass("rename").check_params({"nodes": {"": "relu"}})
    assert raised.value.hint == "give the node's current name, or drop the entry: unnamed nodes cannot be told " \
                                "apart by name"

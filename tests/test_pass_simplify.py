import numpy as np
import pytest
from onnx import helper

from surgeon.errors import SurgeonError
from surgeon.testing import apply_pass, make_model, run_ort


def test_simplify_removes_identity_chain_and_keeps_numbers():
    nodes = [helper.make_node("Identity", ["x"], ["a"], name="id1"),
             helper.make_node("Mul", ["a", "two"], ["b"], name="mul"),
             helper.make_node("Identity", ["b"], ["y"], name="id2")]
    model = make_model(nodes, [("x", np.float32, [3])], [("y", np.float32, [3])],
                       initializers={"two": np.float32(2)})
    out, step = apply_pass(model, "simplify")
    assert "id1" in step.rewritten and len(out.graph.node) < 3
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], 2 * x)


def test_simplify_failure_names_the_step():
    # A custom op nothing can infer leaves the output without a shape, and onnxsim refuses such graphs.
    node = helper.make_node("Foo", ["x"], ["y"], name="foo", domain="custom")
    model = make_model([node], [("x", np.float32, [3])], [("y", np.float32, None)])
    with pytest.raises(SurgeonError, match=r"step 1 \(simplify\): onnxsim failed"):
        apply_pass(model, "simplify")


def test_simplify_sorts_an_unsorted_graph_first():
    """ONNX files may list nodes in any order; onnxsim refuses them unless the pipeline sorts first."""
    nodes = [helper.make_node("Mul", ["a", "two"], ["y"], name="mul"),
             helper.make_node("Relu", ["x"], ["a"], name="relu")]
    model = make_model(nodes, [("x", np.float32, [3])], [("y", np.float32, [3])],
                       initializers={"two": np.float32(2)})
    out, _ = apply_pass(model, "simplify")
    x = np.array([-1, 0, 2], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], 2 * np.maximum(x, 0))


def test_simplify_failure_hint_names_the_nodes_onnxruntime_cannot_run():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Foo", ["r"], ["y"], name="foo", domain="custom")]
    model = make_model(nodes, [("x", np.float32, [3])], [("y", np.float32, None)])
    with pytest.raises(SurgeonError, match=r"\(the graph holds Foo nodes: run simplify after the passes that remove"):
        apply_pass(model, "simplify")


def relu_model():
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [3])],
                      [("y", np.float32, [3])])


def run_checking_simplify(tmp_path, flag: str) -> None:
    """`surgeon run FLAG` of a recipe whose one step is simplify with check_n 2: onnxsim prints "Checking 1/2..."."""
    import onnx

    from surgeon.cli import main

    onnx.save(relu_model(), tmp_path / "m.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m.onnx\nsteps:\n  - pass: simplify\n    with: {check_n: 2}\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "out.onnx"), flag]) == 0


def test_onnxsims_checks_print_nothing_on_stdout_where_run_json_writes_its_report(capfd, tmp_path):
    """onnxsim prints "Checking 0/2..." (and its C++ side could print too): both go to stderr, at the fd level."""
    import json

    run_checking_simplify(tmp_path, "--json")
    out, err = capfd.readouterr()
    assert json.loads(out)["steps"][0]["params"]["check_n"] == 2
    assert "Checking 1/2..." in err


def test_run_quiet_prints_nothing_for_a_recipe_that_simplifies(capfd, tmp_path):
    """`-q` reaches the pass (`Context.quiet`): onnxsim's "Checking 0/2..." lines are dropped too."""
    run_checking_simplify(tmp_path, "-q")
    assert capfd.readouterr() == ("", "")
    assert (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("quiet", [False, True])
def test_onnxsims_checks_print_nothing_when_the_context_is_quiet(capfd, quiet):
    """The pass prints through `ctx.tool_output()`: stderr, and nothing at all for `surgeon run -q`."""
    import onnx_graphsurgeon as gs

    from surgeon.pass_api import Context
    from surgeon.registry import get_pass
    from surgeon.targets import load_target

    ctx = Context(target=load_target("onnxruntime"), quiet=quiet)
    get_pass("simplify")(check_n=2).run(gs.import_onnx(relu_model()), ctx)
    out, err = capfd.readouterr()
    assert out == "" and (err == "" if quiet else "Checking 1/2..." in err)


@pytest.mark.parametrize("check_n", [-1, 101, 10**29])
def test_check_n_is_bounded_so_a_typo_cannot_run_forever(check_n):
    from surgeon.errors import RecipeError
    from surgeon.recipe import json_schema

    with pytest.raises(RecipeError, match=rf"'check_n' of pass 'simplify': must be between 0 and 100, got {check_n}"):
        apply_pass(make_model([], [("x", np.float32, [3])], [("x", np.float32, [3])]), "simplify", check_n=check_n)
    published = json_schema()["$defs"]["step"]["allOf"]
    simplify = next(v["then"] for v in published if v["if"]["properties"]["pass"]["const"] == "simplify")
    assert simplify["properties"]["with"]["properties"]["check_n"]["maximum"] == 100


"""Validation end to end: equal rewrites pass, a wrong constant fails, localisation names the first
diverging tensor, bisection names the step, and the compare/bisect/run commands exit 0/1/2."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import yaml
from onnx import helper

from surgeon.cli import main
from surgeon.errors import SurgeonError
from surgeon.pass_api import Pass, PassResult, register_pass
from surgeon.pipeline import run_recipe
from surgeon.testing import apply_pass, make_model, run_ort
from surgeon.validation import Tolerance, make_feeds, make_runner, validate_models
from surgeon.validation.runners import OnnxrtRunner, ReferenceRunner
from surgeon.validation.validate import input_notes

from conftest import DATA, REPO

ATEN = "org.pytorch.aten"
WRONG_STEP = "test-validation-wrong-constant"


@register_pass(WRONG_STEP)
class WrongConstant(Pass):
    """Adds 1e-3 to the bias of the node named 'shift': a rewrite with a wrong constant (for the tests)."""

    def run(self, graph, ctx):
        result = PassResult()
        for node in graph.nodes:
            if node.name == "shift" and isinstance(node.inputs[1], gs.Constant):
                bias = node.inputs[1]
                node.inputs[1] = gs.Constant(f"{bias.name}_wrong", np.asarray(bias.values + np.float32(1e-3)))
                result.rewrote(node)
        return result


def chain_model(sampler: bool = False) -> onnx.ModelProto:
    """x -> Mul 'scale' -> Add 'shift' -> Relu 'act' [-> ATen grid_sampler] -> Mul 'double' -> y."""
    nodes = [helper.make_node("Mul", ["x", "w"], ["scaled"], name="scale"),
             helper.make_node("Add", ["scaled", "b"], ["shifted"], name="shift"),
             helper.make_node("Relu", ["shifted"], ["act"], name="act")]
    inputs = [("x", np.float32, [1, 2, 4, 5])]
    initializers = {"w": np.float32([[[[1.5]], [[-0.5]]]]), "b": np.float32(0.25), "two": np.float32(2)}
    last = "act"
    if sampler:
        nodes.append(helper.make_node("ATen", ["act", "grid", "mode", "mode", "align"], ["sampled"], name="sample",
                                      domain=ATEN, operator="grid_sampler", overload_name=""))
        inputs.append(("grid", np.float32, [1, 3, 3, 2]))
        initializers.update(mode=np.array(0, np.int64), align=np.array(False))
        last = "sampled"
    nodes.append(helper.make_node("Mul", [last, "two"], ["y"], name="double"))
    return make_model(nodes, inputs, [("y", np.float32, None)], initializers, extra_opsets={ATEN: 1} if sampler else None)


def write_recipe(tmp_path, model, steps, **validate) -> str:
    model_path = tmp_path / "model.onnx"
    onnx.save(model, model_path)
    recipe = {"name": "validation-test", "model": "model.onnx", "checker": False,
              "steps": [{"pass": s} for s in steps], "validate": {"inputs": {"grid": {"range": [-1.2, 1.2]}}
                                                                   if len(model.graph.input) > 1 else None, **validate}}
    if recipe["validate"]["inputs"] is None:
        del recipe["validate"]["inputs"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_equal_rewrite_passes_and_writes_reports(tmp_path):
    recipe = write_recipe(tmp_path, chain_model(), ["cleanup", "toposort"], iterations=2)
    result = run_recipe(recipe, output=tmp_path / "out.onnx")
    assert result.ok and result.validation.passed
    assert [o.name for o in result.validation.outputs] == ["y"]
    assert result.validation.outputs[0].max_abs == 0 and result.validation.outputs[0].cosine == pytest.approx(1)
    assert {p.name for p in result.validation.reports} == {
        f"out.validation.{ext}" for ext in ("md", "html", "json", "polygraphy.json", "inputs.json")}
    assert result.report()["validation"]["passed"] is True


def test_dry_run_validates_but_writes_nothing(tmp_path):
    recipe = write_recipe(tmp_path, chain_model(), [WRONG_STEP])
    result = run_recipe(recipe, output=tmp_path / "out.onnx", dry_run=True)
    assert not result.ok and result.validation.reports == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "recipe.yaml"]


def test_wrong_constant_fails_localises_and_bisects(tmp_path):
    recipe = write_recipe(tmp_path, chain_model(sampler=True), ["cleanup", "toposort", WRONG_STEP, "cleanup"],
                          each_step=True)
    result = run_recipe(recipe, output=tmp_path / "out.onnx")
    validation = result.validation
    assert not result.ok and not validation.passed
    # The original graph's ATen node forces the reference runner on both sides.
    assert validation.runners == {"original": "reference", "rewritten": "reference"}
    assert validation.divergence["tensor"] == "shifted" and validation.divergence["checked"] == 2
    assert validation.divergence["rewritten_node"] == "shift (Add)"
    assert validation.bisection.step_index == 3 and validation.bisection.step_name == WRONG_STEP
    assert "step 3 (test-validation-wrong-constant)" in validation.summary
    assert all(row["passed"] == (row["step"] < 3) for row in validation.bisection.checked)


def test_run_validate_each_step_exits_1_naming_the_step(tmp_path, capsys):
    recipe = write_recipe(tmp_path, chain_model(), ["toposort", WRONG_STEP])
    assert main(["run", recipe, "-o", str(tmp_path / "out.onnx"), "--validate-each-step"]) == 1
    out = capsys.readouterr().out
    assert "validation FAILED" in out and "after step 2 (test-validation-wrong-constant)" in out


def test_bisect_command(tmp_path, capsys):
    bad = write_recipe(tmp_path, chain_model(), ["cleanup", WRONG_STEP, "toposort"])
    assert main(["bisect", bad]) == 1
    assert "outputs leave tolerance after step 2 (test-validation-wrong-constant)" in capsys.readouterr().out
    assert main(["bisect", bad, "--set", "validate.atol=0.01"]) == 0
    assert "every step of 3 stays within tolerance" in capsys.readouterr().out


def test_per_output_tolerance_and_error_statistics():
    original, rewritten = chain_model(), chain_model()
    for init in rewritten.graph.initializer:
        if init.name == "b":
            init.CopyFrom(onnx.numpy_helper.from_array(np.float32(0.25 + 1e-3), "b"))
    feeds = make_feeds(original, seed=3)
    assert not validate_models(original, rewritten, feeds, Tolerance(atol=1e-5, rtol=0)).passed
    assert validate_models(original, rewritten, feeds, Tolerance(atol={"y": 3e-3, "": 0.0}, rtol=0)).passed
    with pytest.raises(SurgeonError, match="atol names 'yy', which is not an output.*did you mean 'y'"):
        validate_models(original, rewritten, feeds, Tolerance(atol={"yy": 1e-3}))
    loose_mean = Tolerance(atol=2.1e-3, rtol=0, error_stat="mean")
    result = validate_models(original, rewritten, feeds, loose_mean)
    # Relu clips some elements, so the mean error is below the 2e-3 that unclipped ones carry.
    assert result.passed and result.outputs[0].mean_abs < result.outputs[0].max_abs <= 2.1e-3


def test_expected_outputs_are_compared_with_the_rewritten_model(tmp_path):
    model = chain_model()
    feeds = make_feeds(model, seed=1)
    x = feeds[0]["x"]
    reference = np.maximum(x * np.float32([[[[1.5]], [[-0.5]]]]) + np.float32(0.25), 0) * 2
    np.savez(tmp_path / "good.npz", y=reference)
    np.savez(tmp_path / "bad.npz", y=reference + 1)
    assert validate_models(model, model, feeds, Tolerance(), expected=str(tmp_path / "good.npz")).passed
    failed = validate_models(model, model, feeds, Tolerance(), expected=str(tmp_path / "bad.npz"))
    assert not failed.passed and failed.outputs[0].passed and not failed.expected[0].passed


def test_runner_choice():
    assert isinstance(make_runner(chain_model()), OnnxrtRunner)
    assert isinstance(make_runner(chain_model(sampler=True)), ReferenceRunner)
    with pytest.raises(SurgeonError, match="ONNX Runtime cannot load"):
        make_runner(chain_model(sampler=True), "onnxruntime")


def test_reference_runner_matches_onnxruntime_on_standard_graphs():
    model = chain_model()
    feed = make_feeds(model, seed=4)[0]
    with ReferenceRunner(model) as runner:
        np.testing.assert_array_equal(runner.infer(feed)["y"], run_ort(model, feed)[0])


def test_a_node_without_reference_is_named():
    nodes = [helper.make_node("Mystery", ["x"], ["y"], name="odd_node", domain="acme")]
    model = make_model(nodes, [("x", np.float32, [2])], [("y", np.float32, [2])])
    with pytest.raises(SurgeonError, match=r"odd_node.*acme::Mystery.*no CPU reference"):
        with ReferenceRunner(model):
            pass


# ---------------------------------------------------------------- compare command

@pytest.fixture
def model_pair(tmp_path):
    good, bad = chain_model(), chain_model()
    for init in bad.graph.initializer:
        if init.name == "w":
            init.CopyFrom(onnx.numpy_helper.from_array(np.float32([[[[1.5]], [[-0.6]]]]), "w"))
    paths = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(good, paths[0])
    onnx.save(bad, paths[1])
    return [str(p) for p in paths]


def test_compare_exit_codes(model_pair, tmp_path, capsys):
    a, b = model_pair
    assert main(["compare", a, a, "--iterations", "2"]) == 0
    assert "validation PASSED" in capsys.readouterr().out
    assert main(["compare", a, b, "--report", str(tmp_path / "rep")]) == 1
    out = capsys.readouterr().out
    assert "validation FAILED" in out and "first diverging tensor: scaled" in out
    assert (tmp_path / "rep.md").exists()
    assert main(["compare", a, str(tmp_path / "missing.onnx")]) == 2
    assert main(["compare", a, a, "--input-shape", "x:1xtwo"]) == 2
    assert main(["compare", a, a, "--input-range", "nope:0,1"]) == 2
    assert "not an input of the model" in capsys.readouterr().err


def test_compare_recorded_inputs_npz_and_polygraphy_json(model_pair, tmp_path):
    from polygraphy.json import save_json

    a, _ = model_pair
    x = np.linspace(-1, 1, 40, dtype=np.float32).reshape(1, 2, 4, 5)
    np.savez(tmp_path / "in.npz", x=x)
    save_json([{"x": x}, {"x": -x}], str(tmp_path / "in.json"))
    assert main(["compare", a, a, "--data", str(tmp_path / "in.npz"), "-q"]) == 0
    assert main(["compare", a, a, "--data", str(tmp_path / "in.json"), "--json"]) == 0
    np.savez(tmp_path / "wrong.npz", z=x)
    assert main(["compare", a, a, "--data", str(tmp_path / "wrong.npz")]) == 2
    # Expected outputs belong to recorded inputs; against random ones they would be meaningless.
    assert main(["compare", a, a, "--expected", str(tmp_path / "in.npz")]) == 2


def test_renamed_inputs_are_fed_by_position_and_said_so():
    original, renamed = chain_model(), chain_model()
    renamed.graph.input[0].name = "image"
    renamed.graph.node[0].input[0] = "image"
    result = validate_models(original, renamed, make_feeds(original), Tolerance())
    assert result.passed and result.notes == [
        "the rewritten model's inputs differ from the original's; fed from inputs of other names: x -> image"]
    assert "note: the rewritten model's inputs differ" in result.summary
    renamed.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    assert input_notes(original, renamed, result.feeds[0])[1] == (
        "input image is float64 in the rewritten model, float32 in the original: its data is cast")


def _two_inputs(order, w_dtype=np.float32) -> onnx.ModelProto:
    """y = x - float(w), its inputs listed in `order`."""
    nodes = [helper.make_node("Cast", ["w"], ["wf"], to=onnx.TensorProto.FLOAT, name="cast"),
             helper.make_node("Sub", ["x", "wf"], ["y"], name="sub")]
    inputs = {"x": ("x", np.float32, [2, 3]), "w": ("w", w_dtype, [2, 3])}
    return make_model(nodes, [inputs[name] for name in order], [("y", np.float32, None)])


def test_input_notes_pair_inputs_as_polygraphy_feeds_them():
    """By name whatever the order (no note); an input of the original the rewritten model lacks is said."""
    original = _two_inputs(["x", "w"])
    feed = make_feeds(original)[0]
    assert input_notes(original, _two_inputs(["w", "x"]), feed) == []
    assert input_notes(original, _two_inputs(["w", "x"], np.int64), feed) == [
        "input w is int64 in the rewritten model, float32 in the original: its data is cast"]
    result = validate_models(original, _x_plus_zero(), [feed], Tolerance(), localise=False)
    assert result.notes == ["input(s) w of the original are not inputs of the rewritten model"]


def test_an_input_drawn_in_another_dtype_is_cast_for_both_models_and_said_so():
    """validate.inputs.NAME.dtype draws the data in that dtype; Polygraphy casts it for every model. The
    note said the original declares the drawn dtype (it declares float32, as the rewritten model does)."""
    original = _two_inputs(["x", "w"])
    feeds = make_feeds(original, inputs={"w": {"dtype": "bool"}})
    assert feeds[0]["w"].dtype == bool
    result = validate_models(original, _two_inputs(["x", "w"]), feeds, Tolerance(), localise=False)
    drawn = "input w: drawn as bool (validate.inputs), cast to float32"
    assert result.passed and result.notes == [f"{drawn} for both models"]
    assert input_notes(original, _two_inputs(["x", "w"], bool), feeds[0]) == [
        f"{drawn} for the original, fed as drawn to the rewritten model"]
    assert input_notes(original, _two_inputs(["x", "w"], np.int64), feeds[0]) == [
        f"{drawn} for the original, cast to int64 for the rewritten model"]
    assert input_notes(original, _x_plus_zero(), feeds[0]) == [
        f"{drawn} for the original", "input(s) w of the original are not inputs of the rewritten model"]


def _x_plus_zero() -> onnx.ModelProto:
    """y = x + 0, taking x [2, 3] only."""
    return make_model([helper.make_node("Add", ["x", "zero"], ["y"], name="add")], [("x", np.float32, [2, 3])],
                      [("y", np.float32, None)], {"zero": np.float32(0)})


def test_dynamic_input_needs_a_shape(tmp_path, capsys):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    path = tmp_path / "dyn.onnx"
    onnx.save(make_model(nodes, [("x", np.float32, ["batch", 3])], [("y", np.float32, None)]), path)
    assert main(["compare", str(path), str(path)]) == 2
    assert "--input-shape x:" in capsys.readouterr().err
    assert main(["compare", str(path), str(path), "--input-shape", "x:2x3", "--input-range", "x:-1,1"]) == 0


def _with_broken_add(live: bool) -> onnx.ModelProto:
    """The chain plus an Add whose inputs are empty names (as a faulty export writes them)."""
    model = chain_model(sampler=True)
    model.graph.node.append(helper.make_node("Add", ["", ""], ["broken"], name="broken_add"))
    if live:
        model.graph.output.append(helper.make_empty_tensor_value_info("broken"))
    return model


def test_reference_runner_skips_dead_nodes_and_names_unrunnable_live_ones():
    feed = make_feeds(chain_model(sampler=True), seed=5)[0]
    with ReferenceRunner(_with_broken_add(live=False)) as runner:
        assert set(runner.infer(feed)) == {"y"}
    with pytest.raises(SurgeonError, match=r"cannot run the 4 node\(s\) from 'scale' to "
                                          r"'broken_add'.*Error Node \(broken_add\)"):
        with ReferenceRunner(_with_broken_add(live=True)) as runner:
            runner.infer(feed)


def test_recipe_against_another_model_with_recorded_inputs_and_expected_outputs(tmp_path):
    """`against`, `data` and `expected` are read relative to the recipe; expected failures fail the run."""
    model = chain_model()
    onnx.save(model, tmp_path / "reference.onnx")
    x = np.linspace(-1, 1, 40, dtype=np.float32).reshape(1, 2, 4, 5)
    np.savez(tmp_path / "in.npz", x=x)
    np.savez(tmp_path / "torch.npz", y=run_ort(model, {"x": x})[0] + np.float32(0.5))
    recipe = write_recipe(tmp_path, model, ["cleanup"], against="reference.onnx", data="in.npz", expected="torch.npz")
    result = run_recipe(recipe, output=tmp_path / "out.onnx")
    assert result.validation.outputs[0].passed and not result.validation.expected[0].passed and not result.ok
    assert result.validation.expected[0].max_abs == pytest.approx(0.5)
    assert "y differs from expected" in result.validation.summary
    assert result.validation.data.endswith("in.npz")


def test_error_arrays_of_scalars_bools_and_zeros():
    from surgeon.validation.compare import error_arrays

    abs_err, rel_err = error_arrays(np.array(0.0, np.float32), np.array(1e-3, np.float32))
    assert abs_err.shape == () and abs_err == pytest.approx(1e-3) and rel_err > 1e12
    abs_err, _ = error_arrays(np.array([True, False]), np.array([True, True]))
    np.testing.assert_array_equal(abs_err, [0.0, 1.0])
    abs_err, rel_err = error_arrays(np.array(np.nan, np.float32), np.array(np.nan, np.float32))
    assert abs_err.shape == () and abs_err == 0 and rel_err == 0
    abs_err, _ = error_arrays(np.array(-1, np.int32), np.array(2**31 - 1, np.int32))
    assert abs_err.shape == () and abs_err == 2.0**31


def test_a_changed_output_shape_fails_without_a_localisation():
    original, reshaped = chain_model(), chain_model()
    reshaped.graph.node[-1].output[0] = "doubled"
    reshaped.graph.node.append(helper.make_node("Reshape", ["doubled", "flat"], ["y"], name="flatten"))
    reshaped.graph.initializer.append(onnx.numpy_helper.from_array(np.array([2, 20], np.int64), "flat"))
    result = validate_models(original, reshaped, make_feeds(original), Tolerance())
    assert not result.passed and result.outputs[0].note == "shape [1, 2, 4, 5] vs [2, 20]"
    # A changed shape is no error beyond tolerance: no tensor to look for, no localisation sentence.
    assert result.divergence is None and "localisation" not in result.summary


def test_standard_op_with_non_standard_attributes_is_run_by_its_reference():
    """libspconv writes Reshape(dims=) without a shape input: ORT refuses it, a registered reference runs it."""
    from surgeon.reference import temporary_reference

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r"], ["y"], name="spconv_reshape", dims=[3, 2])]
    model = make_model(nodes, [("x", np.float32, [2, 3])], [("y", np.float32, None)])
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    assert isinstance(make_runner(model), ReferenceRunner)
    with pytest.raises(SurgeonError, match=r"'spconv_reshape' \(Reshape\) is not a standard Reshape at opset 11 "
                                           r"\(attributes: dims\)"):
        with ReferenceRunner(model):
            pass
    with temporary_reference(lambda inputs, attrs: [inputs[0].reshape(attrs["dims"])], "Reshape"):
        with ReferenceRunner(model) as runner:
            np.testing.assert_array_equal(runner.infer({"x": x})["y"], np.maximum(x, 0).reshape(3, 2))


def test_against_none_compares_with_the_expected_outputs_only(tmp_path):
    """For exports no runtime can run (the original is never run), only the expected outputs judge."""
    import surgeon
    from surgeon.errors import SurgeonError

    unrunnable = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[1, 1])  # 2-D pool on 3-D
    model = make_model([unrunnable], [("x", np.float32, [1, 2, 3])], [("y", np.float32, [1, 2, 3])])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    np.savez(tmp_path / "in.npz", x=x)
    np.savez(tmp_path / "good.npz", y=x)
    np.savez(tmp_path / "bad.npz", y=x + 1)

    def run(expected):
        recipe = {"name": "t", "checker": False, "steps": [{"pass": "remove-node", "with": {"names": ["pool"]}}],
                  "validate": {"against": "none", "data": str(tmp_path / "in.npz"), "expected": expected}}
        return surgeon.run_recipe(recipe, model=path, output=tmp_path / "out.onnx")

    passed = run(str(tmp_path / "good.npz"))
    assert passed.ok and passed.validation.outputs == [] and passed.validation.expected[0].passed
    assert "Against the expected outputs" in (tmp_path / "out.validation.md").read_text()
    assert not run(str(tmp_path / "bad.npz")).ok
    with pytest.raises(SurgeonError, match="needs 'expected'"):
        run(None)


def test_compare_takes_per_output_tolerances_and_statistics(model_pair, capsys):
    """Polygraphy's spelling: --atol 1e-5 --atol y:10 sets y's tolerance; other outputs keep the first."""
    a, b = model_pair
    assert main(["compare", a, b, "--atol", "y:10", "--rtol", "y:10"]) == 0  # the broken weight is within 10
    assert "atol={*: 1e-05, y: 10}" in capsys.readouterr().out
    assert main(["compare", a, b, "--atol", "y:10", "--rtol", "y:10", "--error-stat", "y:max"]) == 0
    assert main(["compare", a, b, "--atol", "1e-6"]) == 1
    assert main(["compare", a, b, "--error-stat", "y:mx"]) == 2
    assert "did you mean 'max'" in capsys.readouterr().err
    assert main(["compare", a, b, "--atol", "y:loose"]) == 2
    assert "'loose' is not a float" in capsys.readouterr().err


# ---------------------------------------------------------------- judging outputs: integers, NaN, inf, dtypes

INPLACE_STEP = "test-validation-scale-weights-in-place"
READ_STEP = "test-validation-read-weights"


@register_pass(INPLACE_STEP)
class ScaleWeightsInPlace(Pass):
    """Scales every float32 weight array by 1.1 in place (`values *= ...`): the arrays graph copies share."""

    def run(self, graph, ctx):
        result = PassResult()
        for node in graph.nodes:
            for tensor in node.inputs:
                if isinstance(tensor, gs.Constant) and tensor.values.dtype == np.float32 and tensor.values.ndim:
                    tensor.values *= np.float32(1.1)
                    result.rewrote(node)
        return result


@register_pass(READ_STEP)
class ReadWeights(Pass):
    """Changes nothing but loads every weight (so the arrays exist before the in-place step)."""

    def run(self, graph, ctx):
        result = PassResult()
        result.notes.append(f"{sum(t.values.size for t in graph.tensors().values() if isinstance(t, gs.Constant))}")
        return result


def test_bisection_names_the_step_that_edits_weights_in_place(tmp_path, capsys):
    """Graph.copy() shares weight arrays: the graph kept after step 1 must not see step 2's in-place edit."""
    recipe = write_recipe(tmp_path, chain_model(), [READ_STEP, INPLACE_STEP, "cleanup"], atol=1e-4, rtol=1e-4)
    assert main(["bisect", recipe]) == 1
    out = capsys.readouterr().out
    assert f"outputs leave tolerance after step 2 ({INPLACE_STEP})" in out
    assert main(["run", recipe, "-o", str(tmp_path / "out.onnx"), "--validate-each-step"]) == 1
    assert f"after step 2 ({INPLACE_STEP})" in capsys.readouterr().out


def test_snapshots_keep_their_weights_and_share_unchanged_ones():
    from surgeon.validation.bisect import Snapshots

    graph = gs.import_onnx(chain_model())
    weight = next(t for t in graph.tensors().values() if t.name == "w")
    weight.values  # loaded: an array the graph and its copies would share
    snapshots = Snapshots()
    first = snapshots.take(graph)
    second = snapshots.take(graph)
    kept = [next(t for t in g.tensors().values() if t.name == "w").values for g in (first, second)]
    assert kept[0] is kept[1] and kept[0] is not weight.values  # one private copy while unchanged
    weight.values *= 2
    third = snapshots.take(graph)
    np.testing.assert_array_equal(kept[0], np.float32([[[[1.5]], [[-0.5]]]]))
    np.testing.assert_array_equal(next(t for t in third.tensors().values() if t.name == "w").values,
                                  np.float32([[[[3.0]], [[-1.0]]]]))


def const_model(values: np.ndarray, name: str = "y") -> onnx.ModelProto:
    """x (zeros, of the values' dtype) + constant -> `name`: a model whose output is the constant."""
    values = np.asarray(values)
    nodes = [helper.make_node("Add", ["x", "c"], [name], name="add")]
    return make_model(nodes, [("x", values.dtype, list(values.shape))], [(name, values.dtype, list(values.shape))],
                      {"c": values}, opset=17)


def compare_constants(a, b, **tolerance):
    feeds = [{"x": np.zeros_like(np.asarray(a))}]
    return validate_models(const_model(a), const_model(b), feeds, Tolerance(**tolerance))


def test_integer_outputs_are_subtracted_without_overflow():
    # Polygraphy subtracts in int32: -1 - (2**31 - 1) wraps to 2**31 ... and its |diff| "passes".
    wrapped = compare_constants(np.int32([-1, 0]), np.int32([2**31 - 1, 0]))
    assert not wrapped.passed and wrapped.outputs[0].max_abs == 2.0**31
    big = compare_constants(np.int64([2**53, 0]), np.int64([2**53 + 1, 0]), atol=0.5, rtol=0)
    assert not big.passed and big.outputs[0].max_abs == 1.0  # float64 would make both 2**53
    assert big.outputs[0].worst[0]["candidate"] == 2**53 + 1


def test_equal_nan_and_infinities_pass_and_differing_ones_fail():
    nan, inf = np.nan, np.inf
    assert compare_constants(np.float32([1, nan, inf, -inf]), np.float32([1, nan, inf, -inf])).passed
    assert compare_constants(np.float32([1, nan]), np.float32([1, nan]), error_stat="max").passed
    one = compare_constants(np.float32([1, 2, 3]), np.float32([1, nan, 3]))
    assert not one.passed and one.outputs[0].nan_mismatched == 1 and one.outputs[0].max_abs == 0
    assert "1 element(s) NaN in one output only" in one.summary
    assert one.outputs[0].worst[0]["index"] == [1]  # NaN listed first, not hidden behind 0 errors
    for stat in ("elemwise", "max", "mean", "median"):
        assert not compare_constants(np.float32([1, 2, 3]), np.float32([1, nan, 3]), error_stat=stat).passed
    opposite = compare_constants(np.float32([1, inf]), np.float32([1, -inf]))
    assert not opposite.passed and opposite.outputs[0].max_abs == inf and opposite.outputs[0].max_rel == inf
    assert opposite.divergence["tensor"] == "y"  # inf vs -inf: relative error inf, not inf/inf = NaN


def test_element_mismatches_follow_polygraphys_rule():
    from surgeon.validation.compare import error_arrays

    tolerance = Tolerance(atol=1e-3, rtol=1e-3)
    reference = np.float32([np.inf, np.nan, 1, np.inf, 1000])
    candidate = np.float32([-np.inf, np.nan, np.nan, np.inf, 1000.5])
    bad = tolerance.element_mismatches("y", *error_arrays(reference, candidate))
    np.testing.assert_array_equal(bad, [True, False, True, False, False])  # 0.5 abs but 5e-4 rel: within


def test_a_changed_output_dtype_fails_and_both_dtypes_are_reported(tmp_path):
    result = compare_constants(np.float32([1, 2]), np.float64([1, 2]))
    output = result.outputs[0]
    assert not result.passed and (output.dtype, output.candidate_dtype) == ("float32", "float64")
    assert output.note == "dtype float32 vs float64" and output.max_abs == 0
    assert "y differs from original: dtype float32 vs float64; max abs 0" in result.summary
    # Expected outputs from an .npz keep whatever dtype the exporter saved: no dtype verdict there.
    np.savez(tmp_path / "expected.npz", y=np.float64([1, 2]))
    model = const_model(np.float32([1, 2]))
    checked = validate_models(model, model, [{"x": np.zeros(2, np.float32)}], Tolerance(),
                              expected=str(tmp_path / "expected.npz"))
    assert checked.passed and checked.expected[0].candidate_dtype == "float32"


def test_json_output_and_reports_hold_no_nan_literals(tmp_path, capsys):
    """JSON has no NaN or Infinity: non-finite numbers are written as the strings "nan", "inf", "-inf"."""
    import json

    from surgeon.cli_args import json_text

    assert json.loads(json_text({"a": float("nan"), "b": [np.float32(np.inf), -np.inf], "c": np.int64(3)})) == {
        "a": "nan", "b": ["inf", "-inf"], "c": 3}
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(const_model(np.float32([1, np.inf, 3])), a)
    onnx.save(const_model(np.float32([1, -np.inf, np.nan])), b)
    assert main(["compare", str(a), str(b), "--json", "--report", str(tmp_path / "rep")]) == 1

    def strict(text):
        return json.loads(text, parse_constant=lambda literal: pytest.fail(f"non-standard JSON {literal}"))

    printed = strict(capsys.readouterr().out)
    assert printed["outputs"][0]["max_abs"] == "inf" and printed["outputs"][0]["nan_mismatched"] == 1
    assert strict((tmp_path / "rep.json").read_text()) == printed


def test_against_with_each_step_bisects_against_the_original(tmp_path):
    """`against: PATH` judges the finished model; bisection still compares every step with the original."""
    other = chain_model()
    for init in other.graph.initializer:
        if init.name == "b":
            init.CopyFrom(onnx.numpy_helper.from_array(np.float32(0.25 + 1e-3), "b"))
    onnx.save(other, tmp_path / "other.onnx")
    recipe = write_recipe(tmp_path, chain_model(), ["toposort", WRONG_STEP, "cleanup"], against="other.onnx",
                          each_step=True)
    result = run_recipe(recipe, output=tmp_path / "out.onnx")
    validation = result.validation
    assert validation.passed  # the wrong constant is what `other.onnx` holds
    assert validation.bisection.step_index == 2 and validation.bisection.step_name == WRONG_STEP
    assert validation.runners == {"against": "onnxruntime", "rewritten": "onnxruntime"}
    assert "original" not in validation.summary.split("\n")[0]
    equal = write_recipe(tmp_path, chain_model(), ["toposort", "cleanup"], against="other.onnx", each_step=True)
    failed = run_recipe(equal, output=tmp_path / "out.onnx").validation
    assert not failed.passed and not failed.bisection.found
    assert "y differs from the against model" in failed.summary and "in the against model)" in failed.summary


def test_an_output_the_recipe_renames_is_compared_under_its_new_name(tmp_path):
    """`rename: {outputs: {y: pred}}` used to fail as "y missing from rewritten" and never compare pred."""
    write_recipe(tmp_path, chain_model(), [])
    recipe = {"name": "rename-out", "model": "model.onnx",
              "steps": [{"pass": "rename", "with": {"outputs": {"y": "pred"}}}, {"pass": WRONG_STEP}],
              "validate": {"each_step": True}}
    (tmp_path / "rename.yaml").write_text(yaml.safe_dump(recipe))
    validation = run_recipe(str(tmp_path / "rename.yaml"), output=tmp_path / "out.onnx").validation
    output = validation.outputs[0]
    assert (output.name, output.candidate_name, output.within_tolerance) == ("y", "pred", False)
    assert output.max_abs == pytest.approx(2e-3, rel=1e-3)  # the wrong constant, doubled: compared, not "missing"
    assert "note: outputs renamed by the recipe, compared under their new names: y -> pred" in validation.summary
    assert validation.divergence["tensor"] == "shifted"
    assert validation.bisection.step_index == 2  # the rename step itself stays within tolerance


def test_renamed_tensors_follow_every_rename_step_in_order():
    from surgeon.pipeline import StepRecord
    from surgeon.validation.bisect import renamed_tensors

    def step(pass_name, **params):
        return StepRecord(1, pass_name, None, params, 0, 0, {}, [], [], 0.0)

    steps = [step("rename", outputs={"y": "a"}, tensors={"t": "u"}), step("cleanup"),
             step("rename", outputs={"a": "b"}, inputs={"x": "image"})]
    assert renamed_tensors(steps) == {"y": "b", "t": "u", "x": "image"}
    # one step renames at once, as the pass does: a chain and a swap in any key order
    assert renamed_tensors([step("rename", outputs={"a": "b", "b": "q"})]) == {"a": "b", "b": "q"}
    assert renamed_tensors([step("rename", outputs={"a": "b", "b": "a"})]) == {"a": "b", "b": "a"}


def test_outputs_named_differently_are_paired_by_position_only_when_unambiguous():
    from surgeon.validation.compare import output_pairs

    a, b = np.zeros(3, np.float32), np.zeros(2, np.float32)
    assert output_pairs({"y": a, "z": b}, {"p": a, "z": b}) == {"y": "p", "z": "z"}
    assert output_pairs({"y": a, "z": b}, {"z": b, "p": a}) == {"y": None, "z": "z"}  # z moved: not by position
    assert output_pairs({"y": a}, {"p": a.astype(np.float64)}) == {"y": None}  # another dtype
    assert output_pairs({"y": a}, {"p": b}) == {"y": None}  # another shape
    assert output_pairs({"y": a}, {"p": a}, by_position=False) == {"y": None}
    result = validate_models(const_model(np.float32([1, 2])), const_model(np.float32([1, 2]), name="pred"),
                             [{"x": np.zeros(2, np.float32)}], Tolerance())
    assert result.passed and result.outputs[0].candidate_name == "pred"
    assert result.notes == ["the rewritten model's outputs are named differently from the original's; compared by "
                            "position (same count, dtypes and shapes): y -> pred"]


def test_a_failure_that_is_not_numeric_is_not_localised():
    """A dtype changed (values equal): no "first diverging tensor" or runtime-optimisation explanation."""
    result = compare_constants(np.float32([1, 2]), np.float64([1, 2]))
    assert not result.passed and result.outputs[0].within_tolerance is True and result.divergence is None
    assert "localisation" not in result.summary and "hint:" not in result.summary


def test_cosine_is_none_when_no_element_is_finite_in_both():
    from surgeon.validation.compare import cosine_similarity

    nan, inf = np.nan, np.inf
    assert cosine_similarity(np.float32([inf, nan]), np.float32([-inf, 1])) is None
    result = compare_constants(np.float32([inf, inf]), np.float32([-inf, -inf]))
    assert result.outputs[0].cosine is None and "cosine -" in result.summary


def test_a_quantile_statistic_shows_the_quantile_it_used(tmp_path):
    from surgeon.validation.report import markdown

    values = np.float32(np.arange(100))
    result = compare_constants(values, values + np.float32(np.arange(100) >= 90), error_stat="quantile",
                               quantile=0.5, atol=1e-3, rtol=0)
    assert result.passed and result.outputs[0].quantile_abs == 0  # p50 of the errors, not p99 (1)
    assert "| output | result | max abs | mean abs | p50 abs | max rel | mean rel | p50 rel |" in markdown(result)
    assert "(quantile 0.5)" in result.summary


def test_compare_refuses_plugin_lib_without_trt(model_pair, capsys):
    a, _ = model_pair
    assert main(["compare", a, a, "--plugin-lib", "libmine.so"]) == 2
    assert "--plugin-lib loads TensorRT plugin libraries, which only --trt uses" in capsys.readouterr().err


def test_a_compare_failed_near_its_tolerance_says_which_tolerances_judged_it_and_how_to_set_them(
        tmp_path, capsys):
    values = np.float32([1, 2, 3])
    onnx.save(const_model(values), tmp_path / "a.onnx")
    onnx.save(const_model(values + np.float32(5e-5)), tmp_path / "b.onnx")  # README's main job: 1.5e-5 at 1e-5
    assert main(["compare", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx")]) == 1
    assert ("  hint: judged at atol=1e-05 rtol=1e-05 (elemwise); compare does not read a recipe's validate "
            "tolerances: give them with --atol / --rtol") in capsys.readouterr().out


def test_no_tolerance_hint_for_a_different_result(model_pair, capsys):
    """A weight changed from -0.5 to -0.6 is not a tolerance question: loosening it would hide the change."""
    a, b = model_pair
    assert main(["compare", a, b]) == 1
    assert "hint:" not in capsys.readouterr().out


def test_a_rewrite_that_repairs_the_original_is_said_so(tmp_path):
    """torch's atan2 export is wrong on the axes: the rewrite matches PyTorch's outputs and differs from the
    original, which fails the comparison with the original; the summary says what happened and what to set."""
    model = chain_model()
    feeds = make_feeds(model, seed=1)
    x = feeds[0]["x"]
    right = np.maximum(x * np.float32([[[[1.5]], [[-0.5]]]]) + np.float32(0.25), 0) * 2
    np.savez(tmp_path / "torch.npz", y=right)
    wrong = chain_model()
    for init in wrong.graph.initializer:
        if init.name == "w":
            init.CopyFrom(onnx.numpy_helper.from_array(np.float32([[[[1.5]], [[-0.6]]]]), "w"))
    result = validate_models(wrong, model, feeds, Tolerance(), expected=str(tmp_path / "torch.npz"))
    assert not result.passed and result.repairs_the_original
    assert ("the rewritten model matches the expected outputs where it differs from the original: the rewrite "
            "repairs it") in result.summary and "set validate.against: none" in result.summary
    passing = validate_models(model, model, feeds, Tolerance(), expected=str(tmp_path / "torch.npz"))
    assert passing.passed and not passing.repairs_the_original


def test_validating_a_run_does_not_import_torch(tmp_path):
    """Polygraphy's torch probe imported torch (2 s) on every validated run, inside a bare `except:` that
    swallowed Ctrl-C and then crashed re-importing a half-initialised torch (polygraphy_log)."""
    import subprocess
    import sys

    script = f"""
import sys
import numpy as np, onnx
from onnx import helper
import surgeon
from surgeon.testing import make_model
onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [4])], [("y", np.float32, [4])]),
          {str(tmp_path / 'm.onnx')!r})
result = surgeon.run_recipe({{"name": "t", "steps": [{{"pass": "cleanup"}}], "validate": {{"atol": 0}}}},
                            model={str(tmp_path / 'm.onnx')!r}, output={str(tmp_path / 'o.onnx')!r})
print(result.ok, "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.split() == ["True", "False"]


def test_local_functions_are_run_through_their_bodies_aten_nodes_inside_included():
    """The reference runner treated a call of a model-local function as an unknown custom op ('has no CPU
    reference'); it now runs the inlined body, whose ATen node runs on its reference."""
    from onnx import TensorProto

    constants = [helper.make_node("Constant", [], [name], value=helper.make_tensor(name, kind, [], [value]))
                 for name, kind, value in (("m", TensorProto.INT64, 0), ("p", TensorProto.INT64, 0),
                                           ("ac", TensorProto.BOOL, False))]
    body = [*constants,
            helper.make_node("ATen", ["a", "g", "m", "p", "ac"], ["b"], domain=ATEN, operator="grid_sampler")]
    function = helper.make_function("custom", "Sample", ["a", "g"], ["b"], body,
                                    [helper.make_opsetid("", 11), helper.make_opsetid(ATEN, 1)])
    graph = helper.make_graph([helper.make_node("Sample", ["x", "g"], ["y"], name="sample", domain="custom")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
                               helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 3, 3, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])])
    model = helper.make_model(graph, functions=[function], ir_version=8,
                              opset_imports=[helper.make_opsetid("", 11), helper.make_opsetid("custom", 1),
                                             helper.make_opsetid(ATEN, 1)])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    grid = rng.uniform(-1, 1, (1, 3, 3, 2)).astype(np.float32)
    runner = make_runner(model, "auto")
    with runner:
        got = runner.infer({"x": x, "g": grid})["y"]
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), align_corners=False)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)


def test_runner_onnxruntime_builds_each_models_session_once(tmp_path, monkeypatch):
    """The check that ONNX Runtime loads a model (before anything is written) builds its session: the
    validation runs that one instead of building it again (each used to be built twice)."""
    import surgeon.validation.runners as runners

    built, build = [], runners.ort_session
    monkeypatch.setattr(runners, "ort_session", lambda model, **kw: built.append(model) or build(model, **kw))
    recipe = write_recipe(tmp_path, chain_model(), ["cleanup"], runner="onnxruntime")
    result = run_recipe(recipe, output=tmp_path / "out.onnx")
    assert result.validation.passed and set(result.validation.runners.values()) == {"onnxruntime"}
    assert len(built) == 2  # the original's and the rewritten model's


def test_compare_with_runner_onnxruntime_builds_each_models_session_once(model_pair, monkeypatch, capsys):
    import surgeon.validation.runners as runners

    built, build = [], runners.ort_session
    monkeypatch.setattr(runners, "ort_session", lambda model, **kw: built.append(model) or build(model, **kw))
    a, _ = model_pair
    assert main(["compare", a, a, "--runner", "onnxruntime"]) == 0  # passing: no localisation sessions
    assert len(built) == 2 and "validation PASSED" in capsys.readouterr().out  # A's and B's


def test_a_float16_output_judged_below_its_precision_is_said_so():
    values = np.float16([1.0, 2.0, 3.0])
    rounded = np.nextafter(values, np.float16(np.inf))  # one float16 step: 2**-10 relative at most
    failed = compare_constants(values, rounded)
    assert not failed.passed
    assert "y: float16, whose precision is about 0.001 relative; judged below that" in failed.summary
    assert "float16" not in compare_constants(np.float32([1.0]), np.float32([1.1])).summary.split("\n", 1)[1]
    assert compare_constants(values, rounded, rtol=1e-3).passed


def test_no_repair_claim_when_the_original_meets_the_expected_outputs_too():
    """B drifted from A while both stay near PyTorch's outputs, or B only changed a dtype: a plain failure,
    not 'the rewrite repairs it' (following that advice would let a regression pass)."""
    values = np.float32([1.0, 2.0, 3.0])
    feeds = [{"x": np.zeros(3, np.float32)}]
    original, drifted = const_model(values), const_model(values + np.float32(1.6e-5))
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        np.savez(f"{folder}/expected.npz", y=values + np.float32(8e-6))
        result = validate_models(original, drifted, feeds, Tolerance(rtol=0), expected=f"{folder}/expected.npz")
        assert not result.passed and not result.repairs_the_original and "repairs" not in result.summary
        assert "hint:" not in result.summary  # no tolerance_hint outside compare; the line is compare's
        widened = validate_models(original, const_model(values.astype(np.float64)), feeds, Tolerance(),
                                  expected=f"{folder}/expected.npz")
        assert not widened.passed and not widened.repairs_the_original


def test_a_contrib_op_no_runtime_implements_is_a_clear_error(tmp_path, capsys):
    """com.microsoft::GroupNorm has no CPU kernel in ONNX Runtime and onnx.reference does not know it:
    the fallback's NotImplementedError escaped as an internal error."""
    node = helper.make_node("GroupNorm", ["x", "g", "b"], ["y"], name="gn", domain="com.microsoft", groups=1,
                            activation=0, epsilon=1e-5, channels_last=1)
    model = make_model([node], [("x", np.float32, [1, 2, 2, 4]), ("g", np.float32, [4]), ("b", np.float32, [4])],
                       [("y", np.float32, [1, 2, 2, 4])], opset=17)
    onnx.save(model, tmp_path / "gn.onnx")
    assert main(["compare", str(tmp_path / "gn.onnx"), str(tmp_path / "gn.onnx")]) == 2
    err = capsys.readouterr().err
    assert "cannot run the 1 node(s) from 'gn' to 'gn': ONNX Runtime:" in err and "onnx.reference:" in err


@pytest.mark.parametrize("kind", ["reference", "onnxruntime"])
def test_polygraphys_refusal_of_a_feed_is_one_line_naming_the_model(kind, capsys):
    from surgeon.validation.compare import run_runner

    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu0")], [("x", np.float32, [1, 4])],
                       [("y", np.float32, [1, 4])])
    with pytest.raises(SurgeonError) as caught:
        run_runner(make_runner(model, kind), [{"x": np.zeros((2, 3), np.float32)}], "m.onnx")
    assert str(caught.value) == "m.onnx: Polygraphy cannot run it: Input tensor: x | Received incompatible shape: (2, 3)."
    assert "[!]" not in capsys.readouterr().err  # said once, in the error


# ---------------------------------------------------------------- many input sets, one at a time

def _differing_pair(shape=(3, 40)):
    """Two models of x whose outputs differ: y by a scale, z NaN in B only where x < 0.5, w an integer
    cast off by one here and there, b a comparison."""
    def model(scale, shift, threshold):
        nodes = [helper.make_node("Mul", ["x", "k"], ["m"], name="mul"),
                 helper.make_node("Add", ["m", "one"], ["y"], name="add"),
                 helper.make_node("Sub", ["x", "h"], ["d"], name="sub"),
                 helper.make_node("Sqrt", ["d"], ["z"], name="sqrt"),
                 helper.make_node("Mul", ["x", "hundred"], ["big"], name="mulbig"),
                 helper.make_node("Cast", ["big"], ["w"], name="cast", to=onnx.TensorProto.INT32),
                 helper.make_node("Greater", ["x", "h"], ["b"], name="gt")]
        constants = {"k": np.float32(scale), "one": np.float32(1), "h": np.float32(threshold),
                     "hundred": np.float32(100 + shift)}
        return make_model(nodes, [("x", np.float32, list(shape))],
                          [("y", np.float32, list(shape)), ("z", np.float32, list(shape)), ("w", np.int32, list(shape)),
                           ("b", np.bool_, list(shape))], constants)

    return model(3.0, 0.0, -1.0), model(3.0001, 0.5, 0.5)


@pytest.mark.parametrize("budget", [0, 7500, 17540, None], ids=["on-disk", "sets-part-held", "columns-part-held",
                                                                  "held"])
def test_many_input_sets_give_the_statistics_and_files_of_all_sets_at_once(tmp_path, monkeypatch, budget):
    """Sets are run, judged and saved one at a time (their outputs and errors kept in memory within
    `spill.MEMORY_BUDGET`, past it on disk): the verdicts, the statistics over all sets, the worst
    elements and the saved files must be what holding every set gave, byte for byte, wherever they were
    kept: Polygraphy's encoding of the results and of the inputs, the statistics of the errors of all
    sets as one array. (A set of each model is 1,560 bytes, an output's error column up to 3,840 for the
    4 sets, room for which it takes at the first: 7,500 holds the original's sets and none of the
    rewritten's or of the columns; 17,540 holds every set and some of the columns.)"""
    from polygraphy.common import TensorMetadata

    from surgeon.validation import spill

    if budget is not None:
        monkeypatch.setattr(spill, "MEMORY_BUDGET", spill.held() + budget)
    from polygraphy.comparator import DataLoader, IterationResult, RunResults
    from polygraphy.json import to_json

    from surgeon.validation.compare import HISTOGRAM_SAMPLES, cosine_similarity, error_arrays
    from surgeon.validation.data import model_inputs
    from surgeon.validation.report import write_reports

    a, b = _differing_pair()
    sets, tolerance = 4, Tolerance(error_stat="quantile", quantile=0.9)
    result = validate_models(a, b, make_feeds(a, iterations=sets, seed=3), tolerance)
    write_reports(result, tmp_path / "r")
    meta = TensorMetadata()  # the sets Polygraphy's DataLoader draws, as surgeon's random inputs are
    for name, dtype, dims in model_inputs(a):
        meta.add(name, dtype, dims)
    feeds = [dict(DataLoader(seed=3, iterations=sets, input_metadata=meta)[i]) for i in range(sets)]
    assert (tmp_path / "r.inputs.json").read_text() == to_json(feeds)
    outputs = {name: [dict(zip([o.name for o in m.graph.output], run_ort(m, feed))) for feed in feeds]
               for name, m in (("original", a), ("rewritten", b))}
    held = RunResults()
    for run in result.runs:
        held.append((run.name, [IterationResult(outputs[run.name][i], run.runtimes[i], run.name) for i in range(sets)]))
    assert (tmp_path / "r.polygraphy.json").read_text() == to_json(held)
    assert [o.name for o in result.outputs] == ["y", "z", "w", "b"]
    for report in result.outputs:
        ref = np.concatenate([o[report.name].ravel() for o in outputs["original"]])
        cand = np.concatenate([o[report.name].ravel() for o in outputs["rewritten"]])
        abs_err, rel_err = error_arrays(ref, cand)
        defined = ~np.isnan(abs_err)
        abs_err, rel_err = abs_err[defined], rel_err[defined]
        assert report.nan_mismatched == int((~defined).sum())
        assert (report.max_abs, report.mean_abs, report.quantile_abs) == (
            np.max(abs_err), np.mean(abs_err), np.quantile(abs_err, 0.9))
        assert (report.max_rel, report.mean_rel, report.quantile_rel) == (
            np.max(rel_err), np.mean(rel_err), np.quantile(rel_err, 0.9))
        assert report.cosine == cosine_similarity(ref, cand)
        assert np.array_equal(report.abs_errors, abs_err[::max(1, abs_err.size // HISTOGRAM_SAMPLES)])
        per_set = [error_arrays(r[report.name], c[report.name]) for r, c in zip(outputs["original"],
                                                                               outputs["rewritten"])]
        assert report.passed == all(tolerance.passes(report.name, [pair]) for pair in per_set)
        # The largest errors, NaN first (which of equal ones is listed is argpartition's choice).
        errors = np.concatenate([e.ravel() for e, _ in per_set])
        largest = np.sort(np.where(np.isnan(errors), np.inf, errors))[::-1][:len(report.worst)]
        assert np.array_equal([np.inf if np.isnan(row["abs_error"]) else row["abs_error"] for row in report.worst],
                              largest)
        np.testing.assert_equal([(row["reference"], row["candidate"]) for row in report.worst],
                                [tuple(outputs[run][row["iteration"]][report.name][tuple(row["index"])].item()
                                       for run in ("original", "rewritten")) for row in report.worst])
    assert result.outputs[1].nan_mismatched and result.outputs[2].max_abs == 1


def test_memory_does_not_grow_with_the_number_of_input_sets(tmp_path, monkeypatch):
    """Every input set, both models' outputs and the errors of all sets used to stay in memory until the
    reports were written (here 6 sets peaked at 125 MB, 1 set at 17 MB): BEV-sized inputs ran out of
    memory, not of disk. One set at a time, 6 sets peak as 1 does but for what the memory budget holds
    (lowered here to 4 MiB, two sets of one model's outputs; the rest goes to disk). (The models agree: error
    histograms, whose samples are bounded anyway, would only slow the test.)"""
    import tracemalloc

    from surgeon.validation import spill
    from surgeon.validation.report import write_reports

    budget = 4 << 20
    monkeypatch.setattr(spill, "MEMORY_BUDGET", spill.held() + budget)

    def model():
        nodes = [helper.make_node("Mul", ["x", "k"], ["y"], name="mul"),
                 helper.make_node("Add", ["y", "x"], ["z"], name="add")]
        return make_model(nodes, [("x", np.float32, [256, 1024])],
                          [("y", np.float32, [256, 1024]), ("z", np.float32, [256, 1024])], {"k": np.float32(2)})

    a, b = model(), model()

    def peak(sets: int) -> int:
        feeds = make_feeds(a, iterations=sets, seed=1)
        tracemalloc.start()
        try:
            write_reports(validate_models(a, b, feeds, Tolerance(), localise=False), tmp_path / f"r{sets}")
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(1)  # the first run imports and caches what later ones reuse
    one, many = peak(1), peak(6)
    one_set = 5 * 256 * 1024 * 4  # its input, and two outputs of each model
    assert many < one + one_set + budget, (one, many)


def test_what_many_input_sets_keep_on_disk_is_deleted_when_done(tmp_path, monkeypatch, capsys):
    """Outputs and errors of many sets wait in the temp directory; nothing is left there after compare,
    a run that bisects its steps (once its result is dropped), or a comparison that fails part way."""
    import tempfile

    from surgeon.validation import spill

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(spill, "MEMORY_BUDGET", 0)  # everything kept goes to disk
    a, b = _differing_pair()
    onnx.save(a, tmp_path / "a.onnx")
    onnx.save(b, tmp_path / "b.onnx")
    assert main(["compare", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "--iterations", "3",
                 "--report", str(tmp_path / "r"), "-q"]) == 1
    recipe = write_recipe(tmp_path, chain_model(), ["toposort", WRONG_STEP], iterations=3, each_step=True)
    result = run_recipe(recipe, output=tmp_path / "out.onnx")
    assert result.validation.bisection.step_index == 2 and len(result.validation.runs[0]) == 3
    # The reports are written, but the result still gives the outputs (`runs`): their files go with it.
    assert result.validation.reports and list(temp.glob("*/*.npy"))
    del result
    assert list(temp.iterdir()) == []
    assert main(["bisect", recipe]) == 1
    capsys.readouterr()
    with pytest.raises(SurgeonError) as failed:  # B cannot run on A's inputs: fails after A ran on every set
        validate_models(a, _differing_pair((3, 41))[1], make_feeds(a, iterations=3), Tolerance())
    assert list(temp.iterdir()) == [] and "Polygraphy cannot run it" in str(failed.value)  # its frames still held


def test_a_full_temp_disk_is_one_error_naming_the_folder(model_pair, tmp_path, monkeypatch, capsys):
    """Outputs of many sets are written to the temp directory as the models run: a full disk there is an
    error saying so and where, not an internal error."""
    import errno
    import tempfile

    from surgeon.validation import spill

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spill, "MEMORY_BUDGET", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(np, "save", full)  # how each set's outputs are written
    a, b = model_pair
    assert main(["compare", a, b, "--iterations", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"surgeon: error: {a}: cannot keep validation data in the temporary folder {tmp_path}/")
    assert err.endswith(": No space left on device; set TMPDIR to a folder with more room, or validate on fewer "
                        "input sets") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]


def test_what_is_kept_stays_in_memory_within_the_budget_then_goes_to_disk(tmp_path, monkeypatch):
    """Every output of every set went to its own .npy file: 300 small outputs of 50 sets took 15.5 s,
    5.3 s when all were held (90,000 files written, read and deleted). Within `spill.MEMORY_BUDGET`
    (for all holders alive together) they stay in memory, copied (a runner may reuse its buffers for the
    next set); past it, later sets and whole error columns go to disk and read back the same."""
    import tempfile

    from surgeon.validation import spill

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    buffer = np.zeros(100, np.float32)  # 400 bytes, overwritten by the "runner" for every set
    sets = []
    for index in range(4):
        buffer[:] = index
        sets.append({"a": buffer, "b": np.arange(index, index + 50)})  # 800 bytes a set
    others = spill.held()  # of any holder still alive
    monkeypatch.setattr(spill, "MEMORY_BUDGET", others + 2 * 800 + 100)
    run = spill.RunOutputs("r", on_disk=True)
    for outputs in sets:
        run.append(outputs)
        outputs["a"] = buffer.copy()  # what the set held when appended
    buffer[:] = -1
    folder = next(tmp_path.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["2-0.npy", "2-1.npy", "3-0.npy", "3-1.npy"]
    for index, outputs in enumerate(sets):
        assert all(np.array_equal(run.array(index, name), outputs[name]) for name in outputs)

    column = spill.Column(folder, "c")  # 100 bytes of the budget are left: 10 float64 values
    column.append(np.arange(10))
    assert not (folder / "c.f8").exists()
    column.append(np.arange(10, 15))  # past the budget: the ten held go to the file first
    column.append(np.arange(15, 20))
    assert isinstance(column.values(), np.memmap) and np.array_equal(column.values(), np.arange(20))
    column.discard()
    run.close()
    assert list(tmp_path.iterdir()) == [] and spill.held() == others


def test_the_memory_held_is_a_running_total_exact_as_holders_come_and_go(tmp_path, monkeypatch):
    """`spill.held()`, asked on every append, summed every RunOutputs and Column alive: 0.1 s of a compare of
    2,000 outputs of 5 sets. It is now kept as they change, and must stay exact: as values are held, given
    more room, spilled and let go of, and when a holder is collected without letting go of them (a result
    dropped), also from a reference cycle."""
    import gc
    import sys
    import tempfile

    from surgeon.validation import spill

    def work_of_held() -> int:  # the calls held() makes: none per holder
        gc.collect()
        spill.held()  # what holders collected before left to subtract
        calls = []
        sys.setprofile(lambda frame, event, arg: calls.append(event))
        try:
            spill.held()
        finally:
            sys.setprofile(None)
        return len(calls)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    few = work_of_held()
    others = spill.held()  # of any holder still alive
    columns = [spill.Column(None, "c") for _ in range(1000)]
    for column in columns:
        column.append(np.zeros(1))  # no folder: held whatever the budget
    assert work_of_held() == few and spill.held() == others + 8000
    del columns, column
    assert spill.held() == others

    gc.disable()  # the cycle is collected below, not before
    try:
        cycle = spill.Column(None, "cycle")
        cycle.append(np.zeros(10))
        cycle.itself = cycle
        del cycle
        assert spill.held() == others + 80
    finally:
        gc.enable()
    gc.collect()
    assert spill.held() == others

    monkeypatch.setattr(spill, "MEMORY_BUDGET", others + 1000)
    run = spill.RunOutputs("r", on_disk=True)
    run.append({"a": np.zeros(100)})
    run.append({"a": np.zeros(100)})  # past the budget: to disk
    column = spill.Column(tmp_path, "c", appends=2)
    column.append(np.arange(10))  # room for 2 x 10 values
    assert spill.held() == others + 800 + 160
    column.append(np.arange(10, 25))  # more room, for 25 values: the budget to the byte
    assert spill.held() == others + 1000
    column.append(np.arange(25, 26))  # more room does not fit: every value to disk
    assert spill.held() == others + 800 and np.array_equal(column.values(), np.arange(26))
    column.discard()
    run.close()
    assert spill.held() == others
    dropped = spill.RunOutputs("dropped", on_disk=True)
    dropped.append({"a": np.zeros(10)})
    del dropped
    assert spill.held() == others and list(tmp_path.iterdir()) == []


def test_judging_held_sets_holds_their_errors_once(monkeypatch):
    """An output's errors over many sets, held within the budget, were joined into one array to be judged:
    a copy of each column, two at once for cosine similarity (4 sets of a 6.2 MiB output peaked at 474 MiB
    with a 256 MiB budget; here 8 sets took 17.6 copies of one set's errors beyond the columns, 16 sets
    33.6). Each column is now one array from the first set: beyond the columns, judging takes what one
    set's errors take (4.5 copies), however many sets."""
    import tracemalloc

    from surgeon.validation import spill
    from surgeon.validation.compare import compare_outputs

    monkeypatch.setattr(spill, "MEMORY_BUDGET", spill.held() + (1 << 30))
    elements, sets = 1 << 17, 8
    rng = np.random.default_rng(0)
    runs = [spill.RunOutputs(name) for name in ("a", "b")]
    for run in runs:
        for _ in range(sets):
            run.append({"y": rng.random(elements, dtype=np.float32)})
    compare_outputs(*runs, Tolerance())  # the first run imports and caches what later ones reuse
    tracemalloc.start()
    try:
        compare_outputs(*runs, Tolerance())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_set = elements * 8  # one set's errors, as float64
    columns = 4 * sets * one_set  # absolute and relative errors, both outputs' finite values
    assert peak < columns + 8 * one_set, (peak - columns) / one_set


def test_outputs_within_the_memory_budget_never_touch_the_disk(model_pair, tmp_path, monkeypatch, capsys):
    """Small outputs of many sets stay in memory: no file is written for them."""
    import tempfile

    from surgeon.validation import spill

    def no_file(*args, **kwargs):
        raise AssertionError("written to disk")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(np, "save", no_file)  # how outputs are written
    monkeypatch.setattr(spill, "open", no_file, raising=False)  # how error columns are
    a, b = model_pair
    assert main(["compare", a, a, "--iterations", "5", "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]


def _sequence_and_string_models():
    from onnx import TensorProto

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [2], [1, 3])
    split = helper.make_node("Constant", [], ["sizes"], value=sizes)
    pieces = [split, helper.make_node("SplitToSequence", ["x", "sizes"], ["s"], axis=0)]  # [1, 2] and [3, 2]
    strings = [helper.make_node("Cast", ["x"], ["s"], to=TensorProto.STRING)]
    for nodes, output in ((pieces, helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)),
                          (strings, helper.make_tensor_value_info("s", TensorProto.STRING, [4, 2]))):
        graph = helper.make_graph([*nodes, helper.make_node("Relu", ["x"], ["y"])], "g", [x], [output, y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        yield model


@pytest.mark.parametrize("iterations", ["1", "3"])
def test_sequence_and_string_outputs_are_one_error_naming_the_output(tmp_path, monkeypatch, capsys, iterations):
    """A sequence output of pieces of different shapes was 'internal error: ValueError: setting an array
    element with a sequence' (of equal shapes, silently stacked and compared); a string output 'internal
    error: AttributeError' with one set, 'ValueError: Object arrays cannot be saved' with more. Errors are
    numbers: both are refused, naming the model and the output, with nothing left in the temp directory."""
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    for model, kind in zip(_sequence_and_string_models(), ("a sequence", "a string tensor")):
        path = tmp_path / "m.onnx"
        onnx.save(model, path)
        assert main(["compare", str(path), str(path), "--iterations", iterations, "-q"]) == 2
        # found from the declared type, before anything runs (the values are refused too: spill._tensor)
        assert capsys.readouterr().err == (f"surgeon: error: {path}: graph output 's' is {kind}: validation "
                                           "compares numeric and bool tensor outputs only\n")
    assert list(temp.iterdir()) == []


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path):
    """SIGTERM (a CI job's timeout, `docker stop`) killed the process where it was: a many-set validation
    left its spilled outputs in the temp directory (1.3 GB in the review). It now runs Ctrl-C's path:
    the temporary files deleted, one line said, exit code 143."""
    import signal
    import subprocess
    import sys
    import time

    temp = tmp_path / "temp"
    temp.mkdir()
    model = make_model([helper.make_node("Sin", ["x"], ["y"])], [("x", np.float32, [256])], [("y", np.float32, [256])])
    onnx.save(model, tmp_path / "m.onnx")
    script = f"""
import sys
from surgeon.validation import spill
from surgeon.cli import main
spill.MEMORY_BUDGET = 0  # every set's outputs to disk, where they are seen
sys.exit(main(["compare", {str(tmp_path / 'm.onnx')!r}, {str(tmp_path / 'm.onnx')!r}, "--iterations", "10000"]))
"""
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "TMPDIR": str(temp)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not list(temp.glob("surgeon-validation-*/*.npy")):  # spilling: the validation is under way
            assert process.poll() is None, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert (process.returncode, err) == (143, "surgeon: terminated (SIGTERM); nothing was written\n")
    assert list(temp.glob("surgeon-*")) == []  # (the folder is also the temp directory of whatever else runs)


DROP_OUTPUT_STEP = "test-validation-drop-last-output"
HIDDEN_RENAME_STEP = "test-validation-rename-output-tensor"


@register_pass(DROP_OUTPUT_STEP)
class DropLastOutput(Pass):
    """Drops the last graph output: an ordinary rewrite that loses an output (for the tests)."""

    def run(self, graph, ctx):
        result = PassResult()
        if len(graph.outputs) > 1:
            result.rewritten.append(f"output:{graph.outputs[-1].name}")
            graph.outputs = graph.outputs[:-1]
        return result


@register_pass(HIDDEN_RENAME_STEP)
class RenameOutputTensor(Pass):
    """Renames the first graph output's tensor behind the rename pass's back (for the tests)."""

    def run(self, graph, ctx):
        result = PassResult()
        if not graph.outputs[0].name.startswith("fresh_"):
            graph.outputs[0].name = f"fresh_{graph.outputs[0].name}"
            result.rewritten.append("output")
        return result


def write_stage_recipe(tmp_path, model, steps, **validate) -> str:
    """A recipe of `steps` ((pass, params) pairs) on `model`, validated against the original."""
    onnx.save(model, tmp_path / "model.onnx")
    recipe = {"name": "stage", "model": "model.onnx", "steps": [{"pass": p, "with": w} for p, w in steps],
              "validate": validate or {"atol": 1e-5}}
    (tmp_path / "stage.yaml").write_text(yaml.safe_dump(recipe))
    return str(tmp_path / "stage.yaml")


@pytest.mark.parametrize("cut, compared, fed", [
    ({"inputs": ["input.1"], "outputs": ["20"]}, "20", ""),
    ({"inputs": ["20"], "outputs": ["47"]}, "47", " and feeds the stage its values of 20")])
def test_a_stage_cut_by_extract_is_compared_with_the_same_tensors_of_the_original(tmp_path, cut, compared, fed):
    """Used to fail on '47 missing from rewritten' without comparing 20, or to refuse a stage taking 20."""
    model = onnx.load(DATA / "centerpoint_pfe.onnx")
    recipe = write_stage_recipe(tmp_path, model, [("extract", cut)])
    result = run_recipe(recipe, output=tmp_path / "out.onnx")
    validation = result.validation
    assert result.ok and validation.passed
    assert [(o.name, o.passed) for o in validation.outputs] == [(compared, True)]
    assert validation.outputs[0].max_abs is not None and validation.outputs[0].cosine == pytest.approx(1)
    assert ("note: a stage cut by the recipe's extract step: its outputs are compared with the tensors of the "
            f"same names in the original, which runs from its own inputs{fed}") in validation.summary
    dropped = "note: outputs of the original the stage does not return, not compared: 47"
    assert (dropped in validation.summary) == (compared == "20")
    assert list(validation.feeds[0]) == ["input.1"] + (["20"] if fed else [])  # saved with the reports


def test_a_wrong_stage_fails_on_the_tensors_it_returns_and_is_localised(tmp_path):
    """The stage takes an intermediate tensor (scaled), returns another (act, renamed), and is wrong."""
    recipe = write_stage_recipe(tmp_path, chain_model(), [("extract", {"inputs": ["scaled"], "outputs": ["act"]}),
                                                          ("rename", {"outputs": {"act": "feature"}}),
                                                          (WRONG_STEP, {})], iterations=2)
    validation = run_recipe(recipe, output=tmp_path / "out.onnx").validation
    assert list(validation.feeds[1]) == ["x", "scaled"] and [run.name for run in validation.runs] == [
        "original", "rewritten"]
    output = validation.outputs[0]
    assert (output.name, output.candidate_name, output.within_tolerance) == ("act", "feature", False)
    assert output.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert validation.divergence["tensor"] == "shifted"
    assert "feeds the stage its values of scaled" in validation.summary
    assert "not compared: y" in validation.summary


def test_per_output_tolerances_name_the_stages_outputs(tmp_path):
    steps = [("extract", {"inputs": ["scaled"], "outputs": ["act"]}), (WRONG_STEP, {})]
    assert run_recipe(write_stage_recipe(tmp_path, chain_model(), steps, atol={"act": 1e-2}),
                      output=tmp_path / "out.onnx").validation.passed
    with pytest.raises(SurgeonError, match="atol names 'y', which is not an output of the model"):
        run_recipe(write_stage_recipe(tmp_path, chain_model(), steps, atol={"y": 1e-2}), output=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("cut", [[("extract", {"inputs": ["scaled"], "outputs": ["act"]})], []])
def test_a_tolerance_naming_an_output_by_its_new_name_says_which_name_it_takes(tmp_path, cut):
    """It used to say "'feature', which is not an output of the model (outputs: act)"."""
    renamed = "act" if cut else "y"
    steps = [*cut, ("rename", {"outputs": {renamed: "feature"}})]
    with pytest.raises(SurgeonError, match=f"atol names 'feature', the name a rename step gives '{renamed}': "
                                           "per-output tolerances name outputs as the model compared with does"):
        run_recipe(write_stage_recipe(tmp_path, chain_model(), steps, atol={"feature": 1e-2}),
                   output=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_a_stage_with_nothing_comparable_is_said_so_not_failed(tmp_path):
    recipe = write_stage_recipe(tmp_path, chain_model(), [("extract", {"outputs": ["act"]}), (HIDDEN_RENAME_STEP, {})])
    with pytest.raises(SurgeonError, match=r"nothing comparable: none of the stage's outputs \(fresh_act\) is a "
                                           "tensor of"):
        run_recipe(recipe, output=tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_an_output_an_ordinary_rewrite_drops_still_fails(tmp_path):
    """Only a recipe that cuts (extract) makes a stage; any other lost output is a failure."""
    model = chain_model()
    model.graph.output.append(helper.make_tensor_value_info("act", onnx.TensorProto.FLOAT, None))
    validation = run_recipe(write_stage_recipe(tmp_path, model, [(DROP_OUTPUT_STEP, {})]),
                            output=tmp_path / "out.onnx").validation
    assert not validation.passed
    assert [(o.name, o.passed, o.note) for o in validation.outputs] == [
        ("y", True, ""), ("act", False, "output missing from rewritten")]


CUT_REFUSAL = "cuts the graph (step {}, extract): its steps' graphs take or return other tensors than the original, " \
              "so they cannot be judged against it"


def test_each_step_does_not_bisect_across_a_cut(tmp_path):
    """The note used to say the graphs before the cut return other outputs, of a cut at step 1 too."""
    steps = [("extract", {"inputs": ["scaled"], "outputs": ["act"]}), (WRONG_STEP, {})]
    validation = run_recipe(write_stage_recipe(tmp_path, chain_model(), steps, each_step=True),
                            output=tmp_path / "out.onnx").validation
    assert not validation.passed and validation.bisection is None
    assert f"each_step: not bisected: recipe 'stage' {CUT_REFUSAL.format(1)}" in validation.notes


CUT = ("extract", {"inputs": ["scaled"], "outputs": ["act"]})


@pytest.mark.parametrize("steps, cut_at", [
    # Bisect used to merge the renames of every step into one feed, so a swap or a chain of renames of the
    # cut's inputs fed them crosswise; with two cuts Polygraphy paired the missing inputs by position.
    ([CUT, ("rename", {"inputs": {"scaled": "features"}, "outputs": {"act": "feature"}}), (WRONG_STEP, {})], 1),
    ([CUT, (WRONG_STEP, {}), ("extract", {"inputs": ["shifted"], "outputs": ["act"]})], 1),
    ([(WRONG_STEP, {}), CUT], 2)])
def test_bisect_refuses_a_recipe_whose_result_is_a_stage(tmp_path, capsys, steps, cut_at):
    assert main(["bisect", write_stage_recipe(tmp_path, chain_model(), steps)]) == 2
    err = capsys.readouterr().err
    assert f"bisect: recipe 'stage' {CUT_REFUSAL.format(cut_at)}" in err and "`surgeon run` validates" in err


def test_bisect_takes_a_cut_that_keeps_the_interface_as_any_recipe(tmp_path, capsys):
    steps = [(WRONG_STEP, {}), ("extract", {"inputs": ["x"], "outputs": ["y"]})]
    assert main(["bisect", write_stage_recipe(tmp_path, chain_model(), steps)]) == 1
    assert "outputs leave tolerance after step 1 (test-validation-wrong-constant)" in capsys.readouterr().out


def test_a_stage_taking_an_intermediate_tensor_runs_on_inputs_recorded_for_the_original(tmp_path):
    x = np.linspace(-2, 2, 40, dtype=np.float32).reshape(1, 2, 4, 5)
    np.savez(tmp_path / "inputs.npz", x=x)
    recipe = write_stage_recipe(tmp_path, chain_model(), [("extract", {"inputs": ["shifted"], "outputs": ["act"]})],
                                data=str(tmp_path / "inputs.npz"))
    validation = run_recipe(recipe, output=tmp_path / "out.onnx").validation
    assert validation.passed and [o.name for o in validation.outputs] == ["act"]
    shifted = x * np.float32([[[[1.5]], [[-0.5]]]]) + np.float32(0.25)
    np.testing.assert_allclose(validation.feeds[0]["shifted"], shifted, rtol=1e-6)


def test_a_stage_output_passing_an_input_through_is_compared(tmp_path):
    """An input of the original is one of its tensors: it used to be noted as one the original has none of."""
    recipe = write_stage_recipe(tmp_path, chain_model(), [("extract", {"inputs": ["x"], "outputs": ["act", "x"]})])
    validation = run_recipe(recipe, output=tmp_path / "out.onnx").validation
    assert validation.passed and [(o.name, o.passed) for o in validation.outputs] == [("act", True), ("x", True)]
    assert "has no tensor of" not in validation.summary


def test_expected_outputs_are_compared_where_the_stage_is(tmp_path):
    """Expected outputs recorded for the original: those the stage returns are compared (under the stage's
    names), the others noted as not compared; they used to fail on 'output missing from rewritten'."""
    x = np.linspace(-2, 2, 40, dtype=np.float32).reshape(1, 2, 4, 5)
    act = np.maximum(x * np.float32([[[[1.5]], [[-0.5]]]]) + np.float32(0.25), 0)
    np.savez(tmp_path / "inputs.npz", x=x)
    np.savez(tmp_path / "expected.npz", y=act * 2, act=act)
    steps = [("extract", {"inputs": ["scaled"], "outputs": ["act"]}), ("rename", {"outputs": {"act": "feature"}})]
    recipe = write_stage_recipe(tmp_path, chain_model(), steps, data=str(tmp_path / "inputs.npz"),
                                expected=str(tmp_path / "expected.npz"))
    validation = run_recipe(recipe, output=tmp_path / "out.onnx").validation
    assert validation.passed
    assert [(o.name, o.candidate_name, o.passed) for o in validation.expected] == [("act", "feature", True)]
    assert "expected outputs the stage does not return, not compared: y" in validation.notes


def test_expected_outputs_of_a_stage_whose_outputs_a_rename_swaps_are_read_by_the_originals_names(tmp_path):
    """Expected a and b are the original's a and b, as without a cut: they used to be read by the new names,
    each compared with the other output."""
    nodes = [helper.make_node("Mul", ["x", "two"], ["a"]), helper.make_node("Add", ["x", "one"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["c"])]
    model = make_model(nodes, [("x", np.float32, [1, 4])], [(n, np.float32, [1, 4]) for n in "abc"],
                       {"two": np.float32(2), "one": np.float32(1)})
    x = np.float32([[0.1, 0.2, 0.3, 0.4]])
    np.savez(tmp_path / "inputs.npz", x=x)
    np.savez(tmp_path / "expected.npz", a=x * 2, b=x + 1)
    steps = [("extract", {"inputs": ["x"], "outputs": ["a", "b"]}), ("rename", {"outputs": {"a": "b", "b": "a"}})]
    recipe = write_stage_recipe(tmp_path, model, steps, data=str(tmp_path / "inputs.npz"),
                                expected=str(tmp_path / "expected.npz"))
    validation = run_recipe(recipe, output=tmp_path / "out.onnx").validation
    assert validation.passed
    assert [(o.name, o.candidate_name, o.passed) for o in validation.expected] == [("a", "b", True), ("b", "a", True)]


def test_inputs_a_rename_swaps_are_fed_under_their_new_names(tmp_path, capsys):
    """Feeds are keyed by the original's input names: a swap {x: y, y: x} used to feed them crosswise, so a
    rename that changes nothing failed validation and bisect named it (or, shapes differing, was refused)."""
    model = make_model([helper.make_node("Sub", ["x", "y"], ["out"])],
                       [("x", np.float32, [1, 4]), ("y", np.float32, [2, 4])], [("out", np.float32, [2, 4])])
    recipe = write_stage_recipe(tmp_path, model, [("rename", {"inputs": {"x": "y", "y": "x"}})])
    assert run_recipe(recipe, output=tmp_path / "out.onnx").validation.passed
    assert main(["bisect", recipe]) == 0
    assert "every step of 1 stays within tolerance" in capsys.readouterr().out


def test_bisect_says_which_name_a_tolerance_naming_a_renamed_output_takes(tmp_path, capsys):
    """It used to give the generic "'result', which is not an output of the model"."""
    recipe = write_stage_recipe(tmp_path, chain_model(), [("rename", {"outputs": {"y": "result"}})],
                                atol={"result": 1e-4})
    assert main(["bisect", recipe]) == 2
    assert "atol names 'result', the name a rename step gives 'y'" in capsys.readouterr().err


def test_a_stage_validated_against_its_own_export_is_compared_as_any_rewrite(tmp_path):
    """The recipe's renames relate the original's names to the stage's, not the against model's: an
    against model with the stage's interface is compared output by output, as before."""
    steps = [("extract", {"inputs": ["scaled"], "outputs": ["act"]}), ("rename", {"outputs": {"act": "feature"}})]
    own_export, _ = apply_pass(apply_pass(chain_model(), "extract", inputs=["scaled"], outputs=["act"])[0],
                               "rename", outputs={"act": "feature"})
    onnx.save(own_export, tmp_path / "stage_export.onnx")
    recipe = write_stage_recipe(tmp_path, chain_model(), steps, against=str(tmp_path / "stage_export.onnx"))
    validation = run_recipe(recipe, output=tmp_path / "out.onnx").validation
    assert validation.passed and [o.name for o in validation.outputs] == ["feature"]
    assert validation.notes == []

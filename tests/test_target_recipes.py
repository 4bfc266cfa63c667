"""The shipped target recipes load (every pass they name exists, every parameter is valid), rewrite a
graph holding ATen atan2 / linspace / __iand_ (bool, int32, int64) and an int64 Clip, in the graph itself or
inside a model-local function, into one that passes onnx.checker and `surgeon check` for the recipe's target
and runs in ONNX Runtime with torch's results, and serve as parents through `extends`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.check import Settings, check_file
from surgeon.pipeline import run_recipe
from surgeon.recipe import load_recipe
from surgeon.registry import discover
from surgeon.targets import load_target
from surgeon.testing import make_model, op_types, run_ort

torch = pytest.importorskip("torch")

TARGET_DIR = Path(__file__).resolve().parent.parent / "recipes" / "targets"
RECIPES = {"opset11": "opset-11", "tensorrt-8.6": "tensorrt-8.6", "tensorrt-10": "tensorrt-10",
           "onnxruntime": "onnxruntime"}


def recipe_path(name):
    path = TARGET_DIR / f"{name}.yaml"
    steps = pass_names(path)
    missing = sorted(set(steps) - set(discover()))
    if missing:
        pytest.skip(f"{path.name} names passes not registered yet: {', '.join(missing)}")
    return path


def pass_names(path):
    import yaml

    return [step["pass"] for step in yaml.safe_load(path.read_text())["steps"]]


def aten(operator, inputs, output, name):
    return helper.make_node("ATen", inputs, [output], name=name, domain="org.pytorch.aten", operator=operator,
                            overload_name="Tensor" if operator == "__iand_" else "")


def mixed_model(opset):
    """ATen atan2, linspace and __iand_ (on bool, int32 and int64) plus an int64 Clip, as a fallback export at
    `opset` holds them."""
    nodes = [aten("atan2", ["y", "x"], "angle", "atan2"),
             aten("linspace", ["start", "end", "steps"], "grid", "linspace"),
             helper.make_node("Add", ["angle", "grid"], ["angle_grid"], name="add"),
             aten("__iand_", ["a", "b"], "mask", "iand"),
             aten("__iand_", ["flags32", "valid32"], "kept32", "iand_int32"),
             aten("__iand_", ["flags64", "valid64"], "kept64", "iand_int64"),
             helper.make_node("Clip", ["index", "lo", "hi"], ["clipped"], name="clip")]
    return make_model(nodes, [("y", np.float32, [4]), ("x", np.float32, [4]), ("a", np.bool_, [4]),
                              ("b", np.bool_, [4]), ("flags32", np.int32, [4]), ("valid32", np.int32, [4]),
                              ("flags64", np.int64, [4]), ("valid64", np.int64, [4]), ("index", np.int64, [4])],
                      [("angle_grid", np.float32, [4]), ("mask", np.bool_, [4]), ("kept32", np.int32, [4]),
                       ("kept64", np.int64, [4]), ("clipped", np.int64, [4])],
                      initializers={"start": np.float32(-1), "end": np.float32(1), "steps": np.int64(4),
                                    "lo": np.int64(-2), "hi": np.int64(3)}, opset=opset)


FEEDS = {"y": np.array([0, -0.0, 1, -1], np.float32), "x": np.array([-1, -1, 0, 1e-30], np.float32),
         "a": np.array([1, 1, 0, 0], bool), "b": np.array([1, 0, 1, 0], bool),
         "flags32": np.array([-2**31, 2**31 - 1, -7, 12], np.int32),
         "valid32": np.array([-1, -2**30, 5, -4], np.int32),
         # within the int32 range, all TensorRT 8 holds of int64 (its form says so in a note)
         "flags64": np.array([-2**31, 2**31 - 1, -7, 12], np.int64),
         "valid64": np.array([-1, -2**30, 5, -4], np.int64),
         "index": np.array([-2**40, -1, 7, 2], np.int64)}


def torch_results():
    t = {k: torch.from_numpy(v) for k, v in FEEDS.items()}
    angle_grid = torch.atan2(t["y"], t["x"]) + torch.linspace(-1, 1, 4)
    return [angle_grid.numpy(), (t["a"] & t["b"]).numpy(), (t["flags32"] & t["valid32"]).numpy(),
            (t["flags64"] & t["valid64"]).numpy(), torch.clamp(t["index"], -2, 3).numpy()]


@pytest.mark.parametrize("name, target", sorted(RECIPES.items()))
@pytest.mark.parametrize("opset", [11, 13])
def test_target_recipe_makes_the_mixed_graph_run_with_torch_results(name, target, opset, tmp_path):
    result = _run_target_recipe(name, mixed_model(opset), tmp_path)
    _assert_runs_on_target_with_torch_results(result.model, target, opset, tmp_path)


def in_a_function(model):
    """`model` with its nodes moved into a model-local function `pkg.local::Head` that the graph calls (its
    initializers passed in as inputs), as torch's dynamo export wraps each module."""
    inputs = [i.name for i in model.graph.input] + [t.name for t in model.graph.initializer]
    outputs = [o.name for o in model.graph.output]
    head = helper.make_function("pkg.local", "Head", inputs, outputs, list(model.graph.node), model.opset_import)
    del model.graph.node[:]
    model.graph.node.append(helper.make_node("Head", inputs, outputs, name="head", domain="pkg.local"))
    model.opset_import.append(helper.make_opsetid("pkg.local", 1))
    model.functions.append(head)
    return model


@pytest.mark.parametrize("name, target", sorted(RECIPES.items()))
@pytest.mark.parametrize("opset", [11, 13])
def test_target_recipe_rewrites_the_ops_inside_local_functions(name, target, opset, tmp_path):
    """The passes rewrite the main graph only: with inline-functions first, the ATen atan2/linspace/__iand_ and
    the int64 Clip inside a local function are rewritten as they are in the graph itself, no call is left
    (SG001 on TensorRT 8 and opset-11), and the result equals the function-free graph's exactly."""
    model = in_a_function(mixed_model(opset))
    assert op_types(model) == ["Head"]
    result = _run_target_recipe(name, model, tmp_path)
    assert not result.model.functions and "Head" not in op_types(result.model)
    _assert_runs_on_target_with_torch_results(result.model, target, opset, tmp_path)
    flat = _run_target_recipe(name, mixed_model(opset), tmp_path / "flat")
    for got, want in zip(run_ort(result.model, FEEDS), run_ort(flat.model, FEEDS)):
        np.testing.assert_array_equal(got, want)


def _run_target_recipe(name, model, folder):
    recipe = load_recipe(recipe_path(name))
    assert recipe.steps[0].pass_name == "inline-functions" and recipe.steps[-1].pass_name == "cleanup"
    folder.mkdir(exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    return run_recipe(recipe, model=folder / "model.onnx", output=folder / "out.onnx")  # runs onnx.checker


def _assert_runs_on_target_with_torch_results(model, target, opset, tmp_path):
    onnx.save(model, tmp_path / "checked.onnx")
    errors = [f"{f.rule} {f.message}" for f in check_file(tmp_path / "checked.onnx", Settings(target=target))
              if f.severity == "error"]
    ops = set(op_types(model))
    assert not ops & {"ATen", "Clip"}
    assert model.opset_import[0].version == opset
    profile = load_target(target)
    unsupported = [op for op in sorted(ops) if not profile.supports(op, opset=opset)]
    if target == "opset-11" and opset > 11:
        # onnx's version converter cannot convert down (no 13 -> 11 adapters): an opset-13 export stays
        # opset 13, and the profile (op versions up to 11) says so for every op.
        assert unsupported and errors
    else:
        assert unsupported == [] and errors == []
    got = run_ort(model, FEEDS)
    for value, want in zip(got, torch_results()):
        np.testing.assert_allclose(value, want, rtol=0, atol=1e-6)
        assert value.dtype == want.dtype


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_child_recipe_extends_a_target_recipe(name, tmp_path):
    parent = recipe_path(name)
    child = tmp_path / "child.yaml"
    child.write_text(f"name: child\nextends: {parent}\nappend_steps:\n  - pass: toposort\n"
                     "set:\n  clip-int.mode: minmax\n  atan2.signed_zeros: false\n")
    recipe = load_recipe(child)
    names = [step.pass_name for step in recipe.steps]
    assert names == pass_names(parent) + ["toposort"]
    atan2 = next(step for step in recipe.steps if step.pass_name == "atan2")
    assert atan2.params["signed_zeros"] is False and recipe.target == RECIPES[name]

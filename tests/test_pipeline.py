"""The run: atomic output, untouched input, determinism, provenance, reports, dry runs, exit codes."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import onnx
from onnx import helper
import pytest

import surgeon
from surgeon.cli import main
from surgeon.errors import CheckFailed, SurgeonError
from surgeon.pass_api import Pass, PassResult, register_pass
from surgeon.testing import make_model, run_ort

from conftest import DATA, REPO


@register_pass("test-explode")
class Explode(Pass):
    """A pass that fails halfway (for the tests)."""

    def run(self, graph, ctx):
        graph.nodes.clear()
        raise RuntimeError("boom")


@register_pass("test-exit")
class Exit(Pass):
    """A pass that calls sys.exit (for the tests)."""

    def run(self, graph, ctx):
        import sys

        sys.exit(5)


@register_pass("test-collector-probe")
class CollectorProbe(Pass):
    """Records whether Python's cyclic garbage collector runs while passes do (for the tests)."""

    seen: list[bool] = []

    def run(self, graph, ctx):
        import gc

        CollectorProbe.seen.append(gc.isenabled())
        return PassResult()


@register_pass("test-break-graph")
class BreakGraph(Pass):
    """Point a node at a tensor nobody produces, so onnx.checker fails (for the tests)."""

    def run(self, graph, ctx):
        import onnx_graphsurgeon as gs

        graph.nodes[0].inputs[0] = gs.Variable("nowhere", dtype=np.float32)
        result = PassResult()
        result.rewrote(graph.nodes[0])
        return result


def recipe_file(tmp_path, steps, model=None, **extra):
    data = {"name": "t", "steps": steps, **extra}
    if model:
        data["model"] = str(model)
    path = tmp_path / "recipe.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_writes_output_report_and_provenance(tmp_path, model_file):
    recipe = recipe_file(tmp_path, [{"pass": "cleanup"}, {"pass": "toposort"}], model=model_file)
    out = tmp_path / "out" / "m.onnx"
    result = surgeon.run_recipe(recipe, output=out)
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Relu", "Neg"]
    assert not model.graph.initializer
    props = {p.key: p.value for p in model.metadata_props}
    assert props["surgeon.version"] == surgeon.__version__
    assert props["surgeon.recipe"] == "t" and props["surgeon.recipe_sha256"] == sha(recipe)
    assert json.loads(props["surgeon.steps"])[0] == {"pass": "cleanup", "with": {"remove_unused_inputs": True}}
    report = json.loads((tmp_path / "out" / "m.surgeon.json").read_text())
    first = report["steps"][0]
    assert first["nodes_before"] == 3 and first["nodes_after"] == 2 and first["op_delta"] == {"Abs": -1}
    assert "dead_abs" in first["rewritten"] and "initializer:unused_w" in first["rewritten"]
    assert result.report_path == tmp_path / "out" / "m.surgeon.json"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.onnx", "m.surgeon.json"]


def test_new_nodes_carry_provenance(tmp_path):
    from onnx import helper

    from surgeon.testing import make_model

    nodes = [helper.make_node("Identity", ["x"], ["t"], name="id"), helper.make_node("Relu", ["t"], ["y"], name="r")]
    model = make_model(nodes, [("x", np.float32, [2])], [("y", np.float32, [2])])
    out, _ = surgeon.testing.apply_pass(model, "remove-node", names=["r"])
    identity = [n for n in out.graph.node if n.name == "r/Identity"]
    assert identity, [n.name for n in out.graph.node]
    props = {p.key: p.value for p in identity[0].metadata_props}
    assert props == {"surgeon.pass": "remove-node", "surgeon.replaces": "r"}


@register_pass("test-clip-int-in-bodies")
class ClipIntInBodies(Pass):
    """clip-int on the bodies of If nodes only (for the tests: no built-in pass rewrites inside bodies)."""

    needs = ("shapes",)

    def run(self, graph, ctx):
        from surgeon.registry import get_pass

        clip_int, result = get_pass("clip-int")(), PassResult()
        for node in graph.nodes:
            for body in node.subgraphs():
                result.rewritten += clip_int.run(body, ctx).rewritten
        return result


def _clip_beside_an_if(clip_in_body: bool) -> onnx.ModelProto:
    """An int64 Clip named 'clip' in the main graph or in an If's then-branch, and in the other place a Neg
    named 'clip/Where_max', with metadata of its own: the name clip-int gives the Clip's last replacement."""
    clip = helper.make_node("Clip", ["x", "lo", "hi"], ["clipped"], name="clip")
    neg = helper.make_node("Neg", ["x"], ["clipped"], name="clip/Where_max")
    helper.set_metadata_props(neg, {"origin": "input"})
    inner, outer = (clip, neg) if clip_in_body else (neg, clip)
    int_info = helper.make_tensor_value_info("clipped", onnx.TensorProto.INT64, [3])
    then_branch = helper.make_graph([inner], "then", [], [int_info])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["kept"], name="keep")], "else", [],
                                    [helper.make_tensor_value_info("kept", onnx.TensorProto.INT64, [3])])
    outer.output[0] = "y"
    branch = helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=then_branch,
                              else_branch=else_branch)
    return make_model([outer, branch], [("x", np.int64, [3]), ("cond", np.bool_, [])],
                      [("y", np.int64, [3]), ("z", np.int64, [3])],
                      initializers={"lo": np.array(0, np.int64), "hi": np.array(5, np.int64)}, opset=13)


@pytest.mark.parametrize("clip_in_body", [False, True], ids=["main-graph-rewritten", "body-rewritten"])
def test_provenance_goes_by_graph_path_not_name(clip_in_body):
    """A node a pass made and an untouched node of the same name in another graph (an If body) each keep
    only their own metadata: provenance once went by name, so one took the other's."""
    model = _clip_beside_an_if(clip_in_body)
    out, record = surgeon.testing.apply_pass(model, "test-clip-int-in-bodies" if clip_in_body else "clip-int")
    assert record.rewritten == ["clip"]
    branch = next(n for n in out.graph.node if n.op_type == "If")
    body = next(a.g for a in branch.attribute if a.name == "then_branch")
    made, untouched = (body.node, out.graph.node) if clip_in_body else (out.graph.node, body.node)
    made = next(n for n in made if n.name == "clip/Where_max")
    untouched = next(n for n in untouched if n.name == "clip/Where_max")
    assert made.op_type == "Where" and untouched.op_type == "Neg"
    pass_name = "test-clip-int-in-bodies" if clip_in_body else "clip-int"
    assert {p.key: p.value for p in made.metadata_props} == {"surgeon.pass": pass_name, "surgeon.replaces": "clip"}
    assert {p.key: p.value for p in untouched.metadata_props} == {"origin": "input"}
    feeds = {"x": np.array([-3, 2, 9], np.int64), "cond": np.array(True)}
    assert [r.tolist() for r in run_ort(out, feeds)] == [r.tolist() for r in run_ort(model, feeds)]


def test_output_is_deterministic(tmp_path, model_file):
    recipe = recipe_file(tmp_path, [{"pass": "cleanup"}, {"pass": "remove-node", "with": {"op_types": ["Neg"]}}],
                         model=model_file)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    surgeon.run_recipe(recipe, output=a)
    surgeon.run_recipe(recipe, output=b)
    assert a.read_bytes() == b.read_bytes()


def test_input_is_never_modified_and_cannot_be_the_output(tmp_path, model_file):
    before = sha(model_file)
    recipe = recipe_file(tmp_path, [{"pass": "cleanup"}], model=model_file)
    surgeon.run_recipe(recipe, output=tmp_path / "o.onnx")
    assert sha(model_file) == before
    with pytest.raises(SurgeonError, match="refusing to overwrite the input"):
        surgeon.run_recipe(recipe, output=model_file)
    assert sha(model_file) == before


def test_failing_step_writes_nothing_and_names_the_step(tmp_path, model_file):
    recipe = recipe_file(tmp_path, [{"pass": "cleanup"}, {"pass": "test-explode"}], model=model_file)
    out = tmp_path / "o.onnx"
    with pytest.raises(SurgeonError, match=r"step 2 \(test-explode\) failed: RuntimeError: boom"):
        surgeon.run_recipe(recipe, output=out)
    assert list(tmp_path.iterdir()) == [model_file, recipe] or sorted(p.name for p in tmp_path.iterdir()) == \
        ["model.onnx", "recipe.yaml"]


def test_a_pass_calling_sys_exit_is_an_error_naming_its_step(tmp_path, model_file):
    recipe = recipe_file(tmp_path, [{"pass": "test-exit"}], model=model_file)
    with pytest.raises(SurgeonError, match=r"step 1 \(test-exit\): pass 'test-exit' called sys.exit\(5\)"):
        surgeon.run_recipe(recipe, output=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_a_result_above_the_targets_opset_is_noted_in_the_run_report(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [2])], [("y", np.float32, [2])],
                       opset=18)
    onnx.save(model, tmp_path / "m.onnx")
    result = surgeon.run_recipe({"name": "t", "target": "tensorrt-8.6", "steps": [{"pass": "cleanup"}]},
                                model=tmp_path / "m.onnx", output=tmp_path / "o.onnx")
    expected = "the result's ai.onnx opset 18 is above what tensorrt-8.6 parses (at most 17); see surgeon check (SG018)"
    assert result.notes == [expected] and result.report()["notes"] == [expected]
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [2])],
                         [("y", np.float32, [2])], opset=17), tmp_path / "m17.onnx")
    assert surgeon.run_recipe({"name": "t", "target": "tensorrt-8.6", "steps": [{"pass": "cleanup"}]},
                              model=tmp_path / "m17.onnx", output=tmp_path / "o17.onnx").notes == []


def test_checker_failure_is_exit_1_and_writes_nothing(tmp_path, model_file):
    recipe = recipe_file(tmp_path, [{"pass": "test-break-graph"}], model=model_file)
    out = tmp_path / "o.onnx"
    with pytest.raises(CheckFailed, match="fails onnx.checker"):
        surgeon.run_recipe(recipe, output=out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "recipe.yaml"]


def test_dry_run_writes_nothing_and_lists_changes(tmp_path, model_file, capsys):
    recipe = recipe_file(tmp_path, [{"pass": "cleanup"}], model=model_file)
    code = main(["run", str(recipe), "-o", str(tmp_path / "o.onnx"), "--dry-run"])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "recipe.yaml"]
    captured = capsys.readouterr()
    assert "would rewrite dead_abs" in captured.err and "nothing was written" in captured.out


def test_cli_exit_codes(tmp_path, model_file, capsys):
    good = recipe_file(tmp_path, [{"pass": "cleanup"}])
    assert main(["run", str(good), str(model_file), "-o", str(tmp_path / "o.onnx"), "-q"]) == 0
    assert main(["run", str(good), str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "p.onnx")]) == 2
    assert "model file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - pass: clenup\n")
    assert main(["run", str(bad), str(model_file)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:2:11: unknown pass 'clenup'" in err and "did you mean 'cleanup'" in err
    assert "Traceback" not in err
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model at all\xff" * 10)
    assert main(["run", str(good), str(garbage), "-o", str(tmp_path / "q.onnx")]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err
    broken = recipe_file(tmp_path, [{"pass": "test-break-graph"}])
    assert main(["run", str(broken), str(model_file), "-o", str(tmp_path / "r.onnx"), "-q"]) == 1
    assert main(["explain", "cleanup"]) == 0 and "remove_unused_inputs" in capsys.readouterr().out
    assert main(["explain", "clean"]) == 2
    assert main(["inspect", str(model_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ops"] == {"ai.onnx": {"Abs": 1, "Neg": 1, "Relu": 1}}


def test_inspect_counts_the_ops_inside_loop_bodies(capsys):
    """bevfusion-camera at opset 16 keeps repeat_interleave as a Loop: 293 nodes, 18 more in its body."""
    assert main(["inspect", str(DATA / "zoo" / "bevfusion-camera.fixture.opset16.onnx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["nodes"], info["nodes_in_subgraphs"]) == (293, 18)
    assert sum(sum(ops.values()) for ops in info["ops"].values()) == 311
    assert info["ops"]["ai.onnx"]["SequenceAt"] == 2 and info["ops"]["ai.onnx"]["SequenceInsert"] == 1


def test_set_override_on_command_line(tmp_path, model_file):
    recipe = recipe_file(tmp_path, [{"pass": "remove-node", "with": {"op_types": ["Abs"]}}])
    out = tmp_path / "o.onnx"
    assert main(["run", str(recipe), str(model_file), "-o", str(out), "-q", "--set", "1.op_types=[Neg]"]) == 0
    assert "Neg" not in [n.op_type for n in onnx.load(out).graph.node]


def test_json_output_and_version(tmp_path, model_file, capsys):
    recipe = recipe_file(tmp_path, [{"pass": "cleanup"}])
    assert main(["run", str(recipe), str(model_file), "-o", str(tmp_path / "o.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nodes"] == {"before": 3, "after": 2, "pruned_at_end": 0}
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and surgeon.__version__ in capsys.readouterr().out


def test_json_output_is_only_the_report_for_a_bfloat16_graph(tmp_path):
    """onnx-graphsurgeon prints warnings on stdout on importing and exporting bfloat16 tensors ("Could not convert:
    BFLOAT16 ..."): the run sends them to stderr, so `--json` prints the report alone. A fresh process, as
    graphsurgeon's logger prints some of its warnings once per process."""
    bfloat16 = onnx.TensorProto.BFLOAT16
    nodes = [helper.make_node("Cast", ["x"], ["x_bf16"], name="to_bf16", to=bfloat16),
             helper.make_node("Mul", ["x_bf16", "two"], ["y_bf16"], name="double"),
             helper.make_node("Cast", ["y_bf16"], ["y"], name="to_float", to=onnx.TensorProto.FLOAT)]
    model = make_model(nodes, [("x", np.float32, [4])], [("y", np.float32, [4])], opset=13)
    model.graph.initializer.append(helper.make_tensor("two", bfloat16, [], [0x4000]))  # bfloat16 2.0
    onnx.save(model, tmp_path / "bf16.onnx")
    recipe = recipe_file(tmp_path, [{"pass": "toposort"}, {"pass": "infer-shapes"}], target="onnxruntime")
    proc = subprocess.run([sys.executable, "-m", "surgeon", "run", str(recipe), str(tmp_path / "bf16.onnx"), "-o",
                           str(tmp_path / "o.onnx"), "--json"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["nodes"]["after"] == 3
    assert "BFLOAT16" in proc.stderr  # the warnings still reach the user, on stderr


def test_quiet_run_prints_no_graphsurgeon_warnings(tmp_path):
    """`run -q` prints nothing but errors: onnx-graphsurgeon's warnings (a dump of two nodes sharing a name,
    "colored module is not installed") used to reach stderr. A fresh process: it prints some once a process."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="n"), helper.make_node("Sigmoid", ["a"], ["y"], name="n")]
    onnx.save(make_model(nodes, [("x", np.float32, [2])], [("y", np.float32, [2])], opset=17), tmp_path / "dup.onnx")
    recipe = recipe_file(tmp_path, [{"pass": "rename", "with": {"tensors": {"a": "a2"}}}], target="onnxruntime")
    command = [sys.executable, "-m", "surgeon", "run", str(recipe), str(tmp_path / "dup.onnx"), "--no-validate",
               "-o", str(tmp_path / "o.onnx")]
    loud = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert loud.returncode == 0 and "share the same name" in loud.stderr  # the case the quiet run silences
    quiet = subprocess.run([*command, "-q"], capture_output=True, text=True, cwd=REPO)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def write_noop_plugin(path, pass_name: str):
    """Write a plugin file (or module) at `path` registering `pass_name`, a pass that changes nothing."""
    path.write_text(textwrap.dedent(f'''
        from surgeon.pass_api import Pass, PassResult, register_pass

        @register_pass("{pass_name}")
        class Noop(Pass):
            """Demo plugin pass."""
            def run(self, graph, ctx):
                return PassResult()
    '''))
    return path


def test_plugin_file_adds_a_pass(tmp_path, model_file, capsys):
    plugin = write_noop_plugin(tmp_path / "my_passes.py", "drop-neg-demo")
    assert main(["passes", "--plugin", str(plugin)]) == 0
    assert "drop-neg-demo" in capsys.readouterr().out
    assert main(["passes", "--plugin", str(tmp_path / "nope.py")]) == 2


def test_external_data_models_load_and_large_models_write_external(tmp_path, relu_model, monkeypatch):
    import surgeon.modelio as modelio

    model = onnx.ModelProto()
    model.CopyFrom(relu_model)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.arange(4096, dtype=np.float32), "big"))
    model.graph.node.append(onnx.helper.make_node("Identity", ["big"], ["big_out"], name="keep_big"))
    model.graph.output.append(onnx.helper.make_tensor_value_info("big_out", onnx.TensorProto.FLOAT, [4096]))
    src = tmp_path / "ext" / "m.onnx"
    src.parent.mkdir()
    onnx.save_model(model, src, save_as_external_data=True, location="m.weights", size_threshold=1024)
    recipe = recipe_file(tmp_path, [{"pass": "cleanup"}], model=src)
    monkeypatch.setattr(modelio, "TWO_GB", 1000)  # pretend the model is over protobuf's limit
    out = tmp_path / "out" / "m.onnx"
    surgeon.run_recipe(recipe, output=out)
    assert (tmp_path / "out" / "m.onnx.data").exists()
    loaded = onnx.load(out)
    big = [t for t in loaded.graph.initializer if t.name == "big"][0]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(big), np.arange(4096, dtype=np.float32))


def test_centerpoint_repair_recipe_fixes_the_real_graph(tmp_path):
    """The real hand-edited CenterPoint PFE: checker fails before, passes after, numbers match the original."""
    broken = onnx.load(DATA / "centerpoint_pfe_sim_unsorted.onnx")
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(broken)
    out = tmp_path / "pfe.onnx"
    result = surgeon.run_recipe(REPO / "recipes" / "centerpoint-pfe-repair.yaml", output=out)
    assert "initializer:36" in result.steps[1].rewritten
    repaired = onnx.load(out)
    onnx.checker.check_model(repaired)
    assert "36" not in {t.name for t in repaired.graph.initializer}
    x = np.random.default_rng(0).standard_normal((5268, 20, 10)).astype(np.float32)
    (reference,) = run_ort(onnx.load(DATA / "centerpoint_pfe.onnx"), {"input.1": x})
    (got,) = run_ort(repaired, {repaired.graph.input[0].name: x.transpose(2, 0, 1)[None]})
    got = got[0, :, :, 0].T  # [1,64,N,1] -> [N,64]
    assert got.shape == reference.shape == (5268, 64)
    # Outputs reach ~100 and the graphs accumulate in different orders: measured gap ~7e-5.
    np.testing.assert_allclose(got, reference, atol=1e-4, rtol=0)


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "surgeon", "passes"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "toposort" in proc.stdout


def test_noop_recipe_keeps_the_graph_as_it_was(tmp_path, model_file, relu_model):
    recipe = recipe_file(tmp_path, [], model=model_file)
    out = tmp_path / "o.onnx"
    surgeon.run_recipe(recipe, output=out)
    assert [n.name for n in onnx.load(out).graph.node] == [n.name for n in relu_model.graph.node]


def test_noop_recipe_sorts_an_unsorted_graph_so_it_passes_the_checker(tmp_path):
    out = tmp_path / "o.onnx"
    surgeon.run_recipe({"name": "noop", "steps": []}, model=DATA / "centerpoint_pfe_sim_unsorted.onnx", output=out)
    onnx.checker.check_model(onnx.load(out))


def test_rewrite_const_keeps_scalars_0d():
    import onnx_graphsurgeon as gs

    from surgeon.pass_api import Context
    from surgeon.rewrite import Rewrite
    from surgeon.targets import load_target

    graph = gs.Graph(nodes=[gs.Node("Relu", name="r")])
    rw = Rewrite(graph, Context(target=load_target("onnxruntime")), graph.nodes[0])
    assert rw.const(1.5, dtype=np.float32).values.shape == ()
    assert rw.const([1, 2], dtype=np.int64).values.shape == (2,)


def test_reports_get_the_usual_file_mode(tmp_path, model_file):
    import os
    import stat

    recipe = recipe_file(tmp_path, [{"pass": "cleanup"}], model=model_file)
    surgeon.run_recipe(recipe, output=tmp_path / "o.onnx")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "o.surgeon.json").stat().st_mode) == 0o666 & ~mask


def test_a_second_reference_for_the_same_op_is_an_error():
    from surgeon.reference import find_reference, load_references, reference_op, temporary_reference

    load_references()
    with pytest.raises(ValueError, match="two references"):
        reference_op("ATen", domain="org.pytorch.aten", operator="grid_sampler")(lambda inputs, attrs: inputs)
    marker = lambda inputs, attrs: ["temporary"]  # noqa: E731
    original = find_reference("ATen", "org.pytorch.aten", "grid_sampler")
    with temporary_reference(marker, "ATen", "org.pytorch.aten", "grid_sampler"):
        assert find_reference("ATen", "org.pytorch.aten", "grid_sampler") is marker
    assert find_reference("ATen", "org.pytorch.aten", "grid_sampler") is original


def test_shapes_are_inferred_before_import_without_copying_the_weights():
    """A step that needs shapes finds them on the imported graph; inference saw the weights' dims, not
    their data, and still used the small shape constant."""
    from surgeon.inference import infer_without_weights
    from surgeon.pipeline import run_steps
    from surgeon.recipe import load_recipe

    nodes = [onnx.helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
             onnx.helper.make_node("Reshape", ["m", "shape"], ["y"], name="reshape")]
    model = make_model(nodes, [("x", np.float32, [2, 64])], [("y", np.float32, None)],
                       initializers={"w": np.ones((64, 64), np.float32), "shape": np.array([4, -1], np.int64)})
    skeleton = infer_without_weights(model)
    weights = {t.name: t for t in skeleton.graph.initializer}
    assert not weights["w"].raw_data and list(weights["w"].dims) == [64, 64] and weights["shape"].raw_data
    graph, _ = run_steps(model, load_recipe({"name": "s", "steps": [{"pass": "clip-int"}]}))
    tensors = graph.tensors()
    assert tensors["m"].shape == [2, 64] and tensors["y"].shape == [4, 32]
    assert model.graph.initializer[0].raw_data  # the input model keeps its data


def test_collector_is_paused_during_the_steps_and_restored_after(tmp_path, model_file):
    import gc

    recipe = recipe_file(tmp_path, [{"pass": "test-collector-probe"}], model=model_file)
    assert gc.isenabled()
    surgeon.run_recipe(recipe, output=tmp_path / "o.onnx")
    assert CollectorProbe.seen == [False] and gc.isenabled()
    with pytest.raises(SurgeonError):  # restored when a step fails, too
        surgeon.run_recipe(recipe_file(tmp_path, [{"pass": "test-explode"}], model=model_file),
                           output=tmp_path / "o.onnx")
    assert gc.isenabled()


def test_a_run_leaves_no_graph_for_the_cyclic_collector(tmp_path):
    """graphsurgeon nodes and tensors are reference cycles; the run takes apart the graphs it drops
    (removed, folded, replaced nodes and the final graph) so they are freed at once, not by a full
    collection later (docs/performance.md)."""
    import gc

    import onnx_graphsurgeon as gs

    model = _model_with_leftovers()
    model_path = tmp_path / "m.onnx"
    onnx.save(model, model_path)
    steps = [{"pass": "remove-node", "with": {"op_types": ["Identity"]}}, {"pass": "fold-constants"},
             {"pass": "clip-int"}, {"pass": "cleanup"}]
    gc.collect()
    gc.disable()  # nothing may be collected before we look
    try:
        result = surgeon.run_recipe({"name": "g", "steps": steps}, model=model_path, output=tmp_path / "o.onnx")
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [f"{type(o).__name__} {o.name}" for o in gc.garbage if isinstance(o, (gs.Node, gs.Tensor, gs.Graph))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    ops = [n.op_type for n in result.model.graph.node]
    assert "Identity" not in ops and "Shape" not in ops and "Clip" not in ops  # every path removed nodes
    assert left == [], left
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "k": np.array([[-3, 2, 9], [0, 5, 6]], np.int64)}
    expected = (feeds["x"] + 5) * np.clip(feeds["k"], 0, 5).astype(np.float32)  # x + sum(shape(x)), clipped k
    np.testing.assert_array_equal(run_ort(result.model, feeds)[0], expected)


def _model_with_leftovers() -> onnx.ModelProto:
    """y = (Identity(x) + sum(shape(x))) * float(clip(k, 0, 5)) and a node nobody reads: an Identity, a
    foldable shape chain, an int Clip and a dead node, so remove-node, fold-constants, clip-int and
    cleanup each remove or replace nodes."""
    from onnx import helper

    return make_model(
        [helper.make_node("Identity", ["x"], ["i"], name="id"),
         helper.make_node("Shape", ["i"], ["s"], name="shape"),
         helper.make_node("Cast", ["s"], ["sf"], name="cast", to=onnx.TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["sf"], ["n"], name="count", keepdims=1),
         helper.make_node("Add", ["i", "n"], ["a"], name="add"),
         helper.make_node("Clip", ["k", "lo", "hi"], ["kc"], name="clip"),
         helper.make_node("Cast", ["kc"], ["kf"], name="cast_k", to=onnx.TensorProto.FLOAT),
         helper.make_node("Mul", ["a", "kf"], ["y"], name="mul"),
         helper.make_node("Abs", ["x"], ["unread"], name="unread")],
        [("x", np.float32, [2, 3]), ("k", np.int64, [2, 3])], [("y", np.float32, [2, 3])],
        initializers={"lo": np.array(0, np.int64), "hi": np.array(5, np.int64)})


@register_pass("test-keeps-order")
class KeepsOrder(Pass):
    """Renames the first node, a change that keeps the order, and says so (for the tests)."""

    keeps = ("toposort",)

    def run(self, graph, ctx):
        graph.nodes[0].name += "_renamed"
        result = PassResult()
        result.rewrote(graph.nodes[0])
        return result


@register_pass("test-keeps-nothing")
class KeepsNothing(KeepsOrder):
    """The same change, declaring nothing (for the tests)."""

    keeps = ()


@register_pass("test-needs-order")
class NeedsOrder(Pass):
    """Needs a sorted graph, changes nothing (for the tests)."""

    needs = ("toposort",)

    def run(self, graph, ctx):
        return PassResult()


@pytest.mark.parametrize("first, sorts", [("test-keeps-order", 0), ("test-keeps-nothing", 1)])
def test_what_a_pass_keeps_is_not_provided_again(tmp_path, model_file, monkeypatch, first, sorts):
    from surgeon import pipeline

    calls = []
    real = pipeline._toposort
    monkeypatch.setattr(pipeline, "_toposort", lambda graph: calls.append(1) or real(graph))
    surgeon.run_recipe({"name": "k", "steps": [{"pass": first}, {"pass": "test-needs-order"}]}, model=model_file,
                       output=tmp_path / "o.onnx")
    assert len(calls) == sorts  # a sorted input stays held through the first step only if it keeps the order


def test_unknown_keeps_is_refused_at_registration():
    with pytest.raises(ValueError, match="unknown 'order'"):
        @register_pass("test-bad-keeps")
        class BadKeeps(Pass):
            keeps = ("order",)

            def run(self, graph, ctx):
                return PassResult()


@pytest.mark.parametrize("step, held", [
    ({"pass": "remove-node", "with": {"op_types": ["Identity"]}}, {"toposort", "shapes"}),
    ({"pass": "remove-node", "with": {"op_types": ["Cast"]}}, {"toposort"}),
    ({"pass": "rename", "with": {"inputs": {"x": "features"}, "nodes": {"mul": "scale"}}},
     {"toposort", "shapes"}),
    ({"pass": "fold-constants"}, {"toposort", "cleanup"}),
    ({"pass": "cleanup"}, {"toposort", "shapes", "cleanup"}),
    ({"pass": "toposort"}, {"toposort", "shapes"})])
def test_what_the_pipeline_holds_after_a_generic_pass_is_true(step, held):
    """After each pass on a sorted, shape-annotated graph that it changes, what the pipeline then
    believes (from the pass's `keeps` and `provides`) really holds: the graph is sorted, nothing is
    left to prune, every tensor's type is what inference says."""
    from surgeon.inference import infer_graph_shapes
    from surgeon.pipeline import run_steps
    from surgeon.recipe import load_recipe
    from surgeon.rewrite import is_sorted, prune_graph

    graph, records = run_steps(_model_with_leftovers(), load_recipe({"name": "k", "steps": [step]}))
    assert records[0].rewritten or step["pass"] == "toposort"  # the pass did change something
    assert graph.__dict__["_surgeon_state"].held == held
    if "toposort" in held:
        assert is_sorted(graph.nodes)
    if "shapes" in held:
        annotated = {t.name: (t.dtype, t.shape) for t in graph.tensors().values()}
        inferred = {t.name: (t.dtype, t.shape) for t in infer_graph_shapes(graph).tensors().values()}
        assert annotated == inferred
    if "cleanup" in held:
        assert prune_graph(graph) == []


def test_passes_that_skip_work_the_pipeline_knows_is_done_give_the_same_model(tmp_path, monkeypatch):
    """toposort on a graph held sorted and cleanup after fold-constants (which prunes) take shortcuts
    through `ctx.held`; the result is the one the full work gives."""
    from onnx import helper

    from surgeon.pass_api import Context

    model = _model_with_leftovers()
    model.graph.input.append(helper.make_tensor_value_info("unused", onnx.TensorProto.FLOAT, [1]))
    model.graph.node.append(helper.make_node("Neg", ["x"], ["dead"], name="dead"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    steps = [{"pass": "toposort"}, {"pass": "fold-constants"}, {"pass": "cleanup"}]

    def run(output):
        result = surgeon.run_recipe({"name": "h", "steps": steps}, model=path, output=output)
        return output.read_bytes(), [(r.rewritten, r.notes) for r in result.steps]

    with_shortcuts = run(tmp_path / "a.onnx")
    monkeypatch.setattr(Context, "held", property(lambda self: frozenset(), lambda self, value: None))
    without = run(tmp_path / "b.onnx")
    assert with_shortcuts == without
    names = [i.name for i in onnx.load(tmp_path / "a.onnx").graph.input]
    assert names == ["x", "k"]  # the unused input went in both


@register_pass("test-fresh-graph")
class FreshGraph(Pass):
    """Returns the graph re-imported through ONNX, as set-opset and simplify do (for the tests)."""

    def run(self, graph, ctx):
        from surgeon.rewrite import via_onnx

        FreshGraph.replaced.append(weakref.ref(graph.nodes[0]))
        result = PassResult(graph=via_onnx(graph, lambda model: model))
        result.rewrote("all")
        return result

    replaced: list = []


@register_pass("test-rebuilt-graph")
class RebuiltGraph(Pass):
    """Returns a new Graph object made of the old one's nodes and tensors (for the tests)."""

    def run(self, graph, ctx):
        import onnx_graphsurgeon as gs

        result = PassResult(graph=gs.Graph(nodes=list(graph.nodes), inputs=list(graph.inputs),
                                           outputs=list(graph.outputs), opset=graph.opset))
        result.rewrote("all")
        return result


def test_a_graph_a_pass_replaced_is_freed_at_once_unless_the_new_one_reuses_it(tmp_path, model_file, relu_model):
    import gc

    FreshGraph.replaced.clear()
    gc.disable()  # freed by reference counting, not by a collection
    try:
        surgeon.run_recipe({"name": "f", "steps": [{"pass": "test-fresh-graph"}]}, model=model_file,
                           output=tmp_path / "fresh.onnx")
        assert FreshGraph.replaced[0]() is None
    finally:
        gc.enable()
    result = surgeon.run_recipe({"name": "r", "steps": [{"pass": "test-rebuilt-graph"}]}, model=model_file,
                                output=tmp_path / "rebuilt.onnx")
    feeds = {i.name: np.ones([d.dim_value or 1 for d in i.type.tensor_type.shape.dim], np.float32)
             for i in result.model.graph.input}
    original = onnx.load(model_file)
    np.testing.assert_array_equal(run_ort(result.model, feeds)[0], run_ort(original, feeds)[0])


@register_pass("test-keeps-unknown")
class KeepsUnknown(KeepsOrder):
    """Says at run time that it keeps something the pipeline does not know (for the tests)."""

    def run(self, graph, ctx):
        result = super().run(graph, ctx)
        result.keeps = ("order",)
        return result


def test_a_run_keeping_something_unknown_is_an_error_naming_the_step(tmp_path, model_file):
    with pytest.raises(SurgeonError, match=r"step 1 .*test-keeps-unknown.* keeps \['order'\]; known:"):
        surgeon.run_recipe({"name": "u", "steps": [{"pass": "test-keeps-unknown"}]}, model=model_file,
                           output=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_summary_counts_the_unused_nodes_removed_between_steps(tmp_path, capsys):
    """The dead `Abs` of the input is pruned before clip-int (which needs shapes, so a tidy graph): the
    summary says so instead of letting the node count drop between two rows unexplained."""
    model = tmp_path / "leftovers.onnx"
    onnx.save(_model_with_leftovers(), model)
    recipe = recipe_file(tmp_path, [{"pass": "remove-node", "with": {"op_types": ["Identity"]}},
                                    {"pass": "clip-int"}], model=model)
    assert main(["run", str(recipe), "-o", str(tmp_path / "o.onnx")]) == 0
    out = capsys.readouterr().out
    assert "9->8" in out and "7->" in out
    assert "unused nodes removed between steps (in no row above): 1 before step 2" in out
    report = json.loads((tmp_path / "o.surgeon.json").read_text())
    assert [s["pruned_before"] for s in report["steps"]] == [0, 1]
    assert report["nodes"]["pruned_at_end"] == 0


def test_the_bisect_report_shows_the_unused_nodes_removed_before_a_step(tmp_path):
    from surgeon.validation.bisect import Bisection, step_graphs
    from surgeon.validation.report import _html_graph_diff

    recipe = surgeon.load_recipe({"name": "b", "steps": [{"pass": "remove-node", "with": {"op_types": ["Identity"]}},
                                                         {"pass": "clip-int"}]})
    _, records = step_graphs(recipe, _model_with_leftovers())
    assert [r.pruned_before for r in records] == [0, 1]
    bisection = Bisection(step_index=None, step_name=None, records=records)
    assert [s["pruned_before"] for s in bisection.to_dict()["steps"]] == [0, 1]
    diff = {"ops_before": {}, "ops_after": {}, "nodes_before": 9, "nodes_after": 7, "added": [], "removed": []}
    assert "1 unused removed first; 7 → 10" in _html_graph_diff(diff, bisection)


@pytest.mark.parametrize("step", [{"pass": "toposort"}, {"pass": "fold-constants"}, {"pass": "cleanup"}])
def test_the_models_metadata_and_doc_strings_survive_a_run(step):
    """graphsurgeon drops model metadata (class names, ...) and every doc string; the run puts them back
    (surgeon.* keys replaced), for the graph inputs, outputs, value infos and nodes that survive."""
    from onnx import helper

    from surgeon.testing import apply_pass

    relu = helper.make_node("Relu", ["x"], ["r"], name="relu", doc_string="node doc")
    neg = helper.make_node("Neg", ["r"], ["y"], name="neg")
    model = make_model([relu, neg], [("x", np.float32, [4])], [("y", np.float32, [4])], opset=13)
    model.metadata_props.add(key="class_names", value="car,truck")
    model.metadata_props.add(key="surgeon.recipe", value="an earlier run's")
    model.graph.input[0].doc_string = "input doc"
    model.graph.output[0].doc_string = "output doc"
    model.graph.value_info.append(helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [4], doc_string="r doc"))
    out, _ = apply_pass(model, step["pass"])
    props = {p.key: p.value for p in out.metadata_props}
    assert props["class_names"] == "car,truck" and props["surgeon.recipe"] == f"test-{step['pass']}"
    assert [n.doc_string for n in out.graph.node] == ["node doc", ""]
    assert out.graph.input[0].doc_string == "input doc" and out.graph.output[0].doc_string == "output doc"
    assert {v.name: v.doc_string for v in out.graph.value_info} == {"r": "r doc"}


def test_a_missing_model_says_when_the_validation_files_are_missing_too(tmp_path, capsys):
    """A shipped recipe run from an installed wheel: neither its sample model nor its recorded data is there."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: nowhere/m.onnx\nsteps:\n  - pass: cleanup\n"
                      "validate:\n  data: nowhere/inputs.npz\n  expected: nowhere/outputs.npz\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "o.onnx")]) == 2
    assert ("its validation files (validate.data, validate.expected) are missing too: add --no-validate, "
            "or --set them") in capsys.readouterr().err
    assert main(["run", str(recipe), "-o", str(tmp_path / "o.onnx"), "--no-validate"]) == 2
    assert "missing too" not in capsys.readouterr().err


def test_an_interrupt_after_the_model_is_written_says_so(tmp_path, model_file, monkeypatch, capsys):
    """Ctrl-C during validation: the model is written, its reports are not; "nothing was written" was false."""
    import surgeon.validation.validate as validate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(validate, "validate_models", interrupted)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsteps:\n  - pass: toposort\nvalidate:\n  seed: 1\n")
    out = tmp_path / "out" / "o.onnx"
    assert main(["run", str(recipe), str(model_file), "-o", str(out), "-q"]) == 130
    message = f"surgeon: interrupted after writing {out}; the other files were not written"
    assert capsys.readouterr().err.strip() == message
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.onnx"]
    assert main(["compare", str(model_file), str(model_file), "--report", str(tmp_path / "rep")]) == 130
    assert capsys.readouterr().err.strip() == "surgeon: interrupted; nothing was written"
    assert not list(tmp_path.glob("rep*"))


def test_quiet_runs_and_compares_still_say_why_they_failed(tmp_path, capsys):
    """-q prints errors only; a failed validation is one (it printed nothing, exit 1 with no reason)."""
    from surgeon.cli import main

    relu = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [4])],
                      [("y", np.float32, [4])])
    onnx.save(relu, tmp_path / "relu.onnx")
    onnx.save(make_model([helper.make_node("Neg", ["x"], ["y"], name="neg")], [("x", np.float32, [4])],
                         [("y", np.float32, [4])]), tmp_path / "neg.onnx")
    assert main(["compare", str(tmp_path / "relu.onnx"), str(tmp_path / "neg.onnx"), "-q"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("validation FAILED") and len(err.splitlines()) == 1
    (tmp_path / "r.yaml").write_text("steps:\n  - pass: remove-node\n    with: {op_types: [Neg]}\nvalidate: {}\n")
    assert main(["run", str(tmp_path / "r.yaml"), str(tmp_path / "neg.onnx"), "-o", str(tmp_path / "o.onnx"),
                 "-q"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("validation FAILED") and len(err.splitlines()) == 1


def test_the_aten_opset_import_goes_with_the_last_aten_node(tmp_path):
    aten = "org.pytorch.aten"
    nodes = [helper.make_node("ATen", ["y", "x"], ["a"], name="atan2", domain=aten, operator="atan2", overload_name=""),
             helper.make_node("ATen", ["a"], ["z"], name="frob", domain=aten, operator="frobnicate", overload_name="")]
    model = make_model(nodes, [("y", np.float32, [3]), ("x", np.float32, [3])], [("z", np.float32, [3])],
                       extra_opsets={"acme": 1})  # an import no node uses goes too
    onnx.save(model, tmp_path / "m.onnx")
    recipe = {"name": "t", "checker": False, "steps": [{"pass": "atan2"}]}
    kept = surgeon.run_recipe(recipe, model=tmp_path / "m.onnx", output=tmp_path / "o.onnx")
    assert {o.domain for o in kept.model.opset_import} == {"", aten}  # frobnicate still needs it
    model.graph.node.pop()
    model.graph.output[0].name = "a"
    onnx.save(model, tmp_path / "m2.onnx")
    gone = surgeon.run_recipe(recipe, model=tmp_path / "m2.onnx", output=tmp_path / "o2.onnx")
    assert [o.domain for o in gone.model.opset_import] == [""]


def test_node_metadata_is_restored_per_graph_where_body_nodes_share_a_name(tmp_path):
    """ONNX scopes node names per graph: a body's `act` and the main graph's `act` keep their own metadata
    and doc strings (the main node was given a body node's)."""
    from onnx import TensorProto

    def relu(source, x, y):
        node = helper.make_node("Relu", [x], [y], name="act", doc_string=f"doc of {source}")
        node.metadata_props.add(key="src", value=source)
        return node

    def branch(source, out):
        return helper.make_graph([relu(source, "x", out)], source, [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2])])

    nodes = [relu("main", "a", "x"), helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch("then", "t"),
                                                      else_branch=branch("else", "e"))]
    model = make_model(nodes, [("a", np.float32, [2]), ("c", np.bool_, [])], [("y", np.float32, [2])], opset=17)
    onnx.save(model, tmp_path / "m.onnx")
    result = surgeon.run_recipe({"name": "t", "steps": [{"pass": "toposort"}]}, model=tmp_path / "m.onnx",
                                output=tmp_path / "o.onnx")
    main_act, holder = result.model.graph.node
    seen = [({p.key: p.value for p in n.metadata_props}, n.doc_string)
            for n in (main_act, *(a.g.node[0] for a in holder.attribute))]
    assert seen == [({"src": "main"}, "doc of main"), ({"src": "else"}, "doc of else"),
                    ({"src": "then"}, "doc of then")]


def test_a_function_attribute_taken_by_reference_is_read(tmp_path, capsys):
    """A local function's body node may take its attribute from the calling node (`ref_attr_name`): such an
    attribute holds no value, and reading its empty tensor as one refused a model ONNX Runtime runs."""
    fill = helper.make_node("ConstantOfShape", ["shape"], ["out"])
    fill.attribute.add(name="value", ref_attr_name="fill", type=onnx.AttributeProto.TENSOR)
    function = helper.make_function("local", "Fill", ["shape"], ["out"], [fill], [helper.make_opsetid("", 17)],
                                    attributes=["fill"])
    call = helper.make_node("Fill", ["s"], ["y"], name="call", domain="local",
                            fill=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [3.5]))
    model = make_model([call], [("s", np.int64, [2])], [("y", np.float32, [2, 3])], opset=17)
    model.functions.append(function)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "m.onnx")
    result = surgeon.run_recipe({"name": "t", "target": "onnxruntime", "steps": [{"pass": "fold-constants"}],
                                 "validate": {"atol": 0}}, model=tmp_path / "m.onnx", output=tmp_path / "o.onnx")
    assert result.ok and result.validation is not None
    assert run_ort(result.model, {"s": np.array([2, 3], np.int64)})[0].tolist() == [[3.5] * 3] * 2
    assert main(["check", str(tmp_path / "m.onnx"), "--no-config"]) == 0, capsys.readouterr()


_TEXT = "Jürgen"  # the free text below; written as Latin-1 too (0xfc is not UTF-8), a space after it keeps the length


def _with_text(proto, name):
    proto.doc_string = f"{_TEXT} {name} doc"
    proto.metadata_props.add(key=f"{_TEXT} {name}", value=f"{_TEXT} value")
    return proto


def _attribute_with_doc(node, name):
    node.attribute[0].doc_string = f"{_TEXT} {name} attribute doc"
    return node


def _model_with_every_free_text() -> onnx.ModelProto:
    """Free text in every place a model holds some, each graph's value infos complete (so a no-op run has
    nothing to add): the model, the graph, its nodes, their attributes, its inputs, outputs and value infos;
    an If body and its nodes, attributes, outputs and value infos; a local function, its attributes
    (defaults and references), its nodes, their attributes and its value infos."""
    from onnx import TensorProto

    def info(name, shape=(2,)):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))

    body = _with_text(helper.make_graph(
        [_with_text(_attribute_with_doc(helper.make_node("LeakyRelu", ["k"], ["t"], name="body_lr", alpha=0.3),
                                        "body_lr"), "body_lr"),
         helper.make_node("Constant", [], ["k"], name="body_k", value_floats=[1.0, 2.0])],
        "then", [], [_with_text(info("t"), "body output")], value_info=[_with_text(info("k"), "body value_info")]),
        "body")
    body.node.sort(key=lambda n: n.name != "body_k")  # the Constant first
    other = helper.make_graph([helper.make_node("Constant", [], ["e"], name="else_k", value_floats=[3.0, 4.0])],
                              "else", [], [info("e")])
    if_node = _with_text(helper.make_node("If", ["cond"], ["u"], name="if", then_branch=body, else_branch=other), "if")
    next(a for a in if_node.attribute if a.name == "then_branch").doc_string = f"{_TEXT} then_branch attribute doc"
    fn_relu = _with_text(helper.make_node("Relu", ["x"], ["r"], name="fn_relu"), "fn_relu")
    fn_lr = _with_text(helper.make_node("LeakyRelu", ["r"], ["y"], name="fn_lr"), "fn_lr")
    fn_lr.attribute.add(name="alpha", ref_attr_name="slope", type=onnx.AttributeProto.FLOAT,
                        doc_string=f"{_TEXT} reference attribute doc")
    function = _with_text(helper.make_function("local", "Act", ["x"], ["y"], [fn_relu, fn_lr],
                                               [helper.make_opsetid("", 17)]), "function")
    function.attribute_proto.add(name="slope", f=0.5, type=onnx.AttributeProto.FLOAT,
                                 doc_string=f"{_TEXT} default attribute doc")
    function.value_info.append(_with_text(info("r"), "function value_info"))
    nodes = [_with_text(_attribute_with_doc(helper.make_node("LeakyRelu", ["a"], ["b"], name="lr", alpha=0.1), "lr"),
                        "lr"),
             helper.make_node("Act", ["b"], ["c"], name="call", domain="local"),
             if_node, helper.make_node("Add", ["c", "u"], ["y"], name="add")]
    model = make_model(nodes, [("a", np.float32, [2]), ("cond", np.bool_, [])], [("y", np.float32, [2])],
                       opset=17, extra_opsets={"local": 1})
    model.functions.append(function)
    _with_text(model.graph, "graph")
    model.graph.value_info.extend([_with_text(info("b"), "value_info"), info("c"), info("u")])
    _with_text(model.graph.input[0], "input")
    _with_text(model.graph.output[0], "output")
    _with_text(model, "model")
    model.producer_name, model.producer_version, model.domain = f"{_TEXT} producer", f"{_TEXT} 1", "org.example"
    model.model_version = 3
    onnx.checker.check_model(model, full_check=True)
    return model


def _free_text(message, path: str = "") -> dict:
    """Every doc string and metadata list `message` holds, by a path of field names and element names
    (positions where unnamed); the model's own surgeon.* keys left out."""
    found = {}
    for field, value in message.ListFields():
        where = f"{path}/{field.name}"
        if field.name == "doc_string":
            found[where] = value
        elif field.name == "metadata_props":
            found[where] = [(entry.key, entry.value) for entry in value
                            if path or not (type(entry.key) is str and entry.key.startswith("surgeon."))]
        elif field.message_type is not None:
            for index, item in enumerate(value if field.is_repeated else [value]):
                found.update(_free_text(item, f"{where}[{getattr(item, 'name', '') or index}]"))
    return found


def _without_stamp(model: onnx.ModelProto) -> onnx.ModelProto:
    kept = [p for p in model.metadata_props if not (type(p.key) is str and p.key.startswith("surgeon."))]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    return model


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_a_noop_run_keeps_every_byte_of_the_free_text(tmp_path, encoding):
    """graphsurgeon drops the graph's metadata, attribute doc strings, the text of local functions' nodes,
    their metadata and value infos, and the text of bodies' inputs, outputs and value infos: a run puts it all
    back, so a no-op run writes the model it read (with its surgeon.* stamp), text that is not UTF-8 included."""
    serialized = _model_with_every_free_text().SerializeToString()
    if encoding == "latin-1":
        serialized = serialized.replace(_TEXT.encode(), _TEXT.encode("latin-1") + b" ")
    (tmp_path / "m.onnx").write_bytes(serialized)
    result = surgeon.run_recipe({"name": "noop", "steps": []}, model=tmp_path / "m.onnx", output=tmp_path / "o.onnx")
    written = onnx.load(tmp_path / "o.onnx")
    assert _without_stamp(written).SerializeToString() == serialized
    assert len(_free_text(result.original)) == 35
    assert _free_text(result.model) == _free_text(result.original)


@register_pass("test-retype")
class Retype(Pass):
    """Turn node `lr` into an Elu of the same name and attributes, and drop the Relu of function Act's body
    (for the tests)."""

    def run(self, graph, ctx):
        lr = next(node for node in graph.nodes if node.name == "lr")
        lr.op = "Elu"
        body = graph.functions[0]
        relu = next(node for node in body.nodes if node.op == "Relu")
        body.nodes[1].inputs[0] = relu.inputs[0]
        body.nodes.remove(relu)
        result = PassResult()
        result.rewrote(lr)
        return result


@pytest.mark.parametrize("steps, renamed", [
    ([{"pass": "rename", "with": {"nodes": {"lr": "leaky", "if": "choice"}}}], {"lr": "leaky", "if": "choice"}),
    ([{"pass": "infer-shapes"}], {}),  # through an ONNX model and back: the text goes by names, not objects
])
def test_free_text_follows_the_elements_that_survive_a_rewrite(steps, renamed):
    """Renamed nodes keep their text, their attributes' and their bodies' (a body follows its holder's name)."""
    from surgeon.pipeline import finish_graph, run_steps

    original = _model_with_every_free_text()
    recipe = surgeon.load_recipe({"name": "t", "checker": False, "steps": steps})
    graph, records = run_steps(original, recipe)
    model = finish_graph(graph, original, recipe, records)
    moved = {f"/graph[test]/node[{old}]": f"/graph[test]/node[{new}]" for old, new in renamed.items()}
    expected = {}
    for path, text in _free_text(original).items():
        for old, new in moved.items():
            if path.startswith(old + "/"):
                path = new + path[len(old):]
        expected[path] = text
    assert _free_text(model) == expected


def test_free_text_is_not_put_back_on_elements_a_pass_rewrote():
    """Node `lr` became an Elu: its own doc string and metadata stay (they describe where it came from), its
    attribute's doc string does not (it was a LeakyRelu's). Function Act's body lost a node: the node that
    survives keeps its text, its attribute's included (it lost all of it), as main-graph nodes do; the value
    infos of the changed body do not come back, while the function's own text does."""
    from surgeon.testing import apply_pass

    original = _model_with_every_free_text()
    model, _ = apply_pass(original, "test-retype")
    text = _free_text(model)
    gone = {path for path in _free_text(original) if path not in text}
    assert gone == {"/graph[test]/node[lr]/attribute[alpha]/doc_string",
                    "/functions[Act]/node[fn_relu]/doc_string", "/functions[Act]/node[fn_relu]/metadata_props",
                    "/functions[Act]/value_info[r]/doc_string", "/functions[Act]/value_info[r]/metadata_props"}
    assert text["/functions[Act]/node[fn_lr]/doc_string"] == f"{_TEXT} fn_lr doc"
    assert not model.functions[0].value_info


@register_pass("test-drop-neg")
class DropNeg(Pass):
    """Drop the Neg of the first function's body (for the tests)."""

    def run(self, graph, ctx):
        body = graph.functions[0]
        neg = next(node for node in body.nodes if node.op == "Neg")
        body.nodes[2].inputs[0] = neg.inputs[0]
        body.nodes.remove(neg)
        result = PassResult()
        result.rewrote(neg)
        return result


def _two_nodes_named_act(second_text: bool) -> onnx.ModelProto:
    """A Relu and a Neg both named `act` in one graph (ONNX wants node names unique, exporters do not always
    oblige), each with its own text, or the second without any."""
    first = _with_text(helper.make_node("Relu", ["x"], ["r"], name="act"), "first")
    second = helper.make_node("Neg", ["r"], ["y"], name="act")
    model = make_model([first, _with_text(second, "second") if second_text else second],
                       [("x", np.float32, [4])], [("y", np.float32, [4])], opset=17)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("second_text", [True, False])
def test_nodes_sharing_a_name_keep_their_own_text(second_text):
    """Nodes of one name in one graph are told apart by op type, domain and outputs, as unnamed nodes are
    (both got the text of one of them, the last's where both had some, the first's where only it had)."""
    from surgeon.testing import apply_pass

    original = _two_nodes_named_act(second_text)
    model, _ = apply_pass(original, "toposort")
    seen = [(n.op_type, n.doc_string, [(p.key, p.value) for p in n.metadata_props]) for n in model.graph.node]
    assert seen == [("Relu", f"{_TEXT} first doc", [(f"{_TEXT} first", f"{_TEXT} value")]),
                    ("Neg", f"{_TEXT} second doc", [(f"{_TEXT} second", f"{_TEXT} value")]) if second_text else
                    ("Neg", "", [])]


def test_the_surviving_nodes_of_a_function_body_a_pass_changed_keep_their_text():
    """A function body that lost a node, whose other nodes are unnamed and share a name: each node that survives
    gets its own text back (the whole body's text was lost)."""
    from surgeon.testing import apply_pass

    nodes = [_with_text(helper.make_node("Relu", ["x"], ["r"]), "relu"),
             _with_text(helper.make_node("Neg", ["r"], ["n"], name="same"), "neg"),
             _with_text(helper.make_node("Abs", ["n"], ["y"], name="same"), "abs")]
    function = helper.make_function("local", "Act", ["x"], ["y"], nodes, [helper.make_opsetid("", 17)])
    model = make_model([helper.make_node("Act", ["a"], ["b"], name="call", domain="local")],
                       [("a", np.float32, [2])], [("b", np.float32, [2])], opset=17, extra_opsets={"local": 1})
    model.functions.append(function)
    onnx.checker.check_model(model)
    out, _ = apply_pass(model, "test-drop-neg")
    assert [(n.op_type, n.doc_string) for n in out.functions[0].node] == [("Relu", f"{_TEXT} relu doc"),
                                                                         ("Abs", f"{_TEXT} abs doc")]
    assert [p.key for n in out.functions[0].node for p in n.metadata_props] == [f"{_TEXT} relu", f"{_TEXT} abs"]


def test_free_text_of_a_graph_without_bodies_is_kept_byte_for_byte(tmp_path):
    """A graph without bodies or functions is not walked looking for them (graphio's import says so); its own
    free text that is not UTF-8 is still decoded for graphsurgeon and written back as it was."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2])],
                       [("y", np.float32, [2])])
    model.graph.doc_string, model.producer_name = f"{_TEXT} graph", f"{_TEXT} producer"
    serialized = model.SerializeToString().replace(_TEXT.encode(), _TEXT.encode("latin-1") + b" ")
    (tmp_path / "m.onnx").write_bytes(serialized)
    surgeon.run_recipe({"name": "noop", "steps": [{"pass": "cleanup"}]}, model=tmp_path / "m.onnx",
                       output=tmp_path / "o.onnx")
    assert _without_stamp(onnx.load(tmp_path / "o.onnx")).SerializeToString() == serialized


def test_a_function_holding_a_body_keeps_its_text(tmp_path):
    """A local function whose body holds an If: decoding its text for graphsurgeon recursed without end (a
    body's `functions` are the model's, the function among them), and the text of the If's branches, their
    nodes' included, was lost or written escaped."""
    from onnx import TensorProto

    def branch(tag):
        node = _with_text(helper.make_node("Neg", ["x"], [f"o{tag}"], name=f"neg{tag}"), f"branch {tag} node")
        return _with_text(helper.make_graph([node], f"b{tag}", [],
                                            [helper.make_tensor_value_info(f"o{tag}", TensorProto.FLOAT, [2])]),
                          f"branch {tag}")

    choose = helper.make_node("If", ["c"], ["y"], name="choose", then_branch=branch("t"), else_branch=branch("e"))
    function = helper.make_function("local", "Gate", ["x", "c"], ["y"], [choose], [helper.make_opsetid("", 17)])
    call = helper.make_node("Gate", ["x", "c"], ["y"], name="call", domain="local")
    model = make_model([call], [("x", np.float32, [2]), ("c", np.bool_, [])], [("y", np.float32, [2])], opset=17,
                       extra_opsets={"local": 1})
    model.functions.append(function)
    serialized = model.SerializeToString().replace(_TEXT.encode(), _TEXT.encode("latin-1") + b" ")
    (tmp_path / "m.onnx").write_bytes(serialized)
    surgeon.run_recipe({"name": "noop", "steps": []}, model=tmp_path / "m.onnx", output=tmp_path / "o.onnx")
    assert _without_stamp(onnx.load(tmp_path / "o.onnx")).SerializeToString() == serialized


def _model_with_unnamed_nodes() -> onnx.ModelProto:
    """Free text on unnamed nodes (doc strings, metadata with keys out of order, attribute doc strings) and on
    two unnamed Ifs, their bodies and their bodies' unnamed nodes; every value info there, so a no-op run has
    nothing to add."""
    from onnx import TensorProto

    def info(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])

    def branch(out, tag):
        node = _with_text(helper.make_node("Constant", [], [out], value_floats=[1.0, 2.0]), f"{tag} node")
        return _with_text(helper.make_graph([node], tag, [], [_with_text(info(out), f"{tag} output")]), tag)

    relu = _with_text(helper.make_node("Relu", ["x"], ["a"]), "relu")
    relu.metadata_props.add(key="a first", value="written after")  # kept in the input's order
    leaky = _attribute_with_doc(helper.make_node("LeakyRelu", ["a"], ["b"], alpha=0.1), "leaky")
    ifs = [_with_text(helper.make_node("If", ["c"], [out], then_branch=branch(f"{out}_then", f"{out} then"),
                                       else_branch=branch(f"{out}_else", f"{out} else")), out)
           for out in ("u1", "u2")]
    nodes = [relu, leaky, *ifs, helper.make_node("Sum", ["b", "u1", "u2"], ["y"])]
    model = make_model(nodes, [("x", np.float32, [2]), ("c", np.bool_, [])], [("y", np.float32, [2])], opset=17)
    model.graph.value_info.extend([info("a"), _with_text(info("b"), "b"), info("u1"), info("u2")])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_unnamed_nodes_keep_their_free_text(tmp_path):
    """Unnamed nodes go by op and outputs: a no-op run lost their doc strings, metadata and attribute doc strings,
    gave both unnamed Ifs' bodies the text of one, and sorted a node's metadata keys."""
    serialized = _model_with_unnamed_nodes().SerializeToString()
    (tmp_path / "m.onnx").write_bytes(serialized)
    result = surgeon.run_recipe({"name": "noop", "steps": [{"pass": "cleanup"}]}, model=tmp_path / "m.onnx",
                                output=tmp_path / "o.onnx")
    assert len(_free_text(result.original)) == 33
    assert _without_stamp(onnx.load(tmp_path / "o.onnx")).SerializeToString() == serialized


def test_unnamed_nodes_keep_their_free_text_when_their_outputs_are_renamed():
    """An unnamed node is found by its outputs' names in the input model, whatever `rename` made of them."""
    from surgeon.testing import apply_pass

    original = _model_with_unnamed_nodes()
    model, _ = apply_pass(original, "rename", tensors={"b": "leaky_out", "u1": "u2", "u2": "u1"})
    _without_stamp(model)
    # The Ifs swapped output names: each keeps its own text and its bodies', found by its output's original name.
    moved = {"value_info[b]": "value_info[leaky_out]"}
    expected = {}
    for path, text in _free_text(original).items():
        for old, new in moved.items():
            path = path.replace(old, new)
        expected[path] = text
    assert _free_text(model) == expected
    assert [n.doc_string for n in model.graph.node[2:4]] == [f"{_TEXT} u1 doc", f"{_TEXT} u2 doc"]
    assert [n.attribute[0].g.doc_string for n in model.graph.node[2:4]] == [f"{_TEXT} u1 else doc",
                                                                           f"{_TEXT} u2 else doc"]


@pytest.mark.parametrize("renames, expected", [
    ({"outputs": {"boxes": "scores", "scores": "boxes"}}, {"x": "x", "scores": "boxes", "boxes": "scores"}),
    ({"outputs": {"boxes": "bboxes"}, "inputs": {"x": "points"}},
     {"points": "x", "bboxes": "boxes", "scores": "scores"}),
])
def test_graph_inputs_and_outputs_keep_their_text_when_renamed(renames, expected):
    """The doc strings and metadata of graph inputs, outputs and value infos follow the tensor, not its name: a
    swap gave each output the other's, a rename dropped them."""
    from surgeon.testing import apply_pass

    nodes = [helper.make_node("Relu", ["x"], ["boxes"], name="n_boxes"),
             helper.make_node("Sigmoid", ["x"], ["scores"], name="n_scores")]
    model = make_model(nodes, [("x", np.float32, [2])], [("boxes", np.float32, [2]), ("scores", np.float32, [2])],
                       opset=17)
    for info in (*model.graph.input, *model.graph.output):
        _with_text(info, info.name)
    out, _ = apply_pass(model, "rename", **renames)
    seen = {info.name: (info.doc_string, [(p.key, p.value) for p in info.metadata_props])
            for info in (*out.graph.input, *out.graph.output)}
    assert seen == {new: (f"{_TEXT} {old} doc", [(f"{_TEXT} {old}", f"{_TEXT} value")])
                    for new, old in expected.items()}


def _atan2_in_if_body(condition_is_constant: bool):
    """ATen atan2 in an If's then-branch; the condition a graph input, or a constant initializer."""
    atan2 = helper.make_node("ATen", ["y", "x"], ["angle"], name="inner_site", domain="org.pytorch.aten",
                             operator="atan2", overload_name="")
    info = helper.make_tensor_value_info
    then_branch = helper.make_graph([atan2], "then", [], [info("angle", onnx.TensorProto.FLOAT, [2])])
    else_branch = helper.make_graph([helper.make_node("Identity", ["y"], ["same"], name="copy")], "else", [],
                                    [info("same", onnx.TensorProto.FLOAT, [2])])
    branch = helper.make_node("If", ["c"], ["r"], name="if", then_branch=then_branch, else_branch=else_branch)
    inputs = [("y", np.float32, [2]), ("x", np.float32, [2])] + ([] if condition_is_constant else [("c", np.bool_, [])])
    model = make_model([branch], inputs, [("r", np.float32, [2])], opset=13,
                       initializers={"c": np.array(True)} if condition_is_constant else None)
    return model


@pytest.mark.parametrize("condition_is_constant", [False, True])
def test_a_site_inside_a_body_is_noted_with_what_check_suggests(tmp_path, condition_is_constant):
    """Passes rewrite the main graph only: a handled op inside an If body gets a note naming its path and, as
    `surgeon check` phrases it, what to run first (simplify folds an If on a constant condition) or why
    nothing will reach it."""
    model_file = tmp_path / "m.onnx"
    onnx.save(_atan2_in_if_body(condition_is_constant), model_file)
    from surgeon.pipeline import run_recipe

    result = run_recipe({"name": "t", "target": "onnxruntime", "steps": [{"pass": "atan2"}]},
                        model_file, dry_run=True, validate=False)
    (step,) = result.steps
    assert step.rewritten == [] and len(step.notes) == 1
    assert step.notes[0].startswith("if/then_branch/inner_site (ATen:atan2): left")
    if condition_is_constant:
        assert step.notes[0].endswith("passes do not visit an If/Loop/Scan body: run simplify, then atan2")
    else:
        assert "which no pass rewrites" in step.notes[0]
    cleanup = run_recipe({"name": "t", "steps": [{"pass": "cleanup"}]}, model_file, dry_run=True,
                         validate=False)
    assert cleanup.steps[0].notes == []  # a pass handling no op notes nothing


@pytest.mark.parametrize("steps", [["chunk", "any-all"], ["grid-sample"]])
def test_a_node_in_a_body_the_target_runs_is_not_noted(tmp_path, steps):
    """A Split, ReduceSum (float32) and GridSample-16 (float32) inside an If body run on ONNX Runtime as they
    are: `surgeon check` flags none of them, so the passes that handle those ops note none of them."""
    info = helper.make_tensor_value_info

    def branch(tag):
        nodes = [helper.make_node("Split", ["x"], [f"a_{tag}", f"b_{tag}"], name=f"split_{tag}", axis=1),
                 helper.make_node("ReduceSum", [f"a_{tag}"], [f"s_{tag}"], name=f"sum_{tag}", keepdims=1),
                 helper.make_node("GridSample", ["x4", "grid"], [f"g_{tag}"], name=f"gs_{tag}")]
        return helper.make_graph(nodes, tag, [], [info(f"s_{tag}", onnx.TensorProto.FLOAT, [2, 1]),
                                                  info(f"g_{tag}", onnx.TensorProto.FLOAT, [1, 1, 2, 2])])

    branch_node = helper.make_node("If", ["c"], ["s", "g"], name="if", then_branch=branch("then"),
                                   else_branch=branch("else"))
    model = make_model([branch_node], [("c", np.bool_, []), ("x", np.float32, [2, 4]),
                                       ("x4", np.float32, [1, 1, 3, 3]), ("grid", np.float32, [1, 2, 2, 2])],
                       [("s", np.float32, [2, 1]), ("g", np.float32, [1, 1, 2, 2])], opset=16)
    model_file = tmp_path / "m.onnx"
    onnx.save(model, model_file)
    from surgeon.pipeline import run_recipe

    result = run_recipe({"name": "t", "target": "onnxruntime", "steps": [{"pass": step} for step in steps]},
                        model_file, dry_run=True, validate=False)
    assert [step.notes for step in result.steps] == [[] for _ in steps]

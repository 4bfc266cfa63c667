"""What a run does not take on trust from a pass: the input model it is shown, a change it does not report,
and where a third-party pass comes from."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper
import pytest

import surgeon
from surgeon.pass_api import Pass, PassResult, register_pass
from surgeon.registry import load_plugin_file
from surgeon.testing import make_model

from test_pipeline import write_noop_plugin

SILENT_NOTE = "changed the graph's nodes without reporting a rewrite"


@pytest.fixture
def weight_model_file(tmp_path):
    """y = x + w, w = [1, 1, 1, 1]."""
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [("x", np.float32, [4])],
                       [("y", np.float32, [4])], initializers={"w": np.ones(4, np.float32)})
    path = tmp_path / "w.onnx"
    onnx.save(model, path)
    return path


@register_pass("test-edit-input-model")
class EditInputModel(Pass):
    """Sets w to 5 in the graph (a wrong rewrite) and in `ctx.input_model`, which would hide it from
    validation were that the model the run validates against; records what it was shown of w."""

    seen: list[onnx.TensorProto] = []

    def run(self, graph, ctx):
        shown = ctx.input_model.graph.initializer[0]
        EditInputModel.seen.append(onnx.TensorProto.FromString(shown.SerializeToString()))
        shown.CopyFrom(numpy_helper.from_array(np.full(4, 5, np.float32), shown.name))
        weight = graph.nodes[0].inputs[1]
        weight.values = np.full(4, 5, np.float32)
        result = PassResult()
        result.rewrote(graph.nodes[0])
        return result


def test_a_pass_editing_the_input_model_changes_neither_the_baseline_nor_the_input(tmp_path, weight_model_file):
    before = weight_model_file.read_bytes()
    EditInputModel.seen.clear()
    result = surgeon.run_recipe({"name": "t", "steps": [{"pass": "test-edit-input-model"}],
                                 "validate": {"atol": 1e-6}}, model=weight_model_file, output=tmp_path / "o.onnx")
    assert not result.ok  # the output's w is 5, the input's 1: validation compares against the input as read
    assert result.original.SerializeToString() == before and weight_model_file.read_bytes() == before
    written = onnx.load(tmp_path / "o.onnx").graph.initializer[0]
    assert numpy_helper.to_array(written).tolist() == [5.0] * 4
    shown, = EditInputModel.seen  # the weights' names, types and dims, not their data
    assert (shown.name, list(shown.dims), shown.data_type) == ("w", [4], onnx.TensorProto.FLOAT)
    assert not shown.raw_data and not shown.float_data


@register_pass("test-add-relu-silently")
class AddReluSilently(Pass):
    """Puts a Relu after the graph output's producer, first in the node list, and reports no rewrite."""

    def run(self, graph, ctx):
        out = graph.outputs[0]
        before = gs.Variable(ctx.new_name(out.name + "_pre", graph), dtype=out.dtype, shape=out.shape)
        out.inputs[0].outputs[0] = before
        graph.nodes.insert(0, gs.Node("Relu", name=ctx.new_name("relu", graph), inputs=[before], outputs=[out]))
        return PassResult()


@pytest.mark.parametrize("checker", [True, False])
def test_a_change_a_pass_does_not_report_is_still_tidied_and_counted(tmp_path, weight_model_file, checker):
    result = surgeon.run_recipe({"name": "t", "checker": checker,
                                 "steps": [{"pass": "toposort"}, {"pass": "test-add-relu-silently"}]},
                                model=weight_model_file, output=tmp_path / "o.onnx")
    assert [n.op_type for n in onnx.load(tmp_path / "o.onnx").graph.node] == ["Add", "Relu"]  # sorted again
    sorting, silent = result.steps
    assert silent.op_delta == {"Relu": 1} and silent.rewritten == []
    assert any(SILENT_NOTE in note for note in silent.notes)
    assert not any(SILENT_NOTE in note for note in sorting.notes)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refuse_entry_point_walk(monkeypatch) -> None:
    """From now on, walking the installed packages' entry points fails: a run's records come from what the
    registry learnt when it loaded them, not from a walk per step."""
    from importlib import metadata

    from surgeon.registry import discover

    discover()

    def walked(*args, **kwargs):
        raise AssertionError("the installed entry points were walked again")

    monkeypatch.setattr(metadata, "entry_points", walked)


def test_a_plugin_files_pass_is_recorded_with_its_file_and_hash(tmp_path, weight_model_file, monkeypatch):
    plugin = write_noop_plugin(tmp_path / "trust_plugin_passes.py", "test-trust-plugin-noop")
    load_plugin_file(plugin)
    refuse_entry_point_walk(monkeypatch)
    out = tmp_path / "o.onnx"
    surgeon.run_recipe({"name": "t", "steps": [{"pass": "toposort"}, {"pass": "test-trust-plugin-noop"}]},
                       model=weight_model_file, output=out)
    stamped = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["surgeon.steps"])
    # The file's name, not its path: the same run from another folder writes the same bytes.
    assert stamped == [{"pass": "toposort", "with": {}},
                       {"pass": "test-trust-plugin-noop", "with": {},
                        "origin": {"file": "trust_plugin_passes.py", "sha256": sha256(plugin)}}]
    built_in, plugged = json.loads((tmp_path / "o.surgeon.json").read_text())["steps"]
    assert "origin" not in built_in
    assert plugged["origin"] == {"module": surgeon.get_pass("test-trust-plugin-noop").__module__,
                                 "file": str(plugin), "sha256": sha256(plugin)}


def test_an_entry_point_pass_is_recorded_with_its_package_and_version(tmp_path, weight_model_file, monkeypatch):
    from surgeon.registry import load_entry_points

    write_noop_plugin(tmp_path / "trust_ep_passes.py", "test-trust-entry-point-noop")
    info = tmp_path / "trust_ep-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trust-ep\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[surgeon.passes]\ntrust = trust_ep_passes\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "test-trust-entry-point-noop" in load_entry_points()  # as `discover` loads an installed package's
    refuse_entry_point_walk(monkeypatch)
    out = tmp_path / "o.onnx"
    surgeon.run_recipe({"name": "t", "steps": [{"pass": "test-trust-entry-point-noop"}] * 2},
                       model=weight_model_file, output=out)
    module_file = tmp_path / "trust_ep_passes.py"
    origin = {"file": module_file.name, "package": "trust-ep 1.2.3", "sha256": sha256(module_file)}
    stamped = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["surgeon.steps"])
    assert [step["origin"] for step in stamped] == [origin] * 2
    recorded = json.loads((tmp_path / "o.surgeon.json").read_text())["steps"]
    assert [step["origin"] for step in recorded] == [
        {**origin, "module": "trust_ep_passes", "file": str(module_file)}] * 2

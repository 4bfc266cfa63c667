"""`surgeon inspect --tensors`: the tensor listing that makes `extract` cut points findable."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from surgeon.cli import main
from surgeon.testing import make_model

REPO = Path(__file__).resolve().parent.parent
ZOO = REPO / "tests" / "data" / "zoo"
CAMERA = ZOO / "bevfusion-camera.fixture.opset11-aten.onnx"


def inspect_json(capsys, *argv) -> dict:
    assert main(["inspect", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("export, cut", [
    ("opset11-aten", ["/backbone/Transpose_1_output_0", "/backbone/Transpose_2_output_0"]),
    ("opset16", ["/backbone/Softmax_output_0", "/backbone/Transpose_output_0"])])
def test_the_backbone_cut_points_are_the_backbone_tensors_read_outside_it(capsys, export, cut):
    """docs/model-recipes.md: `--tensors /backbone/` lists them, with their readers /Reshape and /Reshape_1."""
    tensors = inspect_json(capsys, ZOO / f"bevfusion-camera.fixture.{export}.onnx", "--tensors", "/backbone/")["tensors"]
    assert tensors["shapes_from"] == "the model and ONNX shape inference"  # the exports record no value_info
    read_outside = {t["name"]: t["read_by"] for t in tensors["list"]
                    if any(not reader.startswith("/backbone/") for reader in t["read_by"])}
    assert read_outside == {cut[0]: ["/Reshape"], cut[1]: ["/Reshape_1"]}
    if export == "opset11-aten":
        recipe = yaml.safe_load((REPO / "recipes" / "bevfusion-camera-backbone-split.yaml").read_text())
        assert recipe["prepend_steps"][0]["with"]["outputs"] == cut
        by_name = {t["name"]: t for t in tensors["list"]}
        assert by_name[cut[0]] == {"name": cut[0], "op": "Transpose", "producer": "/backbone/Transpose_1",
                                   "dtype": "float32", "shape": [6, 15, 8, 22], "read_by": ["/Reshape"],
                                   "graph_output": False}


def test_the_text_listing_replaces_the_summary(capsys):
    assert main(["inspect", str(CAMERA), "--tensors", "Transpose_2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"{CAMERA}: 1 of 285 tensors matching 'Transpose_2' "
                        "(shapes from the model and ONNX shape inference)")
    assert lines[1].split() == ["tensor", "op", "producer", "dtype", "shape", "read", "by"]
    assert lines[3].split() == ["/backbone/Transpose_2_output_0", "Transpose", "/backbone/Transpose_2", "float32",
                                "6x8x22x8", "1:", "/Reshape_1"]
    assert len(lines) == 4


def small_model():
    """x -> Relu (named r_node) -> r -> Neg -> y (graph output), r -> Abs -> a -> custom op -> z."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="r_node"),
             helper.make_node("Neg", ["r"], ["y"], name="neg"),
             helper.make_node("Abs", ["r"], ["a"], name="abs"),
             helper.make_node("Mystery", ["a"], ["z"], name="mystery", domain="custom.ops")]
    return make_model(nodes, [("x", np.float32, [2, 3])], [("y", np.float32, [2, 3]), ("z", np.float32, None)],
                      initializers={"unused_w": np.ones(3, np.float32)})


def test_filters_match_tensor_or_producer_names_as_substring_or_glob(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(small_model(), path)

    def names(pattern):
        return [t["name"] for t in inspect_json(capsys, path, "--tensors", pattern)["tensors"]["list"]]

    assert names("") == ["x", "r", "y", "a", "z"]  # graph order; the initializer is not listed
    assert names("R_NODE") == ["r"]  # the producer's name, case-insensitive
    assert names("?") == ["x", "r", "y", "a", "z"]  # a glob: whole names of one character
    assert names("*node") == ["r"] and names("node") == ["r"]
    assert names("[ay]") == ["y", "a"]


def test_unknown_shapes_are_said_and_graph_outputs_marked(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(small_model(), path)
    tensors = inspect_json(capsys, path, "--tensors")["tensors"]
    by_name = {t["name"]: t for t in tensors["list"]}
    assert by_name["a"]["shape"] == [2, 3]  # inferred: the model records no value_info for it
    assert (by_name["z"]["op"], by_name["z"]["dtype"], by_name["z"]["shape"]) == ("custom.ops::Mystery", "float32", None)
    assert by_name["r"]["read_by"] == ["neg", "abs"] and by_name["y"]["graph_output"] and by_name["y"]["read_by"] == []
    assert by_name["x"]["op"] == "graph input" and by_name["x"]["producer"] == ""
    assert tensors["unknown_shapes"] == 1
    assert main(["inspect", str(path), "--tensors", "z"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("(shapes from the model and ONNX shape inference; 1 unknown)")
    assert out[3].split() == ["z", "custom.ops::Mystery", "mystery", "float32", "?", "0", "+", "graph", "output"]


def test_a_model_with_every_shape_is_not_inferred(tmp_path, capsys):
    model = small_model()
    model.graph.value_info.extend([helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 3]),
                                   helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3])])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    tensors = inspect_json(capsys, path, "--tensors", "a")["tensors"]
    assert tensors["shapes_from"] == "the model" and tensors["list"][0]["shape"] == ["n", 3]


def test_loop_body_tensors_are_counted_not_listed_and_what_bodies_read_is_read_by_the_loop(capsys):
    """bevfusion-camera at opset 16 keeps repeat_interleave as a Loop whose body reads outer tensors."""
    path = ZOO / "bevfusion-camera.fixture.opset16.onnx"
    model = onnx.load(path, load_external_data=False)
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    body = next(a.g for a in loop.attribute if a.name == "body")
    body_local = {v.name for v in body.input} | {o for n in body.node for o in n.output}
    outer = next(name for n in body.node for name in n.input if name and name not in body_local)
    assert outer not in loop.input

    tensors = inspect_json(capsys, path, "--tensors")["tensors"]
    listed = {t["name"]: t for t in tensors["list"]}
    assert loop.name in listed[outer]["read_by"]
    assert tensors["in_subgraphs_not_listed"] == sum(len(n.output) for n in body.node) > 0
    assert not body_local & set(listed)
    assert main(["inspect", str(path), "--tensors", "Loop"]) == 0
    out = capsys.readouterr().out
    assert f"{tensors['in_subgraphs_not_listed']} tensors inside If/Loop/Scan bodies are not listed" in out


def test_the_summary_is_unchanged_without_tensors(capsys):
    info = inspect_json(capsys, CAMERA)
    assert "tensors" not in info and info["nodes"] == 278


def test_element_types_that_are_no_data_type_show_as_their_number():
    """`read_model` refuses them in a model; shape inference's results reach `_value_info` unread."""
    from surgeon.commands.inspect import _value_info

    dtypes = [_value_info(helper.make_tensor_value_info("x", elem_type, [1]))["dtype"]
              for elem_type in (TensorProto.FLOAT, TensorProto.FLOAT4E2M1, 0, 999)]
    assert dtypes == ["float32", "float4_e2m1fn", "?", "type 999"]


def test_free_text_that_is_not_utf8_is_shown_escaped(tmp_path, capsys):
    """ONNX allows any bytes in metadata and producer fields; JSON keys must be text."""
    from surgeon.modelio import set_text_field

    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2])],
                       [("y", np.float32, [2])])
    entry = model.metadata_props.add()
    set_text_field(entry, "key", b"J\xfcrgen")
    set_text_field(entry, "value", b"caf\xe9")
    set_text_field(model, "producer_name", b"J\xfcrgen")
    onnx.save(model, tmp_path / "m.onnx")
    assert main(["inspect", str(tmp_path / "m.onnx"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metadata"] == {"J\\xfcrgen": "caf\\xe9"} and summary["producer"].startswith("J\\xfcrgen")

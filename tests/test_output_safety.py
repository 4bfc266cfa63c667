"""No command writes over its inputs, a folder or a device, and unreadable models are one clear error.

Every output (OUT, its sidecars, validation reports, compare/check reports, export files) is checked by
`modelio.guard_outputs` before any work: exit 2, one line naming the path, nothing written, inputs
unchanged. Models are binary protobuf with external data inside their folder, or one clear error.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper

from surgeon.cli import main
from surgeon.errors import SurgeonError
from surgeon.modelio import guard_outputs, load_model, write_text_atomic
from surgeon.testing import make_model


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder with good.onnx (x -> Relu -> Neg -> y), ext.onnx (its weight in w.bin) and basic.yaml."""
    monkeypatch.chdir(tmp_path)
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="relu"), helper.make_node("Neg", ["t"], ["y"], name="neg")]
    onnx.save(make_model(nodes, [("x", np.float32, [1, 4])], [("y", np.float32, [1, 4])]), "good.onnx")
    add = helper.make_node("Add", ["x", "w"], ["y"], name="add")
    ext = make_model([add], [("x", np.float32, [1, 4])], [("y", np.float32, [1, 4])],
                     initializers={"w": np.ones((1, 4), np.float32)})
    onnx.save(ext, "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    write_recipe("basic.yaml", {"name": "basic", "steps": [{"pass": "toposort"}, {"pass": "cleanup"}]})
    return tmp_path


def write_recipe(path, data) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(data))
    return Path(path)


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its digest (folders and special files by kind)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_fifo():
            found[str(path)] = "fifo"
        elif path.is_dir():
            found[str(path)] = "dir"
        else:
            found[str(path)] = sha(path)
    return found


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, work, *argv, says):
    """Run the command; assert exit 2, one stderr line saying `says`, and that no file changed or appeared."""
    before = snapshot(work)
    code, out, err = cli(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("surgeon: error: ") and err.count("\n") == 1, err
    assert says in err, err
    assert "Traceback" not in err
    assert snapshot(work) == before
    return err


# ---------------------------------------------------------------- run


def test_run_refuses_a_device_or_pipe_and_dry_run_discards_instead(work, capsys):
    os.mkfifo("sink")
    err = refused(capsys, work, "run", "basic.yaml", "good.onnx", "-o", "sink",
                  says="sink: is a pipe, not a regular file: refusing to replace it with the output model")
    assert "use --dry-run" in err
    assert cli(capsys, "run", "basic.yaml", "good.onnx", "-o", "sink", "--dry-run", "-q")[0] == 0
    assert Path("sink").is_fifo() and not Path("sink.surgeon.json").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mknod needs root")
def test_run_refuses_a_character_device(work, capsys):
    os.mknod("fakenull", 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))
    refused(capsys, work, "run", "basic.yaml", "good.onnx", "-o", "fakenull", says="fakenull: is a device")


def test_run_refuses_to_overwrite_the_recipe_the_model_and_its_external_data(work, capsys):
    refused(capsys, work, "run", "basic.yaml", "good.onnx", "-o", "basic.yaml",
            says="refusing to overwrite the recipe basic.yaml with the output model (choose another -o)")
    refused(capsys, work, "run", "basic.yaml", "good.onnx", "-o", "good.onnx",
            says="refusing to overwrite the input model good.onnx with the output model")
    refused(capsys, work, "run", "basic.yaml", "ext.onnx", "-o", "w.bin",
            says="refusing to overwrite the input model's external data w.bin with the output model")
    os.symlink("good.onnx", "link.onnx")  # another spelling of the input
    refused(capsys, work, "run", "basic.yaml", "good.onnx", "-o", "link.onnx",
            says="refusing to overwrite the input model good.onnx with the output model link.onnx")


def test_run_refuses_to_overwrite_any_recipe_of_the_extends_chain(work, capsys):
    write_recipe("child/child.yaml", {"name": "child", "extends": "../basic.yaml", "steps": [{"pass": "toposort"}]})
    refused(capsys, work, "run", "child/child.yaml", "good.onnx", "-o", "basic.yaml",
            says="refusing to overwrite the recipe basic.yaml with the output model")


def test_run_refuses_to_overwrite_validate_files_even_through_a_sidecar(work, capsys):
    np.savez("inputs.npz", x=np.ones((1, 4), np.float32))
    write_recipe("rv/v.yaml", {"name": "v", "steps": [{"pass": "toposort"}], "validate": {"data": "../inputs.npz"}})
    refused(capsys, work, "run", "rv/v.yaml", "good.onnx", "-o", "inputs.npz",
            says="refusing to overwrite the recipe's validate.data inputs.npz with the output model")
    # the validation report of OUT `x.onnx` goes to x.validation.{md,html,json,...}
    np.savez("x.validation.json", y=np.ones((1, 4), np.float32))
    write_recipe("rv/e.yaml", {"name": "e", "steps": [{"pass": "toposort"}],
                               "validate": {"expected": "../x.validation.json"}})
    refused(capsys, work, "run", "rv/e.yaml", "good.onnx", "-o", "x.onnx",
            says="refusing to overwrite the recipe's validate.expected x.validation.json with the validation report")


def test_run_output_paths_that_are_folders_or_below_a_file(work, capsys):
    Path("dir.onnx").mkdir()
    refused(capsys, work, "run", "basic.yaml", "good.onnx", "-o", "dir.onnx",
            says="dir.onnx: is a folder; cannot write the output model there")
    refused(capsys, work, "run", "basic.yaml", "good.onnx", "-o", "out/",
            says="out/: names a folder; the output model needs a file name")
    refused(capsys, work, "run", "basic.yaml", "good.onnx", "-o", "good.onnx/x.onnx",
            says="good.onnx/x.onnx: cannot write the output model there: good.onnx is a file, not a folder")
    Path("out2/x.surgeon.json").mkdir(parents=True)  # the sidecar's place is taken: OUT is not written either
    refused(capsys, work, "run", "basic.yaml", "good.onnx", "-o", "out2/x.onnx",
            says="out2/x.surgeon.json: is a folder; cannot write the run report there")


def test_run_writes_binary_protobuf_whatever_the_extension(work, capsys):
    assert cli(capsys, "run", "basic.yaml", "good.onnx", "-o", "out/m.json", "-q")[0] == 0
    assert onnx.load("out/m.json", format="protobuf").graph.node[0].name == "relu"
    assert load_model("out/m.json").graph.node[0].name == "relu"  # and reads it back, as binary


def test_the_api_keeps_the_old_message(work):
    with pytest.raises(SurgeonError, match="refusing to overwrite the input"):
        __import__("surgeon").run_recipe("basic.yaml", model="good.onnx", output="good.onnx")


# ---------------------------------------------------------------- check, compare, export, zoo


def test_check_report_never_replaces_a_checked_file(work, capsys):
    refused(capsys, work, "check", "good.onnx", "-o", "good.onnx", "--no-config",
            says="refusing to overwrite the checked model good.onnx with the report (choose another -o)")
    refused(capsys, work, "check", "ext.onnx", "good.onnx", "-o", "w.bin", "--no-config",
            says="refusing to overwrite the checked model's external data w.bin with the report")
    refused(capsys, work, "check", "basic.yaml", "-o", "basic.yaml", "--no-config",
            says="refusing to overwrite the checked recipe basic.yaml")
    Path("dir.txt").mkdir()
    refused(capsys, work, "check", "good.onnx", "-o", "dir.txt", "--no-config", says="dir.txt: is a folder")
    refused(capsys, work, "check", "good.onnx", "-o", "good.onnx/x", "--no-config",
            says="good.onnx is a file, not a folder")
    code, _, _ = cli(capsys, "check", "good.onnx", "-o", "report.txt", "--no-config")
    assert code == 0 and Path("report.txt").read_text() == "no findings in 1 file\n"


def test_compare_report_never_replaces_an_input(work, capsys):
    Path("dd.json").write_text("[]\n")  # the guard runs before the data is read
    refused(capsys, work, "compare", "good.onnx", "good.onnx", "--data", "dd.json", "--report", "dd",
            says="refusing to overwrite the --data file dd.json with the report (choose another --report)")
    refused(capsys, work, "compare", "good.onnx", "good.onnx", "--report", "good.onnx/x",
            says="good.onnx/x.md: cannot write the report there: good.onnx is a file, not a folder")
    model = onnx.load("ext.onnx")  # its weight in rep.json, where `--report rep` would write its JSON
    onnx.save(model, "ext2.onnx", save_as_external_data=True, location="rep.json", size_threshold=0)
    refused(capsys, work, "compare", "good.onnx", "ext2.onnx", "--report", "rep",
            says="refusing to overwrite model B's external data rep.json with the report")


def test_export_outputs_never_replace_the_voxel_files(work, capsys):
    pytest.importorskip("spconv.pytorch")
    np.save("feat.npy", np.zeros((10, 5), np.float16))
    np.save("idx.npy", np.zeros((10, 4), np.int32))
    refused(capsys, work, "export", "spconv", "--model", "centerpoint-scn", "--features", "feat.npy",
            "--indices", "idx.npy", "-o", "feat.npy",
            says="refusing to overwrite the --features file feat.npy with the output model")
    refused(capsys, work, "export", "spconv", "--model", "centerpoint-scn", "--features", "feat.npy",
            "--indices", "idx.npy", "-o", "good.onnx/scn.onnx", says="good.onnx is a file, not a folder")


def test_zoo_export_into_a_file_is_refused(work, capsys):
    refused(capsys, work, "zoo", "export", "bevformer-tiny", "-o", "good.onnx",
            says="cannot write the exported model there: good.onnx is a file, not a folder")


def test_writers_refuse_a_pipe_even_without_a_guard(work):
    os.mkfifo("sink")
    with pytest.raises(SurgeonError, match="sink: is a pipe, not a regular file"):
        write_text_atomic("sink", "text")
    assert Path("sink").is_fifo()


def test_two_outputs_on_one_path_are_refused(work):
    with pytest.raises(SurgeonError, match="the model and the report would both be written to a.json"):
        guard_outputs([("a.json", "the model", "-o"), ("./a.json", "the report", "--report")])


# ---------------------------------------------------------------- loading


def external_data_model(location: str) -> None:
    model = onnx.load("ext.onnx", load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, "bad_ext.onnx")


@pytest.mark.parametrize("location, says", [
    ("missing.bin", "bad_ext.onnx: cannot read the model's external data: initializer 'w' is stored in "
                    "'missing.bin', which does not exist"),
    ("../escape.bin", "bad_ext.onnx: initializer 'w' reads external data from '../escape.bin', outside"),
])
def test_bad_external_data_is_one_clear_error_everywhere(work, capsys, location, says):
    external_data_model(location)
    (work.parent / "escape.bin").write_bytes(np.ones(4, np.float32).tobytes())
    for argv in (["run", "basic.yaml", "bad_ext.onnx", "-o", "out/x.onnx"], ["compare", "bad_ext.onnx", "good.onnx"],
                 ["compare", "good.onnx", "bad_ext.onnx"], ["bisect", "basic.yaml", "bad_ext.onnx"]):
        refused(capsys, work, *argv, says=says)
    # inspect reads no data; check reports the same as findings (SG014/SG012), exit 1
    assert cli(capsys, "inspect", "bad_ext.onnx", "-q")[0] == 0
    code, out, _ = cli(capsys, "check", "bad_ext.onnx", "--no-config")
    assert code == 1 and "SG014" in out


@pytest.mark.parametrize("name", ["m.json", "m.textproto", "m.onnxtxt"])
def test_text_format_models_are_one_clear_error(work, capsys, name):
    onnx.save(onnx.load("good.onnx"), name)  # a real model in onnx's text format, chosen by the extension
    says = f"{name}: not a binary ONNX model: surgeon reads binary protobuf models only"
    for argv in (["inspect", name], ["run", "basic.yaml", name, "-o", "out/x.onnx"], ["compare", name, "good.onnx"]):
        refused(capsys, work, *argv, says=says)
    Path(name).write_text("{garbage")
    refused(capsys, work, "inspect", name, says=says)
    code, out, _ = cli(capsys, "check", name, "--no-config")
    assert code == 2 and f"{name}: SG000 error not a binary ONNX model" in out


def test_a_binary_model_with_a_text_extension_loads(work):
    Path("good.json").write_bytes(Path("good.onnx").read_bytes())
    assert load_model("good.json").graph.node[1].name == "neg"


def weighted_model() -> onnx.ModelProto:
    """x + w -> y, its weight held in the model."""
    add = helper.make_node("Add", ["x", "w"], ["y"], name="add")
    return make_model([add], [("x", np.float32, [1, 4])], [("y", np.float32, [1, 4])],
                      initializers={"w": np.ones((1, 4), np.float32)})


def _set(field, value, of=lambda m: m.graph.initializer[0]):
    return lambda model: setattr(of(model), field, value)


def _typed_weight(model):
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.float_data.extend([1.0] * 3)


def _bytes_in_name(model):
    return model.SerializeToString().replace(b"NODEX", b"\xff\xfeDEX")


def _aten_operator(model):
    model.graph.node.append(helper.make_node("ATen", ["y"], ["z"], name="aten", domain="org.pytorch.aten",
                                             operator=b"\xffbogus"))
    model.graph.output[0].name = "z"


def _no_outputs(model):
    model.graph.ClearField("output")


def _external_length(value):
    def change(model):
        for entry in model.graph.initializer[0].external_data:
            if entry.key == "length":
                entry.value = value
    return change


_INPUT = lambda m: m.graph.input[0].type.tensor_type  # noqa: E731


@pytest.mark.parametrize("broken, says", [
    (_set("data_type", 999), "initializer 'w' has data type 999, which is no ONNX data type"),
    (_set("data_type", 0), "initializer 'w' has data type 0 (UNDEFINED)"),
    (_set("elem_type", 999, _INPUT), "graph input 'x' has element type 999, which is no ONNX data type"),
    (_set("elem_type", 0, _INPUT), "graph input 'x' has no element type (0, UNDEFINED)"),
    (_set("raw_data", np.ones(8, np.float32).tobytes()),
     "initializer 'w': dims [1, 4] of FLOAT take 16 bytes, but its raw_data holds 32"),
    (_set("raw_data", b"\0" * 7), "initializer 'w': dims [1, 4] of FLOAT take 16 bytes, but its raw_data holds 7"),
    (lambda m: m.graph.initializer[0].dims.__setitem__(0, 2**40),  # would pass for a model over 2 GB
     "initializer 'w': dims [1099511627776, 4] of FLOAT take 17592186044416 bytes, but its raw_data holds 16"),
    (_typed_weight, "initializer 'w': dims [1, 4] of FLOAT take 4 entries in float_data, but it holds 3"),
    (_bytes_in_name, "node '\\xff\\xfeDEX' (Add): its name '\\xff\\xfeDEX' is not UTF-8 text"),
    (_aten_operator, "attribute 'operator' of node 'aten' (ATen) is not UTF-8 text: b'\\xffbogus'"),
    (_no_outputs, "the graph has no outputs"),
    ("ext:3", "initializer 'w': dims [1, 4] of FLOAT take 16 bytes, but its external data holds 3"),
    ("ext:x", "initializer 'w': its external data length 'x' is not a number"),
])
def test_unusable_models_are_one_clear_error_everywhere(work, capsys, broken, says):
    """Element types that are no ONNX data type, data that disagrees with its dims, text that is not UTF-8
    and a graph without outputs: each command that reads the model names the file and what is wrong,
    where each used to end in an internal error, or a run in a model onnx.checker refuses."""
    if isinstance(broken, str):  # the external-data model with another recorded length
        model = onnx.load("ext.onnx", load_external_data=False)
        _external_length(broken.split(":")[1])(model)
    else:
        model = weighted_model()
        model.graph.node[0].name = "NODEX"
        written = broken(model)
        if isinstance(written, bytes):
            Path("bad.onnx").write_bytes(written)
    if not Path("bad.onnx").exists():
        onnx.save(model, "bad.onnx")
    says = f"bad.onnx: not a usable ONNX model: {says}"
    for argv in (["run", "basic.yaml", "bad.onnx", "-o", "out/x.onnx"], ["compare", "good.onnx", "bad.onnx"],
                 ["bisect", "basic.yaml", "bad.onnx"], ["inspect", "bad.onnx"]):
        refused(capsys, work, *argv, says=says)
    code, out, _ = cli(capsys, "check", "bad.onnx", "--no-config")
    assert code == 2 and f"bad.onnx: SG000 error {says.split(': ', 1)[1]}" in out


_TEXT = "Jürgen"  # written as Latin-1 below (0xfc is not UTF-8), a space after it to keep the length


def _described_model() -> onnx.ModelProto:
    """x -> LeakyRelu -> If (both branches Identity) -> a local function (Relu) -> y, for the free-text tests."""
    def branch(tag):
        return helper.make_graph([helper.make_node("Identity", ["r"], [f"o{tag}"], name=f"id{tag}")], f"b{tag}", [],
                                 [helper.make_tensor_value_info(f"o{tag}", onnx.TensorProto.FLOAT, [2])])

    nodes = [helper.make_node("LeakyRelu", ["x"], ["r"], name="leaky", alpha=0.1),
             helper.make_node("If", ["c"], ["u"], name="if", then_branch=branch("t"), else_branch=branch("e")),
             helper.make_node("Fn", ["u"], ["y"], name="call", domain="local")]
    function = helper.make_function("local", "Fn", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"], name="r")],
                                    [helper.make_opsetid("", 17)])
    model = make_model(nodes, [("x", np.float32, [2]), ("c", np.bool_, [])], [("y", np.float32, [2])], opset=17)
    model.functions.append(function)
    model.graph.value_info.append(helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, [2]))
    return model


_IF_BODY = lambda m: m.graph.node[1].attribute[0].g  # noqa: E731


@pytest.mark.parametrize("describe", [
    _set("doc_string", _TEXT, lambda m: m),
    lambda m: m.metadata_props.add(key="author", value=_TEXT),
    lambda m: m.metadata_props.add(key=_TEXT, value="author"),
    _set("producer_name", _TEXT, lambda m: m),
    _set("producer_version", _TEXT, lambda m: m),
    _set("doc_string", _TEXT, lambda m: m.graph),
    _set("doc_string", _TEXT, lambda m: m.graph.node[0]),
    lambda m: m.graph.node[0].metadata_props.add(key="source", value=_TEXT),
    lambda m: m.graph.node[0].metadata_props.add(key=_TEXT, value="source"),
    _set("doc_string", _TEXT, lambda m: m.graph.input[0]),
    _set("doc_string", _TEXT, lambda m: m.graph.output[0]),
    _set("doc_string", _TEXT, lambda m: m.graph.value_info[0]),
    lambda m: m.graph.input[0].metadata_props.add(key="unit", value=_TEXT),
    _set("doc_string", _TEXT, _IF_BODY),
    _set("doc_string", _TEXT, lambda m: _IF_BODY(m).node[0]),
    lambda m: _IF_BODY(m).node[0].metadata_props.add(key="source", value=_TEXT),
    _set("doc_string", _TEXT, lambda m: m.functions[0]),
], ids=["model doc", "metadata value", "metadata key", "producer", "producer version", "graph doc", "node doc",
        "node metadata value", "node metadata key", "input doc", "output doc", "value_info doc", "input metadata",
        "body doc", "body node doc", "body node metadata", "function doc"])
def test_free_text_that_is_not_utf8_is_kept_and_never_refused(work, capsys, describe):
    """Doc strings, metadata and the producer are free text that no runtime reads: protobuf hands such text
    that is not UTF-8 over as bytes, which used to end a run in an internal error or be refused at load.
    Every command takes the model, and a run writes the same bytes back."""
    model = _described_model()
    describe(model)
    latin = _TEXT.encode("latin-1") + b" "
    Path("latin.onnx").write_bytes(model.SerializeToString().replace(_TEXT.encode(), latin))
    before = sha("latin.onnx")
    write_recipe("fold.yaml", {"name": "fold", "target": "onnxruntime",
                               "steps": [{"pass": "fold-constants"}, {"pass": "cleanup"}]})
    code, out, err = cli(capsys, "run", "fold.yaml", "latin.onnx", "-o", "out.onnx", "-q")
    assert code == 0, err
    written = Path("out.onnx").read_bytes()
    assert latin in written and _TEXT.encode() not in written and sha("latin.onnx") == before
    for argv in (["inspect", "latin.onnx"], ["check", "latin.onnx", "--no-config"],
                 ["compare", "latin.onnx", "out.onnx"], ["bisect", "fold.yaml", "latin.onnx"]):
        assert cli(capsys, *argv)[0] == 0, argv


def test_large_models_read_their_raw_data_lengths_off_the_file_alike(work, monkeypatch):
    """Past 64 MiB the lengths come from the model's bytes (protobuf copies raw_data when asked for it)."""
    import surgeon.modelio as modelio

    model = weighted_model()
    model.graph.initializer.add().CopyFrom(numpy_helper.from_array(np.zeros(3, np.int64), "unused"))
    model.graph.initializer[1].ClearField("raw_data")
    model.graph.initializer[1].int64_data.extend([0, 0, 0])
    serialized = model.SerializeToString()
    monkeypatch.setattr(modelio, "_SCAN_RAW_DATA_FROM", 0)
    assert modelio._raw_data_lengths(model, serialized) == [16, None]
    onnx.save(model, "typed.onnx")
    assert len(load_model("typed.onnx").graph.initializer) == 2
    model.graph.initializer[0].raw_data = b"\0" * 20
    onnx.save(model, "long.onnx")
    with pytest.raises(SurgeonError, match="but its raw_data holds 20"):
        load_model("long.onnx")


def test_a_checker_failure_keeps_the_node_and_blames_an_input_that_fails_alike(work, capsys):
    """onnx.checker names the node on its second line; a failure the input model has too is the input's."""
    from surgeon.errors import CheckFailed
    from surgeon.pipeline import check_model

    model = onnx.load("good.onnx")
    model.graph.node[1].input[0] = "does_not_exist"
    onnx.save(model, "dangling.onnx")
    says = ("dangling.onnx: the input model fails onnx.checker: Nodes in a graph must be topologically sorted, "
            "however input 'does_not_exist' of node: name: neg OpType: Neg is not output of any previous nodes.")
    refused(capsys, work, "run", "basic.yaml", "dangling.onnx", "-o", "out/x.onnx", "-q", says=says)
    with pytest.raises(CheckFailed, match="the rewritten model fails onnx.checker: .* of node: name: neg OpType: Neg "
                                          "is not output of any previous nodes. \\(nothing was written"):
        check_model(model.SerializeToString(), source="good.onnx")


def test_output_names_past_the_file_system_limit_are_refused_before_any_folder_is_made(work, capsys):
    """Temporary files have short names of their own, so any name the file system takes can be written."""
    longest = "c" * 251 + ".txt"
    assert cli(capsys, "check", "good.onnx", "--no-config", "-o", longest)[0] == 0
    assert Path(longest).exists() and sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []
    write_text_atomic("d" * 255, "x")
    refused(capsys, work, "run", "basic.yaml", "good.onnx", "-o", "b" * 250 + ".onnx",
            says="cannot write the run report there: the name 'bbbbbbbbbbbbbbbbbbbb...surgeon.json' is 263 bytes long")
    write_recipe("long.yaml", {"name": "a" * 252, "steps": [{"pass": "toposort"}]})
    refused(capsys, work, "run", "long.yaml", "good.onnx", says="over the file system's limit of 255")
    assert not Path("out").exists()


# ---------------------------------------------------------------- spconv voxel arrays


@pytest.mark.parametrize("features, indices, says", [
    (np.zeros((100, 3), np.float16), np.zeros((100, 2), np.int32),
     "feat.npy: voxel features must be a [N, 5] float array (the model reads 5 channels per voxel), got [100, 3]"),
    (np.zeros((10, 5), np.float16), np.zeros((10, 2), np.int32),
     "idx.npy: voxel coordinates must be [N, 4] as batch, z, y, x, got [10, 2]"),
    (np.zeros((10, 5), np.float16), np.zeros((10, 4), np.float32),
     "idx.npy: voxel coordinates must be integers (int32), got float32"),
    (np.zeros((10, 5), np.float16), np.zeros((9, 4), np.int32), "idx.npy: 9 voxel coordinates for 10 voxel features"),
    (np.zeros((10, 5), np.float16), np.full((10, 4), -1, np.int32),
     "idx.npy: voxel 0: batch index -1 is outside 0..0 (batch size 1); 10 voxel(s) out of range"),
    (np.zeros((10, 5), np.float16), np.array([[0, 0, 0, 0]] * 3 + [[0, 0, 1440, 5]] + [[0, 1, 2, 3]] * 6, np.int32),
     "idx.npy: voxel 3: y coordinate 1440 is outside 0..1439 (the model's grid [41, 1440, 1440] as z, y, x)"),
])
def test_spconv_voxel_arrays_are_checked_before_tracing(work, capsys, features, indices, says):
    pytest.importorskip("spconv.pytorch")
    np.save("feat.npy", features)
    np.save("idx.npy", indices)
    refused(capsys, work, "export", "spconv", "--model", "centerpoint-scn", "--features", "feat.npy",
            "--indices", "idx.npy", "-o", "out/scn.onnx", says=says)


def test_a_run_failing_after_the_write_names_the_model_it_kept(tmp_path, capsys):
    """Validation that cannot run (here a CPU reference that raises) fails after OUT is written: the
    model stays for debugging, and the error says so instead of implying that nothing was written."""
    from surgeon.reference import temporary_reference

    def refuses(inputs, attrs):
        raise ValueError("refuses its input")

    node = helper.make_node("Boom", ["x"], ["y"], name="boom", domain="acme")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)],
                              ir_version=10)
    onnx.save(model, tmp_path / "boom.onnx")
    (tmp_path / "r.yaml").write_text("name: boom\nchecker: false\nsteps: [{pass: cleanup}]\nvalidate: {}\n")
    out = tmp_path / "out" / "boom.onnx"
    with temporary_reference(refuses, "Boom", "acme"):
        assert main(["run", str(tmp_path / "r.yaml"), str(tmp_path / "boom.onnx"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "CPU reference of node 'boom' (acme::Boom) failed" in err
    assert f"{out} written before the error, kept for debugging; the run report was not written" in err
    assert out.exists() and not (out.parent / "boom.surgeon.json").exists()

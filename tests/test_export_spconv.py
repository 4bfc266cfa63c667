"""`surgeon export spconv` on the CenterPoint backbone with real nuScenes voxels, both flavours.

The committed window (3,011 real voxels, tests/data/spconv) keeps these tests fast; the full scan
(79,745 voxels from ../shared/data) runs once in the slow test. Numerical claims compare the
CPU references, running the exported graph, with spconv's own output: max abs error under 1e-3 of
the output's scale (the brief's bar; measured 3e-7 on the window, 4e-7 on the full scan).
"""
import json
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

spconv = pytest.importorskip("spconv.pytorch", reason="needs spconv (pip install 'surgeon[zoo]')")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from surgeon.cli import main  # noqa: E402
from surgeon.errors import SurgeonError  # noqa: E402
from surgeon.export.graph import build_model  # noqa: E402
from surgeon.export.spconv_export import build_zoo_model, check_with_references, export_spconv  # noqa: E402
from surgeon.export.tensor_file import read_tensor  # noqa: E402
from surgeon.targets import load_target  # noqa: E402
from surgeon.zoo.centerpoint import SparseBasicBlock, build_centerpoint_scn  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "spconv"
FEATURES, INDICES = DATA / "window_features.fp16.tensor", DATA / "window_indices_zyx.int32.tensor"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOLERANCE = 1e-3
# The attributes NVIDIA's exptool.py writes on every SparseConvolution (onnx.helper sorts them by name).
EXPTOOL_ATTRIBUTES = ["ndim", "input_spatial_shape", "output_spatial_shape", "in_channels", "out_channels",
                      "kernel_size", "output_bound", "stride", "dilation", "padding", "transposed", "inverse",
                      "output_padding", "groups", "subm", "rulebook", "activation", "input_shape", "output_shape"]


def attributes(node):
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


@pytest.fixture(scope="module")
def window():
    return read_tensor(FEATURES), read_tensor(INDICES)


@pytest.fixture(scope="module")
def exported(window):
    return export_spconv(build_centerpoint_scn(), *window, flavour="libspconv")


@pytest.fixture(scope="module")
def module_calls(window):
    """Calls per module type counted with torch's own forward hooks, independently of the tracer."""
    model = build_centerpoint_scn()
    calls = Counter()
    kinds = (spconv.SubMConv3d, spconv.SparseConv3d, torch.nn.BatchNorm1d, torch.nn.ReLU, SparseBasicBlock)
    for module in model.modules():
        if isinstance(module, kinds):
            module.register_forward_hook(lambda m, i, o: calls.update([type(m).__name__]))
    export_spconv(model, *window)
    return calls


def test_one_node_per_module_call(exported, module_calls):
    unfolded = Counter(n.op_type for n in build_model(exported.trace, "standard", False, False).graph.node)
    assert unfolded == {
        "SparseConvolution": module_calls["SubMConv3d"] + module_calls["SparseConv3d"],
        "BatchNormalization": module_calls["BatchNorm1d"],
        "Relu": module_calls["ReLU"],
        "Add": module_calls["SparseBasicBlock"],  # one residual addition per block
        "ScatterDense": 1, "Reshape": 1}
    assert module_calls["SubMConv3d"] + module_calls["SparseConv3d"] == 21


def test_batchnorm_and_relu_fold_into_the_convolutions(exported):
    nodes = exported.model.graph.node
    assert Counter(n.op_type for n in nodes) == {"SparseConvolution": 21, "Add": 8, "Relu": 8,
                                                 "ScatterDense": 1, "Reshape": 1}
    activation = {n.name: attributes(n)["activation"] for n in nodes if n.op_type == "SparseConvolution"}
    # Block second convolutions feed the residual Add before their ReLU: nothing to fold there.
    assert {k for k, v in activation.items() if v == "None"} == {
        f"backbone.conv{stage}.{block}.conv2" for stage, blocks in [(1, (0, 1)), (2, (1, 2)), (3, (1, 2)),
                                                                     (4, (1, 2))] for block in blocks}
    assert [n.op_type for n in nodes[-2:]] == ["ScatterDense", "Reshape"]


def test_convolution_attributes_follow_the_modules(exported):
    model = build_centerpoint_scn()
    modules = dict(model.named_modules())
    spatial = {"conv_input": [41, 1440, 1440], "conv1": [41, 1440, 1440], "conv2": [21, 720, 720],
               "conv3": [11, 360, 360], "conv4": [5, 180, 180], "conv_out": [2, 180, 180]}
    for node in (n for n in exported.model.graph.node if n.op_type == "SparseConvolution"):
        attrs, conv = attributes(node), modules[node.name]
        assert sorted(attrs) == sorted(EXPTOOL_ATTRIBUTES)
        assert attrs["output_spatial_shape"] == spatial[node.name.split(".")[1]]
        assert attrs["kernel_size"] == list(conv.kernel_size) and attrs["stride"] == list(conv.stride)
        assert attrs["padding"] == list(conv.padding) and attrs["subm"] == int(conv.subm)
        assert attrs["rulebook"] == conv.indice_key and attrs["output_bound"] == 200000
        assert attrs["in_channels"] == conv.in_channels and attrs["out_channels"] == conv.out_channels
        assert attrs["input_shape"][1] == conv.in_channels and attrs["output_shape"][1] == conv.out_channels
    by_name = {n.name: attributes(n) for n in exported.model.graph.node}
    assert by_name["backbone.conv4.0.0"]["padding"] == [0, 1, 1]
    assert by_name["backbone.conv_out.0"]["kernel_size"] == [3, 1, 1]
    assert by_name["backbone.conv_input.0"]["input_shape"] == [3011, 5]
    assert by_name["dense"] == {"input_spatial_shape": [2, 180, 180], "format": "zyx",
                                "output_shape": [1, 128, 2, 180, 180]}


def test_libspconv_flavour_follows_the_parser(exported):
    model = exported.model
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [("features", TensorProto.FLOAT16)]
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 11)]
    assert all(t.data_type == TensorProto.FLOAT16 and t.raw_data for t in model.graph.initializer)
    assert all(n.domain == "" for n in model.graph.node)
    convs = [n for n in model.graph.node if n.op_type == "SparseConvolution"]
    assert all(len(n.input) == 3 and len(n.output) == 1 for n in convs)  # bias always present, indices implicit
    reshape = model.graph.node[-1]
    assert list(reshape.input) == ["dense"] and attributes(reshape) == {"dims": [1, 256, 180, 180]}
    target = load_target("libspconv")
    assert all(target.supports(n.op_type, n.domain, dtype=np.float16) for n in model.graph.node)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)  # Reshape(dims=) is not standard ONNX: that is libspconv's format


def test_surgeon_check_for_libspconv_accepts_the_export(exported, tmp_path, capsys):
    from surgeon.cli import main

    path = tmp_path / "scn.onnx"
    onnx.save(exported.model, path)
    assert main(["check", str(path), "--target", "libspconv"]) == 0, capsys.readouterr().out
    assert "SG014" not in capsys.readouterr().out
    assert main(["check", str(path), "--target", "onnxruntime"]) == 1  # nothing else runs it


def test_libspconv_initializers_are_the_folded_weights_in_float16(exported):
    standard = build_model(exported.trace, "standard")
    folded = {t.name: numpy_helper.to_array(t) for t in standard.graph.initializer
              if t.name.endswith((".weight", ".bias"))}
    halves = {t.name: numpy_helper.to_array(t) for t in exported.model.graph.initializer}
    assert set(folded) == set(halves)
    for name, value in folded.items():
        np.testing.assert_array_equal(halves[name], value.astype(np.float16))
    bn = dict(build_centerpoint_scn().named_modules())["backbone.conv_input.1"]
    conv_weight = exported.trace.ops[0].weights["weight"].astype(np.float64)
    scale = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    np.testing.assert_allclose(folded["backbone.conv_input.0.weight"],
                               conv_weight * scale[:, None, None, None, None], rtol=1e-6)


def test_standard_flavour_passes_the_checker_and_reproduces_spconv(exported):
    standard = build_model(exported.trace, "standard")
    onnx.checker.check_model(standard, full_check=True)
    assert [i.name for i in standard.graph.input] == ["features", "indices"]
    conv = standard.graph.node[0]
    assert conv.domain == "spconv" and list(conv.output) == ["backbone.conv_input.0", "backbone.conv_input.0.indices"]
    assert list(conv.input[:2]) == ["features", "indices"]
    check = check_with_references(exported)
    assert check["relative_error"] < TOLERANCE, check


def test_unfolded_graph_reproduces_spconv_too(exported):
    check = check_with_references(exported, fold_batchnorm=False, fold_relu=False)
    assert check["relative_error"] < TOLERANCE, check


def test_libspconv_refuses_an_unfolded_batchnorm(exported):
    with pytest.raises(SurgeonError, match="libspconv has no BatchNormalization"):
        build_model(exported.trace, "libspconv", fold_batchnorm=False)


def test_export_is_deterministic(window, exported):
    again = export_spconv(build_centerpoint_scn(), *window, flavour="libspconv")
    assert again.model.SerializeToString() == exported.model.SerializeToString()


def test_cli_writes_model_tensors_and_checks(tmp_path, capsys):
    out = tmp_path / "scn.onnx"
    code = main(["export", "spconv", "--model", "centerpoint-scn", "--features", str(FEATURES), "--indices",
                 str(INDICES), "--flavour", "standard", "-o", str(out), "--save-tensors", str(tmp_path / "scn"),
                 "--check", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nodes"] == 39 and report["output_shape"] == [1, 256, 180, 180]
    assert report["check"]["relative_error"] < TOLERANCE
    onnx.checker.check_model(onnx.load(out), full_check=True)
    np.testing.assert_array_equal(read_tensor(tmp_path / "scn.voxels"), read_tensor(FEATURES))
    np.testing.assert_array_equal(read_tensor(tmp_path / "scn.coors"), read_tensor(INDICES))
    npz = np.load(tmp_path / "scn.npz")
    np.testing.assert_array_equal(read_tensor(tmp_path / "scn.output"), npz["output"].astype(np.float16))
    assert npz["output"].shape == (1, 256, 180, 180) and npz["indices"].dtype == np.int32


def test_cli_names_a_bad_input_file(tmp_path, capsys):
    bad = tmp_path / "bad.tensor"
    bad.write_bytes(b"\x00" * 16)
    code = main(["export", "spconv", "--model", "centerpoint-scn", "--features", str(bad), "--indices",
                 str(INDICES), "-o", str(tmp_path / "x.onnx")])
    assert code == 2
    assert f"{bad}: not a libspconv tensor file" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "centerpoint_voxels_features.fp16.tensor").exists(),
                    reason="../shared/data/centerpoint_voxels_*.tensor (79,745 real nuScenes voxels) are absent")
def test_full_real_scan_both_flavours():
    features = read_tensor(SHARED / "centerpoint_voxels_features.fp16.tensor")
    indices = read_tensor(SHARED / "centerpoint_voxels_indices_zyx.int32.tensor")
    result = export_spconv(build_centerpoint_scn(), features, indices, flavour="libspconv")
    assert result.output.shape == (1, 256, 180, 180)
    assert attributes(result.model.graph.node[0])["input_shape"] == [79745, 5]
    standard = build_model(result.trace, "standard")
    onnx.checker.check_model(standard, full_check=True)
    check = check_with_references(result)
    assert check["relative_error"] < TOLERANCE, check


def test_cli_check_failure_writes_nothing(tmp_path, capsys):
    out = tmp_path / "scn.onnx"
    code = main(["export", "spconv", "--model", "centerpoint-scn", "--features", str(FEATURES), "--indices",
                 str(INDICES), "-o", str(out), "--check", "--tolerance", "1e-12"])
    assert code == 1
    assert "nothing was written" in capsys.readouterr().err and not out.exists()


def test_cli_without_spconv_says_what_to_install(monkeypatch, tmp_path, capsys):
    for module in ("surgeon.export.spconv_export", "surgeon.export.spconv_handlers"):
        monkeypatch.delitem(sys.modules, module)
    for module in ("spconv", "spconv.pytorch", "spconv.pytorch.conv"):
        monkeypatch.setitem(sys.modules, module, None)  # `import spconv...` then fails as without spconv
    code = main(["export", "spconv", "--model", "centerpoint-scn", "--features", str(FEATURES), "--indices",
                 str(INDICES), "-o", str(tmp_path / "x.onnx")])
    assert code == 2
    assert "needs torch and spconv: pip install 'surgeon[zoo]'" in capsys.readouterr().err


def test_openpcdet_checkpoint_loads_in_either_spconv_layout(tmp_path):
    trained = build_centerpoint_scn(seed=99)
    state = {}
    for key, value in trained.backbone.state_dict().items():
        if value.ndim == 5 and key.startswith("conv1"):
            value = value.permute(1, 2, 3, 4, 0)  # spconv 1.x kept [k, k, k, Cin, Cout]
        state[f"backbone_3d.{key}"] = value
    state["dense_head.conv_cls.weight"] = torch.zeros(3)  # the rest of the detector is ignored
    path = tmp_path / "checkpoint_epoch_20.pth"
    torch.save({"model_state": state, "epoch": 20}, path)
    loaded = build_zoo_model("centerpoint-scn", path)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_a_checkpoint_of_another_network_is_named(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model_state": {"backbone_3d.conv_input.0.weight": torch.zeros(16, 3, 3, 3, 4)}}, path)
    with pytest.raises(SurgeonError, match=f"{path}: checkpoint does not fit VoxelResBackBone8x: 141 missing keys"):
        build_zoo_model("centerpoint-scn", path)


def _openpcdet_checkpoint(path, **extra):
    """An OpenPCDet-style checkpoint: the backbone's weights under model_state, and `extra` beside them."""
    state = {f"backbone_3d.{k}": v for k, v in build_centerpoint_scn(seed=7).backbone.state_dict().items()}
    torch.save({"model_state": state, **extra}, path)
    return path


def _with_numpy1_names(path):
    """The checkpoint at `path` as NumPy 1 pickles it: its rebuild functions under numpy.core, not numpy._core."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename.endswith("/data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            archive.writestr(info, data)
    return path


@pytest.mark.parametrize("numpy_names", ["numpy 2", "numpy 1"])
def test_numpy_values_beside_the_weights_load_safely(tmp_path, numpy_names):
    """OpenPCDet keeps `it` as a NumPy scalar; weights_only refuses NumPy globals unless they are allowed."""
    path = _openpcdet_checkpoint(tmp_path / "checkpoint_epoch_20.pth", epoch=20, it=np.int64(1000),
                                 lr=np.float32(0.003), anchors=np.arange(6.0).reshape(2, 3), optimizer_state=None)
    if numpy_names == "numpy 1":
        _with_numpy1_names(path)
    loaded = build_zoo_model("centerpoint-scn", path)
    for key, value in build_centerpoint_scn(seed=7).state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_a_checkpoint_holding_other_objects_is_refused_in_one_line_unless_trusted(tmp_path, capsys):
    import argparse

    path = _openpcdet_checkpoint(tmp_path / "with_args.pth", args=argparse.Namespace(lr=0.01))
    argv = ["export", "spconv", "--model", "centerpoint-scn", "--checkpoint", str(path), "--features", str(FEATURES),
            "--indices", str(INDICES), "-o", str(tmp_path / "x.onnx"), "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"surgeon: error: {path}: checkpoint refused by safe loading: Unsupported global: "
                          "GLOBAL argparse.Namespace was not an allowed global by default.")
    assert "--trust-checkpoint" in err and len(err.splitlines()) == 1 and "\x1b" not in err
    assert not (tmp_path / "x.onnx").exists()
    assert main([*argv, "--trust-checkpoint"]) == 0 and (tmp_path / "x.onnx").exists()


def test_a_sparse_result_is_exported_with_its_coordinates(window):
    from surgeon.export.spconv_export import spconv_cpu_quirks, trace_spconv
    from surgeon.validation.runners import ReferenceRunner

    backbone = build_centerpoint_scn().backbone  # returns conv_out's SparseConvTensor, no dense()
    features, indices = (torch.from_numpy(a) for a in (window[0].astype(np.float32), window[1]))
    trace = trace_spconv(backbone, features, indices)
    standard = build_model(trace, "standard")
    assert [o.name for o in standard.graph.output] == ["conv_out.2", "conv_out.0.indices"]
    onnx.checker.check_model(standard, full_check=True)
    with ReferenceRunner(standard) as runner:
        out = runner.infer({"features": features.numpy(), "indices": indices.numpy()})
    with spconv_cpu_quirks(backbone, features.device), torch.no_grad():
        expected = backbone(features, indices)

    def by_coordinate(coords, values):  # the reference sorts voxels by key, spconv keeps its own order
        order = np.lexsort(coords.T[::-1])
        return coords[order], values[order]

    ours = by_coordinate(out["conv_out.0.indices"], out["conv_out.2"])
    theirs = by_coordinate(expected.indices.numpy(), expected.features.numpy())
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_allclose(ours[1], theirs[1], rtol=0, atol=TOLERANCE * np.abs(theirs[1]).max())


def test_float16_weights_cost_what_libspconv_will_see(exported):
    exact = check_with_references(exported)["relative_error"]
    rounded = check_with_references(exported, float16_weights=True)["relative_error"]
    assert exact < 1e-6 < rounded < TOLERANCE  # measured 3.4e-7 and 1.9e-4 on this window


def test_the_check_refuses_a_sparse_result(window):
    result = export_spconv(build_centerpoint_scn().backbone, *window, flavour="standard")
    with pytest.raises(SurgeonError, match="the check compares dense outputs"):
        check_with_references(result)


def test_a_layer_larger_than_its_output_bound_is_reported(window):
    from surgeon.export.spconv_export import layers_over_output_bound

    model = build_centerpoint_scn()
    model.backbone.conv_input[0].output_bound = 1000  # the window has 3,011 voxels
    result = export_spconv(model, *window, flavour="libspconv")
    assert layers_over_output_bound(result.model) == [("backbone.conv_input.0", 3011, 1000)]
    assert layers_over_output_bound(export_spconv(build_centerpoint_scn(), *window).model) == []


@pytest.mark.parametrize("content", [b"not a checkpoint", b"junk\n"])
def test_a_file_that_is_no_checkpoint_is_named(tmp_path, content):
    """b"junk\n" makes torch's weights-only unpickler raise a KeyError, not an UnpicklingError."""
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(SurgeonError, match=f"{path}: cannot read checkpoint"):
        build_zoo_model("centerpoint-scn", path)


def test_a_file_that_is_no_pickle_is_not_offered_trust(tmp_path):
    """torch's weights-only error opens with advice to load unsafely, in terminal escape codes; a file that is
    no pickle gets the line saying what is wrong with it, and no --trust-checkpoint hint."""
    path = tmp_path / "notes.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(SurgeonError) as info:
        build_zoo_model("centerpoint-scn", path)
    assert str(info.value) == f"{path}: cannot read checkpoint: Unsupported operand 110"


def test_torch_fx_deprecation_line_is_not_printed(window, caplog):
    """spconv's SparseConvTensor asks torch's deprecated `is_fx_tracing`; torch logs that once per process."""
    from torch.fx._symbolic_trace import is_fx_tracing_warning

    is_fx_tracing_warning.cache_clear()
    with caplog.at_level(logging.WARNING, logger="torch.fx._symbolic_trace"):
        export_spconv(build_centerpoint_scn(), *window)
    assert not [r for r in caplog.records if "is_fx_tracing" in r.getMessage()]


def _export_cli(tmp_path, features, indices, *options):
    np.save(tmp_path / "feat.npy", features)
    np.save(tmp_path / "idx.npy", indices)
    return main(["export", "spconv", "--model", "centerpoint-scn", "--features", str(tmp_path / "feat.npy"),
                 "--indices", str(tmp_path / "idx.npy"), "-o", str(tmp_path / "scn.onnx"), *options])


def test_repeated_voxel_coordinates_are_refused_before_tracing(window, tmp_path, capsys):
    """Two rows at one (batch, z, y, x) made spconv and the references differ by 0.1 of the output's
    scale, and without --check the model was written silently."""
    features, indices = window
    repeats = [7, 3]
    code = _export_cli(tmp_path, np.concatenate([features, features[repeats] * 3]),
                       np.concatenate([indices, indices[repeats]]), "--check")
    assert code == 2
    assert capsys.readouterr().err == (
        f"surgeon: error: {tmp_path / 'idx.npy'}: voxel 3011: coordinates {indices[7].tolist()} repeat voxel 7's; "
        f"2 voxel(s) repeat an earlier one (one row per grid cell: merge them when voxelizing)\n")
    assert not (tmp_path / "scn.onnx").exists()


def test_repeated_voxels_are_found_in_row_order():
    from surgeon.export.spconv_export import repeated_voxels

    indices = np.array([[0, 5, 1], [0, 1, 9], [0, 5, 1], [0, 1, 9], [0, 5, 1], [1, 5, 1]], np.int32)
    assert repeated_voxels(indices).tolist() == [2, 3, 4]
    assert repeated_voxels(indices[[0, 1, 5]]).tolist() == []


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxel_features_are_refused(window, tmp_path, capsys, value):
    features = window[0].copy()
    features[[9, 5], 2] = value
    assert _export_cli(tmp_path, features, window[1], "--check") == 2
    assert capsys.readouterr().err == (f"surgeon: error: {tmp_path / 'feat.npy'}: voxel 5: feature 2 is {value}; "
                                       f"2 voxel(s) with NaN or infinite features\n")
    assert not (tmp_path / "scn.onnx").exists()


def test_libspconv_flavour_refuses_a_batch_larger_than_one(window, tmp_path, capsys):
    """libspconv's Engine::forward takes one scan (engine.hpp: the batch 'must be 1 now')."""
    assert _export_cli(tmp_path, *window, "--batch-size", "2") == 2
    assert capsys.readouterr().err.startswith("surgeon: error: --batch-size 2: the libspconv flavour takes batch "
                                              "size 1 only")
    assert not (tmp_path / "scn.onnx").exists()
    with pytest.raises(SurgeonError, match="^batch_size 2: the libspconv flavour takes batch size 1 only"):
        export_spconv(build_centerpoint_scn(), *window, flavour="libspconv", batch_size=2)

"""The model zoo: committed fixtures (no torch needed) and re-exports (torch, the `zoo` extra)."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from surgeon.zoo import MODELS, export_paths
from surgeon.zoo.ophist import histogram, integer_clips
from surgeon.zoo.regenerate import FIXTURES, fixture_paths

ATOL = 1e-4  # float32, absolute: what ONNX Runtime must reproduce of the PyTorch outputs

# The ATen operators each fixture must contain (and no others): what the fallback export leaves.
EXPECTED_ATEN = {
    ("bevformer-tiny", 11, True): {"grid_sampler"},
    ("bevformer-tiny", 13, True): {"grid_sampler"},
    ("bevformer-tiny", 16, False): set(),
    ("bevformer-nmsfree", 11, True): {"__iand_", "linalg_inv"},
    ("bevfusion-camera-backbone", 11, True): set(),
    ("bevfusion-camera-vtransform", 11, True): set(),
    ("bevfusion-camera", 11, True): {"repeat_interleave"},
    ("bevfusion-camera", 16, False): set(),
    ("bevfusion-fuser-head", 11, True): {"unflatten"},
    ("sparse4d-head", 11, True): {"grid_sampler"},
}
# Standard ops that carry the patterns users complain about, per model.
EXPECTED_OPS = {
    "bevformer-tiny": {"Atan", "IsNaN", "IsInf", "Max", "And", "Clip", "ScatterND", "Split", "Log", "Softmax"},
    "bevformer-nmsfree": {"TopK", "Atan", "Mod", "Exp"},
    "bevfusion-camera-backbone": {"Conv", "Resize", "Softmax", "Transpose"},
    "bevfusion-camera-vtransform": {"Conv", "Relu"},
    # bev_pool: the gathers, index_add_ as a ScatterElements (without reduction), the cells as a ScatterND
    "bevfusion-camera": {"Conv", "Softmax", "Gather", "ScatterElements", "ScatterND"},
    "bevfusion-fuser-head": {"TopK", "OneHot", "MaxPool", "GatherElements", "ConvTranspose", "ScatterND"},
    "sparse4d-head": {"Clip", "Softmax", "ReduceL2", "ScatterND", "MatMul"},
}
ORT_MODELS = ("bevformer-tiny", "bevfusion-camera-backbone", "bevfusion-camera-vtransform", "sparse4d-head")
SLOW_EXPORTS = {("bevformer-tiny", 13, True), ("bevformer-tiny", 16, False), ("sparse4d-head", 11, True)}


def fixture_id(fixture) -> str:
    name, opset, aten = fixture
    return f"{name}-opset{opset}{'-aten' if aten else ''}"


def aten_operators(model: onnx.ModelProto) -> set[str]:
    return {key.rsplit(":", 1)[1] for key in histogram(model) if "::ATen:" in key}


def load(fixture) -> onnx.ModelProto:
    return onnx.load(fixture_paths(*fixture)["onnx"])


def test_every_model_has_a_fixture():
    assert {name for name, _, _ in FIXTURES} == set(MODELS)
    assert set(FIXTURES) == set(EXPECTED_ATEN)


@pytest.mark.parametrize("fixture", FIXTURES, ids=fixture_id)
def test_fixture_is_small_and_valid(fixture):
    path = fixture_paths(*fixture)["onnx"]
    assert path.stat().st_size < 5 * 2 ** 20
    onnx.checker.check_model(onnx.load(path))


@pytest.mark.parametrize("fixture", FIXTURES, ids=fixture_id)
def test_fixture_has_the_expected_ops(fixture):
    model = load(fixture)
    assert aten_operators(model) == EXPECTED_ATEN[fixture]
    assert EXPECTED_OPS[fixture[0]] <= set(histogram(model))
    assert {imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")} == {fixture[1]}


def test_grid_sample_form_follows_opset():
    hist11, hist16 = histogram(load(("bevformer-tiny", 11, True))), histogram(load(("bevformer-tiny", 16, False)))
    assert hist11["org.pytorch.aten::ATen:grid_sampler"] == hist16["GridSample"] == 13
    assert "GridSample" not in hist11


def test_fixtures_stay_small():
    total = sum(path.stat().st_size for path in fixture_paths(*FIXTURES[0])["onnx"].parent.iterdir())
    assert total < 25 * 2 ** 20


def test_aten_grid_sampler_signature():
    """(x, grid, interpolation_mode, padding_mode, align_corners) with the scalars as Constant nodes:
    bilinear (0) in the deformable attentions, nearest (1) in the previous-BEV rotation."""
    graph = load(("bevformer-tiny", 11, True)).graph
    constants = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    modes = []
    for node in graph.node:
        if node.op_type == "ATen":
            assert node.domain == "org.pytorch.aten" and len(node.input) == 5
            mode, padding, align_corners = (constants[name] for name in node.input[2:])
            assert mode.dtype == padding.dtype == np.int64 and align_corners.dtype == np.bool_
            assert int(padding) == 0 and not bool(align_corners)
            modes.append(int(mode))
    assert sorted(modes) == [0] * 12 + [1]


def test_integer_clip_appears_from_opset_12():
    """clamp on the int64 camera hit count: opset 11 clips a float cast, later opsets clip int64.

    The three encoder layers count hits of the same mask; the exporter merges them into one Clip."""
    assert integer_clips(load(("bevformer-tiny", 11, True))) == 0
    assert integer_clips(load(("bevformer-tiny", 13, True))) == 1
    assert integer_clips(load(("bevformer-tiny", 16, False))) == 1


@pytest.mark.parametrize("fixture", FIXTURES, ids=fixture_id)
def test_npz_match_graph_inputs_and_outputs(fixture):
    paths = fixture_paths(*fixture)
    graph = load(fixture).graph
    inputs, outputs = np.load(paths["inputs"]), np.load(paths["outputs"])
    assert list(inputs.keys()) == [i.name for i in graph.input]
    assert list(outputs.keys()) == [o.name for o in graph.output]
    for value in graph.input:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        # a dynamic axis (bevfusion-camera's index arrays) is named, any length fits it
        assert [n if isinstance(d, str) else d for n, d in zip(inputs[value.name].shape, dims)] == \
            list(inputs[value.name].shape)
        assert len(dims) == inputs[value.name].ndim
        assert inputs[value.name].dtype == onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)


def test_onnxruntime_refuses_aten_fixtures():
    with pytest.raises(Exception, match="ATen"):
        ort.InferenceSession(str(fixture_paths("bevformer-tiny", 11, True)["onnx"]), providers=["CPUExecutionProvider"])


def run_ort(paths) -> tuple[dict, list[np.ndarray]]:
    session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    expected = dict(np.load(paths["outputs"]))
    return expected, session.run(list(expected), dict(np.load(paths["inputs"])))


def assert_close(expected: dict, got: list[np.ndarray]) -> None:
    for (name, want), have in zip(expected.items(), got):
        np.testing.assert_allclose(have, want, rtol=0, atol=ATOL, err_msg=name)


def test_opset16_fixture_reproduces_pytorch_in_onnxruntime():
    assert_close(*run_ort(fixture_paths("bevformer-tiny", 16, False)))


def test_cli_lists_models(capsys):
    from surgeon.cli import main

    assert main(["zoo", "list"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list(MODELS)


def test_cli_names_a_bad_model(capsys):
    from surgeon.cli import main

    assert main(["zoo", "export", "bevformer-small"]) == 2
    assert "unknown model 'bevformer-small'" in capsys.readouterr().err


def test_export_without_torch_says_which_extra(monkeypatch):
    from surgeon.errors import SurgeonError
    from surgeon.zoo import export

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "surgeon.zoo.exporter", raising=False)
    with pytest.raises(SurgeonError, match=r"pip install 'surgeon\[zoo\]'") as info:
        export("bevformer-tiny")
    assert info.value.exit_code == 2


def test_unknown_model_is_named(tmp_path):
    from surgeon.errors import SurgeonError
    from surgeon.zoo import export

    with pytest.raises(SurgeonError, match="unknown model 'bevformer'"):
        export("bevformer", out_dir=tmp_path)


def test_an_opset_given_as_text_is_told_its_type(tmp_path):
    from surgeon.errors import SurgeonError
    from surgeon.zoo import check_choice

    with pytest.raises(SurgeonError, match="opset must be of type int, not str: .16.; choose one of: 11, 13, 16$"):
        check_choice("opset", "16", (11, 13, 16))


# ---- with torch --------------------------------------------------------------------------------


def export_params():
    return [pytest.param(f, id=fixture_id(f), marks=[pytest.mark.slow] if f in SLOW_EXPORTS else [])
            for f in FIXTURES]


@pytest.mark.parametrize("fixture", export_params())
def test_export_reproduces_fixture(fixture, tmp_path):
    pytest.importorskip("torch")
    from surgeon.zoo.exporter import export

    name, opset, aten = fixture
    paths = export(name, "fixture", opset, aten, tmp_path)
    committed = fixture_paths(*fixture)
    assert histogram(onnx.load(paths["onnx"])) == histogram(onnx.load(committed["onnx"]))
    for kind in ("inputs", "outputs"):
        new, old = np.load(paths[kind]), np.load(committed[kind])
        assert list(new.keys()) == list(old.keys())
        # Inputs are seeded exactly. Outputs differ in the last bits with the CPU and PyTorch's thread
        # count (up to 7.6e-6 near zero with OMP_NUM_THREADS=1 on the development machine).
        for key in old:
            np.testing.assert_allclose(new[key], old[key], rtol=0 if kind == "inputs" else 1e-5,
                                       atol=0 if kind == "inputs" else 2e-5, err_msg=f"{kind}:{key}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ORT_MODELS)
def test_opset16_export_matches_pytorch_in_onnxruntime(name, tmp_path):
    pytest.importorskip("torch")
    from surgeon.zoo.exporter import export

    assert_close(*run_ort(export(name, "fixture", 16, False, tmp_path)))


def test_unsupported_combination_is_a_surgeon_error(tmp_path):
    pytest.importorskip("torch")
    from surgeon.errors import SurgeonError
    from surgeon.zoo.exporter import export

    with pytest.raises(SurgeonError, match="__iand_"):
        export("bevformer-nmsfree", "fixture", 16, False, tmp_path)
    with pytest.raises(SurgeonError, match="unflatten"):
        export("bevfusion-fuser-head", "fixture", 11, False, tmp_path)


def test_bev_pool_matches_a_plain_scatter_add():
    torch = pytest.importorskip("torch")
    from surgeon.zoo import rig
    from surgeon.zoo.bevfusion import SIZES, bev_pool, bev_pool_indices

    cfg = SIZES["fixture"]
    generator = torch.Generator().manual_seed(0)
    (fh, fw), c = cfg.feature_hw, cfg.camera_channels
    depth = torch.rand(cfg.num_cams, cfg.depth_bins, fh, fw, generator=generator)
    feat = torch.randn(cfg.num_cams, fh, fw, c, generator=generator)
    indices = bev_pool_indices(cfg, rig.camera2lidar(), rig.intrinsics(cfg.image_hw).expand(cfg.num_cams, 3, 3))
    ranks_depth, ranks_feat, ranks_bev, starts, lengths = (t.long() for t in indices)
    assert int(lengths.sum()) == len(ranks_bev) and bool((ranks_bev[starts[1:]] > ranks_bev[starts[:-1]]).all())
    z, y, x = cfg.bev_shape
    plain = torch.zeros(z * y * x, c).index_add_(0, ranks_bev, depth.reshape(-1)[ranks_depth, None]
                                                  * feat.reshape(-1, c)[ranks_feat])
    expected = plain.view(z, y, x, c).permute(3, 0, 1, 2).reshape(1, c * z, y, x)
    torch.testing.assert_close(bev_pool(depth, feat, *indices, bev_shape=cfg.bev_shape), expected)


def test_camera_branch_shares_the_split_modules_weights():
    """bevfusion-camera is bevfusion-camera-backbone, bev_pool and bevfusion-camera-vtransform with the
    same weights and inputs, so a graph cut out of it can be compared with the split exports."""
    torch = pytest.importorskip("torch")
    from surgeon.zoo.bevfusion import BEV_POOL_INDICES, bev_pool
    from surgeon.zoo.exporter import build

    camera, inputs, _ = build("bevfusion-camera", "fixture")
    backbone, backbone_inputs, _ = build("bevfusion-camera-backbone", "fixture")
    vtransform, _, _ = build("bevfusion-camera-vtransform", "fixture")
    for whole, split in ((camera.backbone, backbone), (camera.vtransform, vtransform)):
        for (name, value), (split_name, split_value) in zip(whole.state_dict().items(), split.state_dict().items()):
            assert name == split_name and torch.equal(value, split_value), name
    for name, value in backbone_inputs.items():
        assert torch.equal(inputs[name], value), name
    with torch.no_grad():
        pooled = bev_pool(*backbone(inputs["img"], inputs["depth"]), *(inputs[n] for n in BEV_POOL_INDICES),
                          bev_shape=camera.cfg.bev_shape)
        torch.testing.assert_close(camera(*inputs.values()), vtransform(pooled), rtol=0, atol=0)


def test_camera_fixture_exports_index_add_as_an_overwriting_scatter():
    """Why bevfusion-camera needs the bev-pool-plugin pass: ONNX Runtime runs the opset-16 export, but its
    ScatterElements keeps one point per BEV cell where PyTorch's index_add_ sums them."""
    expected, got = run_ort(fixture_paths("bevfusion-camera", 16, False))
    assert not np.allclose(got[0], expected["camera_bev"], atol=1e-2)


def test_export_paths_name_the_files(tmp_path):
    paths = export_paths(tmp_path, "sparse4d-head", "full", 13, True)
    assert paths["inputs"].name == "sparse4d-head.full.opset13-aten.inputs.npz"

"""The target profiles: they load, say what their sources say, and agree with the runtimes we can run."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from surgeon.targets import available_targets, load_target
from surgeon.testing import make_model, run_ort

OURS = ["onnxruntime", "opset-11", "tensorrt-8.5", "tensorrt-8.6", "tensorrt-10"]
TENSORRT = ["tensorrt-8.5", "tensorrt-8.6", "tensorrt-10"]


@pytest.mark.parametrize("name", OURS)
def test_profile_loads_with_sources(name):
    target = load_target(name)
    assert name in available_targets()
    assert target.name == name and target.ops and target.sources


@pytest.mark.parametrize("name", TENSORRT)
def test_tensorrt_clips_floats_only(name):
    target = load_target(name)
    assert target.supports("Clip", dtype=np.float32)
    assert not target.supports("Clip", dtype=np.int32)
    assert not target.supports("Clip", dtype=np.int64)


@pytest.mark.parametrize("name, split_until", [("tensorrt-8.5", 17), ("tensorrt-8.6", 17), ("tensorrt-10", None)])
def test_split_num_outputs_only_from_tensorrt_10(name, split_until):
    assert load_target(name).ops["Split"].get("until") == split_until


@pytest.mark.parametrize("name", TENSORRT)
def test_grid_sample_from_opset_16_on_tensorrt(name):
    target = load_target(name)
    assert target.ops["GridSample"]["since"] == 16
    assert target.supports("GridSample", opset=16) and not target.supports("GridSample", opset=11)


def test_tensorrt_8_6_extends_8_5_with_layer_normalization():
    old, new = load_target("tensorrt-8.5"), load_target("tensorrt-8.6")
    assert not old.supports("LayerNormalization") and new.supports("LayerNormalization")
    assert {k: v for k, v in new.ops.items() if k != "LayerNormalization"} == old.ops
    assert new.version == "8.6" and new.plugins == old.plugins


def test_opset_11_has_opset_11_ops_only():
    target = load_target("opset-11")
    assert target.opset == 11 and target.static_shapes
    for later in ("GridSample", "LayerNormalization", "Trilu", "Gelu"):
        assert later not in target.ops
    assert target.ops["Clip"]["until"] == 11  # Clip-12 added integers
    assert all(rule.get("until", 11) == 11 for rule in target.ops.values())


@pytest.mark.parametrize("name", TENSORRT)
def test_tensorrt_plugins_match_the_plugin_specs(name):
    specs = pytest.importorskip("surgeon.plugins.specs", reason="surgeon.plugins.specs not present").plugin_specs()
    plugins = load_target(name).plugins
    assert set(plugins) == set(specs)
    for plugin, info in plugins.items():
        assert (info["plugin_version"], info["namespace"]) == (specs[plugin].version, specs[plugin].namespace)


def test_onnxruntime_profile_matches_onnxruntime():
    """What the profile promises, ONNX Runtime runs; what it leaves out, ONNX Runtime refuses."""
    target = load_target("onnxruntime")
    assert target.max_ir_version == 13
    assert "int64" in target.ops["Clip"]["dtypes"] and "GridSample" in target.domains["com.microsoft"]
    clip = make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [("x", np.int64, [3])],
                      [("y", np.int64, [3])], initializers={"lo": np.array(0), "hi": np.array(5)}, opset=13)
    np.testing.assert_array_equal(run_ort(clip, {"x": np.array([-1, 3, 9])})[0], [0, 3, 5])
    assert "float64" not in target.ops["Acos"]["dtypes"]
    acos = make_model([helper.make_node("Acos", ["x"], ["y"])], [("x", np.float64, [1])], [("y", np.float64, [1])])
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|Could not find an implementation"):
        run_ort(acos, {"x": np.zeros(1)})


def test_generated_profiles_are_current():
    """onnxruntime.yaml and opset-11.yaml match the installed onnxruntime/onnx (regenerate after upgrades)."""
    from surgeon.check.make_profiles import main

    assert main(["--check"]) == 0, "run: python -m surgeon.check.make_profiles"

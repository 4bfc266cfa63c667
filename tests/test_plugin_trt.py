"""The plugins inside TensorRT: C++ IPluginV3 plugins through the ONNX parser, and the Python
(`tensorrt.plugin`) registrations. These need TensorRT and a GPU and skip, with the reason, elsewhere."""
from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest

from surgeon.build import tensorrt_missing

NO_TENSORRT = tensorrt_missing()


@pytest.mark.skipif(NO_TENSORRT is None, reason="TensorRT is installed: its absence cannot be exercised here")
def test_python_plugins_import_only_with_tensorrt():
    with pytest.raises(ModuleNotFoundError, match="tensorrt"):
        importlib.import_module("surgeon.plugins.trt_python")


@pytest.mark.gpu
@pytest.mark.skipif(NO_TENSORRT is not None, reason=f"needs TensorRT: {NO_TENSORRT}")
def test_python_plugins_register_under_the_surgeon_namespace():
    import tensorrt as trt

    importlib.import_module("surgeon.plugins.trt_python")
    names = {(c.name, c.plugin_namespace) for c in trt.get_plugin_registry().all_creators}
    for name in ("GridSample2D", "MultiScaleDeformableAttn", "Rotate", "DeformableAggregation", "BEVPool"):
        assert (name, "surgeon") in names


@pytest.mark.gpu
@pytest.mark.skipif(NO_TENSORRT is not None, reason=f"needs TensorRT: {NO_TENSORRT}")
def test_msda_plugin_node_builds_and_matches_the_reference(tmp_path):
    """A MultiScaleDeformableAttn node as msda-plugin emits it -> TensorRT engine with libsurgeon_plugins.so ->
    the same outputs as its CPU reference (float32 within 1e-5)."""
    from onnx import helper

    from surgeon.build import build_engine, trt_runner
    from surgeon.plugins.build_lib import builtin_library
    from surgeon.plugins.specs import PLUGIN_DOMAIN, get_spec
    from surgeon.testing import make_model

    builtin_library()  # a SurgeonError here says to run `surgeon plugins build --tensorrt-root ...`
    spec = get_spec("MultiScaleDeformableAttn")
    shapes = np.array([[12, 20], [6, 10]], dtype=np.int64)
    starts = np.array([0, 240], dtype=np.int64)
    batch, heads, dims, queries, points = 1, 4, 8, 40, 4
    node = helper.make_node(spec.name, ["value", "shapes", "starts", "loc", "weights"], ["out"], domain=PLUGIN_DOMAIN,
                            **spec.node_attrs({}))
    model = make_model([node], inputs=[("value", np.float32, [batch, 300, heads, dims]),
                                       ("loc", np.float32, [batch, queries, heads, 2, points, 2]),
                                       ("weights", np.float32, [batch, queries, heads, 2, points])],
                       outputs=[("out", np.float32, [batch, queries, heads * dims])],
                       initializers={"shapes": shapes, "starts": starts}, opset=17)
    model_path = tmp_path / "msda.onnx"
    onnx.save(model, str(model_path))
    result = build_engine(model_path, tmp_path / "msda.engine", {"plugins": ["builtin"]})
    assert result.plugins_used, result.layers
    rng = np.random.default_rng(0)
    feeds = {"value": rng.standard_normal((batch, 300, heads, dims)).astype(np.float32),
             "loc": rng.uniform(-0.1, 1.1, (batch, queries, heads, 2, points, 2)).astype(np.float32),
             "weights": rng.uniform(0, 1, (batch, queries, heads, 2, points)).astype(np.float32)}
    with trt_runner(result.engine) as runner:
        got = runner.infer(feeds)["out"]
    expected = spec.run_reference([feeds["value"], shapes, starts, feeds["loc"], feeds["weights"]], {})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

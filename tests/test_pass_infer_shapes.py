import numpy as np
from onnx import helper

from surgeon.testing import apply_pass, make_model


def test_infer_shapes_fills_intermediate_types():
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="relu"), helper.make_node("Neg", ["t"], ["y"], name="neg")]
    model = make_model(nodes, [("x", np.float32, [2, 5])], [("y", np.float32, None)])
    out, _ = apply_pass(model, "infer-shapes")
    infos = {v.name: v for v in out.graph.value_info}
    dims = [d.dim_value for d in infos["t"].type.tensor_type.shape.dim]
    assert dims == [2, 5]

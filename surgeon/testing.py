"""Helpers for testing passes (ours and third-party ones): build tiny models, apply one pass, run ORT.

    model = make_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")],
                       inputs=[("x", np.int64, [4])], outputs=[("y", np.int64, [4])],
                       initializers={"lo": np.array(0), "hi": np.array(5)})
    out, step = apply_pass(model, "clip-int", target="tensorrt-8.6", mode="minmax")
    assert step.rewritten == ["clip"]
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], np.clip(x, 0, 5))
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

IR_VERSION = 10  # onnx 1.23 writes 14 by default, which onnxruntime 1.31 refuses (DESIGN.md)


def make_model(nodes: Sequence[onnx.NodeProto], inputs, outputs, initializers: dict[str, Any] | None = None,
               opset: int = 11, extra_opsets: dict[str, int] | None = None, name: str = "test") -> onnx.ModelProto:
    """A model from nodes; `inputs`/`outputs` are (name, numpy dtype, shape or None) triples."""

    def value_info(name, dtype, shape):
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        return helper.make_tensor_value_info(name, elem, shape)

    graph = helper.make_graph(
        list(nodes), name, [value_info(*i) for i in inputs], [value_info(*o) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    opsets = [helper.make_opsetid("", opset)]
    domains = {n.domain for n in nodes if n.domain not in ("", "ai.onnx")}
    for domain in sorted(domains | set(extra_opsets or {})):
        opsets.append(helper.make_opsetid(domain, (extra_opsets or {}).get(domain, 1)))
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def apply_pass(model: onnx.ModelProto, pass_name: str, target: str = "onnxruntime", **params):
    """Run one pass as the pipeline would (needs, tidy, export); return (model, StepRecord)."""
    from surgeon.pipeline import finish_graph, run_steps
    from surgeon.recipe import load_recipe

    recipe = load_recipe({"name": f"test-{pass_name}", "target": target, "checker": False,
                          "steps": [{"pass": pass_name, "with": params}]})
    graph, records = run_steps(model, recipe)
    return finish_graph(graph, model, recipe, records), records[0]


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run `model` on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def export_torch(module_or_fn, *args, opset: int = 11, aten_fallback: bool = True, input_names=None,
                 output_names=None, dynamic_axes=None) -> onnx.ModelProto:
    """Export like users do: `torch.onnx.export(..., dynamo=False)` at `opset`, with the ATen fallback.

    A plain function is wrapped in a Module. Needs torch (tests: `pytest.importorskip("torch")`).
    """
    import io
    import warnings

    import torch

    module = module_or_fn if isinstance(module_or_fn, torch.nn.Module) else _FunctionModule(module_or_fn)
    fallback = torch.onnx.OperatorExportTypes.ONNX_ATEN_FALLBACK if aten_fallback else \
        torch.onnx.OperatorExportTypes.ONNX
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(args), buffer, dynamo=False, opset_version=opset,
                          operator_export_type=fallback, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _FunctionModule(fn):
    import torch

    class FunctionModule(torch.nn.Module):
        def forward(self, *args):
            return fn(*args)

    return FunctionModule()


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]

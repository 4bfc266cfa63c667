"""Turn a Trace into an ONNX model, in one of two flavours.

`libspconv` is exactly what NVIDIA's 3DSparseConvolution parser reads: one float16 input (the
voxel features; coordinates travel implicitly with every sparse tensor), float16 initializers, a
bias on every SparseConvolution, and the parser's own `Reshape(dims=)` / `Transpose(dims=)`:

    features ─ SparseConvolution(x, W, b) ─ Add ─ Relu ─ ... ─ ScatterDense ─ Reshape(dims=[1,256,180,180])

`standard` passes onnx.checker and can run node by node on the CPU references: custom ops live in
the `spconv` domain and take and return coordinates as explicit int32 tensors, the rest is
standard opset 11 with float32 initializers:

    features, indices ─ spconv::SparseConvolution(x, idx, W, b) ─► (y, y.indices) ─ Add ─ Relu ─ ...
                      ─ spconv::ScatterDense(x, idx) ─ Reshape(x, shape)

With `fold_batchnorm` a BatchNormalization right after a convolution (its only consumer) is folded
into the weights and bias; with `fold_relu` a Relu right after it becomes `activation="ReLU"`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from surgeon.errors import SurgeonError
from surgeon.export import FLAVOURS
from surgeon.export.tracer import SPARSE_DOMAIN, Op, Trace, Value

OPSET = 11
IR_VERSION = 10


def fold_into_convolutions(ops: list[Op], graph_outputs: list[str], fold_batchnorm: bool = True,
                           fold_relu: bool = True) -> list[Op]:
    """`ops` with BatchNormalization and Relu that directly follow a SparseConvolution folded into it."""
    uses: dict[str, int] = {}
    for op in ops:
        for value in op.inputs:
            uses[value.name] = uses.get(value.name, 0) + 1
    for name in graph_outputs:
        uses[name] = uses.get(name, 0) + 1
    producer: dict[str, Op] = {}
    renamed: dict[str, Value] = {}
    folded: list[Op] = []
    for op in ops:
        op = replace(op, inputs=[renamed.get(v.name, v) for v in op.inputs])
        conv = producer.get(op.inputs[0].name) if op.inputs else None
        foldable = (conv is not None and conv.op_type == "SparseConvolution" and uses[op.inputs[0].name] == 1
                    and conv.attrs["activation"] == "None" and op.outputs[0].name not in graph_outputs)
        if foldable and fold_batchnorm and op.op_type == "BatchNormalization":
            conv.weights = _fold_batchnorm(conv.weights, op.weights, op.attrs["epsilon"])
        elif foldable and fold_relu and op.op_type == "Relu":
            conv.attrs["activation"] = "ReLU"
        else:
            op = replace(op, attrs=dict(op.attrs), weights=dict(op.weights))
            folded.append(op)
            producer.update({v.name: op for v in op.outputs})
            continue
        renamed[op.outputs[0].name] = conv.outputs[0]
        uses[conv.outputs[0].name] = uses.get(op.outputs[0].name, 0)
    return folded


def _fold_batchnorm(conv: dict[str, np.ndarray], bn: dict[str, np.ndarray], epsilon: float) -> dict[str, np.ndarray]:
    """W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps) per output channel (float64)."""
    weight = conv["weight"]
    scale = bn["scale"].astype(np.float64) / np.sqrt(bn["var"].astype(np.float64) + epsilon)
    bias = conv.get("bias", np.zeros(weight.shape[0], weight.dtype)).astype(np.float64)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return {"weight": (weight.astype(np.float64) * scale.reshape(shape)).astype(weight.dtype),
            "bias": ((bias - bn["mean"]) * scale + bn["B"]).astype(weight.dtype)}


def build_model(trace: Trace, flavour: str = "standard", fold_batchnorm: bool = True, fold_relu: bool = True,
                graph_name: str = "scn") -> onnx.ModelProto:
    """The ONNX model of `trace` in `flavour` ("libspconv" or "standard")."""
    if flavour not in FLAVOURS:
        raise SurgeonError(f"unknown flavour '{flavour}'; choose one of {', '.join(FLAVOURS)}")
    ops = fold_into_convolutions(trace.ops, [v.name for v in trace.outputs], fold_batchnorm, fold_relu)
    writer = _Writer(flavour)
    for op in ops:
        writer.add(op)
    float_type = TensorProto.FLOAT16 if flavour == "libspconv" else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(v.name, float_type, v.shape) for v in trace.inputs]
    if flavour == "standard":
        inputs += [helper.make_tensor_value_info(v.indices, TensorProto.INT32, [v.shape[0], None])
                   for v in trace.inputs if v.is_sparse]
    outputs = [helper.make_tensor_value_info(v.name, float_type, v.shape) for v in trace.outputs]
    if flavour == "standard":  # a sparse result is only meaningful with its coordinates
        outputs += [helper.make_tensor_value_info(v.indices, TensorProto.INT32, [None, None])
                    for v in trace.outputs if v.is_sparse]
    graph = helper.make_graph(writer.nodes, graph_name, inputs, outputs, initializer=writer.initializers)
    custom_domains = sorted({node.domain for node in writer.nodes if node.domain})
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(domain, 1) for domain in custom_domains]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="surgeon")
    helper.set_model_props(model, {"surgeon.export": f"spconv tracer, flavour={flavour}"})
    return model


class _Writer:
    def __init__(self, flavour: str):
        self.flavour = flavour
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    @property
    def standard(self) -> bool:
        return self.flavour == "standard"

    def initializer(self, name: str, array: np.ndarray) -> str:
        if array.dtype.kind == "f":
            array = array.astype(np.float16 if not self.standard else np.float32)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def add(self, op: Op) -> None:
        if op.domain:
            self.add_custom(op)
        elif op.op_type in ("Reshape", "Transpose"):
            self.add_layout(op)
        else:
            if op.op_type == "BatchNormalization" and not self.standard:
                raise SurgeonError(f"'{op.name}': libspconv has no BatchNormalization; it must directly follow "
                                   f"a sparse convolution to be folded into it (fold_batchnorm)")
            weights = [self.initializer(f"{op.name}.{key}", array) for key, array in op.weights.items()]
            self.nodes.append(helper.make_node(op.op_type, [v.name for v in op.inputs] + weights,
                                               [v.name for v in op.outputs], op.name, **op.attrs))

    def add_custom(self, op: Op) -> None:
        if not self.standard and op.op_type == "SparseConvolution" and op.attrs["transposed"]:
            raise SurgeonError(f"'{op.name}': a transposed sparse convolution (SparseConvTranspose3d) has no "
                               f"libspconv form: its parser reads no `transposed`, `output_padding` or "
                               f"`output_spatial_shape` and would build a strided down-sampling convolution",
                               hint="export the standard flavour, or up-sample with SparseInverseConv3d, "
                                    "which libspconv reads as `inverse`")
        weights = dict(op.weights)
        if op.op_type == "SparseConvolution" and "bias" not in weights:
            # libspconv's parser reads input 2 unconditionally; both flavours keep the same inputs.
            weights["bias"] = np.zeros(op.attrs["out_channels"], weights["weight"].dtype)
        inputs, outputs, attrs = [], [], dict(op.attrs)
        for value in op.inputs:
            inputs += [value.name, value.indices] if self.standard and value.is_sparse else [value.name]
        inputs += [self.initializer(f"{op.name}.{key}", array) for key, array in weights.items()]
        for value in op.outputs:
            outputs += [value.name, value.indices] if self.standard and value.owns_indices else [value.name]
        if self.standard:
            inputs += op.index_inputs
            attrs.update(op.standard_attrs)
            domain = op.domain
        else:
            domain = "" if op.domain == SPARSE_DOMAIN else op.domain
        self.nodes.append(helper.make_node(op.op_type, inputs, outputs, op.name, domain=domain, **attrs))

    def add_layout(self, op: Op) -> None:
        dims = op.attrs["dims"]
        source, target = op.inputs[0].name, op.outputs[0].name
        if not self.standard:
            self.nodes.append(helper.make_node(op.op_type, [source], [target], op.name, dims=dims))
        elif op.op_type == "Reshape":
            shape = self.initializer(f"{op.name}.shape", np.asarray(dims, np.int64))
            self.nodes.append(helper.make_node("Reshape", [source, shape], [target], op.name))
        else:
            self.nodes.append(helper.make_node("Transpose", [source], [target], op.name, perm=dims))

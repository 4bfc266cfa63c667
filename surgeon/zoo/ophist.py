"""Op histograms of exported graphs (no torch needed): what the zoo's docs and tests assert on.

A node is counted under its op type, prefixed by its domain when not the default one, and for
`ATen` nodes suffixed by the `operator` attribute (`ATen:grid_sampler`), since that is what decides
whether a runtime can run it.
"""
from __future__ import annotations

from collections import Counter

import onnx

from surgeon.graphinfo import all_nodes


def node_key(node: onnx.NodeProto) -> str:
    """`[domain::]op_type[:aten_operator]` for one node."""
    key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    if node.op_type == "ATen":
        operator = next((a.s.decode() for a in node.attribute if a.name == "operator"), "?")
        key += f":{operator}"
    return key


def histogram(model: onnx.ModelProto) -> Counter:
    """Counter of node keys over the whole model."""
    return Counter(node_key(n) for n in all_nodes(model.graph))


def integer_clips(model: onnx.ModelProto) -> int:
    """How many Clip nodes take an int32/int64 input (TensorRT clips floats only)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    ints = {onnx.TensorProto.INT32, onnx.TensorProto.INT64}
    return sum(1 for n in inferred.graph.node if n.op_type == "Clip" and types.get(n.input[0]) in ints)


def print_histogram(path) -> None:
    """Print a model's node count, integer Clip count and op histogram."""
    model = onnx.load(path, load_external_data=False)
    print(f"{path}: {len(model.graph.node)} nodes, {integer_clips(model)} integer Clip")
    for key, count in sorted(histogram(model).items()):
        print(f"  {key:<48} {count}")


def main(argv: list[str] | None = None) -> int:
    """`python -m surgeon.zoo.ophist MODEL.onnx ...`: print the histogram of each model."""
    import sys

    for path in (sys.argv[1:] if argv is None else argv):
        print_histogram(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Describe a model: opsets, IR version, inputs and outputs, op histogram by domain (If/Loop/Scan bodies
included), initializer bytes."""
from __future__ import annotations

from collections import defaultdict

import onnx

from surgeon.cli_args import OutputArgs, print_json, table

NAME = "inspect"
HELP = "describe a model: opsets, inputs/outputs, op histogram (ATen operators too)"
ARG_GROUPS = (OutputArgs,)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="ONNX model")


def describe(model: onnx.ModelProto) -> dict:
    """A JSON-ready description of `model`."""
    from surgeon.graphinfo import all_nodes, op_histogram, tensor_bytes

    nodes = list(all_nodes(model.graph))
    by_domain: dict[str, dict[str, int]] = defaultdict(dict)
    for label, count in op_histogram(nodes).items():
        domain, _, op = label.rpartition("::")
        if label.startswith("ATen:"):
            domain, op = "org.pytorch.aten", label
        by_domain[domain or "ai.onnx"][op] = count
    init_bytes = sum(tensor_bytes(t) for t in model.graph.initializer)
    initializer_names = {t.name for t in model.graph.initializer}
    return {
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": [_value_info(v) for v in model.graph.input if v.name not in initializer_names],
        "outputs": [_value_info(v) for v in model.graph.output],
        "nodes": len(model.graph.node),
        "nodes_in_subgraphs": len(nodes) - len(model.graph.node),  # If/Loop/Scan bodies; `ops` counts them too
        "ops": dict(sorted(by_domain.items())),
        "custom_domains": sorted(d for d in by_domain if d not in ("ai.onnx",)),
        "initializers": {"count": len(model.graph.initializer), "bytes": init_bytes},
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def _value_info(value: onnx.ValueInfoProto) -> dict:
    t = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
    except (KeyError, TypeError):
        dtype = onnx.TensorProto.DataType.Name(t.elem_type).lower()
    return {"name": value.name, "dtype": dtype, "shape": dims if t.HasField("shape") else None}


def run(args) -> int:
    from surgeon.modelio import load_model

    info = describe(load_model(args.model, load_external_data=False))
    if args.json:
        print_json(info)
        return 0
    if args.quiet:
        return 0
    inner = f" (+{info['nodes_in_subgraphs']} in If/Loop/Scan bodies)" if info["nodes_in_subgraphs"] else ""
    print(f"{args.model}: IR version {info['ir_version']}, producer {info['producer'] or '-'}, "
          f"{info['nodes']} nodes{inner}")
    print("opsets: " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items()))
    for kind in ("inputs", "outputs"):
        rows = [[v["name"], v["dtype"], "x".join(map(str, v["shape"])) if v["shape"] is not None else "?"]
                for v in info[kind]]
        print(f"\n{kind}:\n" + table(rows, ["name", "dtype", "shape"]))
    for domain, ops in info["ops"].items():
        rows = [[op, str(n)] for op, n in ops.items()]
        print(f"\nops in {domain}:\n" + table(rows, ["op", "count"]))
    if info["custom_domains"]:
        print("\ncustom domains: " + ", ".join(info["custom_domains"]))
    init = info["initializers"]
    print(f"\ninitializers: {init['count']} ({init['bytes'] / 1e6:.2f} MB)")
    return 0

"""Where two graphs part ways: the first tensor, in the reference graph's topological order, whose
values differ although both graphs compute a tensor of that name.

Rewrites keep the names of the tensors they do not replace, so the common names are checkpoints:

    original:  x ─► conv_out ─► ATen(grid_sampler) ─► sampled ─► head ─► y
    rewritten: x ─► conv_out ─► GridSample(wrong)   ─► sampled ─► head ─► y
                    equal                               first to differ: 'sampled'

Both models get every common tensor as an extra output and run once on the same input set (the
reference runner handles ATen and plugin nodes, so any node's output can be read).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from surgeon.graphinfo import op_label
from surgeon.validation.compare import Tolerance, error_arrays, run_model


def common_tensors(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> list[str]:
    """Node outputs both graphs compute, in the reference graph's node order."""
    produced = {out for node in candidate.graph.node for out in node.output if out}
    names = [out for node in reference.graph.node for out in node.output if out and out in produced]
    return list(dict.fromkeys(names))


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns the tensors `names` (untyped: the runtime infers them)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    copy.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in existing)
    return copy


def first_divergence(reference: onnx.ModelProto, candidate: onnx.ModelProto, feed: dict, tolerance: Tolerance,
                     runner: str = "auto") -> dict:
    """The first common tensor outside tolerance (elementwise rule, default tolerances).

    `tensor` is None when none differs. That happens: with every tensor an output, ONNX Runtime
    cannot fuse across them, so an output difference caused by its graph optimisations vanishes.
    """
    names = common_tensors(reference, candidate)
    if not names:
        return {"tensor": None, "checked": 0, "of": 0}
    every = "model with every tensor an output"
    ref_results, _ = run_model(with_outputs(reference, names), [feed], runner, "original", source=f"the original {every}")
    cand_results, _ = run_model(with_outputs(candidate, names), [feed], runner, "rewritten",
                                source=f"the rewritten {every}")
    ref_values, cand_values = ref_results[0], cand_results[0]
    ref_nodes = {out: node for node in reference.graph.node for out in node.output}
    cand_nodes = {out: node for node in candidate.graph.node for out in node.output}
    checked = 0
    for name in names:
        a, b = np.asarray(ref_values[name]), np.asarray(cand_values[name])
        if a.shape != b.shape:
            continue  # a rewrite may legitimately change a layout under the same name
        checked += 1
        abs_err, rel_err = error_arrays(a, b)
        bad = tolerance.element_mismatches("", abs_err, rel_err)
        if bad.any():
            undefined = np.isnan(abs_err)  # NaN in one tensor only; left out of max_abs, counted
            defined = abs_err[~undefined]
            return {"tensor": name, "checked": checked, "of": len(names),
                    "max_abs": float(defined.max()) if defined.size else None,
                    "mismatched": int(bad.sum()), "elements": int(bad.size), "nan_mismatched": int(undefined.sum()),
                    "original_node": _describe(ref_nodes[name]), "rewritten_node": _describe(cand_nodes[name])}
    return {"tensor": None, "checked": checked, "of": len(names)}


def describe_divergence(found: dict, reference: str = "the original") -> tuple[str, str]:
    """A (label, sentence) pair for summaries and reports; `reference` names the graph compared with."""
    if found["tensor"] is None:
        return ("Localisation", f"no common tensor differs when read as an extra output ({found['checked']} "
                                "compared): the output difference depends on how the runtime optimises the whole graph")
    max_abs = "-" if found.get("max_abs") is None else f"{found['max_abs']:.3g}"
    nans = f" ({found['nan_mismatched']} NaN in one tensor only)" if found.get("nan_mismatched") else ""
    return ("First diverging tensor",
            f"{found['tensor']} (made by {found['rewritten_node']} in the rewritten graph, {found['original_node']} "
            f"in {reference}), max abs {max_abs}, {found['mismatched']} of {found['elements']} "
            f"elements out of tolerance{nans}")


def _describe(node: onnx.NodeProto) -> str:
    return f"{node.name or '(unnamed)'} ({op_label(node)})"

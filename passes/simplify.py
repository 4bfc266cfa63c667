"""Simplify the graph with onnxsim (constant folding, shape inference, fusions).

Before:  any exported graph       After:  the same function with fewer nodes (onnxsim's rewrites)

onnxsim runs the model with ONNX Runtime to fold constants, so graphs that ONNX Runtime cannot load
(ATen, custom-domain or plugin nodes) should be simplified after the passes that remove those nodes.
It costs seconds on large graphs (see docs/performance.md); prefer `fold-constants` in short loops.
"""
from __future__ import annotations

from surgeon.errors import PassError, first_line
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.rewrite import via_onnx

# Domains whose ops ONNX Runtime runs; others (ATen, plugins, custom) stop onnxsim.
ONNXRUNTIME_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
# Each check runs both models once; a recipe's `validate` section is the thorough comparison.
MAX_CHECKS = 100


@register_pass("simplify")
class Simplify(Pass):
    """Simplify with onnxsim (with its skip options)."""

    params = {
        "skip_fuse_bn": Param(bool, False, help="keep BatchNormalization separate from Conv"),
        "skip_constant_folding": Param(bool, False, help="do not fold constants"),
        "skip_shape_inference": Param(bool, False, help="do not run shape inference"),
        "skip_optimizers": Param(list, None, items=str, help="onnx-optimizer passes to skip"),
        "overwrite_input_shapes": Param(dict, None, help="{input: [dims]} to fix before simplifying"),
        "check_n": Param(int, 0, minimum=0, maximum=MAX_CHECKS,
                         help="random-input checks onnxsim runs afterwards (0: none)"),
    }
    needs = ("toposort",)  # onnxsim refuses unsorted graphs, which ONNX allows on disk
    provides = ("toposort", "cleanup")

    def run(self, graph, ctx):
        import onnxsim

        result = PassResult()
        before = {n.name for n in graph.nodes}
        foreign = sorted({n.op for n in graph.nodes if (n.domain or "") not in ONNXRUNTIME_DOMAINS})
        # ONNX Runtime cannot run ATen or custom-domain nodes, which onnxsim folds and checks with it.
        hint = (f"the graph holds {', '.join(foreign[:5])} nodes: run simplify after the passes that remove them"
                if foreign else None)

        def simplify(model):
            try:
                with ctx.tool_output():  # onnxsim prints "Checking 0/2..."
                    simplified, ok = onnxsim.simplify(
                        model, check_n=self.check_n, skip_fuse_bn=self.skip_fuse_bn,
                        skip_constant_folding=self.skip_constant_folding,
                        skip_shape_inference=self.skip_shape_inference, skipped_optimizers=self.skip_optimizers,
                        overwrite_input_shapes=self.overwrite_input_shapes)
            except Exception as exc:
                first = first_line(exc)
                raise PassError(f"onnxsim failed: {first}", hint=hint) from exc
            if not ok:
                raise PassError("onnxsim's check of the simplified model failed")
            return simplified

        result.graph = via_onnx(graph, simplify)
        after = {n.name for n in result.graph.nodes}
        result.rewritten.extend(sorted(before - after))
        result.note(f"{len(before)} -> {len(after)} nodes")
        return result

"""Give a pool the batch axis its kernel expects: Unsqueeze(0) -> pool -> Squeeze(0), exact.

torch's TorchScript exporter writes `F.max_pool2d` (and avg/lp pooling) on an unbatched tensor
[C, H, W] as a 2-D MaxPool on a 3-D input (pytorch/pytorch#127875). ONNX pools read their input as
[N, C, spatial...], so ONNX shape inference, ONNX Runtime ("Attribute dilations has incorrect size")
and TensorRT all reject the node. TransFusion's heatmap peak search does this for two classes.

Before:  x [C, H, W] ─► MaxPool(kernel_shape=[kh, kw]) ─► y
After:   x [C, H, W] ─► Unsqueeze(0) ─► MaxPool(kernel_shape=[kh, kw]) ─► Squeeze(0) ─► y

With the batch axis of size 1 the pool computes exactly what torch computed on the unbatched tensor;
MaxPool's optional Indices output is flat over N*C*H*W, so with N = 1 it is unchanged as well. A
MaxPool whose Indices another node reads is left alone with a note: torch's export of
`return_indices=True` wraps them in arithmetic written for a 4-D result (a Slice over axes [2, 3] of a
second MaxPool's indices, rank 3 after a Squeeze, which ONNX Runtime refuses), so batching the pools
alone does not make that graph run. The pass is shape-driven (a pool is wrong only for its input's
rank), so it needs shape inference, and leaves a pool whose input rank is unknown alone with a note.
"""
from __future__ import annotations

from surgeon.pass_api import Pass, PassResult, register_pass
from surgeon.rewrite import Rewrite, is_op

POOLS = ("MaxPool", "AveragePool", "LpPool")


@register_pass("pool-rank")
class PoolRank(Pass):
    """Add the batch axis a pool's kernel expects (torch's pooling of unbatched tensors), exactly."""

    needs = ("shapes",)

    def run(self, graph, ctx):
        result = PassResult()
        for node in [n for n in graph.nodes if is_op(n, POOLS) and "kernel_shape" in n.attrs]:
            shape = node.inputs[0].shape
            spatial = len(node.attrs["kernel_shape"])
            if shape is None:
                result.note(f"{node.name}: input rank unknown, left alone (set-input-shapes may tell it)")
            elif len(shape) == spatial + 1 and _indices_read(node):
                result.note(f"{node.name}: left alone, a node reads its Indices (torch's index arithmetic "
                            "for unbatched pooling is not rewritten); pool a batched tensor in the model")
            elif len(shape) == spatial + 1:
                self._add_batch_axis(graph, ctx, node)
                result.rewrote(node)
            elif len(shape) != spatial + 2:
                result.note(f"{node.name}: a {spatial}-D kernel on a rank-{len(shape)} input is not an unbatched "
                            "pool, left alone")
        return result

    @staticmethod
    def _add_batch_axis(graph, ctx, node) -> None:
        rewrite = Rewrite(graph, ctx, node)
        x = node.inputs[0]
        batched = rewrite.unsqueeze(x, [0], dtype=x.dtype, shape=[1, *x.shape])
        pooled = rewrite.op(node.op, [batched], node.attrs, num_outputs=len(node.outputs))
        pooled = pooled if isinstance(pooled, list) else [pooled]
        rewrite.bypass(*(rewrite.squeeze(t, [0], dtype=out.dtype, shape=out.shape)
                         for t, out in zip(pooled, node.outputs)))


def _indices_read(node) -> bool:
    """Whether a node reads the pool's second output (MaxPool's Indices); a graph output alone is exact."""
    return len(node.outputs) > 1 and bool(node.outputs[1].outputs)

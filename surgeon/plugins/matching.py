"""What the plugin passes share to match exported subgraphs and emit plugin nodes.

    node = expect_producer(tensor, "Reshape", "the sampled value")   # NoMatch names what was found instead
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from surgeon.pass_api import Param
from surgeon.plugins.specs import PLUGIN_DOMAIN
from surgeon.rewrite import is_op, producer

#: The `domain` parameter of a pass that emits plugin nodes.
DOMAIN_PARAM = Param(str, PLUGIN_DOMAIN, choices=(PLUGIN_DOMAIN, ""),
                     help="domain of the plugin node: 'surgeon', or '' as BEVFormer_tensorrt graphs have it")


class NoMatch(Exception):
    """The walk around a candidate left the pattern; the message says where, for the pass's notes."""


def expect_producer(tensor: gs.Tensor, op_type: str, what: str) -> gs.Node:
    """The node of type `op_type` producing `tensor`, or NoMatch saying what `tensor` (`what`) came from."""
    node = producer(tensor)
    if node is None or not is_op(node, op_type):
        found = (node.op if node is not None else "a constant (initializer)" if isinstance(tensor, gs.Constant)
                 else "a graph input")
        raise NoMatch(f"expected {what} from a {op_type}, found {found}")
    return node


"""Rewrite's unlinking: the same graph as graphsurgeon's synchronized clear() gives, both sides of every link
kept, and no Node.__eq__ calls however many nodes read a rewritten node's input."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from surgeon import rewrite
from surgeon.graphio import import_graph
from surgeon.pass_api import Context
from surgeon.rewrite import Rewrite, export_graph
from surgeon.targets import load_target
from surgeon.testing import apply_pass, make_model, run_ort


def fan_out(sites: int):
    """x read by `sites` Neg nodes (kept) and `sites` integer Clips (rewritten), each pair added: y_i."""
    nodes = []
    for i in range(sites):
        nodes += [helper.make_node("Neg", ["x"], [f"n{i}"], name=f"Neg_{i}"),
                  helper.make_node("Clip", ["x", "lo", "hi"], [f"c{i}"], name=f"Clip_{i}"),
                  helper.make_node("Add", [f"n{i}", f"c{i}"], [f"y{i}"], name=f"Add_{i}")]
    return make_model(nodes, [("x", np.int64, [8])], [(f"y{i}", np.int64, [8]) for i in range(sites)],
                      initializers={"lo": np.array(0), "hi": np.array(5)})


@pytest.fixture
def node_comparisons(monkeypatch):
    """How many times gs.Node.__eq__ runs (graphsurgeon's list.remove calls it on every node it passes)."""
    calls = [0]
    compare = gs.Node.__eq__

    def counted(self, other):
        calls[0] += 1
        return compare(self, other)

    monkeypatch.setattr(gs.Node, "__eq__", counted)
    return calls


def test_rewriting_thousands_of_readers_of_a_shared_tensor_compares_no_nodes(node_comparisons):
    """clip-int on 2,000 Clips reading x, which 2,000 kept Negs read too: graphsurgeon's clear() made
    2,001,000 Node.__eq__ calls here (quadratic in the sites: 77 s at 8,000)."""
    sites = 2000
    model = fan_out(sites)
    out, step = apply_pass(model, "clip-int", target="tensorrt-8.6")
    assert len(step.rewritten) == sites
    assert node_comparisons[0] <= sites
    x = np.array([-3, 0, 2, 5, 9, -1, 4, 7], np.int64)
    for got in run_ort(out, {"x": x}):
        np.testing.assert_array_equal(got, -x + np.clip(x, 0, 5))


def rewrite_every_clip(graph):
    """finish the even Clips (a Max reading x), bypass the odd ones (their readers read x)."""
    ctx = Context(target=load_target("tensorrt-8.6"))
    ctx.begin(graph, "test")
    for node in [n for n in graph.nodes if n.op == "Clip"]:
        rw = Rewrite(graph, ctx, node)
        x, lo = node.inputs[:2]
        if int(node.name.split("_")[1]) % 2:
            rw.bypass(x)
        else:
            rw.finish("Max", [x, lo])


def assert_links_consistent(graph):
    nodes = {id(n) for n in graph.nodes}
    for node in graph.nodes:
        for tensor in node.inputs:
            readers = sum(reader is node for reader in tensor.outputs)
            assert readers == sum(t is tensor for t in node.inputs), (node.name, tensor.name)
            assert all(id(reader) in nodes for reader in tensor.outputs), tensor.name
        for tensor in node.outputs:
            assert len(tensor.inputs) == 1 and tensor.inputs[0] is node, (node.name, tensor.name)


def test_unlinking_gives_graphsurgeons_graph_with_both_sides_of_every_link(monkeypatch):
    ours = import_graph(fan_out(50))
    rewrite_every_clip(ours)
    assert_links_consistent(ours)
    readers = [n.name for n in ours.inputs[0].outputs]
    assert sorted(n.op for n in ours.inputs[0].outputs) == ["Add"] * 25 + ["Max"] * 25 + ["Neg"] * 50

    monkeypatch.setattr(rewrite, "unlink_inputs", lambda node: node.inputs.clear())
    monkeypatch.setattr(rewrite, "unlink_outputs", lambda node: node.outputs.clear())
    graphsurgeons = import_graph(fan_out(50))
    rewrite_every_clip(graphsurgeons)
    assert readers == [n.name for n in graphsurgeons.inputs[0].outputs]
    assert export_graph(ours).SerializeToString() == export_graph(graphsurgeons).SerializeToString()

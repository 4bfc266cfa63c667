"""graphinfo: what a node reads through its subgraphs, the walk over bodies, op labels."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from surgeon.graphinfo import all_nodes, node_reads, op_label, raw_bytes, tensor_bytes, typed_entries


def _if_node(then_nodes, else_nodes, outputs=("y",)):
    def branch(name, nodes):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(nodes[-1].output[0],
                                                                                  TensorProto.FLOAT, None)])
    return helper.make_node("If", ["cond"], list(outputs), name="if",
                            then_branch=branch("then", then_nodes), else_branch=branch("else", else_nodes))


def test_node_reads_takes_outer_names_from_both_branches_once_and_in_order():
    node = _if_node([helper.make_node("Add", ["a", "b"], ["t"])],
                    [helper.make_node("Mul", ["b", "c"], ["e"])])
    # onnx.helper stores attributes sorted by name: else_branch comes before then_branch.
    assert node_reads(node) == ["cond", "b", "c", "a"]


def test_a_name_a_body_defines_is_its_own_even_when_defined_after_its_reader():
    # `t` is produced inside the branch, after the node reading it: ONNX scoping makes it the body's
    # name, so the outer `t` is not a dependency of the If.
    then_nodes = [helper.make_node("Neg", ["t"], ["u"]), helper.make_node("Relu", ["a"], ["t"])]
    node = _if_node(then_nodes, [helper.make_node("Identity", ["a"], ["e"])])
    assert node_reads(node) == ["cond", "a"]


def test_nested_bodies_report_what_the_innermost_reads_from_outside():
    inner = _if_node([helper.make_node("Add", ["x", "z"], ["t2"])],
                     [helper.make_node("Identity", ["x"], ["e2"])], outputs=("inner_y",))
    outer = _if_node([helper.make_node("Relu", ["x"], ["x_local"]), inner,
                      helper.make_node("Identity", ["inner_y"], ["t"])],
                     [helper.make_node("Identity", ["w"], ["e"])])
    # `x` and `z` come from outside both bodies; `x_local` and `inner_y` are the outer branch's own.
    assert node_reads(outer) == ["cond", "w", "x", "z"]


def test_all_nodes_walks_into_bodies_after_their_holder():
    node = _if_node([helper.make_node("Add", ["a", "b"], ["t"])],
                    [helper.make_node("Mul", ["b", "c"], ["e"])])
    graph = helper.make_graph([helper.make_node("Relu", ["a"], ["r"]), node], "g", [], [])
    assert [n.op_type for n in all_nodes(graph)] == ["Relu", "If", "Mul", "Add"]  # else_branch first


def test_op_label_names_aten_operators_and_domains():
    aten = helper.make_node("ATen", ["x"], ["y"], domain="org.pytorch.aten", operator="grid_sampler")
    custom = helper.make_node("MMCVMultiScaleDeformableAttention", ["x"], ["y"], domain="mmcv")
    assert op_label(aten) == "ATen:grid_sampler"
    assert op_label(custom) == "mmcv::MMCVMultiScaleDeformableAttention"
    assert op_label(onnx.helper.make_node("Conv", ["x", "w"], ["y"])) == "Conv"


@pytest.mark.parametrize("data_type", [t for t in TensorProto.DataType.values()
                                       if t not in (TensorProto.UNDEFINED, TensorProto.STRING)])
def test_stored_sizes_are_what_onnx_stores_for_every_data_type(data_type):
    """`modelio.read_model` refuses a tensor whose data is not exactly these sizes: packed 4-, 2- and 6-bit
    types, two entries per complex number, all as onnx itself writes them."""
    values = np.zeros(5, helper.tensor_dtype_to_np_dtype(data_type))
    raw = numpy_helper.from_array(values, "t")
    assert len(raw.raw_data) == raw_bytes(data_type, 5) == tensor_bytes(raw)
    typed = helper.make_tensor("t", data_type, [5], values.tolist())
    assert len(getattr(typed, helper.tensor_dtype_to_field(data_type))) == typed_entries(data_type, 5)


def test_no_stored_size_for_strings_or_numbers_that_are_no_data_type():
    assert raw_bytes(TensorProto.STRING, 3) is None and raw_bytes(999, 3) is None

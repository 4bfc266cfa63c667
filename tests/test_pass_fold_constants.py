import numpy as np
import pytest
from onnx import helper, numpy_helper

from surgeon.errors import PassError
from surgeon.testing import apply_pass, make_model, run_ort


def model_with_constant_chain(size=4):
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"], name="mul"),
             helper.make_node("Add", ["x", "ab"], ["y"], name="add")]
    return make_model(nodes, [("x", np.float32, [size])], [("y", np.float32, [size])],
                      initializers={"a": np.full(size, 2, np.float32), "b": np.full(size, 3, np.float32)})


def test_fold_constants_folds_and_keeps_numbers():
    model = model_with_constant_chain()
    out, step = apply_pass(model, "fold-constants")
    assert [n.op_type for n in out.graph.node] == ["Add"] and step.rewritten == ["mul"]
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], x + 6)


def test_size_threshold_keeps_large_values_computed():
    out, step = apply_pass(model_with_constant_chain(1024), "fold-constants", size_threshold=1000)
    assert [n.op_type for n in out.graph.node] == ["Mul", "Add"] and step.rewritten == []


def test_folding_works_on_ir_versions_ort_refuses():
    model = model_with_constant_chain()
    model.ir_version = 14  # what onnx 1.23 writes by default
    out, step = apply_pass(model, "fold-constants")
    assert step.rewritten == ["mul"] and out.ir_version == 14


def test_graph_with_nothing_to_fold_is_left_alone():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")]
    model = make_model(nodes, [("x", np.float32, [4])], [("y", np.float32, [4])])
    out, step = apply_pass(model, "fold-constants")
    assert step.rewritten == [] and [n.name for n in out.graph.node] == ["relu", "neg"]


def test_explain_names_no_private_constant(capsys):
    """`surgeon explain fold-constants` showed "up to _ROUNDS folds", a name users cannot look up."""
    import re
    import sys

    from surgeon.cli import main
    from surgeon.registry import get_pass

    assert main(["explain", "fold-constants"]) == 0
    text = capsys.readouterr().out
    rounds = sys.modules[get_pass("fold-constants").__module__]._ROUNDS
    assert not re.search(r"\b_[A-Z_]+\b", text) and f"up to {rounds} folds" in text


def model_with_constant_aten_node():
    """An ATen linspace whose bounds fold (Add of a Constant node and an initializer): ONNX Runtime cannot
    evaluate the ATen node itself, so graphsurgeon's folder meets it."""
    nodes = [helper.make_node("Constant", [], ["c0"], value=numpy_helper.from_array(np.array(-1.0, np.float32))),
             helper.make_node("Add", ["c0", "c1"], ["start"], name="add"),
             helper.make_node("ATen", ["start", "end", "steps"], ["lin"], name="lin", domain="org.pytorch.aten",
                              operator="linspace", overload_name=""),
             helper.make_node("Add", ["lin", "x"], ["y"], name="use")]
    return make_model(nodes, [("x", np.float32, [5])], [("y", np.float32, [5])],
                      initializers={"c1": np.array(0.5, np.float32), "end": np.array(3.0, np.float32),
                                    "steps": np.array(5, np.int64)})


@pytest.mark.parametrize("partitioning", [None, "basic"])
def test_a_node_onnx_runtime_cannot_evaluate_gets_a_hint_naming_recursive(partitioning):
    """The hint said `partitioning: basic`, which fails the same way (also when basic was already set)."""
    params = {} if partitioning is None else {"partitioning": partitioning}
    with pytest.raises(PassError, match=r"ATen.*\(try partitioning: recursive, which leaves nodes ONNX Runtime"):
        apply_pass(model_with_constant_aten_node(), "fold-constants", **params)


def test_recursive_partitioning_folds_around_the_aten_node():
    out, step = apply_pass(model_with_constant_aten_node(), "fold-constants", partitioning="recursive")
    assert [n.op_type for n in out.graph.node] == ["ATen", "Add"] and "add" in step.rewritten


def test_folding_around_an_aten_node_prints_nothing(capfd):
    """graphsurgeon's folder printed "[W] Inference failed for subgraph ... ATen" (and, on the first
    message, "colored module is not installed") to stdout, where `run --json` writes its report."""
    from onnx_graphsurgeon.logger import G_LOGGER

    severity = G_LOGGER.severity
    apply_pass(model_with_constant_aten_node(), "fold-constants", partitioning="recursive")
    assert capfd.readouterr() == ("", "") and G_LOGGER.severity == severity


def test_a_failed_fold_prints_only_surgeons_error(capfd, tmp_path):
    """graphsurgeon's "[W] Inference failed ... try enabling partitioning" came before surgeon's error."""
    import onnx

    from surgeon.cli import main

    onnx.save(model_with_constant_aten_node(), tmp_path / "m.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m.onnx\nchecker: false\nsteps:\n  - pass: fold-constants\n")
    assert main(["run", str(recipe), "-o", str(tmp_path / "out.onnx")]) == 2
    out, err = capfd.readouterr()
    assert out == "" and "[W]" not in err
    assert err.splitlines()[-1].startswith("surgeon: error: step 1 (fold-constants): constant folding failed")

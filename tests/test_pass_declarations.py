"""What a pass declares and records: what `@register_pass` refuses in a declaration, when the pass registers,
naming its file; what `ctx.tag` writes into the output's `metadata_props`."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from surgeon.errors import SurgeonError
from surgeon.pass_api import Param, Pass, PassResult, register_pass
from surgeon.registry import discover, load_plugin_file
from surgeon.testing import apply_pass


def plugin(tmp_path, source: str):
    path = tmp_path / "passes.py"
    path.write_text(textwrap.dedent(source))
    return path


@pytest.mark.parametrize("declaration, why", [
    ("Param(int, -1, minimum=0)", "must be at least 0, got -1"),
    ("Param(float, 2.0, minimum=0, maximum=1)", "must be between 0 and 1, got 2.0"),
    ("Param(str, 'fast', choices=('minmax', 'cast'))", "'fast' is not one of 'minmax', 'cast'"),
    ("Param(list, ['a', 1], items=str)", "expected a string, got an integer 1"),
    ("Param(int, 'one')", "expected an integer, got a string 'one'")])
def test_a_default_its_own_param_refuses_is_an_error_naming_the_pass_and_its_file(tmp_path, declaration, why):
    path = plugin(tmp_path, f'''
        from surgeon.pass_api import Param, Pass, PassResult, register_pass

        @register_pass("declarations-test-default")
        class BadDefault(Pass):
            """A default outside its own bounds."""
            params = {{"level": {declaration}}}

            def run(self, graph, ctx):
                return PassResult()
    ''')
    with pytest.raises(SurgeonError) as info:
        load_plugin_file(path)
    assert str(info.value).startswith(f"{path.resolve()}: pass 'declarations-test-default': the default of "
                                      f"parameter 'level' breaks its own declaration: {why}")
    assert "declarations-test-default" not in discover()


def test_defaults_that_fit_and_required_parameters_register():
    @register_pass("declarations-test-fine")
    class Fine(Pass):
        params = {"level": Param(int, 0, minimum=0), "ratio": Param(float, 1, maximum=1),
                  "names": Param(list, None, items=str), "mode": Param(str, None, choices=("a", "b")),
                  "size": Param(int, minimum=1)}  # required: no default to check

        def run(self, graph, ctx):
            return PassResult()

    assert Fine(size=2).values == {"level": 0, "ratio": 1, "names": None, "mode": None, "size": 2}


@pytest.mark.parametrize("base", ["", "(object)"])
def test_a_pass_class_that_does_not_subclass_pass_is_refused_by_name(tmp_path, base):
    path = plugin(tmp_path, f'''
        from surgeon.pass_api import PassResult, register_pass

        @register_pass("declarations-test-no-base")
        class NoBase{base}:
            """Forgot to subclass Pass."""
            def run(self, graph, ctx):
                return PassResult()
    ''')
    with pytest.raises(SurgeonError) as info:
        load_plugin_file(path)
    message = str(info.value)
    assert message.startswith(f"{path.resolve()}: pass 'declarations-test-no-base': NoBase must be a class "
                              "that subclasses surgeon.pass_api.Pass")
    assert "needs" not in message.split("(")[0]  # not the AttributeError it used to be
    assert "declarations-test-no-base" not in discover()


def test_a_decorated_function_is_refused():
    with pytest.raises(SurgeonError, match=r"pass 'declarations-test-function': \S*run_me must be a class"):
        @register_pass("declarations-test-function")
        def run_me(graph, ctx):
            return PassResult()


def test_the_cli_reports_a_bad_default_as_one_error(tmp_path):
    path = plugin(tmp_path, '''
        from surgeon.pass_api import Param, Pass, PassResult, register_pass

        @register_pass("declarations-test-cli")
        class BadDefault(Pass):
            params = {"level": Param(int, -1, minimum=0)}

            def run(self, graph, ctx):
                return PassResult()
    ''')
    done = subprocess.run([sys.executable, "-m", "surgeon", "explain", "declarations-test-cli", "--plugin", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.strip().splitlines() == [
        f"surgeon: error: {path.resolve()}: pass 'declarations-test-cli': the default of parameter 'level' breaks "
        "its own declaration: must be at least 0, got -1 (change the default, or the type, bounds or choices it must "
        "fit)"]


@register_pass("declarations-test-tag")
class TagWithProperties(Pass):
    """Tag every Relu with the pass, the node it replaces and two properties of its own."""

    def run(self, graph, ctx):
        result = PassResult()
        for node in graph.nodes:
            if node.op == "Relu":
                ctx.tag(node, replaces="old_relu", source="unit test", zone="a")
                result.rewrote(node)
        return result


def test_properties_a_pass_tags_a_node_with_are_written_to_its_metadata(relu_model):
    out, _ = apply_pass(relu_model, "declarations-test-tag")
    relu = next(node for node in out.graph.node if node.op_type == "Relu")
    assert [(p.key, p.value) for p in relu.metadata_props] == [
        ("surgeon.pass", "declarations-test-tag"), ("surgeon.replaces", "old_relu"),
        ("surgeon.source", "unit test"), ("surgeon.zone", "a")]


def test_numpy_scalars_are_numbers_in_defaults_and_values():
    """Before, `Param(float, np.float32(1e-5))` refused to register: "expected a number, got a float32"."""
    import numpy as np

    @register_pass("declarations-test-numpy")
    class NumpyDefaults(Pass):
        """NumPy scalars as defaults."""
        params = {"eps": Param(float, np.float32(0.5), minimum=0), "steps": Param(int, np.int64(3)),
                  "scale": Param(float, 1.0)}

        def run(self, graph, ctx):
            return PassResult()

    assert NumpyDefaults.params["eps"].default == 0.5 and type(NumpyDefaults.params["eps"].default) is float
    checked = NumpyDefaults.check_params({"steps": np.int32(4), "scale": np.float64(2.0)})
    assert checked == {"eps": 0.5, "steps": 4, "scale": 2.0}
    assert [type(checked[key]) for key in ("eps", "steps", "scale")] == [float, int, float]
    for value in (np.bool_(True), np.float32(1.5)):
        with pytest.raises(SurgeonError, match="parameter 'steps'.*expected an integer"):
            NumpyDefaults.check_params({"steps": value})


class _CountingSet(set):
    """The names a Context holds as taken, counting how often one is looked up."""
    lookups = 0

    def __contains__(self, name):
        self.lookups += 1
        return super().__contains__(name)


def test_new_names_of_one_base_are_found_in_linear_time_and_stay_the_same():
    """Before, each `new_name` tried `base_1`, `base_2`, ... from 1 again: inlining n unnamed calls looked names
    up n²/2 times (seconds for a few thousand)."""
    import onnx_graphsurgeon as gs

    from surgeon.pass_api import Context

    ctx = Context(target=None)
    ctx.begin(gs.Graph(), "declarations-test")
    ctx._taken = _CountingSet({"n", "n_2"})
    assert [ctx.new_name("n") for _ in range(3)] + [ctx.new_name("m")] == ["n_1", "n_3", "n_4", "m"]
    ctx._taken.lookups = 0
    names = [ctx.new_name("n") for _ in range(1000)]
    assert names == [f"n_{i}" for i in range(5, 1005)] and ctx._taken.lookups == 1000
    graph = gs.Graph(nodes=[gs.Node("Relu", name="n_1")])
    ctx.begin(graph, "declarations-test")  # a new pass: names and suffixes from its graph
    assert [ctx.new_name("n", graph) for _ in range(2)] == ["n", "n_2"]


@pytest.mark.parametrize("param, value, hint", [
    (Param(str, "a"), 123, "quote it: '123'"),
    (Param(list, None, items=str), [1.5], "quote it, as written: YAML reads it as a number"),
    (Param(str, "fp32", choices=("fp32", "16")), 16, "quote it: '16'"),
    (Param(str, "fp32", choices=("fp32", "fp16")), 16, None),  # quoted, still none of the choices
    (Param(int, 1), "x", None)])
def test_a_number_where_text_belongs_says_to_quote_it(param, value, hint):
    """Purely numeric tensor names are common in older torch exports; YAML reads them unquoted as numbers."""
    with pytest.raises(ValueError) as raised:
        param.coerce(value)
    assert raised.value.hint == hint

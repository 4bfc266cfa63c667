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

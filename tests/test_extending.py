"""A user's own plugin specs and references, from plugin files: they add to surgeon's, never replace them,
and every command that reads recipes finds them where `surgeon check` does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import surgeon.plugins.specs as specs
import surgeon.reference as reference
from surgeon.cli import main
from surgeon.errors import SurgeonError
from surgeon.plugins.specs import get_spec, plugin_spec
from surgeon.reference import find_reference
from surgeon.registry import load_plugin_file
from surgeon.testing import make_model


@pytest.fixture
def own_registries(monkeypatch):
    """Specs and references a test declares are gone after it (other tests list surgeon's exactly)."""
    reference.load_references()
    monkeypatch.setattr(specs, "_SPECS", dict(specs._SPECS))
    monkeypatch.setattr(reference, "_REFERENCES", dict(reference._REFERENCES))


def write(path, source: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def spec_file(path, name: str, extra: str = ""):
    return write(path, f'''
        import numpy as np
        from surgeon.plugins.specs import plugin_spec

        @plugin_spec("{name}", inputs=("x",), output_shape=lambda shapes, attrs: [shapes[0]],
                     cuda_source="mine.cu"{extra})
        def mine(x):
            """Not surgeon's plugin."""
            return np.zeros_like(x)
    ''')


def test_a_plugin_file_cannot_replace_a_built_in_spec_or_its_reference(tmp_path, own_registries):
    builtin = get_spec("MultiScaleDeformableAttn")
    builtin_reference = find_reference("MultiScaleDeformableAttn", "surgeon")
    path = spec_file(tmp_path / "specs.py", "MultiScaleDeformableAttn")
    with pytest.raises(SurgeonError) as info:
        load_plugin_file(path)
    message = str(info.value)
    assert "two plugin specs are named 'MultiScaleDeformableAttn'" in message
    assert "surgeon/plugins/specs.py" in message and str(path.resolve()) in message
    assert "a built-in plugin spec cannot be replaced" in message
    assert get_spec("MultiScaleDeformableAttn") is builtin
    assert find_reference("MultiScaleDeformableAttn", "surgeon") is builtin_reference


def test_two_plugin_files_declaring_one_plugin_name_are_an_error_naming_both(tmp_path, own_registries):
    first = spec_file(tmp_path / "a" / "specs.py", "ExtendingTwice")
    second = spec_file(tmp_path / "b" / "specs.py", "ExtendingTwice")
    load_plugin_file(first)
    with pytest.raises(SurgeonError, match="two plugin specs are named 'ExtendingTwice'") as info:
        load_plugin_file(second)
    assert str(first.resolve()) in str(info.value) and str(second.resolve()) in str(info.value)
    assert "rename one of them" in str(info.value)


def test_a_spec_whose_reference_would_replace_one_of_surgeons_is_refused_whole(tmp_path, own_registries):
    """GridSampler2DTRT has surgeon's reference in the default domain: the spec takes neither domain."""
    path = spec_file(tmp_path / "specs.py", "GridSampler2DTRT")
    with pytest.raises(SurgeonError, match=r"two references for GridSampler2DTRT: .*aten.py .* and "
                                           rf"{path.resolve()} \(mine\)"):
        load_plugin_file(path)
    assert "GridSampler2DTRT" not in specs.plugin_specs() and find_reference("GridSampler2DTRT", "surgeon") is None


def test_a_reference_clashing_with_surgeons_names_the_plugin_file(tmp_path, own_registries):
    path = write(tmp_path / "refs.py", '''
        from surgeon.reference import reference_op

        @reference_op("GridSampler2DTRT")
        def mine(inputs, attrs):
            return [inputs[0]]
    ''')
    with pytest.raises(SurgeonError) as info:
        load_plugin_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: plugin file failed to import: ValueError: two references for GridSampler2DTRT")
    assert str(path.resolve()) in message and "surgeon/reference/aten.py" in message
    assert "surgeon_plugin_" not in message


def test_run_reports_a_reference_clash_whatever_the_import_order(tmp_path):
    """A fresh process, as users run it: the plugin file used to register before surgeon's references, and
    the clash surfaced later as an internal error, or never in a run that validates nothing."""
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2])],
                         [("y", np.float32, [2])]), tmp_path / "m.onnx")
    (tmp_path / "r.yaml").write_text("model: m.onnx\nsteps: [{pass: toposort}]\n")
    plugin = write(tmp_path / "refs.py", '''
        from surgeon.reference import reference_op

        @reference_op("GridSampler2DTRT")
        def mine(inputs, attrs):
            return [inputs[0]]
    ''')
    done = subprocess.run([sys.executable, "-m", "surgeon", "run", "r.yaml", "--dry-run", "--no-validate", "-q",
                           "--plugin", "refs.py"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("surgeon: error: refs.py: plugin file failed to import: ValueError: two references "
                                  f"for GridSampler2DTRT: ") and str(plugin.resolve()) in done.stderr


def test_domains_choose_where_a_spec_reference_answers(tmp_path, own_registries):
    load_plugin_file(spec_file(tmp_path / "specs.py", "ExtendingDomains", extra=', domains=("myco",)'))
    spec = get_spec("ExtendingDomains")
    assert spec.domains == ("myco",) and not spec.shipped and spec.doc == "Not surgeon's plugin."
    assert find_reference("ExtendingDomains", "surgeon") is None and find_reference("ExtendingDomains", "") is None
    (out,) = find_reference("ExtendingDomains", "myco")([np.ones(3, np.float32)], {})
    np.testing.assert_array_equal(out, np.zeros(3, np.float32))


@pytest.mark.parametrize("domains", ["myco", (), ("myco", 1)])
def test_domains_must_be_a_tuple_of_names(domains):
    with pytest.raises(ValueError, match="domains must be a non-empty tuple of domain names"):
        plugin_spec("ExtendingBadDomains", inputs=("x",), output_shape=None, cuda_source="x.cu", domains=domains)


def test_a_reference_without_a_docstring_is_declared(own_registries):
    @plugin_spec("ExtendingNoDoc", inputs=("x",), output_shape=lambda shapes, attrs: [shapes[0]], cuda_source="x.cu")
    def no_doc(x):
        return x

    assert get_spec("ExtendingNoDoc").doc == ""


def test_plugins_list_shows_the_specs_of_a_plugin_file(tmp_path, own_registries, capsys):
    path = spec_file(tmp_path / "specs.py", "ExtendingListed")
    assert main(["plugins", "list", "--plugin", str(path), "--json"]) == 0
    listed = {spec["name"]: spec for spec in json.loads(capsys.readouterr().out)}
    assert listed["ExtendingListed"]["shipped"] is False and listed["GridSample2D"]["shipped"] is True
    assert listed["ExtendingListed"]["domains"] == ["surgeon", ""]


def project_with_a_pass(folder, pass_name: str) -> None:
    """`folder` as a project: a model, a plugin file defining `pass_name` (a pass that changes nothing),
    pyproject.toml listing it, and r.yaml running it."""
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2])],
                         [("y", np.float32, [2])]), folder / "m.onnx")
    write(folder / "tools" / "passes.py", f'''
        from surgeon.pass_api import Pass, PassResult, register_pass

        @register_pass("{pass_name}")
        class ProjectPass(Pass):
            """A project's own pass."""
            def run(self, graph, ctx):
                return PassResult()
    ''')
    (folder / "pyproject.toml").write_text('[tool.surgeon]\nplugins = ["tools/passes.py"]\n')
    (folder / "r.yaml").write_text(f"model: m.onnx\nsteps: [{{pass: {pass_name}}}]\n")


def test_run_loads_the_plugin_files_pyproject_lists_as_check_does(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    project_with_a_pass(tmp_path, "extending-project-pass")
    assert main(["run", "r.yaml", "-o", "o.onnx", "-q", "--no-config"]) == 2  # first: the pass is not loaded yet
    assert "unknown pass 'extending-project-pass'" in capsys.readouterr().err
    assert main(["check", "r.yaml"]) == 0
    assert main(["run", "r.yaml", "-o", "o.onnx", "-q"]) == 0 and (tmp_path / "o.onnx").is_file()
    source = (tmp_path / "tools" / "passes.py").read_bytes()
    assert main(["run", "r.yaml", "-o", "tools/passes.py", "-q"]) == 2  # an input of the run, as --plugin's are
    assert "the plugin file" in capsys.readouterr().err and (tmp_path / "tools" / "passes.py").read_bytes() == source


def test_builtin_library_is_left_out_for_a_model_with_only_a_users_plugin(tmp_path, own_registries, monkeypatch):
    from surgeon.build import plugin_libraries

    load_plugin_file(spec_file(tmp_path / "specs.py", "ExtendingOwnLibrary"))
    node = helper.make_node("ExtendingOwnLibrary", ["x"], ["y"], name="mine", domain="surgeon")
    model = make_model([node], inputs=[("x", np.float32, [2])], outputs=[("y", np.float32, [2])])
    onnx.save(model, str(tmp_path / "mine.onnx"))
    monkeypatch.setenv("SURGEON_PLUGINS_DIR", str(tmp_path / "not-built"))
    # surgeon's library holds surgeon's plugins only: the user's comes from the library they list.
    assert plugin_libraries(["builtin"], tmp_path / "mine.onnx") == []


def test_bisect_finds_the_passes_pyproject_lists_as_run_does(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    project_with_a_pass(tmp_path, "extending-bisect-pass")
    assert main(["bisect", "r.yaml", "--no-config"]) == 2
    assert "unknown pass 'extending-bisect-pass'" in capsys.readouterr().err
    assert main(["bisect", "r.yaml"]) == 0  # no step breaks the outputs



EVERY_COMMAND_PLUGIN = '''
    import numpy as np
    from surgeon.pass_api import Pass, PassResult, register_pass
    from surgeon.plugins.specs import plugin_spec

    @plugin_spec("Extending{name}Copy", inputs=("x",), output_shape=lambda shapes, attrs: [shapes[0]],
                 cuda_source="copy.cu")
    def copy(x):
        """The input, unchanged."""
        return np.array(x)

    @register_pass("extending-{name}-pass")
    class EveryCommandPass(Pass):
        """A project's own pass that `{name}` knows."""
        def run(self, graph, ctx):
            return PassResult()
'''


@pytest.mark.parametrize("argv, name, known", [
    (["passes"], "passes", lambda code, text: code == 0 and "extending-passes-pass" in text),
    (["explain", "extending-explain-pass"], "explain", lambda code, text: code == 0 and "`explain` knows" in text),
    (["schema"], "schema", lambda code, text: code == 0 and "extending-schema-pass" in text),
    (["plugins", "list"], "plugins", lambda code, text: code == 0 and "ExtendingpluginsCopy" in text),
    (["compare", "../a.onnx", "../b.onnx"], "compare", lambda code, text: code == 0 and "PASSED" in text),
])
def test_every_command_loads_the_plugin_files_pyproject_lists(argv, name, known, tmp_path, own_registries,
                                                              monkeypatch, capsys):
    """What `run` knows, `passes`, `explain`, `schema`, `plugins list` and `compare` know too (each with a
    file of its own: once loaded, a file stays loaded in the process); `--no-config` leaves the file out."""
    write(tmp_path / "tools" / "plugin.py", EVERY_COMMAND_PLUGIN.format(name=name))
    (tmp_path / "pyproject.toml").write_text('[tool.surgeon]\nplugins = ["tools/plugin.py"]\n')
    inputs, outputs = [("x", np.float32, [2])], [("y", np.float32, [2])]
    onnx.save(make_model([helper.make_node("Identity", ["x"], ["y"], name="same")], inputs, outputs),
              tmp_path / "a.onnx")
    copy = helper.make_node(f"Extending{name}Copy", ["x"], ["y"], name="copy", domain="surgeon")
    onnx.save(make_model([copy], inputs, outputs), tmp_path / "b.onnx")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # the file is relative to pyproject.toml

    def result(*options):
        code = main([*argv, *options])
        out, err = capsys.readouterr()
        return code, out + err

    assert not known(*result("--no-config"))
    assert known(*result())


def test_check_says_how_to_make_a_users_plugin_known(tmp_path, own_registries, monkeypatch, capsys):
    """No pass removes a node of the user's own plugin spec: SG001 says to list it in a target profile."""
    monkeypatch.chdir(tmp_path)
    spec_file(tmp_path / "specs.py", "ExtendingUnlisted")
    node = helper.make_node("ExtendingUnlisted", ["x"], ["y"], name="mine", domain="surgeon")
    onnx.save(make_model([node], [("x", np.float32, [2])], [("y", np.float32, [2])]), tmp_path / "m.onnx")
    assert main(["check", "--no-config", "--plugin", "specs.py", "-t", "tensorrt-10", "--format", "json",
                 "m.onnx"]) == 1
    sg001 = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["rule"] == "SG001"]
    assert len(sg001) == 1 and "fix" not in sg001[0]
    assert sg001[0]["message"].endswith("your plugin ExtendingUnlisted is not in its profile")
    assert sg001[0]["advice"] == "list it under `plugins:` in a target profile (docs/plugins.md#your-own-plugins)"
    (tmp_path / "my-trt.yaml").write_text("name: my-trt\nextends: tensorrt-10\nplugins:\n  ExtendingUnlisted: {}\n")
    assert main(["check", "--no-config", "--plugin", "specs.py", "-t", "my-trt.yaml", "m.onnx"]) == 0


@pytest.mark.parametrize("content", [
    b'[tool.surgeon]\nselect = ["SG999"]\n',  # a rule of a newer surgeon
    b'[tool.surgeon]\ntarget = "tensorrt-9"\n',
    b'[project\nname = "x"\n',
    b'[tool]\nsurgeon = "yes"\n',
    b"tool = 3\n",
    b'[project]\nname = "caf\xe9"\n',
], ids=["rule", "target", "toml", "surgeon-str", "tool-int", "latin1"])
def test_commands_other_than_check_read_only_the_plugins_of_a_pyproject(content, tmp_path, monkeypatch, capsys):
    """A pyproject.toml around the model may be another project's, or a newer surgeon's: `run`, `passes`,
    `explain` and `plugins list` read its plugins only, and skip a file that is not surgeon's to read (each
    once stopped with check's error, or an internal error)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_bytes(content)
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2])],
                         [("y", np.float32, [2])]), tmp_path / "m.onnx")
    (tmp_path / "r.yaml").write_text("model: m.onnx\nsteps: [{pass: cleanup}]\n")
    for argv in (["run", "r.yaml", "-o", "o.onnx", "--no-validate", "-q"], ["passes", "-q"],
                 ["explain", "cleanup"], ["plugins", "list", "-q"]):
        assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().err == "" and (tmp_path / "o.onnx").is_file()
    assert main(["check", "m.onnx"]) == 2  # check's own settings: it reports them
    assert "--no-config skips pyproject.toml" in capsys.readouterr().err


def test_the_plugins_of_a_pyproject_load_whatever_its_check_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    project_with_a_pass(tmp_path, "extending-settings-pass")
    (tmp_path / "pyproject.toml").write_text('[tool.surgeon]\nselect = ["SG999"]\nplugins = ["tools/passes.py"]\n')
    assert main(["run", "r.yaml", "-o", "o.onnx", "-q", "--no-validate"]) == 0


@pytest.mark.parametrize("plugins, message", [
    ('"tools/passes.py"', ":2: [tool.surgeon]: 'plugins' must be a list of Python file paths"),
    ('["tools/nope.py"]', ":2: [tool.surgeon]: plugin file 'tools/nope.py' not found"),
])
def test_a_wrong_plugins_value_stops_every_command_naming_pyproject(plugins, message, tmp_path, monkeypatch, capsys):
    """[tool.surgeon] is surgeon's: a wrong `plugins` there is an error (its passes would be missing), saying
    how to go on without the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(f'[tool.surgeon]\nplugins = {plugins}\n')
    for argv in (["passes"], ["plugins", "list"], ["check", "m.onnx"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"surgeon: error: {tmp_path / 'pyproject.toml'}{message}"), argv
        assert err.endswith("(--no-config skips pyproject.toml)\n") and len(err.splitlines()) == 1
    assert main(["passes", "--no-config", "-q"]) == 0


def test_schema_builtin_only_runs_no_project_plugin_code(tmp_path, monkeypatch, capsys):
    """`--builtin-only` leaves out every pass a plugin file adds: a cloned repository's plugin code need not run."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "tools" / "plugin.py", '''
        from pathlib import Path
        Path(__file__).with_name("ran").touch()
    ''')
    (tmp_path / "pyproject.toml").write_text('[tool.surgeon]\nplugins = ["tools/plugin.py"]\n')
    assert main(["schema", "--builtin-only"]) == 0 and not (tmp_path / "tools" / "ran").exists()
    capsys.readouterr()
    assert main(["schema"]) == 0 and (tmp_path / "tools" / "ran").exists()


def test_an_unknown_pass_says_which_pyproject_plugins_were_loaded(tmp_path, monkeypatch, capsys):
    """A pass of the user's own is mostly one whose file was not loaded: the error says how to load it and
    what the command found, so a recipe run from outside its project shows why."""
    project_with_a_pass(tmp_path, "extending-hinted-pass")
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "extending-hinted-pas"]) == 2
    err = capsys.readouterr().err
    assert "(did you mean 'extending-hinted-pass'?; a pass of your own needs --plugin FILE or [tool.surgeon] " \
           "plugins in pyproject.toml" in err and f"; {tmp_path / 'pyproject.toml'} lists tools/passes.py)" in err
    assert main(["explain", "qqqq", "--no-config"]) == 2
    assert capsys.readouterr().err.endswith("(see 'surgeon passes'; a pass of your own needs --plugin FILE or "
                                            "[tool.surgeon] plugins in pyproject.toml; --no-config left "
                                            "pyproject.toml out)\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "pyproject.toml").unlink()
    assert main(["explain", "qqqq"]) == 2
    err = capsys.readouterr().err
    from surgeon.check.config import find_pyproject

    if find_pyproject() is None:  # no pyproject.toml in a folder above the test's either
        assert err.endswith(f"; no pyproject.toml in {tmp_path / 'elsewhere'} or above)\n")


def test_plugins_list_shows_the_domains_and_the_file_of_each_spec(tmp_path, own_registries, capsys):
    path = spec_file(tmp_path / "specs.py", "ExtendingOrigin", extra=', domains=("myco",)')
    assert main(["plugins", "list", "--no-config", "--plugin", str(path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["plugin"].split()[2:] == ["domains", "inputs", "attributes", "dtypes", "kernel", "origin"]
    assert rows["ExtendingOrigin"].split()[2] == "myco" and rows["ExtendingOrigin"].endswith(str(path))
    assert rows["GridSample2D"].split()[2:4] == ["surgeon,", '""'] and rows["GridSample2D"].endswith(" shipped")
    assert main(["plugins", "list", "--no-config", "--plugin", str(path), "--json"]) == 0
    origins = {spec["name"]: spec["origin"] for spec in json.loads(capsys.readouterr().out)}
    assert origins["ExtendingOrigin"] == str(path) and origins["GridSample2D"] == "shipped"


def test_a_bug_in_a_plugins_check_params_for_names_the_step_and_the_file(tmp_path, capsys):
    """It was `internal error: KeyError` (exit 3), naming neither."""
    plugin = write(tmp_path / "badcheck.py", '''
        from surgeon.pass_api import Pass, PassResult, Param, register_pass

        @register_pass("extending-bad-check")
        class BadCheck(Pass):
            """check_params_for with a typo."""
            params = {"level": Param(int, 1)}

            @classmethod
            def check_params_for(cls, values, target):
                return values["levle"]

            def run(self, graph, ctx):
                return PassResult()
    ''')
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2])],
                         [("y", np.float32, [2])]), tmp_path / "m.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m.onnx\nsteps: [{pass: extending-bad-check}]\n")
    assert main(["run", str(recipe), "--plugin", str(plugin), "-o", str(tmp_path / "o.onnx"), "--no-config"]) == 2
    err = capsys.readouterr().err
    assert err == (f"surgeon: error: {recipe}:2: step 1 (extending-bad-check): the pass's check_params_for failed: "
                   f"KeyError: 'levle' (in {plugin})\n")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("pyproject, warned", [
    ('[tool.surgeon]\nplugins = ["tools/p.py"\n', True),  # surgeon's table with a typo: say it was skipped
    ('[project]\nname = "other"\nversion = \n', False),  # another project's broken file: not surgeon's to judge
])
def test_a_skipped_pyproject_is_named_only_where_it_holds_surgeons_table(tmp_path, monkeypatch, capsys, pyproject,
                                                                         warned):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(pyproject)
    assert main(["passes"]) == 0
    err = capsys.readouterr().err
    if warned:
        assert err.startswith(f"surgeon: warning: {tmp_path / 'pyproject.toml'} skipped, not valid TOML: ")
        assert err.endswith("; its [tool.surgeon] plugins are not loaded\n") and err.count("\n") == 1
    else:
        assert err == ""

"""Finding passes: built-ins without a list, installed packages through entry points, files by name."""
from __future__ import annotations

import sys
import textwrap

import pytest

from surgeon.errors import SurgeonError
from surgeon.registry import discover, get_pass, load_entry_points


def install_fake_distribution(root, package: str, body: str, entry_value: str) -> None:
    """A real (if tiny) installed distribution: a package plus its .dist-info with entry_points.txt."""
    (root / package).mkdir()
    (root / package / "__init__.py").write_text(textwrap.dedent(body))
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[surgeon.passes]\n{package} = {entry_value}\n")


def test_builtin_passes_are_found_without_a_list():
    names = set(discover())
    assert {"cleanup", "toposort", "grid-sample", "atan2", "msda-plugin"} <= names
    assert get_pass("toposort").origin == "surgeon.passes.toposort"


def test_installed_package_contributes_passes_through_entry_points(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "acme_surgery", '''
        from surgeon.pass_api import Pass, PassResult, register_pass

        @register_pass("acme-fuse")
        class AcmeFuse(Pass):
            """Acme's own fusion."""
            def run(self, graph, ctx):
                return PassResult()
    ''', "acme_surgery")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_entry_points() == ["acme-fuse"]
    assert get_pass("acme-fuse").summary() == "Acme's own fusion."


@pytest.mark.parametrize("body, failure", [("raise ImportError('needs acme-sdk')", "ImportError: needs acme-sdk"),
                                           ("import sys; sys.exit(0)", "SystemExit: 0")])  # else: a silent exit 0
def test_a_broken_entry_point_names_itself(tmp_path, monkeypatch, body, failure):
    install_fake_distribution(tmp_path, "broken_surgery", body + "\n", "broken_surgery")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SurgeonError, match=f"entry point 'broken_surgery' .* failed to load: {failure}"):
        load_entry_points()
    sys.modules.pop("broken_surgery", None)


def pass_source(pass_name: str, class_name: str = "Mine", body: str = "") -> str:
    return textwrap.dedent(f'''
        from surgeon.pass_api import Pass, PassResult, register_pass
        {body}

        @register_pass("{pass_name}")
        class {class_name}(Pass):
            """A plugin's pass."""
            def run(self, graph, ctx):
                return PassResult()
    ''')


def plugin_file(folder, pass_name: str, class_name: str = "Mine", name: str = "passes.py", body: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(pass_source(pass_name, class_name, body))
    return path


def test_a_plugin_cannot_replace_a_built_in_pass_even_with_its_class_name(tmp_path):
    from surgeon.registry import load_plugin_file

    builtin = get_pass("clip-int")
    path = plugin_file(tmp_path, "clip-int", class_name=builtin.__qualname__)
    with pytest.raises(SurgeonError) as info:
        load_plugin_file(path)
    message = str(info.value)
    assert "two passes are named 'clip-int'" in message and "a built-in pass cannot be replaced" in message
    assert str(path.resolve()) in message and "clip_int.py" in message and "surgeon_plugin_" not in message
    assert get_pass("clip-int") is builtin


def test_two_plugin_files_with_one_pass_name_are_an_error_naming_both(tmp_path):
    from surgeon.registry import load_plugin_file

    first = plugin_file(tmp_path / "a", "registry-test-twice")
    second = plugin_file(tmp_path / "b", "registry-test-twice")
    assert load_plugin_file(first) == ["registry-test-twice"]
    with pytest.raises(SurgeonError, match="two passes are named 'registry-test-twice'") as info:
        load_plugin_file(second)
    assert str(first.resolve()) in str(info.value) and str(second.resolve()) in str(info.value)
    assert get_pass("registry-test-twice").origin == str(first)


def test_loading_the_same_plugin_file_again_runs_it_once(tmp_path, monkeypatch):
    import builtins

    from surgeon.registry import load_plugin_file

    monkeypatch.setattr(builtins, "registry_test_runs", 0, raising=False)
    path = plugin_file(tmp_path, "registry-test-again", body="import builtins; builtins.registry_test_runs += 1")
    assert load_plugin_file(path) == ["registry-test-again"]
    monkeypatch.chdir(tmp_path)
    assert load_plugin_file("passes.py") == ["registry-test-again"]  # as --plugin, then as [tool.surgeon] plugins
    assert builtins.registry_test_runs == 1


def test_a_plugin_file_that_fails_leaves_no_pass_behind(tmp_path):
    from surgeon.registry import load_plugin_file

    path = plugin_file(tmp_path, "registry-test-broken")
    path.write_text(path.read_text() + "\nraise RuntimeError('half way')\n")
    with pytest.raises(SurgeonError, match="failed to import: RuntimeError: half way"):
        load_plugin_file(path)
    assert "registry-test-broken" not in discover()
    path.write_text(path.read_text().replace("raise RuntimeError('half way')", ""))
    assert load_plugin_file(path) == ["registry-test-broken"]  # fixed, it loads: nothing stale stood in the way


def test_a_plugin_file_must_be_python_source(tmp_path):
    from surgeon.registry import load_plugin_file

    path = plugin_file(tmp_path, "registry-test-txt", name="passes.txt")
    with pytest.raises(SurgeonError, match=r"passes.txt: a plugin file is Python source ending in .py"):
        load_plugin_file(path)


def test_an_installed_package_cannot_replace_a_built_in_pass(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "evil_surgery", pass_source("cleanup", get_pass("cleanup").__qualname__),
                              "evil_surgery")
    monkeypatch.syspath_prepend(str(tmp_path))
    builtin = get_pass("cleanup")
    with pytest.raises(SurgeonError, match=r"entry point 'evil_surgery' .*two passes are named 'cleanup': "
                                           r".*cleanup.py and .*evil_surgery"):
        load_entry_points()
    sys.modules.pop("evil_surgery", None)
    assert get_pass("cleanup") is builtin


@pytest.mark.parametrize("exit_call, shown", [("sys.exit(0)", "sys.exit(0)"), ("sys.exit('bye')", "sys.exit('bye')"),
                                              ("raise SystemExit", "sys.exit(None)")])
def test_a_plugin_file_that_exits_during_import_is_an_error_not_a_silent_success(tmp_path, exit_call, shown):
    from surgeon.registry import load_plugin_file

    path = plugin_file(tmp_path, "registry-test-exits", body=f"import sys; {exit_call}")
    with pytest.raises(SurgeonError) as info:
        load_plugin_file(path)
    assert str(info.value) == f"{path}: plugin file exited during import ({shown})"
    assert "registry-test-exits" not in discover()


def test_run_with_a_plugin_file_that_exits_fails_instead_of_ending_with_exit_code_0(capsys, tmp_path):
    import numpy as np
    import onnx
    from onnx import helper

    from surgeon.cli import main
    from surgeon.testing import make_model

    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", np.float32, [2])],
                         [("y", np.float32, [2])]), tmp_path / "m.onnx")
    (tmp_path / "r.yaml").write_text("model: m.onnx\nsteps: [{pass: toposort}]\n")
    plugin = plugin_file(tmp_path, "registry-test-exits-run", body="import sys; sys.exit(0)")
    assert main(["run", str(tmp_path / "r.yaml"), "--plugin", str(plugin), "-o", str(tmp_path / "o.onnx")]) == 2
    assert capsys.readouterr().err == f"surgeon: error: {plugin}: plugin file exited during import (sys.exit(0))\n"
    assert not (tmp_path / "o.onnx").exists()


def test_a_plugin_file_interrupted_during_import_still_interrupts(tmp_path):
    from surgeon.registry import load_plugin_file

    path = plugin_file(tmp_path, "registry-test-interrupted", body="raise KeyboardInterrupt")
    with pytest.raises(KeyboardInterrupt):
        load_plugin_file(path)
    assert "registry-test-interrupted" not in discover()


def test_a_file_imported_as_an_installed_module_is_not_run_again_as_a_plugin_file(tmp_path, monkeypatch):
    """Installed as an entry point and named by --plugin: one file, one module, no clash with itself."""
    import builtins
    import importlib

    from surgeon.registry import load_plugin_file

    monkeypatch.setattr(builtins, "registry_test_module_runs", 0, raising=False)
    path = plugin_file(tmp_path, "registry-test-installed", name="registry_test_installed.py",
                       body="import builtins; builtins.registry_test_module_runs += 1")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("registry_test_installed")
    assert load_plugin_file(path) == ["registry-test-installed"]
    assert builtins.registry_test_module_runs == 1
    sys.modules.pop("registry_test_installed", None)


def test_an_unknown_pass_keeps_the_nearest_name_and_says_how_to_load_ones_own():
    with pytest.raises(SurgeonError) as info:
        get_pass("grid-sampel")
    assert info.value.hint.startswith("did you mean 'grid-sample'?; a pass of your own needs --plugin FILE or "
                                      "[tool.surgeon] plugins in pyproject.toml")


def test_an_api_call_after_a_command_names_no_pyproject_the_command_read(tmp_path, monkeypatch, capsys):
    """What pyproject.toml gave is the command's to tell: it used to stay in the process, so a later API call
    (or a command in another project) named the first project's pyproject.toml."""
    from surgeon.cli import main
    from surgeon.recipe import load_recipe

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    plugin_file(project / "tools", "registry-test-project-pass")
    (project / "pyproject.toml").write_text('[tool.surgeon]\nplugins = ["tools/passes.py"]\n')
    (project / "r.yaml").write_text("steps: [{pass: registry-test-project-pas}]\n")
    monkeypatch.chdir(project)
    assert main(["run", "r.yaml", "-o", "o.onnx"]) == 2
    pyproject = f"{project / 'pyproject.toml'} lists tools/passes.py"
    assert capsys.readouterr().err.endswith(f"in pyproject.toml; {pyproject})\n")  # the command says what it read

    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for call in (lambda: load_recipe({"name": "x", "steps": [{"pass": "registry-test-project-pas"}]}),
                 lambda: get_pass("registry-test-project-pas")):
        with pytest.raises(SurgeonError) as info:
            call()
        assert info.value.hint == ("did you mean 'registry-test-project-pass'?; a pass of your own needs --plugin "
                                   "FILE or [tool.surgeon] plugins in pyproject.toml")

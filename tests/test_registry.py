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


def test_a_broken_entry_point_names_itself(tmp_path, monkeypatch):
    install_fake_distribution(tmp_path, "broken_surgery", "raise ImportError('needs acme-sdk')\n", "broken_surgery")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SurgeonError, match="entry point 'broken_surgery' .* failed to load: ImportError: needs acme-sdk"):
        load_entry_points()
    sys.modules.pop("broken_surgery", None)

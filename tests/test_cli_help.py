"""Every command's help: it formats, and the examples of its docstring keep their lines."""
from __future__ import annotations

import argparse

import pytest

from surgeon.cli import build_parser


def _parsers(parser, path=("surgeon",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


PARSERS = dict(_parsers(build_parser()))


@pytest.mark.parametrize("path", sorted(PARSERS), ids=" ".join)
def test_help_keeps_the_docstring_examples_on_their_own_lines(path):
    parser = PARSERS[path]
    text = parser.format_help()
    examples = [line for line in (parser.description or "").splitlines() if line.startswith("    ")]
    for line in examples:
        assert line in text.splitlines(), f"{' '.join(path)} --help reflows the example {line.strip()!r}"


def test_every_command_is_listed():
    assert {p[1] for p in PARSERS if len(p) > 1} >= {"run", "check", "compare", "export", "plugins", "zoo"}


def test_every_command_that_loads_plugin_files_loads_the_projects():
    """A command taking `--plugin` loads `[tool.surgeon] plugins` too (`--no-config` skips them), so every
    command knows the passes, references and plugin specs `run` knows."""
    for path, parser in PARSERS.items():
        options = {option for action in parser._actions for option in action.option_strings}
        if "--plugin" in options:
            assert "--no-config" in options, " ".join(path)


@pytest.mark.parametrize("signal_error, code, said", [
    ("KeyboardInterrupt", 130, "surgeon: interrupted; nothing was written"),
    ("_Terminated", 143, "surgeon: terminated (SIGTERM); nothing was written"),
])
def test_a_stop_while_the_commands_load_is_one_line(monkeypatch, capsys, signal_error, code, said):
    """Building the parser imports every command (a few tenths of a second): a Ctrl-C or SIGTERM there
    printed a traceback and exited 1."""
    import surgeon.cli as cli

    def stopped():
        raise getattr(cli, signal_error, KeyboardInterrupt)()

    monkeypatch.setattr(cli, "build_parser", stopped)
    assert cli.main(["passes"]) == code
    assert capsys.readouterr().err == said + "\n"

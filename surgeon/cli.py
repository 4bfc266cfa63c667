"""The `surgeon` command line: subcommands are the modules of `surgeon.commands`, found, not listed.

A command module defines `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`; it may list
shared argument groups in `ARG_GROUPS` (see `surgeon.cli_args`), as Polygraphy's tools do.
Exit codes: 0 success, 1 a check or validation failed, 2 bad usage or bad input, 3 internal error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import threading

from surgeon import __version__
from surgeon.errors import SurgeonError

INTERNAL_ERROR = 3
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped
TERMINATED = 143  # 128 + SIGTERM


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job's timeout, `docker stop`), raised where the run is, as Ctrl-C's KeyboardInterrupt
    is: the same clean-up (temporary files and folders deleted, no half-written output) runs for both."""


def _terminate(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise _Terminated


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit code is 2 already; keep its one-line style
        self.print_usage(sys.stderr)
        self.exit(2, f"surgeon: error: {message}\n")


def _command_modules():
    import surgeon.commands as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"surgeon.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="surgeon", description="ONNX graph surgery for deploying BEV perception models.")
    parser.add_argument("--version", action="version", version=f"surgeon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _command_modules():
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__ or module.HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        for group in getattr(module, "ARG_GROUPS", ()):
            group.add_to(command)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    if threading.current_thread() is not threading.main_thread():  # only the main thread may take signals
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv) -> int:
    try:
        # Inside the try: building the parser imports every command (Polygraphy, onnxruntime: a few tenths
        # of a second), where a Ctrl-C or a CI timeout's SIGTERM lands as often as anywhere.
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_module", None):
            parser.print_help()
            return 2
        for group in getattr(args._module, "ARG_GROUPS", ()):
            group.parse(args)
        return int(args._module.run(args) or 0)
    except SurgeonError as exc:
        print(f"surgeon: error: {exc}", file=sys.stderr)
        written = getattr(exc, "written", None)  # a run that failed after writing its model (surgeon.pipeline)
        if written:
            print(f"surgeon: {', '.join(map(str, written))} written before the error, kept for debugging; the "
                  "run report was not written", file=sys.stderr)
        if os.environ.get("SURGEON_DEBUG") and exc.__cause__ is not None:
            import traceback

            traceback.print_exception(exc.__cause__)
        return exc.exit_code
    except BrokenPipeError:  # `surgeon ... | head`: the reader left; say nothing more
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as exc:
        # Every file is written whole or not at all (through a temporary name); a run that has written
        # its model lists it, and the reports when they were done, in `written`.
        written = getattr(exc, "written", None)
        stopped = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        if written:
            print(f"surgeon: {stopped} after writing {', '.join(map(str, written))}; the other files were not "
                  "written", file=sys.stderr)
        else:
            print(f"surgeon: {stopped}; nothing was written", file=sys.stderr)
        return TERMINATED if isinstance(exc, _Terminated) else INTERRUPTED
    except Exception as exc:  # a bug of ours: say so briefly, full traceback on request
        if os.environ.get("SURGEON_DEBUG"):
            raise
        print(f"surgeon: internal error: {type(exc).__name__}: {exc} (set SURGEON_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())

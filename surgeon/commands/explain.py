"""Show a pass's full documentation and its parameters."""
from __future__ import annotations

import inspect
import sys

from surgeon.cli_args import OutputArgs, PluginArgs, ProjectPluginArgs, print_json, table

NAME = "explain"
HELP = "show a pass's documentation and parameters"
ARG_GROUPS = (PluginArgs, ProjectPluginArgs, OutputArgs)


def add_arguments(parser) -> None:
    parser.add_argument("pass_name", metavar="PASS")


def run(args) -> int:
    from surgeon.pass_api import param_fields
    from surgeon.registry import get_pass

    cls = get_pass(args.pass_name, args.plugins_looked_at)
    params = param_fields(cls)
    module_doc = inspect.getdoc(sys.modules.get(cls.__module__)) or ""
    if args.json:
        print_json({"name": cls.name, "summary": cls.summary(), "doc": inspect.getdoc(cls), "module_doc": module_doc,
                    "params": params, "needs": list(cls.needs), "handles": list(cls.handles), "origin": cls.origin})
        return 0
    print(f"{cls.name}: {cls.summary()}\n")
    body = "\n".join(inspect.getdoc(cls).splitlines()[1:]).strip() if inspect.getdoc(cls) else ""
    for text in (module_doc, body):
        if text:
            print(text + "\n")
    if params:
        rows = [[p["name"], p["type"], "(required)" if p["required"] else repr(p["default"]),
                 (p["help"] + (f" [{', '.join(map(str, p['choices']))}]" if p["choices"] else ""))] for p in params]
        print(table(rows, ["parameter", "type", "default", "meaning"]))
    else:
        print("no parameters")
    if cls.handles:
        print(f"\nrewrites: {', '.join(cls.handles)}")
    if cls.needs:
        print(f"needs: {', '.join(cls.needs)} (provided by the pipeline before the pass runs)")
    print(f"defined in: {cls.origin}")
    return 0

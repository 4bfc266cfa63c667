"""surgeon's TensorRT plugins: `surgeon plugins list` shows their specs (and those declared by `--plugin FILE`
and by the plugin files `[tool.surgeon]` in pyproject.toml lists), `surgeon plugins build` compiles
libsurgeon_plugins.so (CUDA kernels, C API and, when TensorRT 10+ headers are found, the IPluginV3 plugins)."""
from __future__ import annotations

import sys

from surgeon.cli_args import OutputArgs, PluginArgs, ProjectPluginArgs, print_json, table

NAME = "plugins"
HELP = "list surgeon's TensorRT plugins or build their library"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the plugins: inputs, attributes, dtypes, CUDA source")
    build = sub.add_parser("build", help="compile libsurgeon_plugins.so with CMake and nvcc")
    for action in (listing, build):  # after the action, where users type them
        OutputArgs.add_to(action)
    PluginArgs.add_to(listing)
    ProjectPluginArgs.add_to(listing)
    build.add_argument("--out", metavar="DIR", help="where the library goes (default: $SURGEON_PLUGINS_DIR or "
                                                    "~/.cache/surgeon/plugins, where 'plugins: [builtin]' looks)")
    build.add_argument("--tensorrt-root", metavar="DIR", help="TensorRT 10+ installation, for the IPluginV3 plugins")
    build.add_argument("--cuda-arch", metavar="LIST", help="CUDA architectures, e.g. 80,86,90 (default: 80;86;87;89;90)")
    build.add_argument("-j", "--jobs", type=int, help="parallel compile jobs (default: all cores)")


def run(args) -> int:
    OutputArgs.parse(args)
    if args.action == "list":
        return _list(args)
    from surgeon.plugins.build_lib import build_library

    result = build_library(args.out, tensorrt_root=args.tensorrt_root, cuda_architectures=args.cuda_arch,
                           jobs=args.jobs)
    if args.json:
        print_json({"library": str(result.library), "with_tensorrt": result.with_tensorrt,
                    "tensorrt": result.tensorrt, "seconds": round(result.seconds, 2), "log": str(result.log)})
    elif not args.quiet:
        print(result.summary())
    return 0


def _list(args) -> int:
    from surgeon.plugins.specs import plugin_specs

    PluginArgs.parse(args)
    ProjectPluginArgs.parse(args)
    specs = sorted(plugin_specs().values(), key=lambda s: s.name)
    if args.json:
        print_json([{**s.to_dict(), "origin": _origin(s)} for s in specs])
    elif not args.quiet:
        rows = [[s.name, f"{s.namespace}/{s.version}", ", ".join(d or '""' for d in s.domains), ", ".join(s.inputs),
                 ", ".join(f"{a.name}={a.default}" for a in s.attrs) or "-", "/".join(s.dtypes), s.cuda_source,
                 _origin(s)] for s in specs]
        print(table(rows, ["plugin", "namespace/version", "domains", "inputs", "attributes", "dtypes", "kernel",
                           "origin"]))
    return 0


def _origin(spec) -> str:
    """`shipped` for surgeon's own spec, else the file that declared it (a plugin file, an installed package's
    module): the user's specs stand out, and a clash or a wrong domain can be traced to its file."""
    if spec.shipped:
        return "shipped"
    return str(getattr(sys.modules.get(spec.reference.__module__), "__file__", None) or spec.reference.__module__)

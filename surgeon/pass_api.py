"""What a pass is: declared parameters, a `run` over an onnx-graphsurgeon Graph, and a result.

A pass module (passes/clip_int.py, shortened) looks like this::

    '''Replace Clip on integer tensors, which opset 11 (float-only Clip) and TensorRT reject.

    Before:  x:int64 ─► Clip(x, lo, hi) ─► y
    After:   x ─► Max(x, lo) ─► Min(·, hi) ─► y
    '''

    @register_pass("clip-int")
    class ClipInt(Pass):
        '''Replace Clip on integer tensors by Max/Min (or Where) of that type, or by Max/Min in float64.'''

        params = {"mode": Param(str, "minmax", choices=("minmax", "cast"), help="...")}
        needs = ("shapes",)

        def run(self, graph, ctx):
            result = PassResult()
            for node in find_nodes(graph, lambda n: is_op(n, "Clip")):
                rw = Rewrite(graph, ctx, node)   # surgeon/rewrite.py: op, const, cast, finish, ...
                ...
                result.rewrote(node)
            return result

Parameters are validated before anything runs and become attributes (`self.mode`). The tests sit
beside it in tests/test_pass_clip_int.py.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from surgeon.errors import SurgeonError, suggest

REQUIRED = object()
#: The package of the passes surgeon ships (the repository's `passes/` folder).
BUILTIN_PACKAGE = "surgeon.passes"
#: What a pass may declare in `needs`; the pipeline provides it, once, before the pass runs.
NEEDS = ("toposort", "cleanup", "shapes")

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "mapping"}
#: Why a boolean came where text belongs: YAML 1.1, which reads recipes and `--set` values, reads these unquoted.
BOOLEAN_FOR_TEXT = "unquoted yes/no, on/off and true/false are booleans in YAML: quote the word for text"


class Mismatch(ValueError):
    """A value that does not fit its declaration; `hint` says how to write it where that is known."""

    def __init__(self, message: str, value: Any = None, text_expected: bool = False):
        super().__init__(message)
        # Detected here, once, for every path that coerces (a step, `set:`, `--set`, a section, list items,
        # mapping entries)
        self.hint = _text_hint(value) if text_expected else None


def _text_hint(value: Any) -> str | None:
    """How to write `value`, which YAML read as no text, as the text it was meant to be."""
    if isinstance(value, bool):
        return BOOLEAN_FOR_TEXT
    if isinstance(value, int):  # purely numeric names are common: older torch exports name tensors `123`
        return f"quote it: '{value}'"
    if isinstance(value, float):  # YAML may have changed the digits (`1.10` reads 1.1)
        return "quote it, as written: YAML reads it as a number"
    return None


@dataclass(frozen=True)
class Param:
    """A declared pass parameter: its type, default, allowed values and a one-line help."""

    type: type | tuple
    default: Any = REQUIRED
    help: str = ""
    choices: tuple | None = None
    #: The type of a list's elements, or of a mapping's values (its keys are then text: names, in every use).
    items: type | None = None
    nullable: bool = False  # None is an accepted value
    #: Bounds of a number (inclusive), checked here and published in the JSON schema.
    minimum: int | float | None = None
    maximum: int | float | None = None

    def __post_init__(self):
        # Every reader of `default` (the run, `explain`, the JSON schema) then sees what a recipe could write.
        object.__setattr__(self, "default", _plain_number(self.default))

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_name(self) -> str:
        if isinstance(self.type, tuple):
            return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in self.type)
        name = _TYPE_NAMES.get(self.type, self.type.__name__)
        if self.type in (list, dict) and self.items is not None:
            name += f" {'of' if self.type is list else 'to'} {_TYPE_NAMES.get(self.items, self.items.__name__)}"
        return name

    def coerce(self, value: Any) -> Any:
        """Return `value` checked against the declaration, or raise ValueError saying why (a `Mismatch`, whose
        `hint` may say how to write it, where its type or choice does not fit)."""
        if value is None and (self.nullable or self.default is None):
            return None
        try:
            value = _coerce_one(self.type, value, self.type_name())
        except Mismatch as exc:
            if self.choices is not None and not isinstance(value, bool) and str(value) not in self.choices:
                exc.hint = None  # quoted, the number would still be none of the choices
            raise
        if self.type is list and self.items is not None:
            value = [_coerce_one(self.items, v, _TYPE_NAMES.get(self.items, "value")) for v in value]
        if self.type is dict and self.items is not None:
            value = {_coerce_entry(str, key, "a key"): _coerce_entry(self.items, v, f"the value of {key!r}")
                     for key, v in value.items()}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._check_bounds(value)
        if self.choices is not None:
            # A mapping (per-output values, say) takes its choices as values: {"boxes": "max"}.
            for choice in value.values() if isinstance(value, dict) else (value,):
                if choice not in self.choices:
                    hint = suggest(choice, self.choices)
                    raise Mismatch(f"{choice!r} is not one of {', '.join(map(repr, self.choices))}"
                                   + (f"; {hint}" if hint else ""), choice,
                                   all(isinstance(c, str) for c in self.choices))
        return value

    def _check_bounds(self, value) -> None:
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            if not low <= value <= high:  # NaN fails both comparisons
                raise ValueError(f"must be between {low} and {high}, got {value!r}")
        elif low is not None and not value >= low:
            raise ValueError(f"must be at least {low}, got {value!r}")
        elif high is not None and not value <= high:
            raise ValueError(f"must be at most {high}, got {value!r}")


def _a(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _described(value: Any) -> str:
    """`value` in a message, named in the words of the recipe (`a list [1]`), not by its class (the loader's
    list and dict subclasses, or bool, which is an int)."""
    if value is None:
        return "nothing (null)"
    kind = "boolean" if isinstance(value, bool) else next(
        (name for t, name in _TYPE_NAMES.items() if isinstance(value, t)), type(value).__name__)
    return f"{_a(kind)} {value!r}"


def _coerce_one(kind, value: Any, type_name: str) -> Any:
    expected = f"expected {_a(type_name)}"
    value = _plain_number(value)
    if isinstance(kind, tuple):
        for option in kind:
            try:
                return _coerce_one(option, value, type_name)
            except ValueError:
                pass
        raise Mismatch(f"{expected}, got {_described(value)}", value, str in kind)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise Mismatch(f"{expected}, got an integer too large for a float") from None
    # JSON Schema counts 1024.0 as an integer, and YAML reads 1e3 as a float: both are whole numbers.
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is list and isinstance(value, tuple):
        return list(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise Mismatch(f"{expected}, got {_described(value)}", value, kind is str)
    return value


def _plain_number(value: Any) -> Any:
    """A NumPy scalar (`np.float32(1e-5)` as a default, a value from the Python API) as the Python number it
    equals, which recipes, JSON and `repr` show plainly; anything else unchanged."""
    if type(value) in (bool, int, float) or not isinstance(value, numbers.Real):  # np.float64 is a float
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _coerce_entry(kind, value: Any, where: str) -> Any:
    """`_coerce_one` for a key or value of a mapping, the message saying which (`where`)."""
    try:
        return _coerce_one(kind, value, _TYPE_NAMES.get(kind, "value"))
    except Mismatch as exc:
        raise Mismatch(f"{where}: {exc}", value, kind is str) from None


@dataclass
class PassResult:
    """What a pass did: the names of the nodes it rewrote and free-form notes."""

    rewritten: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: A pass that rebuilds the whole graph (extract, set-opset, simplify) returns the new one here.
    graph: Any = None
    #: What this run left true beyond the class's `keeps`, where that depends on what it met
    #: (remove-node of Identity nodes keeps the shapes, of a Cast it does not).
    keeps: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.rewritten)

    @property
    def changed(self) -> bool:
        return bool(self.rewritten)

    def rewrote(self, node_or_name) -> None:
        self.rewritten.append(getattr(node_or_name, "name", node_or_name))

    def note(self, text: str) -> None:
        self.notes.append(text)


class Pass:
    """Base class of every pass. Subclasses set `params`, `needs` and implement `run`."""

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    needs: ClassVar[tuple[str, ...]] = ()
    #: What holds of the graph after the pass ran (same vocabulary as `needs`), so it is not redone.
    provides: ClassVar[tuple[str, ...]] = ()
    #: What stays true of the graph across the pass if it held before (same vocabulary): a pass that
    #: only removes nodes keeps their order, one that renames keeps everything. Everything else is
    #: provided again before the next pass that needs it.
    keeps: ClassVar[tuple[str, ...]] = ()
    #: Op labels (`surgeon.graphinfo.op_label`: `ATen:atan2`, `mmdeploy::grid_sampler`, `Split`) this pass
    #: rewrites; `surgeon check` names the pass as the fix for such nodes.
    handles: ClassVar[tuple[str, ...]] = ()
    #: Where the pass was defined (a module name or a plugin file), for `surgeon passes`.
    origin: ClassVar[str] = ""

    def __init__(self, **values: Any):
        self.values = self.check_params(values)
        for key, value in self.values.items():
            setattr(self, key, value)

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Validate `values` against the declared params; raise ParamError naming the parameter."""
        unknown = [k for k in values if k not in cls.params]
        if unknown:
            raise ParamError(unknown[0], f"unknown parameter '{unknown[0]}' of pass '{cls.name}'",
                             suggest(unknown[0], cls.params))
        checked = {}
        for key, param in cls.params.items():
            if key in values:
                try:
                    checked[key] = param.coerce(values[key])
                except ValueError as exc:
                    raise ParamError(key, f"parameter '{key}' of pass '{cls.name}': {exc}",
                                     getattr(exc, "hint", None)) from None
            elif param.required:
                raise ParamError(key, f"pass '{cls.name}' needs parameter '{key}' ({param.help or param.type_name()})")
            else:
                checked[key] = param.default
        return checked

    @classmethod
    def check_params_for(cls, values: dict[str, Any], target) -> None:
        """Refuse checked `values` that `target` (a surgeon.targets.Target) cannot run, raising ParamError that
        names the parameter. Recipes call it once their target is known, so the error points at the line
        that set the value before any model is read; a pass whose parameters all run everywhere keeps this."""

    @classmethod
    def fix_hint(cls, target) -> str:
        """How `surgeon check` phrases this pass as a fix on `target` (a pass may name its mode)."""
        return cls.name

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def run(self, graph, ctx: "Context") -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{self.name}({args})"


class ParamError(SurgeonError):
    """A parameter value a pass does not accept; `param` names it so recipes can point at its line."""

    def __init__(self, param: str, message: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.param = param


_REGISTRY: dict[str, type[Pass]] = {}
_DEFINED_IN: dict[str, tuple[str, str | None]] = {}  # name -> (module, file) of the registered class


def register_pass(name: str):
    """Class decorator: make a pass available under the kebab-case `name`. A class that is no `Pass`, and a
    declared default its own Param refuses, are errors naming the pass and its file, when it registers."""

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not name or name != name.lower() or " " in name or "_" in name:
            raise ValueError(f"pass name {name!r} must be kebab-case")
        defined_in = _defined_in(cls)
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise SurgeonError(f"pass '{name}': {getattr(cls, '__qualname__', cls)} must be a class that "
                               "subclasses surgeon.pass_api.Pass", file=_where(defined_in),
                               hint="class MyPass(Pass): ... gives it `params`, `needs` and the rest")
        _check_defaults(name, cls, defined_in)
        # The same module of the same file may register again (a reload); anything else is a second pass
        # of that name, which never replaces the first: a plugin cannot take over a built-in pass.
        if name in _REGISTRY and _DEFINED_IN[name] != defined_in:
            builtin = _DEFINED_IN[name][0].startswith(f"{BUILTIN_PACKAGE}.")
            raise SurgeonError(f"two passes are named '{name}': {_where(_DEFINED_IN[name])} and "
                               f"{_where(defined_in)}", hint="rename yours: a built-in pass cannot be replaced"
                               if builtin else "rename one of them")
        for need in cls.needs + cls.provides + cls.keeps:
            if need not in NEEDS:
                raise ValueError(f"pass {name!r} needs unknown {need!r}; known: {NEEDS}")
        cls.name = name
        cls.origin = cls.__dict__.get("origin") or cls.__module__  # not a base class's
        _REGISTRY[name] = cls
        _DEFINED_IN[name] = defined_in
        return cls

    return decorate


def _check_defaults(name: str, cls: type[Pass], defined_in: tuple[str, str | None]) -> None:
    """Refuse a declared default its own Param refuses: else every recipe that leaves the parameter out fails
    when it runs, blaming the recipe, and `surgeon explain` shows the default as if it were allowed."""
    for key, param in cls.params.items():
        if param.required:
            continue
        try:
            param.coerce(param.default)
        except ValueError as exc:
            raise SurgeonError(f"pass '{name}': the default of parameter '{key}' breaks its own declaration: {exc}",
                               file=_where(defined_in),
                               hint="change the default, or the type, bounds or choices it must fit") from None


def _defined_in(cls: type) -> tuple[str, str | None]:
    """The module and the file that define `cls`: what makes two registrations the same pass."""
    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return cls.__module__, str(Path(file).resolve()) if file else None


def _where(defined_in: tuple[str, str | None]) -> str:
    module, file = defined_in
    return file or module


def registered_passes() -> dict[str, type[Pass]]:
    return _REGISTRY


@dataclass
class Context:
    """What a pass may know besides the graph: the target, the opset, where the model lives.

    `ctx.new_name(base)` gives deterministic names that do not clash with the graph's; `ctx.tag(node)`
    records that the running pass created `node` (written to the node's `metadata_props` on export, with
    what else the pass tells: `ctx.tag(node, replaces="mul", function="pkg::Block")`).
    """

    target: Any  # surgeon.targets.Target
    opset: int = 17
    model_dir: Any = None
    pass_name: str = ""
    #: What the passes made, by node path: the name, or `if/then_branch/name` inside an If/Loop body, as
    #: ONNX lets the names of different graphs repeat (see `node_paths`).
    provenance: dict[str, dict[str, str]] = field(default_factory=dict)
    #: The running pass's tags, by node (id -> (node, props)): a new node has no path until the pass has
    #: put it in place, so the pipeline files them under their paths after the pass (`settle_tags`).
    tagged: dict[int, tuple[Any, dict[str, str]]] = field(default_factory=dict)
    #: Renamed nodes, new name -> the input model's name: their doc strings are restored by it.
    renamed_nodes: dict[str, str] = field(default_factory=dict)
    #: The model as loaded, before import: the run exports from it and validates against it, so passes see
    #: it only as `input_model`, a copy.
    loaded_model: Any = None
    #: What holds of the graph as the pass starts (the vocabulary of `needs`), so a pass can skip
    #: work already done: `toposort` on a sorted graph, `cleanup` after a pass that pruned.
    held: frozenset = frozenset()
    #: The user asked for errors only (`surgeon run -q`): what the tools a pass calls print is dropped.
    quiet: bool = False
    _unused_initializers: list[str] | None = None
    _input_model: Any = None
    _taken: set[str] | None = None
    #: By base, the suffix `new_name` tries first: those below it are taken already.
    _next_suffix: dict[str, int] = field(default_factory=dict)
    #: Where the last Rewrite spliced its nodes in (see surgeon.rewrite), reset for every pass.
    splice_hint: int = 0

    @property
    def input_model(self):
        """The model as loaded, before import, without its weights' data (initializers keep name, type and
        dims; read values from the graph's constants): a copy, made on first use, so that what a pass changes
        in it reaches neither the output nor the model validation compares against."""
        if self._input_model is None and self.loaded_model is not None:
            from surgeon.modelio import weightless_copy

            self._input_model = weightless_copy(self.loaded_model)
        return self._input_model

    @property
    def unused_initializers(self) -> list[str]:
        """Initializers nothing read in the input model: onnx-graphsurgeon drops them on import.
        Found on first use (a walk over the model), a list a pass may clear once it reported them."""
        if self._unused_initializers is None:
            from surgeon.graphinfo import unused_initializers

            model = self.loaded_model  # read only here: no copy needed
            self._unused_initializers = unused_initializers(model) if model is not None else []
        return self._unused_initializers

    @contextlib.contextmanager
    def tool_output(self):
        """Where a tool that prints (onnxsim's "Checking 0/2...") prints while the block runs, from Python
        and from native code: stderr, as stdout may hold a JSON report (`run --json`); nowhere when `quiet`."""
        from surgeon.modelio import stdout_to_stderr

        with _stderr_discarded() if self.quiet else contextlib.nullcontext(), stdout_to_stderr():
            yield

    def begin(self, graph, pass_name: str) -> None:
        """Called by the pipeline before each pass."""
        self.pass_name = pass_name
        self.opset = _default_opset(graph, self.opset)
        self._taken = None
        self._next_suffix.clear()
        self.splice_hint = 0

    def _names(self, graph=None) -> set[str]:
        if self._taken is None:
            if graph is None:
                raise RuntimeError("Context.new_name needs the graph the first time in a pass")
            from surgeon.graphinfo import tensor_names

            self._taken = {n.name for n in graph.nodes} | tensor_names(graph)
        return self._taken

    def new_name(self, base: str, graph=None) -> str:
        """A name not yet used in the graph: `base`, else `base_1`, `base_2`, ..."""
        taken = self._names(graph)
        # Names are only added to `taken` during a pass, so the suffixes tried before are still taken: going on
        # from the last one gives the names trying from 1 would, without trying them all again for each node of
        # many with one base (quadratic: unnamed calls of a function, each inlined).
        i = self._next_suffix.get(base, 0)
        name = f"{base}_{i}" if i else base
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        self._next_suffix[base] = i + 1
        return name

    def tag(self, node, replaces: str | None = None, **props: str) -> None:
        """Record that the running pass made `node` (and which node it replaces); each further keyword is
        a text property of its own, written as `surgeon.<keyword>` (inline-functions' `function=`)."""
        tags = {"surgeon.pass": self.pass_name}
        if replaces:
            tags["surgeon.replaces"] = replaces
        tags.update((f"surgeon.{key}", value) for key, value in props.items())
        self.tagged[id(node)] = (node, tags)

    def settle_tags(self, *graphs) -> None:
        """File the running pass's tags in `provenance` under the paths their nodes have in `graphs` (the
        graph the pass returned, then the one it ran on); a tagged node neither holds is forgotten."""
        for graph in graphs:
            if not self.tagged:
                return
            for path, node in node_paths(graph):
                tag = self.tagged.pop(id(node), None)
                if tag is not None:
                    self.provenance[path] = tag[1]
        self.tagged.clear()


@contextlib.contextmanager
def _stderr_discarded():
    """Drop what is printed on stderr while the block runs, by Python (`sys.stderr`) and by native code (fd 2)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()  # what was printed before the block still shows
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        try:
            saved = os.dup(2)
        except OSError:  # no usable fd 2
            yield
            return
        try:
            os.dup2(devnull.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def node_paths(graph, scope: str = ""):
    """(path, node) for the nodes of an onnx-graphsurgeon graph and of the bodies their attributes hold,
    a body's nodes named `holder/attribute/` + their name (as surgeon.pipeline names the exported ones)."""
    import onnx_graphsurgeon as gs

    for node in graph.nodes:
        yield scope + node.name, node
        for attribute, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                yield from node_paths(value, f"{scope}{node.name}/{attribute}/")


def _default_opset(graph, fallback: int) -> int:
    opset = getattr(graph, "opset", None)
    return int(opset) if opset else fallback


def param_fields(cls: type[Pass]) -> list[dict]:
    """The declared parameters as plain dicts (for docs, `surgeon explain` and the JSON schema)."""
    rows = []
    for key, p in cls.params.items():
        rows.append({"name": key, "type": p.type_name(), "default": None if p.required else p.default,
                     "required": p.required, "choices": list(p.choices) if p.choices else None,
                     "help": p.help})
    return rows


__all__ = ["Pass", "Param", "PassResult", "Context", "register_pass", "registered_passes", "ParamError",
           "REQUIRED", "param_fields"]

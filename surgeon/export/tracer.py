"""Record one op per handled module call while a model runs on a real input.

torch.onnx.export cannot follow spconv's sparse convolutions (rule books built in C++, Python
dicts of index pairs). NVIDIA's deploy tools export them by wrapping each module's forward, running
the model once, and writing one custom node per call; this is that idea as a small, reusable engine:

    @handler(MySparseModule)                      # or @handler(torch.Tensor, "view") for a method
    def my_module(call):                          # runs after the original forward returned
        x = call.input(call.args[0])              # the traced Value of an argument
        call.emit("MyOp", [x], attrs={"alpha": call.target.alpha}, domain="my.domain")

    trace = trace_model(model, (features, indices), inputs={"features": features},
                        sparse_indices={"features": ("indices", indices)})

Values are identified by the torch tensor holding their data; a SparseConvTensor by its `.features`
tensor, so `replace_feature` and SparseSequential's feature-wise modules need no handler of their
own. Calls made while a handled call runs (spconv's own reshapes and adds) are not recorded: a depth
counter passes them straight through. The wrapping is undone when the run ends, also on error.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from surgeon.errors import SurgeonError

SPARSE_DOMAIN = "spconv"
Handler = Callable[["Call"], None]
_HANDLERS: dict[tuple[type, str], Handler] = {}


def handler(owner: type, method: str = "forward"):
    """Register the decorated function as the handler of calls to `owner.method`.

    `owner` is a module class (its `forward` is wrapped) or any class with a method to intercept,
    such as `torch.Tensor` and "view". The handler receives a `Call` after the original returned.
    """

    def register(fn: Handler) -> Handler:
        _HANDLERS[(owner, method)] = fn
        return fn

    return register


@dataclass
class Value:
    """A tensor of the exported graph: dense, or the features of a sparse tensor whose coordinates
    are the tensor named `indices` ([N, 1 + ndim] int32 as batch, z, y, x)."""

    name: str
    shape: tuple[int, ...]
    indices: str | None = None

    @property
    def is_sparse(self) -> bool:
        return self.indices is not None

    @property
    def owns_indices(self) -> bool:
        """Whether the op that made this value also made its coordinates (a new voxel set)."""
        return self.indices == indices_name(self.name)


def indices_name(value_name: str) -> str:
    return f"{value_name}.indices"


@dataclass
class Op:
    """One recorded call, flavour-neutral; `surgeon.export.graph` writes it as ONNX node(s).

    `domain` "" means a standard op on the feature tensors (Relu, Add, Reshape, ...). In the
    `standard` flavour a custom-domain op gets each sparse input as a (features, indices) pair and an
    indices output for each output that `owns_indices`; `index_inputs` and `standard_attrs` exist
    only in that flavour.
    """

    op_type: str
    name: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    domain: str = ""
    index_inputs: list[str] = field(default_factory=list)
    standard_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Call:
    """What a handler sees: the intercepted object (`target`: module or `self`), arguments, output."""

    trace: "Trace"
    target: Any
    args: tuple
    kwargs: dict
    output: Any
    name: str

    def input(self, obj) -> Value:
        """The traced Value of `obj`; an object no handled call produced is an error naming this call."""
        value = self.trace.value_of(obj)
        if value is None:
            raise SurgeonError(
                f"call '{self.name}' ({type(self.target).__name__}) takes a tensor that no handled call "
                f"produced; register a @handler for the module or function that made it "
                f"(last recorded op: {self.trace.ops[-1].name if self.trace.ops else 'none'})")
        return value

    def emit(self, op_type: str, inputs: list[Value], attrs: dict | None = None, weights: dict | None = None,
             domain: str = "", indices: str | None = "inherit", **extra) -> Op:
        """Record an op producing the call's output and register its Value.

        The output Value is sparse with the coordinates of the first input (`indices="inherit"`), new
        coordinates named `<op name>.indices` (`indices="new"`), or dense (`indices=None`).
        """
        if indices == "inherit":
            indices = inputs[0].indices if inputs else None
        elif indices == "new":
            indices = indices_name(self.name)
        value = self.trace.register(self.output, self.name, indices)
        op = Op(op_type, self.name, list(inputs), [value], dict(attrs or {}), dict(weights or {}), domain, **extra)
        self.trace.ops.append(op)
        return op


def tensor_of(obj) -> torch.Tensor | None:
    """The tensor that identifies `obj`: itself, or the `.features` of a sparse tensor."""
    if isinstance(obj, torch.Tensor):
        return obj
    features = getattr(obj, "features", None)
    return features if isinstance(features, torch.Tensor) else None


class Trace:
    """The ops recorded in one run, the graph inputs and outputs, and the state handlers share."""

    def __init__(self, model: torch.nn.Module):
        self.ops: list[Op] = []
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.outputs_data: list[torch.Tensor] = []
        self.rulebooks: dict[str, dict[str, Any]] = {}  # spconv indice_key -> what made it (inverse conv)
        self._values: dict[int, tuple[Value, int]] = {}  # id(tensor) -> (Value, tensor._version when made)
        self._alive: list[torch.Tensor] = []  # keeps traced tensors alive so Python never reuses their id
        self._module_paths = {id(m): path for path, m in model.named_modules()}
        self._names: Counter[str] = Counter()
        self.depth = 0
        self.running_modules: list[torch.nn.Module] = []  # the module calls under way, outermost first
        self.versions_before_call: dict[int, int] = {}  # argument versions of the call being handled

    def value_of(self, obj) -> Value | None:
        """The Value `obj` holds, or None; a traced tensor changed in place by an unrecorded op is an error."""
        tensor = tensor_of(obj)
        entry = None if tensor is None else self._values.get(id(tensor))
        if entry is None:
            return None
        value, version = entry
        if tensor._version != version and self.versions_before_call.get(id(tensor)) != version:
            raise SurgeonError(f"tensor '{value.name}' was modified in place by an operation no handler records "
                               f"(after it was made); register a @handler for it or write it out of place")
        return value

    def register(self, obj, name: str, indices: str | None = None) -> Value:
        tensor = tensor_of(obj)
        if tensor is None:
            raise SurgeonError(f"call '{name}' returned {type(obj).__name__}, not a tensor or sparse tensor")
        value = Value(name, tuple(int(d) for d in tensor.shape), indices)
        # torch bumps `_version` on every in-place write: remembering it catches writes no handler saw
        self._values[id(tensor)] = (value, tensor._version)
        self._alive.append(tensor)
        return value

    def enter_module(self, module, args) -> None:  # global forward hooks: returning None keeps args/outputs
        self.running_modules.append(module)

    def leave_module(self, module, args, output) -> None:
        self.running_modules.pop()

    def call_name(self, target, method: str) -> str:
        """A module call is named by the module's path (`backbone.conv1.0.conv1`), a method call by the
        path of the module whose forward made it (`backbone.conv1.0.add`); repeats get `_1`, `_2`, ..."""
        if isinstance(target, torch.nn.Module):
            base = self._module_paths.get(id(target)) or type(target).__name__
        else:
            caller = self._module_paths.get(id(self.running_modules[-1])) if self.running_modules else None
            base = f"{caller}.{method.strip('_')}" if caller else method.strip("_")
        self._names[base] += 1
        count = self._names[base]
        return base if count == 1 else f"{base}_{count - 1}"


@contextlib.contextmanager
def _wrapped(owner: type, method: str, fn: Handler, trace: Trace):
    """Replace `owner.method` by a recording wrapper for the duration of the block."""
    defined_here = method in owner.__dict__
    original = getattr(owner, method)

    def recording(target, *args, **kwargs):
        if trace.depth:
            return original(target, *args, **kwargs)
        # This call may write its own arguments in place (ReLU(inplace=True), +=): note their versions first.
        trace.versions_before_call = {id(t): t._version for t in map(tensor_of, (target, *args)) if t is not None}
        trace.depth += 1
        try:
            output = original(target, *args, **kwargs)
        finally:
            trace.depth -= 1
        trace.depth += 1  # the handler's own tensor calls (shape reads, .view on weights) are not the model's
        try:
            fn(Call(trace, target, args, kwargs, output, trace.call_name(target, method)))
        finally:
            trace.depth -= 1
            trace.versions_before_call = {}
        return output

    setattr(owner, method, recording)
    try:
        yield
    finally:
        if defined_here:
            setattr(owner, method, original)
        else:
            delattr(owner, method)


def trace_model(model: torch.nn.Module, args: tuple, inputs: dict[str, torch.Tensor],
                sparse_indices: dict[str, tuple[str, torch.Tensor]] | None = None) -> Trace:
    """Run `model(*args)` once under no_grad with every registered handler active; return the Trace.

    `inputs` names the argument tensors that become graph inputs; `sparse_indices` gives, for a
    sparse input, the name and tensor of its coordinates. The model's returned tensor(s) become the
    graph outputs.
    """
    trace = Trace(model)
    for name, tensor in inputs.items():
        indices = (sparse_indices or {}).get(name)
        trace.inputs.append(trace.register(tensor, name, indices[0] if indices else None))
    with contextlib.ExitStack() as stack:
        for (owner, method), fn in sorted(_HANDLERS.items(), key=lambda kv: (kv[0][0].__qualname__, kv[0][1])):
            stack.enter_context(_wrapped(owner, method, fn, trace))
        for hook in (register_module_forward_pre_hook(trace.enter_module),
                     register_module_forward_hook(trace.leave_module)):
            stack.callback(hook.remove)
        with torch.no_grad():
            result = model(*args)
    results = result if isinstance(result, (tuple, list)) else [result]
    for index, item in enumerate(results):
        value = trace.value_of(item)
        if value is None:
            raise SurgeonError(f"output {index} of the model was not produced by a handled call; register a "
                               f"@handler for the last operation on it")
        trace.outputs.append(value)
        trace.outputs_data.append(tensor_of(item))
    return trace

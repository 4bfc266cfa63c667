"""The forward-hook tracer: user handlers, one record per outermost call, and clean unwrapping."""
import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from surgeon.errors import SurgeonError  # noqa: E402
import surgeon.export.torch_handlers  # noqa: E402,F401  (ReLU and view handlers)
from surgeon.export.graph import build_model  # noqa: E402
from surgeon.export.tracer import handler, trace_model  # noqa: E402
from surgeon.testing import run_ort  # noqa: E402


class Scale(torch.nn.Module):
    """A user's custom module: multiplies by a learned per-channel factor."""

    def __init__(self, channels):
        super().__init__()
        self.factor = torch.nn.Parameter(torch.linspace(0.5, 2.0, channels).reshape(1, channels, 1))

    def forward(self, x):
        return x * self.factor.view(1, -1, 1)  # the inner .view must not be recorded


@handler(Scale)
def scale_handler(call):
    call.emit("Mul", [call.input(call.args[0])], weights={"factor": call.target.factor.detach().numpy()})


class Twice(torch.nn.Module):
    """A custom module made of another handled module: only the outer call may be recorded."""

    def __init__(self, channels):
        super().__init__()
        self.inner = Scale(channels)

    def forward(self, x):
        return self.inner(self.inner(x))


@handler(Twice)
def twice_handler(call):
    factor = call.target.inner.factor.detach().numpy()
    call.emit("Mul", [call.input(call.args[0])], weights={"factor": factor * factor})


class Boom(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("boom inside forward")


@handler(Boom)
def boom_handler(call):
    call.emit("Identity", [call.input(call.args[0])])


class Net(torch.nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, x):
        y = self.layers(x)
        return y.view(1, -1)


def trace(net, x):
    return trace_model(net, (x,), inputs={"x": x})


def test_custom_handler_becomes_a_node_and_runs():
    x = torch.randn(1, 3, 4)
    net = Net(Scale(3), torch.nn.ReLU(), Scale(3))
    t = trace(net, x)
    assert [(op.op_type, op.name) for op in t.ops] == [
        ("Mul", "layers.0"), ("Relu", "layers.1"), ("Mul", "layers.2"), ("Reshape", "view")]
    model = build_model(t, "standard")
    (y,) = run_ort(model, {"x": x.numpy()})
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-6)


def test_calls_inside_a_handled_call_are_not_recorded_twice():
    x = torch.randn(1, 2, 5)
    net = Net(Twice(2))
    t = trace(net, x)
    assert [op.name for op in t.ops] == ["layers.0", "view"]
    (y,) = run_ort(build_model(t, "standard"), {"x": x.numpy()})
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-6)


def test_wrapping_is_undone_after_an_error_inside_a_forward():
    boom_forward = Boom.__dict__["forward"]
    view, relu_forward = torch.Tensor.view, torch.nn.ReLU.forward
    with pytest.raises(RuntimeError, match="boom inside forward"):
        trace(Net(torch.nn.ReLU(), Boom()), torch.randn(2, 3))
    assert Boom.__dict__["forward"] is boom_forward
    assert torch.Tensor.view is view and "view" not in torch.Tensor.__dict__
    assert torch.nn.ReLU.forward is relu_forward


def test_wrapping_is_undone_after_success():
    scale_forward = Scale.__dict__["forward"]
    trace(Net(Scale(3)), torch.randn(1, 3, 2))
    assert Scale.__dict__["forward"] is scale_forward
    assert "view" not in torch.Tensor.__dict__
    # outside a trace nothing is recorded and the model still runs
    assert Net(Scale(3))(torch.randn(1, 3, 2)).shape == (1, 6)


def test_an_unhandled_operation_is_named():
    class Sigmoid(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    with pytest.raises(SurgeonError, match="call 'layers.1' .* no handled call produced; register a @handler"):
        trace(Net(Sigmoid(), torch.nn.ReLU()), torch.randn(2, 3))


def test_an_output_no_handler_made_is_named():
    class Plain(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    with pytest.raises(SurgeonError, match="output 0 of the model was not produced by a handled call"):
        trace(Plain(), torch.randn(2, 3))


def test_permute_and_reshape_become_transpose_and_reshape_in_both_flavours():
    class Layout(torch.nn.Module):
        def forward(self, x):
            return x.permute(0, 2, -2).reshape(2, -1)

    x = torch.randn(1, 3, 4)
    t = trace(torch.nn.Sequential(torch.nn.ReLU(), Layout()), x)
    assert [(op.op_type, op.attrs) for op in t.ops] == [
        ("Relu", {}), ("Transpose", {"dims": [0, 2, 1]}), ("Reshape", {"dims": [2, 6]})]
    (y,) = run_ort(build_model(t, "standard"), {"x": x.numpy()})
    np.testing.assert_array_equal(y, torch.relu(x).permute(0, 2, 1).reshape(2, -1).numpy())
    libspconv = build_model(t, "libspconv")
    assert [(n.op_type, len(n.input), [a.name for a in n.attribute]) for n in libspconv.graph.node] == [
        ("Relu", 1, []), ("Transpose", 1, ["dims"]), ("Reshape", 1, ["dims"])]


class Sparse:
    """The least a sparse tensor needs for the tracer: its `.features` tensor identifies it."""

    def __init__(self, features, indices):
        self.features, self.indices = features, indices


class Gate(torch.nn.Module):
    def forward(self, x):
        return Sparse(torch.sigmoid(x.features) * x.features, x.indices)


@handler(Gate)
def gate_handler(call):
    call.emit("Gate", [call.input(call.args[0])], domain="test.sparse")  # keeps its input's voxels


class SparseNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = Gate()

    def forward(self, features, indices):
        return self.gate(Sparse(features, indices)).features


def test_a_custom_sparse_op_gets_its_coordinates_and_keeps_them():
    features, indices = torch.randn(5, 2), torch.zeros(5, 4, dtype=torch.int32)
    t = trace_model(SparseNet(), (features, indices), inputs={"features": features},
                    sparse_indices={"features": ("indices", indices)})
    model = build_model(t, "standard")
    (node,) = model.graph.node
    assert (node.domain, list(node.input), list(node.output)) == ("test.sparse", ["features", "indices"], ["gate"])
    onnx.checker.check_model(model, full_check=True)
    (libspconv_node,) = build_model(t, "libspconv").graph.node
    assert list(libspconv_node.input) == ["features"]  # coordinates are implicit there


def test_an_in_place_residual_addition_is_recorded_and_read_back():
    class InPlaceResidual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = torch.nn.ReLU()

        def forward(self, x):
            out = self.relu(x)
            out += x  # later uses of `out` must read the sum
            return out.view(-1)

    x = torch.randn(2, 3)
    t = trace(InPlaceResidual(), x)
    assert [op.op_type for op in t.ops] == ["Relu", "Add", "Reshape"]
    assert t.ops[2].inputs[0].name == t.ops[1].outputs[0].name
    (y,) = run_ort(build_model(t, "standard"), {"x": x.numpy()})
    np.testing.assert_allclose(y, (torch.relu(x) + x).view(-1).numpy(), rtol=1e-6)


def test_an_in_place_write_no_handler_saw_is_an_error():
    class Doubles(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = torch.nn.ReLU(inplace=True)  # in place, but recorded: fine

        def forward(self, x):
            out = self.relu(x)  # writes the graph input in place: the Relu reads it first
            out.mul_(2)  # not recorded: the graph would silently miss it
            return out.view(-1)

    with pytest.raises(SurgeonError, match="tensor 'relu' was modified in place by an operation no handler records"):
        trace(Doubles(), torch.randn(2, 3))


def test_an_in_place_module_reads_its_input_then_becomes_its_output():
    x = torch.randn(2, 3)
    t = trace(Net(Scale(3), torch.nn.ReLU(inplace=True)), x.view(1, 3, 2))
    assert [(op.op_type, [v.name for v in op.inputs]) for op in t.ops] == [
        ("Mul", ["x"]), ("Relu", ["layers.0"]), ("Reshape", ["layers.1"])]
    (y,) = run_ort(build_model(t, "standard"), {"x": x.view(1, 3, 2).numpy()})
    np.testing.assert_allclose(y, torch.relu(x.view(1, 3, 2) * Scale(3).factor).view(1, -1).detach().numpy(),
                               rtol=1e-6)

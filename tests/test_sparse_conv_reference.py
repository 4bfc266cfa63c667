"""The CPU references of spconv::SparseConvolution / ScatterDense against spconv 2.3 itself.

Each case traces a small spconv network on random voxels, exports it in the `standard` flavour
and runs the graph node by node with the references (a tiny executor below), then compares with
spconv's dense output. Tolerance: float32 GEMMs of at most 27 x 16 terms, so 1e-5 of the output's
scale; coordinates must match exactly (the dense maps are zero wherever a voxel is missing).
"""
import numpy as np
import pytest

spconv = pytest.importorskip("spconv.pytorch", reason="needs spconv (pip install 'surgeon[zoo]')")
torch = pytest.importorskip("torch")

from onnx import helper, numpy_helper  # noqa: E402

from surgeon.errors import SurgeonError  # noqa: E402
from surgeon.export.graph import build_model  # noqa: E402
from surgeon.export.spconv_export import trace_spconv  # noqa: E402
from surgeon.reference import find_reference  # noqa: E402
from surgeon.reference.sparse_conv import rule_book, scatter_dense, sparse_convolution  # noqa: E402

GRID = [9, 12, 11]
STANDARD_NUMPY = {
    "Add": lambda x, attrs: [x[0] + x[1]],
    "Relu": lambda x, attrs: [np.maximum(x[0], 0)],
    "Reshape": lambda x, attrs: [x[0].reshape(x[1])],
}


def run_nodes(model, feeds):
    """Execute a `standard`-flavour graph node by node: spconv nodes by their registered references."""
    env = dict(feeds)
    env.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        fn = find_reference(node.op_type, node.domain) if node.domain else STANDARD_NUMPY[node.op_type]
        env.update(zip(node.output, fn([env[name] for name in node.input], attrs)))
    return [env[o.name] for o in model.graph.output]


class Net(torch.nn.Module):
    def __init__(self, *layers, grid=GRID):
        super().__init__()
        self.layers = spconv.SparseSequential(*layers)
        self.grid = grid

    def forward(self, features, indices, batch_size):
        x = spconv.SparseConvTensor(features, indices, self.grid, batch_size)
        return self.layers(x).dense()


def random_voxels(count, grid=GRID, batch=2, channels=4, seed=0):
    rng = np.random.default_rng(seed)
    cells = rng.choice(batch * int(np.prod(grid)), size=count, replace=False)
    indices = np.stack(np.unravel_index(cells, [batch, *grid]), axis=1).astype(np.int32)
    return rng.standard_normal((count, channels)).astype(np.float32), indices


def check_against_spconv(net, features, indices, batch_size=2):
    torch.manual_seed(1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    trace = trace_spconv(net.eval(), torch.from_numpy(features), torch.from_numpy(indices), batch_size)
    expected = trace.outputs_data[0].numpy()
    (actual,) = run_nodes(build_model(trace, "standard"), {"features": features, "indices": indices})
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual != 0, expected != 0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    return trace


@pytest.mark.parametrize("kernel, dilation", [(3, 1), (3, 2), ((3, 1, 1), 1), (5, 1)])
def test_submanifold(kernel, dilation):
    net = Net(spconv.SubMConv3d(4, 6, kernel, dilation=dilation, bias=True, indice_key="s"))
    check_against_spconv(net, *random_voxels(200))


@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    (3, 2, 1, 1), (3, 2, (0, 1, 1), 1), ((3, 1, 1), (2, 1, 1), 0, 1), (2, 2, 0, 1), (3, 1, 0, 2), (3, 3, 2, 1)])
def test_regular(kernel, stride, padding, dilation):
    conv = spconv.SparseConv3d(4, 5, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
    net = Net(conv)
    check_against_spconv(net, *random_voxels(200))


def test_inverse_restores_the_forward_convolutions_coordinates():
    net = Net(spconv.SubMConv3d(4, 4, 3, indice_key="subm"),
              spconv.SparseConv3d(4, 8, 3, stride=2, padding=1, bias=False, indice_key="down"),
              torch.nn.ReLU(),
              spconv.SparseInverseConv3d(8, 3, 3, indice_key="down", bias=True))
    trace = check_against_spconv(net, *random_voxels(150))
    inverse = trace.ops[-2]
    assert inverse.attrs["inverse"] == 1 and inverse.attrs["rulebook"] == "down"
    assert inverse.index_inputs == [trace.ops[0].outputs[0].indices]  # the forward conv's input coordinates
    assert inverse.standard_attrs["rulebook_stride"] == [2, 2, 2]


@pytest.mark.parametrize("conv_type", [spconv.SubMConv3d, spconv.SparseConv3d])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # spconv 2.3.8 dense() on torch 2.x
def test_kernel_1_computes_what_the_module_computes(conv_type, bias):
    """spconv 2.3 runs a 1x1 convolution as one matmul, x @ weight.view(Cin, Cout), not with the
    [Cout, Cin] matrix its [Cout, 1, 1, 1, Cin] storage holds; the export writes the matrix it uses."""
    conv = conv_type(4, 5, 1, bias=bias)
    assert conv.conv1x1  # spconv's own matmul path, which the module's forward takes below
    net = Net(conv)
    features, indices = random_voxels(200)
    trace = check_against_spconv(net, features, indices)
    with torch.no_grad():
        expected = net(torch.from_numpy(features), torch.from_numpy(indices), 2).numpy()
    (actual,) = run_nodes(build_model(trace, "standard"), {"features": features, "indices": indices})
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    weight = conv.weight.detach().numpy()
    np.testing.assert_array_equal(trace.ops[0].weights["weight"][:, 0, 0, 0, :], weight.reshape(4, 5).T)


def test_transposed():
    net = Net(spconv.SparseConv3d(4, 4, 3, stride=2, padding=1, bias=False),
              spconv.SparseConvTranspose3d(4, 3, 3, stride=2, padding=1, bias=False))
    trace = check_against_spconv(net, *random_voxels(120))
    # libspconv's parser reads no `transposed`: it would build a strided down-sampling convolution
    with pytest.raises(SurgeonError, match="'layers.1': a transposed sparse convolution .* has no libspconv form"):
        build_model(trace, "libspconv")


def test_regular_output_coordinates_are_those_of_spconv():
    features, indices = random_voxels(300, seed=3)
    conv = spconv.SparseConv3d(4, 5, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        y = conv(spconv.SparseConvTensor(torch.from_numpy(features), torch.from_numpy(indices), GRID, 2))
    attrs = {"ndim": 3, "input_spatial_shape": GRID, "output_spatial_shape": list(y.spatial_shape),
             "kernel_size": [3] * 3, "stride": [2] * 3, "padding": [1] * 3, "dilation": [1] * 3}
    ours, _ = rule_book(indices, attrs)
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, y.indices.tolist()))


def test_one_voxel_by_hand():
    # z = 4, stride 2, padding 1: output z' satisfies 2 z' - 1 + k = 4, so only k = 1, z' = 2.
    attrs = {"ndim": 3, "input_spatial_shape": [9, 9, 9], "output_spatial_shape": [5, 5, 5],
             "kernel_size": [3] * 3, "stride": [2] * 3, "padding": [1] * 3, "dilation": [1] * 3,
             "subm": 0, "activation": "ReLU"}
    weight = np.zeros((1, 3, 3, 3, 1), np.float32)
    weight[0, 1, 1, 1, 0] = 2.0
    weight[0, 0, 0, 0, 0] = 100.0  # offset (0,0,0) never pairs with an even coordinate
    features, indices = sparse_convolution(
        [np.array([[1.5]], np.float32), np.array([[0, 4, 4, 4]], np.int32), weight, np.array([-1.0], np.float32)],
        attrs)
    assert indices.tolist() == [[0, 2, 2, 2]]
    assert features.tolist() == [[2.0]]  # relu(1.5 * 2 - 1)


def test_scatter_dense_places_channels_first():
    features = np.array([[1, 2], [3, 4]], np.float32)
    indices = np.array([[0, 1, 2, 3], [1, 0, 0, 0]], np.int32)
    (dense,) = scatter_dense([features, indices], {"output_shape": [2, 2, 2, 3, 4], "format": "zyx"})
    assert dense.shape == (2, 2, 2, 3, 4) and dense.sum() == 10
    assert dense[0, :, 1, 2, 3].tolist() == [1, 2] and dense[1, :, 0, 0, 0].tolist() == [3, 4]


def test_sparse_tensor_addition_is_one_add():
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = spconv.SubMConv3d(4, 4, 3, bias=False, indice_key="r")

        def forward(self, features, indices, batch_size):
            x = spconv.SparseConvTensor(features, indices, GRID, batch_size)
            return (self.conv(x) + x).dense()  # SparseConvTensor.__add__ calls Tensor.__add__ inside

    trace = check_against_spconv(Residual(), *random_voxels(100))
    assert [op.op_type for op in trace.ops] == ["SparseConvolution", "Add", "ScatterDense"]

"""msda-decompose on torch 2.13 exports of mmcv's multi_scale_deformable_attn_pytorch, on mmcv's own op, and on the
BEVFormer-tiny fixture through the opset-11 target recipe.

Numerics: ONNX Runtime on the rewritten graph against PyTorch (mmcv's fallback, grid_sample included, as
surgeon.zoo.layers copies it line for line) within 1e-5 absolute, float32, on unit-normal values and attention
weights in [0, 1): the fused blend multiplies each corner weight by its attention weight before one sum, another
rounding order than torch's (observed up to 9.5e-7 here, as grid-sample decompose).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from surgeon.errors import RecipeError, SurgeonError
from surgeon.pipeline import run_recipe
from surgeon.targets import load_target
from surgeon.testing import apply_pass, export_torch, make_model, op_types, run_ort

torch = pytest.importorskip("torch", reason="needs PyTorch (the zoo extra: pip install 'surgeon[zoo]')")
from surgeon.zoo.layers import multi_scale_deformable_attn_pytorch  # noqa: E402  (needs torch)

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "tests" / "data" / "zoo"
FIXTURE = "bevformer-tiny.fixture.opset11-aten"
ATOL = 1e-5
#: (level shapes, heads, points): 1-4 levels of different sizes, 1-8 points, 1-4 heads.
CASES = [([(5, 7)], 2, 1), ([(6, 8), (3, 4)], 3, 4), ([(7, 9), (4, 5), (2, 3)], 1, 8),
         ([(8, 8), (4, 6), (2, 3), (1, 1)], 4, 3)]
SAMPLERS = {"ATen", "GridSample"}


class Block(torch.nn.Module):
    def __init__(self, shapes, permute=False):
        super().__init__()
        self.shapes, self.permute = shapes, permute

    def forward(self, value, locations, weights):
        out = multi_scale_deformable_attn_pytorch(value, self.shapes, locations, weights)
        return out.permute(1, 2, 0) if self.permute else out  # BEVFormer's temporal self-attention does this


def inputs(shapes, heads, points, seed, batch=2, queries=6, dims=4):
    """value, locations, weights; every other query's locations exactly on a pixel centre or edge of its
    level (k / 2w, 0 and 1 included), the others in [-0.3, 1.3], outside the image too."""
    g = torch.Generator().manual_seed(seed)
    keys = sum(h * w for h, w in shapes)
    value = torch.randn(batch, keys, heads, dims, generator=g)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g) * 1.6 - 0.3
    for level, (h, w) in enumerate(shapes):
        for axis, size in ((0, w), (1, h)):
            steps = torch.randint(0, 2 * size + 1, (batch, (queries + 1) // 2, heads, points), generator=g)
            locations[:, ::2, :, level, :, axis] = steps / (2 * size)
    return value, locations, torch.rand(batch, queries, heads, len(shapes), points, generator=g)


def export(module, args, opset, dynamic=False):
    axes = {"value": {0: "batch"}, "loc": {0: "batch", 1: "queries"}, "weights": {0: "batch", 1: "queries"}}
    return export_torch(module, *args, opset=opset, aten_fallback=opset == 11, input_names=["value", "loc", "weights"],
                        output_names=["out"], dynamic_axes=axes if dynamic else None)


def feeds(args):
    return dict(zip(("value", "loc", "weights"), (a.numpy() for a in args)))


def assert_opset11_only(model):
    onnx.checker.check_model(model, full_check=True)
    profile = load_target("opset-11")
    assert [op for op in sorted(set(op_types(model))) if not profile.supports(op, opset=11)] == []


@pytest.mark.parametrize("opset", [11, 16])
@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: f"{len(CASES[i][0])}-levels")
def test_fused_block_matches_pytorch(opset, case):
    shapes, heads, points = CASES[case]
    args = inputs(shapes, heads, points, seed=case)
    model = export(Block(shapes), args, opset)
    fused, step = apply_pass(model, "msda-decompose", target="opset-11" if opset == 11 else "onnxruntime")

    (transpose,) = [n.name for n in model.graph.node if n.op_type == "Transpose" and n.output[0] == "out"]
    assert step.rewritten == [transpose]
    assert f"{transpose}: {len(shapes)} level(s) {shapes}" in step.notes
    ops = op_types(fused)
    assert not SAMPLERS & set(ops) and ops.count("Gather") == 3 and ops.count("MatMul") == 1  # x, y; the rows
    if opset == 11:
        assert_opset11_only(fused)
    want = Block(shapes)(*args).numpy()
    np.testing.assert_allclose(run_ort(fused, feeds(args))[0], want, atol=ATOL, rtol=0)


def test_merged_final_permute_is_a_transpose_of_the_fused_output():
    shapes = CASES[1][0]
    args = inputs(shapes, 3, 4, seed=7)
    fused, step = apply_pass(export(Block(shapes, permute=True), args, 11), "msda-decompose")
    assert len(step.rewritten) == 1 and op_types(fused)[-1] == "Transpose"
    np.testing.assert_allclose(run_ort(fused, feeds(args))[0], Block(shapes, permute=True)(*args).numpy(),
                               atol=ATOL, rtol=0)


def test_dynamic_batch_and_queries():
    shapes = CASES[2][0]
    fused, step = apply_pass(export(Block(shapes), inputs(shapes, 2, 3, seed=3), 11, dynamic=True),
                             "msda-decompose")
    assert len(step.rewritten) == 1
    args = inputs(shapes, 2, 3, seed=4, batch=3, queries=9)
    np.testing.assert_allclose(run_ort(fused, feeds(args))[0], Block(shapes)(*args).numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch, queries", [(2, 0), (0, 5)])
def test_empty_batch_or_queries_give_torchs_empty_output(batch, queries):
    """The Reshapes write static sizes, not -1, which ONNX Runtime cannot infer for an empty tensor (the
    original graph fails there itself: its GridSample, or its Reshape with -1)."""
    shapes = CASES[1][0]
    fused, _ = apply_pass(export(Block(shapes), inputs(shapes, 3, 4, seed=1), 16, dynamic=True), "msda-decompose")
    args = inputs(shapes, 3, 4, seed=1, batch=batch, queries=queries)
    assert run_ort(fused, feeds(args))[0].shape == Block(shapes)(*args).shape == (batch, queries, 12)


@pytest.mark.parametrize("coordinate", [np.nan, np.inf, -np.inf])
def test_a_non_finite_location_reads_zero_where_torch_gives_nan(coordinate):
    """As grid-sample decompose: the point's sample is 0 (NaN clipped to -1, infinities to the border), so
    that query and head's output is finite, where torch's is NaN; every other output as torch's."""
    shapes = CASES[1][0]
    value, locations, weights = inputs(shapes, 3, 4, seed=1)
    locations[0, 0, 0, 0, 0, 0] = coordinate
    args = (value, locations, weights)
    model = export(Block(shapes), args, 16)
    fused, _ = apply_pass(model, "msda-decompose")
    per_sampler, _ = apply_pass(model, "grid-sample", mode="decompose")
    got, want = run_ort(fused, feeds(args))[0], Block(shapes)(*args).numpy()
    assert np.isnan(want[0, 0, :4]).all() and np.isfinite(got).all()  # head 0: channels 0-3
    want[0, 0, :4] = run_ort(per_sampler, feeds(args))[0][0, 0, :4]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_a_block_with_dynamic_heads_is_left_to_grid_sample_with_a_note():
    shapes = CASES[0][0]
    axes = {"value": {2: "heads"}, "loc": {2: "heads", 4: "points"}, "weights": {2: "heads", 4: "points"}}
    model = export_torch(Block(shapes), *inputs(shapes, 2, 3, seed=1), input_names=["value", "loc", "weights"],
                         output_names=["out"], dynamic_axes=axes)
    out, step = apply_pass(model, "msda-decompose")
    assert step.rewritten == [] and op_types(out) == op_types(model)
    (note,) = step.notes
    assert "msda-decompose needs static heads, levels and points" in note and note.endswith("; left to grid-sample")


def mmcv_op_model(shapes, heads, points, batch=2, queries=6, dims=4, constant_shapes=True, dtype=np.float32):
    """mmcv::MMCVMultiScaleDeformableAttention as mmcv exports it (its im2col_step attribute included), on
    `dtype` tensors."""
    node = helper.make_node("MMCVMultiScaleDeformableAttention", ["value", "shapes", "starts", "loc", "weights"],
                            ["out"], name="msda", domain="mmcv", im2col_step=64)
    starts = np.cumsum([0] + [h * w for h, w in shapes[:-1]]).astype(np.int64)
    constants = {"shapes": np.array(shapes, np.int64), "starts": starts}
    levels, keys = len(shapes), sum(h * w for h, w in shapes)
    graph_inputs = [("value", dtype, [batch, keys, heads, dims]),
                    ("loc", dtype, [batch, queries, heads, levels, points, 2]),
                    ("weights", dtype, [batch, queries, heads, levels, points])]
    if not constant_shapes:
        graph_inputs.append(("shapes", np.int64, [levels, 2]))
        del constants["shapes"]
    model = make_model([node], graph_inputs, [("out", dtype, [batch, queries, heads * dims])],
                       initializers=constants, opset=11)
    model.opset_import.append(helper.make_opsetid("mmcv", 1))
    return model


def test_mmcv_op_matches_pytorch():
    shapes, heads, points = CASES[3]
    args = inputs(shapes, heads, points, seed=5)
    fused, step = apply_pass(mmcv_op_model(shapes, heads, points), "msda-decompose", target="opset-11")
    assert step.rewritten == ["msda"] and "msda: 4 level(s)" in " ".join(step.notes)
    assert_opset11_only(fused)
    np.testing.assert_allclose(run_ort(fused, feeds(args))[0], Block(shapes)(*args).numpy(), atol=ATOL, rtol=0)


#: Against torch on the same dtype. float16: torch's CPU kernel and the decomposition round differently op by
#: op (observed up to 3.9e-3 on outputs up to 4.4: two float16 ulps); float64: observed up to 8.9e-16.
TOLERANCES = {"float16": 1e-2, "float64": 1e-12}


@pytest.mark.parametrize("dtype", TOLERANCES)
def test_mmcv_op_on_float16_and_float64_computes_in_that_dtype(dtype):
    shapes, heads, points = CASES[1]
    args = [a.to(getattr(torch, dtype)) for a in inputs(shapes, heads, points, seed=6)]
    fused, step = apply_pass(mmcv_op_model(shapes, heads, points, dtype=dtype), "msda-decompose")
    onnx.checker.check_model(fused, full_check=True)
    assert step.notes[-1].startswith(f"fma_emulation applies to float32 grids only; {dtype} grids: ")
    np.testing.assert_allclose(run_ort(fused, feeds(args))[0], Block(shapes)(*args).numpy(),
                               atol=TOLERANCES[dtype], rtol=0)


@pytest.mark.parametrize("value_dtype, sampling_dtype", [("float16", "float32"), ("float32", "float16")])
def test_mmcv_op_with_locations_of_another_dtype_computes_in_values(value_dtype, sampling_dtype):
    """mmcv's op Casts locations and weights to value's dtype before its kernel (`type_as(value)`, for amp), so
    the rewrite does: one dtype throughout (a Mul of float16 by float32 would not load), value's out."""
    shapes, heads, points = CASES[1]
    model = mmcv_op_model(shapes, heads, points, dtype=value_dtype)
    for graph_input in model.graph.input[1:]:
        graph_input.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(sampling_dtype))
    fused, step = apply_pass(model, "msda-decompose")
    onnx.checker.check_model(fused, full_check=True)
    assert step.rewritten == ["msda"]
    value, locations, weights = inputs(shapes, heads, points, seed=6)
    args = [value.to(getattr(torch, value_dtype))] + [t.to(getattr(torch, sampling_dtype)) for t in (locations, weights)]
    got = run_ort(fused, feeds(args))[0]
    want = Block(shapes)(args[0], *[t.type_as(args[0]) for t in args[1:]]).numpy()
    assert got.dtype == want.dtype == np.dtype(value_dtype)
    np.testing.assert_allclose(got, want, atol=TOLERANCES.get(value_dtype, ATOL), rtol=0)


def test_symbolic_channels_are_noted_since_an_empty_batch_then_fails():
    """C symbolic: the Reshapes read -1, which ONNX Runtime cannot infer for batch or queries 0."""
    shapes, heads, points = CASES[1]
    _, step = apply_pass(mmcv_op_model(shapes, heads, points, batch="B", dims="C"), "msda-decompose")
    assert step.notes[0] == ("msda: 2 level(s) [(6, 8), (3, 4)]; channels per head are symbolic, so batch or "
                             "queries 0 fail at run time in a Reshape: run set-input-shapes with a static channel "
                             "size first where they can be 0")
    _, static = apply_pass(mmcv_op_model(shapes, heads, points, batch="B"), "msda-decompose")
    assert static.notes[0] == "msda: 2 level(s) [(6, 8), (3, 4)]"


def test_mmcv_op_on_bfloat16_is_sampled_in_float32_rounded_once():
    """A bfloat16 op is computed in float32 between Casts, as grid-sample samples bfloat16 (ONNX has no bfloat16
    Where before opset 16): against torch in float32 on the bfloat16 inputs, rounded once to bfloat16, within one
    bfloat16 ulp (ONNX Runtime's Python API cannot feed bfloat16: float32 inputs Cast to it and back)."""
    shapes, heads, points = CASES[1]
    model = mmcv_op_model(shapes, heads, points, dtype=np.float32)
    op = model.graph.node[0]
    op.input[0], op.input[3], op.input[4], op.output[0] = "value_bf16", "loc_bf16", "weights_bf16", "out_bf16"
    casts = [helper.make_node("Cast", [name], [f"{name}_bf16"], to=onnx.TensorProto.BFLOAT16)
             for name in ("value", "loc", "weights")]
    model.graph.node.extend([helper.make_node("Cast", ["out_bf16"], ["out"], to=onnx.TensorProto.FLOAT)])
    for cast in reversed(casts):
        model.graph.node.insert(0, cast)
    {o.domain: o for o in model.opset_import}[""].version = 13  # Cast to bfloat16
    fused, step = apply_pass(model, "msda-decompose")
    onnx.checker.check_model(fused, full_check=True)
    assert step.notes[-2] == ("sampled msda in float32 between Casts from and to bfloat16, as grid-sample samples "
                              "bfloat16 (ONNX has no bfloat16 Where before opset 16)")
    assert step.notes[-1].startswith("fma_emulation float64")  # the float32 grid's
    args = inputs(shapes, heads, points, seed=6)
    expected = Block(shapes)(*[a.bfloat16().float() for a in args]).bfloat16().float().numpy()
    np.testing.assert_allclose(run_ort(fused, feeds(args))[0], expected, rtol=2.0 ** -7, atol=1e-6)


def test_mmcv_op_with_computed_level_shapes_is_refused_naming_the_node():
    model = mmcv_op_model([(5, 7)], 2, 1, constant_shapes=False)
    with pytest.raises(SurgeonError, match="node 'msda': msda-decompose needs constant spatial_shapes and "
                                           "level_start_index; run fold-constants"):
        apply_pass(model, "msda-decompose")


def test_second_run_changes_nothing():
    shapes = CASES[1][0]
    once, _ = apply_pass(export(Block(shapes), inputs(shapes, 3, 4, seed=1), 11), "msda-decompose")
    twice, step = apply_pass(once, "msda-decompose")
    assert step.rewritten == [] and op_types(twice) == op_types(once)


def test_a_lone_grid_sample_is_left_alone():
    """A sampler outside the block (BEVFormer's BEV rotation, say) is grid-sample's."""
    def sample(x, grid):
        return torch.nn.functional.grid_sample(x, grid, align_corners=False)

    model = export_torch(sample, torch.zeros(1, 2, 3, 4), torch.zeros(1, 5, 6, 2))
    out, step = apply_pass(model, "msda-decompose")
    assert step.rewritten == [] and op_types(out) == op_types(model)


@pytest.mark.parametrize("target, params, float64", [("onnxruntime", {}, True), ("onnxruntime",
                                                                                  {"fma_emulation": "none"}, False)])
def test_fma_emulation_is_grid_samples(target, params, float64):
    """The coordinates are grid-sample decompose's: float64 where the target runs it, said in a note; the same
    graph decomposed sampler by sampler agrees within the blend's reordering."""
    shapes = CASES[1][0]
    args = inputs(shapes, 3, 4, seed=2)
    model = export(Block(shapes), args, 11)
    fused, step = apply_pass(model, "msda-decompose", target=target, **params)
    widened = [n for n in fused.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.DOUBLE]
    assert bool(widened) == float64
    assert step.notes[-1].startswith(f"fma_emulation {'float64' if float64 else 'none'}")
    per_sampler, _ = apply_pass(model, "grid-sample", target=target, mode="decompose", **params)
    np.testing.assert_allclose(run_ort(fused, feeds(args))[0], run_ort(per_sampler, feeds(args))[0], atol=2e-6,
                               rtol=0)


def test_fma_emulation_float64_is_refused_where_the_target_has_no_float64():
    model = mmcv_op_model([(5, 7)], 2, 1)
    with pytest.raises(RecipeError, match="parameter 'fma_emulation' of pass 'msda-decompose': 'float64' needs "
                                          "float64 .* 'tensorrt-8.5' lacks"):
        apply_pass(model, "msda-decompose", target="tensorrt-8.5", fma_emulation="float64")


@pytest.mark.slow
def test_bevformer_tiny_through_the_opset11_target_recipe_validates(tmp_path):
    """The fixture's 12 attention blocks fused, its BEV rotation sampler left to grid-sample, within 1e-4 of
    the PyTorch outputs recorded at export."""
    if not (ZOO / f"{FIXTURE}.onnx").exists():
        pytest.skip(f"zoo fixture {ZOO / FIXTURE}.onnx is missing (python -m surgeon.zoo.regenerate writes it)")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: fixture\nextends: {ROOT / 'recipes' / 'targets' / 'opset11.yaml'}\n"
                      f"validate:\n  data: {ZOO / FIXTURE}.inputs.npz\n  expected: {ZOO / FIXTURE}.outputs.npz\n"
                      "  against: none\n  atol: 1e-4\n  rtol: 0\n")
    result = run_recipe(recipe, model=ZOO / f"{FIXTURE}.onnx", output=tmp_path / "out.onnx")
    counts = {step.pass_name: len(step.rewritten) for step in result.steps}
    assert counts["msda-decompose"] == 12 and counts["grid-sample"] == 1
    assert result.validation.passed and not SAMPLERS & set(op_types(result.model))
    assert_opset11_only(result.model)


def test_check_reports_the_float64_of_its_fma_emulation_once_per_block_with_the_way_out(tmp_path):
    """`check -t opset-11` on the opset-11 result used to print one bare SG007 per float64 tensor (about ten per
    block): msda-decompose widens coordinates as grid-sample does, so its float64 is grouped and explained the same
    way, with its own pass in the advice."""
    from surgeon.check import Settings, check_file

    fused, _ = apply_pass(mmcv_op_model(*CASES[1]), "msda-decompose", target="opset-11")
    onnx.save(fused, tmp_path / "fused.onnx")
    [finding] = check_file(tmp_path / "fused.onnx", Settings(target="opset-11", select=("SG007",)))
    assert finding.message.startswith("starts msda-decompose's fma_emulation in its rewrite of node msda: ")
    assert "run msda-decompose with `fma_emulation: none`" in finding.advice
    assert "`set: {msda-decompose.fma_emulation: none}`" in finding.advice


@pytest.mark.parametrize("pass_name", ["msda-decompose", "msda-plugin"])
def test_the_step_that_replaces_blocks_shows_their_samplers_gone(pass_name):
    """The blocks' own nodes used to stay in the graph, dead, until a later pruning step, whose row then
    showed the samplers removed (fold-constants: ATen:grid_sampler -12 on BEVFormer-tiny)."""
    shapes = CASES[1][0]
    model = export(Block(shapes), inputs(shapes, 3, 4, seed=1), 11)
    out, step = apply_pass(model, pass_name)
    assert step.op_delta["ATen:grid_sampler"] == -len(shapes)
    assert "ATen" not in op_types(out)

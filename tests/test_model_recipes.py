"""The shipped model recipes on every zoo fixture export of their model (tests/data/zoo), without torch.

Each recipe runs once per (recipe, export) and its result is held to three claims:
- `surgeon check --target <recipe target>` finds no error (and the op set is what the recipe promises);
- `surgeon compare` puts the result within 1e-4 absolute (float32) of the PyTorch outputs recorded at
  export time, through ONNX Runtime, or the reference runner where plugin nodes remain;
- `surgeon compare ORIGINAL RESULT` exits 0: the result equals the original export (ATen nodes run by
  the reference runner) within ORIGINAL_ATOL; where the original runs nowhere or computes something
  else than PyTorch, that is asserted instead (exit 2 or 1).
A recipe that cuts a graph out of an export (extract) is compared with the separately exported part:
its inputs, PyTorch outputs and graph.
docs/model-recipes.md lists the figures these runs measure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pytest

from surgeon.cli import main as surgeon_cli
from surgeon.pipeline import run_recipe
from surgeon.recipe import load_recipe
from surgeon.testing import op_types

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "tests" / "data" / "zoo"
PYTORCH_ATOL = 1e-4
# BEVFormer's boxes and Sparse4D's anchors reach tens of metres, where fused or reordered float32 sums differ
# by a few ulp (measured up to 1.9e-5; every other output within 2e-6).
ORIGINAL_ATOL = 5e-5
PLUGINS = {"MultiScaleDeformableAttn", "BEVPool", "GridSample2D"}


#: What `surgeon compare ORIGINAL RESULT` says about the raw export, and its exit code.
ORIGINAL_EXITS = {"equal": 0, "differs": 1, "refused": 2}


@dataclass(frozen=True)
class Case:
    recipe: str
    export: str  # fixture stem in tests/data/zoo
    present: dict[str, int] = field(default_factory=dict)  # op type -> exact count in the result
    # "equal": the result equals the raw export; "refused": the raw export runs nowhere; "differs": it runs
    # but computes something else than PyTorch. Only PyTorch's outputs judge the result in the last two.
    original: str = "equal"
    # The export whose inputs, PyTorch outputs and graph the result is compared with, when the recipe cuts
    # a part out of `export`; default: `export` itself.
    part_of: str | None = None

    @property
    def id(self) -> str:
        return f"{self.recipe}[{self.export.split('.')[-1]}]"

    @property
    def reference(self) -> str:
        return self.part_of or self.export


MSDA = {"MultiScaleDeformableAttn": 12, "GridSample": 1}  # 12 attention blocks; the nearest BEV rotation
CAMERA = {"BEVPool": 1, "ScatterND": 0, "ScatterElements": 0, "Loop": 0, "Conv": 66}
CASES = [
    Case("bevformer-tiny", "bevformer-tiny.fixture.opset11-aten", MSDA),
    Case("bevformer-tiny", "bevformer-tiny.fixture.opset13-aten", MSDA),
    Case("bevformer-tiny", "bevformer-tiny.fixture.opset16", MSDA),
    Case("bevformer-tiny-opset11", "bevformer-tiny.fixture.opset11-aten", {"GridSample": 0}),
    Case("bevformer-nmsfree", "bevformer-nmsfree.fixture.opset11-aten", {"TopK": 1}),
    Case("bevfusion-camera-backbone", "bevfusion-camera-backbone.fixture.opset11-aten", {"Conv": 63}),
    Case("bevfusion-camera-vtransform", "bevfusion-camera-vtransform.fixture.opset11-aten", {"Conv": 3}),
    # The 3x3 heatmap peak pool and the two unbatched 1x1 pools, which pool-rank gives a batch axis.
    Case("bevfusion-fuser-head", "bevfusion-fuser-head.fixture.opset11-aten", {"MaxPool": 3, "Squeeze": 2},
         original="refused"),
    # bev_pool's gathers and scatters (and repeat_interleave: ATen at opset 11, a Loop at 16) become one plugin.
    # The opset-11 original runs nowhere (ATen repeat_interleave); at opset 16 it keeps one point per BEV cell.
    Case("bevfusion-camera", "bevfusion-camera.fixture.opset11-aten", CAMERA, original="refused"),
    Case("bevfusion-camera", "bevfusion-camera.fixture.opset16", CAMERA, original="differs"),
    Case("bevfusion-camera-backbone-split", "bevfusion-camera.fixture.opset11-aten", {"Conv": 63, "BEVPool": 0},
         part_of="bevfusion-camera-backbone.fixture.opset11-aten"),
    Case("bevfusion-camera-vtransform-split", "bevfusion-camera.fixture.opset11-aten", {"Conv": 3, "BEVPool": 0},
         part_of="bevfusion-camera-vtransform.fixture.opset11-aten"),
    Case("sparse4d-head", "sparse4d-head.fixture.opset11-aten", {"GridSample": 24}),
    Case("sparse4d-head-opset11", "sparse4d-head.fixture.opset11-aten", {"GridSample": 0}),
]


@dataclass
class Outcome:
    case: Case
    target: str
    model: onnx.ModelProto
    findings: list[dict]
    original_exit: int  # surgeon compare ORIGINAL RESULT
    compare: dict  # the JSON report of the compare that judged the result against PyTorch


def compare(a: Path, b: Path, case: Case, report: Path) -> int:
    """`surgeon compare A B` on the export's recorded inputs, B also against PyTorch's outputs (1e-4 absolute)."""
    return surgeon_cli(["compare", str(a), str(b), "--data", str(ZOO / f"{case.reference}.inputs.npz"),
                        "--expected", str(ZOO / f"{case.reference}.outputs.npz"), "--atol", str(PYTORCH_ATOL),
                        "--rtol", "0", "--report", str(report), "-q"])


def test_every_zoo_recipe_has_cases():
    """A recipe shipped for a zoo model is tested on every zoo export of that model."""
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        if recipe.model is None or Path(recipe.model).resolve().parent != ZOO:
            continue
        model = Path(recipe.model).name.split(".")[0]
        exports = {p.name[:-len(".onnx")] for p in ZOO.glob(f"{model}.fixture.*.onnx")}
        tested = {case.export for case in CASES if case.recipe == recipe.name}
        # An opset-11 target takes only the opset-11 export (onnx cannot convert an opset down); a recipe that
        # cuts at tensor names takes only the export it names (the exporter numbers tensors per opset).
        if recipe.target == "opset-11":
            exports = {e for e in exports if ".opset11" in e}
        if any(step.pass_name == "extract" for step in recipe.steps):
            exports = {Path(recipe.model).name[:-len(".onnx")]}
        assert tested == exports, recipe.name


@pytest.mark.parametrize("case", [c for c in CASES if c.export.endswith("opset11-aten")], ids=lambda c: c.recipe)
def test_recipe_validates_its_model_against_the_pytorch_outputs(case):
    recipe = load_recipe(ROOT / "recipes" / f"{case.recipe}.yaml")
    assert Path(recipe.model).resolve() == ZOO / f"{case.export}.onnx"
    assert Path(recipe.validate["data"]).resolve() == ZOO / f"{case.reference}.inputs.npz"
    assert Path(recipe.validate["expected"]).resolve() == ZOO / f"{case.reference}.outputs.npz"
    # an original that runs nowhere or computes something else is left out: only PyTorch's outputs judge
    against = recipe.validate["against"]
    if case.part_of:
        assert Path(against).resolve() == ZOO / f"{case.part_of}.onnx"
    else:
        assert against == ("original" if case.original == "equal" else "none")
    assert recipe.validate["atol"] <= PYTORCH_ATOL


def _param(case: Case):
    # BEVFormer's 6,400-node exports take 6-20 s each (shape inference, folding, reference runner).
    return pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.export.startswith("bevformer-tiny") else [])


@pytest.fixture(scope="module", params=[_param(case) for case in CASES])
def outcome(request, tmp_path_factory) -> Outcome:
    case = request.param
    out_dir = tmp_path_factory.mktemp(case.id.replace("[", "-").rstrip("]"))
    output = out_dir / "result.onnx"
    recipe = load_recipe(ROOT / "recipes" / f"{case.recipe}.yaml")
    result = run_recipe(recipe, model=ZOO / f"{case.export}.onnx", output=output, validate=False)
    original = ZOO / f"{case.reference}.onnx"
    check_json = out_dir / "check.json"
    assert surgeon_cli(["check", str(output), "--target", recipe.target, "--format", "json", "-o",
                        str(check_json), "--no-config"]) in (0, 1)
    findings = json.loads(check_json.read_text())["findings"]
    original_exit = compare(original, output, case, out_dir / "compare")
    if case.original != "equal":
        # PyTorch's outputs judged alone: the result against itself, with --expected.
        compare(output, output, case, out_dir / "compare")
    report = json.loads((out_dir / "compare.json").read_text())
    return Outcome(case, recipe.target, result.model, findings, original_exit, report)


def test_result_holds_the_ops_the_recipe_promises(outcome):
    ops = op_types(outcome.model)
    assert "ATen" not in ops
    assert {op: ops.count(op) for op in outcome.case.present} == outcome.case.present
    if outcome.target == "opset-11":
        assert not set(ops) & (PLUGINS | {"GridSample"})


def test_check_finds_no_error_for_the_target(outcome):
    errors = [f"{f['rule']} {f['node']} ({f['op']}): {f['message']}" for f in outcome.findings
              if f["severity"] == "error"]
    assert errors == []


def test_result_matches_pytorch(outcome):
    plugins = PLUGINS & set(op_types(outcome.model))
    assert outcome.compare["runners"]["rewritten"] == ("reference" if plugins else "onnxruntime")
    errors = {e["name"]: e["max_abs"] for e in outcome.compare["expected"]}
    assert set(errors) == {o.name for o in outcome.model.graph.output}
    assert max(errors.values()) <= PYTORCH_ATOL and all(e["passed"] for e in outcome.compare["expected"]), errors


def test_original_and_result_compare_equal(outcome):
    if outcome.case.original != "equal":
        # The raw export runs nowhere (pytorch/pytorch#127875, ATen nodes without a reference) or computes
        # something else (torch's overwriting index_add_); the result is proven against PyTorch only.
        assert outcome.original_exit == ORIGINAL_EXITS[outcome.case.original]
        return
    assert outcome.original_exit == 0, outcome.compare["outputs"]
    assert max(e["max_abs"] for e in outcome.compare["outputs"]) <= ORIGINAL_ATOL

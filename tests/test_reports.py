"""Validation reports: Markdown, self-contained HTML (opened in headless Chromium), JSON, and
Polygraphy results that the real `polygraphy` CLI reads back."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from surgeon.pipeline import run_recipe
from test_validation import WRONG_STEP, chain_model, write_recipe

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
POLYGRAPHY = Path(sys.executable).with_name("polygraphy")


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """A bisected run whose third step breaks the outputs; its reports are the subject of these tests."""
    tmp_path = tmp_path_factory.mktemp("reports")
    recipe = write_recipe(tmp_path, chain_model(), ["cleanup", "toposort", WRONG_STEP], each_step=True, iterations=2)
    return run_recipe(recipe, output=tmp_path / "out.onnx"), tmp_path


@pytest.fixture(scope="module")
def passed_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reports-ok")
    recipe = write_recipe(tmp_path, chain_model(), ["cleanup"], report="checks/pr")
    return run_recipe(recipe, output=tmp_path / "out.onnx"), tmp_path


def test_markdown_is_a_short_table_naming_where_it_diverged(failed_run):
    result, tmp_path = failed_run
    text = (tmp_path / "out.validation.md").read_text()
    assert text.startswith("### surgeon validation FAILED")
    row = next(line for line in text.splitlines() if line.startswith("| `y`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    y = result.validation.outputs[0]
    assert cells[1] == "**FAIL**" and float(cells[2]) == pytest.approx(y.max_abs, rel=1e-2) and y.max_abs > 1e-4
    assert "**First diverging step:** outputs leave tolerance after step 3 (test-validation-wrong-constant)" in text
    assert "**First diverging tensor:** shifted (made by shift (Add) in the rewritten graph" in text
    assert len(text.splitlines()) < 20


def test_json_report_matches_the_run_report(failed_run):
    result, tmp_path = failed_run
    data = json.loads((tmp_path / "out.validation.json").read_text())
    assert data["passed"] is False and data["bisection"]["step"] == 3
    assert data["outputs"][0]["name"] == "y" and len(data["outputs"][0]["worst"]) == 10
    assert json.loads((tmp_path / "out.surgeon.json").read_text())["validation"] == data


def test_report_prefix_from_the_recipe(passed_run):
    result, tmp_path = passed_run
    assert (tmp_path / "checks" / "pr.md").read_text().startswith("### surgeon validation PASSED")


def test_html_embeds_decodable_histograms_and_the_graph_diff(failed_run):
    import matplotlib.image

    _, tmp_path = failed_run
    page = (tmp_path / "out.validation.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 1
    assert matplotlib.image.imread(io.BytesIO(base64.b64decode(images[0])), format="png").shape[2] in (3, 4)
    assert "Worst elements" in page and "Per step" in page and "shift/b_wrong" not in page
    assert "<script" not in page and "http" not in page.replace("charset", "")  # nothing fetched from elsewhere


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_opens_in_headless_chromium_without_console_messages(failed_run):
    _, tmp_path = failed_run
    page = tmp_path / "out.validation.html"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                               "--disable-component-update", "--disable-sync", "--no-first-run",
                               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom",
                               page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "surgeon validation" in done.stdout and done.stdout.count("<img") == 1
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []


@pytest.mark.slow  # the polygraphy CLI takes several seconds to start
@pytest.mark.skipif(not POLYGRAPHY.exists(), reason=f"the polygraphy CLI is not installed beside {sys.executable}")
def test_polygraphy_cli_reads_the_saved_inputs_and_results(passed_run):
    _, tmp_path = passed_run
    done = subprocess.run([str(POLYGRAPHY), "run", str(tmp_path / "out.onnx"), "--onnxrt",
                           "--load-inputs", str(tmp_path / "checks" / "pr.inputs.json"),
                           "--load-outputs", str(tmp_path / "checks" / "pr.polygraphy.json")],
                          capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    # Polygraphy compares its own run with 'original', then 'original' with 'rewritten'; a run on
    # other inputs than the saved ones could not match.
    summaries = re.findall(r"Accuracy Summary \| (.+?) vs\. (\S+) \| Passed: 1/1 iterations", log)
    assert [b for _, b in summaries] == ["original", "rewritten"], log[-3000:]


def test_markdown_escapes_names_and_html_escapes_them_too(tmp_path):
    """Output and node names come from the model: a `|` must not split a table cell, `<script>` must
    stay text, in the Markdown table, the sentences under it and the HTML page."""
    import numpy as np
    from onnx import helper

    from surgeon.testing import make_model
    from surgeon.validation import Tolerance, validate_models
    from surgeon.validation.report import html_page, markdown

    def model(bias, name):
        node = helper.make_node("Add", ["x", "c"], [name], name="<b>add</b>")
        return make_model([node], [("x", np.float32, [2])], [(name, np.float32, [2])], {"c": np.float32(bias)})

    name = "cls|score<script>alert(1)</script>"
    result = validate_models(model(0, name), model(1, name), [{"x": np.zeros(2, np.float32)}], Tolerance())
    text = markdown(result)
    row = next(line for line in text.splitlines() if line.startswith("| `"))
    assert row.replace("\\|", "").count("|") == 12  # 11 cells
    assert row.startswith("| `cls\\|score<script>alert(1)</script>` | **FAIL** |")  # a code span: literal
    sentence = next(line for line in text.splitlines() if line.startswith("**First diverging tensor:**"))
    assert "cls\\|score\\<script\\>alert(1)\\</script\\>" in sentence and "\\<b\\>add\\</b\\> (Add)" in sentence
    page = html_page(result)
    assert "<script" not in page and "&lt;script&gt;" in page and "<b>add" not in page


def test_html_and_markdown_show_nan_and_dtype_remarks(tmp_path):
    import numpy as np
    from onnx import helper

    from surgeon.testing import make_model
    from surgeon.validation import Tolerance, validate_models
    from surgeon.validation.report import html_page, markdown

    def model(values):
        node = helper.make_node("Add", ["x", "c"], ["y"], name="add")
        return make_model([node], [("x", values.dtype, [3])], [("y", values.dtype, [3])], {"c": values})

    a, b = model(np.float32([1, 2, 3])), model(np.float32([1, np.nan, 5]))
    result = validate_models(a, b, [{"x": np.zeros(3, np.float32)}], Tolerance())
    assert "| `y` | **FAIL** (1 NaN in one output only) | 2 |" in markdown(result)
    page = html_page(result)
    worst = page[page.index("Worst elements"):]
    assert worst.index(">(1,)<") < worst.index(">(2,)<")  # the NaN element heads the worst elements


def _many_outputs_result(names, offsets):
    """A comparison of models with one output per name, y_i = x + c_i, B's constants off by `offsets`."""
    import numpy as np
    from onnx import helper

    from surgeon.testing import make_model
    from surgeon.validation import Tolerance, validate_models

    def model(shift):
        nodes = [helper.make_node("Add", ["x", f"c{i}"], [name], name=f"add{i}") for i, name in enumerate(names)]
        constants = {f"c{i}": np.float32([1, 2, 3]) + np.float32(s) for i, s in enumerate(shift)}
        return make_model(nodes, [("x", np.float32, [3])], [(n, np.float32, [3]) for n in names], constants)

    return validate_models(model([0] * len(names)), model(offsets), [{"x": np.zeros(3, np.float32)}], Tolerance(),
                           localise=False)


def test_histograms_are_drawn_for_the_worst_outputs_only_and_warn_nothing():
    """500 outputs drew 500 histograms (200 s, 8 MB); an output without finite errors warned from matplotlib."""
    import warnings

    import numpy as np

    from surgeon.validation.report import HISTOGRAMS_SHOWN, html_page

    offsets = [0.0, 0.0, np.inf] + [1e-3 * (i + 1) for i in range(HISTOGRAMS_SHOWN + 2)]
    result = _many_outputs_result([f"y{i}" for i in range(len(offsets))], offsets)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = html_page(result)
    assert [str(w.message) for w in caught] == []
    assert page.count("<img ") == HISTOGRAMS_SHOWN
    assert f"alt='error histogram of y{len(offsets) - 1} vs original'" in page  # the largest error is drawn
    assert "alt='error histogram of y3 vs original'" not in page  # the smallest of the failing ones is not
    assert "2 more output(s) with errors are not plotted" in page
    assert "3 output(s) without a nonzero finite error are not plotted" in page  # two equal, one inf only


def test_an_output_name_with_dollar_signs_is_plotted_as_text():
    """matplotlib reads `$...$` as mathtext: a name like `$x^$` raised after the model was written."""
    from surgeon.validation.report import html_page

    page = html_page(_many_outputs_result(["cost$^{$", "$x_1$"], [1e-3, 2e-3]))
    assert page.count("<img ") == 2 and "alt='error histogram of cost$^{$ vs original'" in page


def test_reports_are_written_together_or_not_at_all(tmp_path, monkeypatch):
    """A failure while rendering leaves the reports of before, not a mix of new and stale files."""
    from surgeon.validation import report

    result = _many_outputs_result(["y"], [1e-3])
    paths = report.report_paths(tmp_path / "r")
    for path in paths:
        path.write_text("stale")

    def broken(_):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(report, "html_page", broken)
    with pytest.raises(RuntimeError):
        report.write_reports(result, tmp_path / "r")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {p.name: "stale" for p in paths}
    monkeypatch.undo()
    assert report.write_reports(result, tmp_path / "r") == paths
    assert sorted(tmp_path.iterdir()) == sorted(paths) and "stale" not in {p.read_text() for p in paths}
    assert json.loads(paths[3].read_text())  # Polygraphy's results, rendered in memory, still JSON

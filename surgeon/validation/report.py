"""Validation reports at a prefix (default `<output stem>.validation`):

    PREFIX.md               short, PR-comment sized: verdict table per output, where it diverged
    PREFIX.html             self-contained page: the tables, error histograms (base64 PNG), worst
                            elements, the graph diff (op histogram before/after, nodes added/removed,
                            per step when bisected)
    PREFIX.json             the result as JSON (also embedded in the run report)
    PREFIX.polygraphy.json  Polygraphy's RunResults: `polygraphy run B.onnx --onnxrt
    PREFIX.inputs.json        --load-inputs PREFIX.inputs.json --load-outputs PREFIX.polygraphy.json`

The last two are Polygraphy's own JSON (`to_json`), written an array at a time (`_ArrayStubs`):
with many input sets, their text is more than the validation ever holds.
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from surgeon.cli_args import json_text
from surgeon.modelio import guard_outputs
from surgeon.validation.data import RandomFeeds
from surgeon.validation.localise import describe_divergence

#: Node names listed per side in the HTML graph diff before "… and N more".
NAMES_SHOWN = 50
#: Error histograms drawn in the HTML report: the failing outputs first, then the largest errors.
#: Each costs about 0.3 s and 20 kB; a model with 500 outputs took 200 s and 8 MB when all were drawn.
HISTOGRAMS_SHOWN = 8


def _columns(tolerance) -> tuple[str, ...]:
    quantile = tolerance.quantile_label
    return ("output", "result", "max abs", "mean abs", f"{quantile} abs", "max rel", "mean rel", f"{quantile} rel",
            "cosine", "atol", "rtol")


def default_prefix(output: Path) -> Path:
    return Path(output).with_name(Path(output).stem + ".validation")


def report_paths(prefix) -> list[Path]:
    """Every file `write_reports` may write at `prefix`, for `modelio.guard_outputs` before any work."""
    return [_suffixed(Path(prefix), ext) for ext in (".md", ".html", ".json", ".polygraphy.json", ".inputs.json")]


def write_reports(result, prefix: Path) -> list[Path]:
    """Write every report format at `prefix`, list them in `result.reports`, and return them.

    The Markdown, HTML and JSON reports are rendered first; then every file is written under a
    temporary name (the outputs and inputs an array at a time), and the five are renamed into place
    together: a failure or an interrupt before then leaves the reports of before, never a mix of new
    and stale ones."""
    prefix = Path(prefix)
    md, page, data = (_suffixed(prefix, ext) for ext in (".md", ".html", ".json"))
    result.reports = [md, page, data]
    contents: dict[Path, str | Callable] = {}
    if result.runs:
        outputs, inputs = _suffixed(prefix, ".polygraphy.json"), _suffixed(prefix, ".inputs.json")
        result.reports += [outputs, inputs]
        contents[outputs] = lambda handle: _write_run_results(handle, result.runs)
        contents[inputs] = lambda handle: _write_inputs(handle, result.feeds)
    contents.update({md: markdown(result), page: html_page(result), data: json_text(result.to_dict())})
    _write_together(contents)
    return result.reports


def _suffixed(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def _write_together(contents: dict[Path, str | Callable]) -> None:
    """Write each file (a text, or a function writing to a binary file) through a temporary file beside
    its path, then rename them all in one go."""
    guard_outputs([(path, "the validation report", None) for path in contents])  # what the renames replace
    staged = {}
    try:
        for path, content in contents.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            staged[path] = path.with_name(f".{path.name}.{os.getpid()}.new")
            with open(staged[path], "wb") as handle:
                if callable(content):
                    content(handle)
                else:
                    handle.write(content.encode())
        for path, temporary in staged.items():
            os.replace(temporary, path)
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------- Polygraphy's JSON, an array at a time

def _write_run_results(handle, runs) -> None:
    """`RunResults.save` of the runs (`spill.RunOutputs`), one runner after the other."""
    from polygraphy.comparator import IterationResult, RunResults

    stubs = _ArrayStubs()
    results = RunResults()
    for run in runs:
        results.append((run.name, [IterationResult({name: stubs.stand_in(source) for name, source in
                                                    run.sources(index).items()}, runtime, run.name)
                                   for index, runtime in enumerate(run.runtimes)]))
    stubs.write(handle, results)


def _write_inputs(handle, feeds) -> None:
    """Polygraphy's JSON of the input sets (a list of {name: array}); random sets drawn again, one at a time."""
    stubs = _ArrayStubs()
    layout = feeds.layout() if isinstance(feeds, RandomFeeds) else None  # names without drawing the set
    sets = [{name: stubs.stand_in(lambda index=index, name=name: feeds[index][name])
             for name in (feeds[index] if layout is None else layout)} for index in range(len(feeds))]
    stubs.write(handle, sets)


class _ArrayStubs:
    """Small arrays standing in for large ones in what Polygraphy's `to_json` encodes. Its text, small,
    is written with each stand-in's encoding (the base64 of its .npy bytes) replaced by the array's,
    streamed: Polygraphy's file, byte for byte, without its text ever being one string."""

    def __init__(self):
        self._nonce = int.from_bytes(os.urandom(7), "little")  # no name or number in the text can hold a stub
        self._sources: list = []

    def stand_in(self, source) -> np.ndarray:
        """A stub for `source`: an array, a function returning one, or the .npy file holding one."""
        self._sources.append(source)
        return self._stub(len(self._sources))

    def _stub(self, number: int) -> np.ndarray:
        return np.array([self._nonce, number], np.int64)

    def write(self, handle, structure) -> None:
        from polygraphy.json import to_json

        text, start = to_json(structure), 0
        for number, source in enumerate(self._sources, start=1):
            stub = _base64_npy(self._stub(number))
            found = text.index(stub, start)
            handle.write(text[start:found].encode())
            _write_base64_npy(handle, source)
            start = found + len(stub)
        handle.write(text[start:].encode())


def _base64_npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode()


def _write_base64_npy(handle, source) -> None:
    """The base64 of `source`'s .npy bytes (Polygraphy's encoding of an array), a chunk at a time (np.save
    writes 16 MiB at a time to a file object that is no file)."""
    sink = _Base64Writer(handle)
    if isinstance(source, Path):
        with open(source, "rb") as npy:
            while chunk := npy.read(_CHUNK):
                sink.write(chunk)
    else:
        np.save(sink, source() if callable(source) else source, allow_pickle=False)
    sink.close()


_CHUNK = 1 << 20


class _Base64Writer:
    """A file object for np.save that writes the base64 of what it is given to `handle`."""

    def __init__(self, handle):
        self._handle, self._rest = handle, b""

    def write(self, data) -> int:
        size = len(data)
        data = self._rest + bytes(data)
        cut = len(data) - len(data) % 3
        self._handle.write(base64.b64encode(data[:cut]))
        self._rest = data[cut:]
        return size

    def close(self) -> None:
        self._handle.write(base64.b64encode(self._rest))


# ---------------------------------------------------------------- markdown

def _g(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def _remarks(o) -> str:
    """What the verdict column adds to pass/FAIL: the note (shape, dtype, missing), NaN in one output only."""
    parts = [o.note] if o.note else []
    if o.nan_mismatched:
        parts.append(f"{o.nan_mismatched} NaN in one output only")
    return "; ".join(parts)


def _figures(o) -> list[str]:
    return [_g(o.max_abs), _g(o.mean_abs), _g(o.quantile_abs), _g(o.max_rel), _g(o.mean_rel), _g(o.quantile_rel),
            "-" if o.cosine is None else f"{o.cosine:.6f}", _g(o.atol), _g(o.rtol)]


def _row(o) -> list[str]:
    verdict = "pass" if o.passed else "**FAIL**"
    if _remarks(o):
        verdict += f" ({md_text(_remarks(o))})"
    name = md_code(o.name, in_table=True)
    if o.candidate_name:  # compared with an output of another name (`compare.output_pairs`)
        name += " → " + md_code(o.candidate_name, in_table=True)
    return [name, verdict, *_figures(o)]


def md_text(text) -> str:
    """`text` (names from models and recipes) as literal Markdown text: the characters Markdown or
    HTML could read as syntax are backslash-escaped (CommonMark), so a name holding `|`, `*`,
    `<script>` or `[x](y)` shows as written and cannot break a table."""
    return _MD_SPECIAL.sub(r"\\\g<0>", " ".join(str(text).split()))


def md_code(text, in_table: bool = False) -> str:
    """`text` as a Markdown code span: a fence longer than any run of backticks inside; in a table,
    `|` escaped (GitHub's tables split cells at it even inside code spans)."""
    text = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`"):
        text = f" {text} "
    if in_table:
        text = text.replace("|", "\\|")
    return f"{fence}{text}{fence}"


#: What can start Markdown or HTML syntax inside a line (every line escaped starts with surgeon's own words,
#: so `#`, `-`, `+` at a line start cannot occur; `(` and `!` only act next to an escaped `[`/`]`).
_MD_SPECIAL = re.compile(r"[\\`*_\[\]<>|~&]")


def _md_table(outputs, tolerance) -> list[str]:
    columns = _columns(tolerance)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_row(o)) + " |" for o in outputs]
    return lines


def markdown(result) -> str:
    verdict = "PASSED" if result.passed else "FAILED"
    runners = ", ".join(f"{name}: {kind}" for name, kind in result.runners.items())
    lines = [f"### surgeon validation {verdict}", "",
             md_text(f"{result.tolerance.describe()} · {result.iterations} input set(s) from {result.data} · "
                     f"{runners}"), ""]
    lines += [f"Note: {md_text(note)}" for note in result.notes] + ([""] if result.notes else [])
    if result.outputs:
        if result.reference != "original":
            lines += [f"Against {md_text(result.reference_label)}:", ""]
        lines += _md_table(result.outputs, result.tolerance)
    if result.expected:
        lines += ["", "Against the expected outputs:", ""] + _md_table(result.expected, result.tolerance)
    for label, text in _where(result):
        lines += ["", f"**{label}:** {md_text(text)}"]
    return "\n".join(lines) + "\n"


def _where(result) -> list[tuple[str, str]]:
    found = []
    if result.bisection is not None:
        label = "First diverging step" if result.bisection.found else "Bisection"
        found.append((label, result.bisection.describe()))
    if result.divergence:
        found.append(describe_divergence(result.divergence, result.reference_phrase))
    return found


# ---------------------------------------------------------------- html

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}.text{text-align:left}
.pass{color:#176f2c;font-weight:600}.fail{color:#b00020;font-weight:600}
.verdict{font-size:1.2em;padding:.4em .8em;display:inline-block;border-radius:4px}
.verdict.pass{background:#e3f4e6}.verdict.fail{background:#fbe3e6}
code{background:#f5f5f5;padding:0 .2em}.plots img{display:inline-block;margin:0 .5em .5em 0}.names{font-family:monospace;font-size:12px;columns:2}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _html_table(header, rows, text_columns: int = 1) -> str:
    """A table whose first `text_columns` columns are left-aligned text, the rest right-aligned figures."""
    def align(i):
        return " class='text'" if i < text_columns else ""

    head = "".join(f"<th{align(i)}>{_esc(h)}</th>" for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{align(i)}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_outputs(outputs, tolerance) -> str:
    rows = []
    for o in outputs:
        css = "pass" if o.passed else "fail"
        remarks = _remarks(o)
        verdict = f"<span class='{css}'>{'pass' if o.passed else 'FAIL'}</span>" + (f" ({_esc(remarks)})" if remarks else "")
        name = f"<code>{_esc(o.name)}</code>"
        if o.candidate_name:
            name += f" → <code>{_esc(o.candidate_name)}</code>"
        rows.append([name, verdict] + [_esc(c) for c in _figures(o)])
    return _html_table(_columns(tolerance), rows, text_columns=2)


def _histograms(result) -> str:
    """The absolute-error histograms of the HISTOGRAMS_SHOWN outputs that matter most (failing, then
    largest error), as <img> tags, and a line saying which outputs were left out."""
    compared = [(o, result.reference_label) for o in result.outputs] + [(o, "expected") for o in result.expected]
    # Nothing to plot for an output without a nonzero finite error (equal, or only NaN/inf errors).
    plotted = [(o, against) for o, against in compared
               if o.abs_errors is not None and (np.isfinite(o.abs_errors) & (o.abs_errors > 0)).any()]
    if not plotted:
        return ""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return "<p>(install matplotlib for error histograms)</p>"
    plotted.sort(key=lambda pair: (pair[0].passed, -(pair[0].max_abs or 0.0)))
    figure = Figure(figsize=(6, 2.6), dpi=90)  # one figure, cleared for each plot: a new one costs more
    images = "".join(_histogram(figure, output, against) for output, against in plotted[:HISTOGRAMS_SHOWN])
    left_out = []
    if len(plotted) > HISTOGRAMS_SHOWN:
        left_out.append(f"{len(plotted) - HISTOGRAMS_SHOWN} more output(s) with errors are not plotted "
                        f"(the {HISTOGRAMS_SHOWN} shown: failing ones first, then the largest errors)")
    if len(compared) > len(plotted):
        left_out.append(f"{len(compared) - len(plotted)} output(s) without a nonzero finite error are not plotted")
    return f"<div class='plots'>{images}</div>" + "".join(f"<p>{_esc(text)}.</p>" for text in left_out)


def _histogram(figure, output, against: str) -> str:
    """An <img> of the output's absolute-error histogram (its finite errors), drawn on `figure`."""
    errors = output.abs_errors
    figure.clear()
    axes = figure.add_subplot()
    axes.hist(errors[np.isfinite(errors)], bins=60, color="#3b6fb6", log=True)
    if output.atol is not None:
        axes.axvline(output.atol, color="#b00020", linestyle="--", label=f"atol {output.atol:g}")
        axes.legend(loc="upper right")
    axes.set_xlabel("absolute error")
    axes.set_ylabel("elements")
    # Names are text, not mathtext: `$` in an output name would otherwise be parsed (and may not parse).
    axes.set_title(f"{output.name} vs {against}", fontsize=10, parse_math=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<img alt='error histogram of {_esc(output.name)} vs {_esc(against)}' src='data:image/png;base64,{data}'>"


def _html_worst(outputs) -> str:
    parts = []
    for o in outputs:
        if not o.worst:
            continue
        rows = [[str(w["iteration"]), _esc(tuple(w["index"])), _esc(_g_value(w["reference"])),
                 _esc(_g_value(w["candidate"])), _esc(_g(w["abs_error"]))] for w in o.worst]
        parts.append(f"<h3><code>{_esc(o.name)}</code></h3>"
                     + _html_table(("input set", "index", "reference", "candidate", "abs error"), rows,
                                   text_columns=2))
    return "".join(parts)


def _g_value(value) -> str:
    return f"{value:.8g}" if isinstance(value, float) else str(value)


def _html_graph_diff(diff: dict, bisection) -> str:
    if not diff:
        return ""
    labels = sorted(set(diff["ops_before"]) | set(diff["ops_after"]))
    rows = []
    for label in labels:
        before, after = diff["ops_before"].get(label, 0), diff["ops_after"].get(label, 0)
        change = after - before
        rows.append([f"<code>{_esc(label)}</code>", str(before), str(after), f"{change:+d}" if change else ""])
    parts = [f"<p>{diff['nodes_before']} → {diff['nodes_after']} nodes</p>",
             _html_table(("op", "before", "after", "change"), rows)]
    for key, title in (("added", "Nodes added"), ("removed", "Nodes removed")):
        names = diff[key]
        shown = "".join(f"<div>{_esc(n)}</div>" for n in names[:NAMES_SHOWN])
        more = f"<p>… and {len(names) - NAMES_SHOWN} more</p>" if len(names) > NAMES_SHOWN else ""
        parts.append(f"<h3>{title} ({len(names)})</h3><div class='names'>{shown}</div>{more}")
    if bisection is not None and bisection.records:
        checked = {row["step"]: row for row in bisection.checked}
        rows = []
        for record in bisection.records:
            row = checked.get(record.index)
            verdict = "" if row is None else ("<span class='pass'>within</span>" if row["passed"]
                                             else "<span class='fail'>outside</span>")
            delta = ", ".join(f"{_esc(k)} {v:+d}" for k, v in record.op_delta.items())
            nodes = f"{record.nodes_before} → {record.nodes_after}"
            if record.pruned_before:  # tidied away before the step ran, so the previous row's count drops
                nodes = f"{record.pruned_before} unused removed first; {nodes}"
            rows.append([str(record.index), _esc(record.title), nodes,
                         delta or "-", verdict, _esc(_g(row["max_abs"])) if row else ""])
        parts.append("<h3>Per step</h3>" + _html_table(("#", "step", "nodes", "op changes", "tolerance", "max abs"),
                                                        rows, text_columns=5))
    return "".join(parts)


def html_page(result) -> str:
    css = "pass" if result.passed else "fail"
    verdict = "PASSED" if result.passed else "FAILED"
    runners = ", ".join(f"{_esc(name)}: {_esc(kind)}" for name, kind in result.runners.items())
    body = [f"<h1>surgeon validation</h1><p class='verdict {css}'>{verdict}</p>",
            f"<p>{_esc(result.tolerance.describe())} · {result.iterations} input set(s) from {_esc(result.data)} · "
            f"{runners}</p>",
            *[f"<p><b>Note:</b> {_esc(note)}</p>" for note in result.notes]]
    if result.outputs:
        body += [f"<h2>Outputs against {_esc(result.reference_phrase)}</h2>",
                 _html_outputs(result.outputs, result.tolerance)]
    if result.expected:
        body += ["<h2>Outputs against the expected values</h2>", _html_outputs(result.expected, result.tolerance)]
    for label, text in _where(result):
        body.append(f"<p><b>{_esc(label)}:</b> {_esc(text)}</p>")
    histograms = _histograms(result)
    if histograms:
        body += ["<h2>Absolute error histograms</h2>", histograms]
    worst = _html_worst(result.outputs + result.expected)
    if worst:
        body += ["<h2>Worst elements</h2>", worst]
    if result.graph_diff:
        body += ["<h2>Graph diff</h2>", _html_graph_diff(result.graph_diff, result.bisection)]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>surgeon validation "
            f"{verdict}</title><style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")

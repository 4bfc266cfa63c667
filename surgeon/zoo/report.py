"""Regenerate the measured part of docs/zoo.md: `python -m surgeon.zoo.report [DOC]`.

For every model, opset (11, 13, 16) and export type (plain, ATen fallback) at fixture size: whether
the export succeeds, the node count and op histogram, whether ONNX Runtime loads it and reproduces
PyTorch, and what `surgeon check` reports for the onnxruntime and tensorrt-8.6 targets (and the
strict opset-11 profile for opset-11 graphs).
The text between the markers in DOC is replaced; everything else is left as written.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from surgeon.errors import first_line as first_line_of

from . import MODELS, OPSETS

DOC = Path(__file__).resolve().parents[2] / "docs" / "zoo.md"
BEGIN, END = "<!-- BEGIN GENERATED: python -m surgeon.zoo.report -->", "<!-- END GENERATED -->"
TARGETS = ("onnxruntime", "tensorrt-8.6", "opset-11")
MAX_LISTED = 8


def first_line(exc: BaseException) -> str:
    """The message's first line without temporary paths, cut to 160 characters."""
    text = re.sub(r"Load model from \S+ failed:\s*", "", first_line_of(exc))
    return text[:160]


def ort_result(paths: dict[str, Path]) -> str:
    """'max abs diff X' when ONNX Runtime runs the graph, else its load error."""
    import numpy as np
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the refusal is the finding
        return f"refused: {first_line(exc)}"
    expected = dict(np.load(paths["outputs"]))
    got = session.run(list(expected), dict(np.load(paths["inputs"])))
    diff = max(float(np.abs(g.astype(np.float64) - e.astype(np.float64)).max()) for g, e in zip(got, expected.values()))
    return f"runs, max abs diff {diff:.1e}"


def check_findings(path: Path, target: str) -> str:
    """`surgeon check` errors for one target, grouped as 'rule op (count)'."""
    proc = subprocess.run([sys.executable, "-m", "surgeon.cli", "check", "-t", target, "--format", "json", str(path)],
                          capture_output=True, text=True, check=False)
    try:
        findings = json.loads(proc.stdout)["findings"]
    except (json.JSONDecodeError, KeyError):
        return f"check failed: {(proc.stderr or proc.stdout).strip()[:120]}"
    groups: dict[str, int] = {}
    for finding in findings:
        if finding["severity"] == "error":
            key = f"{finding['rule']} {finding.get('op') or ''}".strip()
            groups[key] = groups.get(key, 0) + 1
    if not groups:
        return "no errors"
    items = [f"{key} ({count})" for key, count in sorted(groups.items())]
    more = f", … {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def export_lines(name: str, opset: int, aten: bool, out_dir: Path) -> list[str]:
    """The measured lines of one export (without its title)."""
    import onnx

    from surgeon.errors import SurgeonError

    from .exporter import export
    from .ophist import histogram, integer_clips

    try:
        paths = export(name, "fixture", opset, aten, out_dir)
    except SurgeonError as exc:
        reason = str(exc).split(" failed: ", 1)[-1].split(". ")[0]
        return [f"export fails: `{reason}`"]
    model = onnx.load(paths["onnx"])
    ops = ", ".join(f"{key} {count}" for key, count in sorted(histogram(model).items()))
    lines = [f"{len(model.graph.node)} nodes, {paths['onnx'].stat().st_size:,} bytes; integer Clip: {integer_clips(model)}",
             f"  - ops: {ops}",
             f"  - ONNX Runtime 1.31: {ort_result(paths)}"]
    targets = TARGETS if opset == 11 else [t for t in TARGETS if t != "opset-11"]
    return lines + [f"  - `surgeon check -t {target}`: {check_findings(paths['onnx'], target)}" for target in targets]


def model_section(name: str, out_dir: Path) -> list[str]:
    """One model: each opset, merged with its ATen-fallback export when both give the same graph."""
    lines = [f"### {name}", "", f"{MODELS[name]}.", ""]
    for opset in OPSETS:
        plain, aten = export_lines(name, opset, False, out_dir), export_lines(name, opset, True, out_dir)
        if plain == aten:
            lines += [f"- **opset {opset}, with or without the ATen fallback**: " + plain[0], *plain[1:], ""]
        else:
            lines += [f"- **opset {opset}**: " + plain[0], *plain[1:], ""]
            lines += [f"- **opset {opset} + ATen fallback**: " + aten[0], *aten[1:], ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    doc = Path(args[0]) if args else DOC
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc}: markers {BEGIN!r} and {END!r} not found")
    with tempfile.TemporaryDirectory() as tmp:
        body = [line for name in MODELS for line in model_section(name, Path(tmp))]
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + BEGIN + "\n\n" + "\n".join(body) + "\n" + END + rest.split(END, 1)[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Printing findings: plain text, JSON, GitHub workflow commands, SARIF 2.1.0 (code-scanning upload)."""
from __future__ import annotations

import json

from surgeon import __version__
from surgeon.check.findings import Finding, Rule, count_by_severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_LEVELS = {"error": "error", "warning": "warning", "info": "note"}
GITHUB_COMMANDS = {"error": "error", "warning": "warning", "info": "notice"}


def format_text(findings: list[Finding], rules: dict[str, Rule], files: int) -> str:
    lines = [f"{f.where()}: {f.rule} {f.severity} {f.describe()}" for f in findings]
    counts = count_by_severity(findings)
    summary = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in counts.items() if n)
    lines.append(f"{summary or 'no findings'} in {files} file{'s' if files != 1 else ''}")
    return "\n".join(lines)


def format_json(findings: list[Finding], rules: dict[str, Rule], files: int) -> str:
    document = {"version": __version__, "files": files, "summary": count_by_severity(findings),
                "findings": [f.to_dict() for f in findings]}
    return json.dumps(document, indent=2, sort_keys=True)


def format_github(findings: list[Finding], rules: dict[str, Rule], files: int) -> str:
    """`::error file=model.onnx,title=SG001 custom-op-unsupported::node ... — fix: ...` per finding."""
    lines = []
    for f in findings:
        properties = [f"file={_escape_property(f.file)}"]
        if f.line is not None:
            properties.append(f"line={f.line}")
            if f.column is not None:
                properties.append(f"col={f.column}")
        properties.append(f"title={_escape_property(f'{f.rule} {rules[f.rule].name}')}")
        lines.append(f"::{GITHUB_COMMANDS[f.severity]} {','.join(properties)}::{_escape_data(f.describe())}")
    return "\n".join(lines)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_sarif(findings: list[Finding], rules: dict[str, Rule], files: int) -> str:
    """One SARIF 2.1.0 run; rules are listed in the driver, results point at the file (and line for recipes)."""
    rule_ids = list(rules)
    driver_rules = [{
        "id": rule.id, "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.summary + (f" Fix: {rule.fix}." if rule.fix else "")},
        "defaultConfiguration": {"level": SARIF_LEVELS[rule.severity]},
        "helpUri": "https://github.com/surgeon/surgeon/blob/main/docs/check.md",
    } for rule in rules.values()]
    results = []
    for f in findings:
        location = {"physicalLocation": {"artifactLocation": {"uri": _uri(f.file)},
                                         "region": {"startLine": f.line or 1,
                                                    **({"startColumn": f.column} if f.column else {})}}}
        if f.node is not None:
            location["logicalLocations"] = [{"name": f.node, "kind": "member",
                                             **({"fullyQualifiedName": f"{f.node} ({f.op})"} if f.op else {})}]
        result = {"ruleId": f.rule, "ruleIndex": rule_ids.index(f.rule), "level": SARIF_LEVELS[f.severity],
                  "message": {"text": f.describe()}, "locations": [location]}
        properties = {**({"fix": f"pass {f.fix}"} if f.fix else {}), **({"advice": f.advice} if f.advice else {})}
        if properties:
            result["properties"] = properties
        results.append(result)
    document = {
        "$schema": SARIF_SCHEMA, "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "surgeon", "version": __version__, "semanticVersion": __version__,
                                      "informationUri": "https://github.com/surgeon/surgeon",
                                      "rules": driver_rules}},
                  "results": results}],
    }
    return json.dumps(document, indent=2, sort_keys=True)


def _uri(path: str) -> str:
    """A relative URI reference, percent-encoded (code scanning resolves it against the repository root):
    `my model.onnx` -> `my%20model.onnx`, `v1:fp16.onnx` -> `v1%3Afp16.onnx` (not a `v1:` scheme); a
    `file:` URI for an absolute path outside the working directory."""
    from pathlib import Path, PurePosixPath
    from urllib.parse import quote

    candidate = Path(path)
    if candidate.is_absolute():
        try:
            candidate = candidate.relative_to(Path.cwd())
        except ValueError:
            return candidate.as_uri()
    return quote(str(PurePosixPath(*candidate.parts)), safe="/")


FORMATS = {"text": format_text, "json": format_json, "github": format_github, "sarif": format_sarif}

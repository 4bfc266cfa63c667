"""What a check reports: a `Finding`, and the `Rule` it comes from (stable id, severity, fix).

Rules register themselves with `@model_rule` (surgeon/check/rules.py) or `@recipe_rule`
(surgeon/check/recipes.py), so the rule table in `surgeon check --list-rules` and docs/check.md is
the code's, not a copy of it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One problem at one place: a node of a model, or a line of a recipe. `fix` is the pass (and its
    parameters) that removes it; `advice` what to do where no pass does (list a plugin in a profile, run a
    pass with other parameters), so a reader of `fix` always gets a pass."""

    rule: str
    severity: str
    message: str
    file: str
    node: str | None = None
    op: str | None = None
    fix: str | None = None
    line: int | None = None
    column: int | None = None
    advice: str | None = None

    def where(self) -> str:
        """`file:line:col` for recipes, the file alone for models."""
        text = self.file
        if self.line is not None:
            text += f":{self.line}"
            if self.column is not None:
                text += f":{self.column}"
        return text

    def describe(self) -> str:
        """`node /ATen_12 (ATen:grid_sampler) not runnable on ... — fix: pass grid-sample ...`; advice reads
        `— fix: <advice>`."""
        text = self.message
        if self.node is not None:
            text = f"node {self.node} ({self.op}) {text}" if self.op else f"node {self.node} {text}"
        fixes = [f"pass {self.fix}"] if self.fix else []
        fixes += [self.advice] if self.advice else []
        if fixes:
            text += f" — fix: {'; or '.join(fixes)}"
        return text

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Rule:
    """A registered check: `id` is stable across releases (SG… for models, SR… for recipes)."""

    id: str
    name: str
    severity: str
    summary: str
    fix: str | None
    check: Callable = field(compare=False, repr=False)


MODEL_RULES: dict[str, Rule] = {}
RECIPE_RULES: dict[str, Rule] = {}


def _register(table: dict[str, Rule], rule_id: str, name: str, severity: str, summary: str, fix: str | None):
    if severity not in SEVERITIES:
        raise ValueError(f"rule {rule_id}: severity must be one of {SEVERITIES}")

    def decorate(fn):
        if rule_id in MODEL_RULES or rule_id in RECIPE_RULES:
            raise ValueError(f"rule id {rule_id} is registered twice")
        table[rule_id] = Rule(rule_id, name, severity, summary, fix, fn)
        return fn

    return decorate


def model_rule(rule_id: str, name: str, severity: str, summary: str, fix: str | None = None):
    """Register `fn(facts) -> iterable of Finding` as a model rule; `severity` is its usual one."""
    return _register(MODEL_RULES, rule_id, name, severity, summary, fix)


def recipe_rule(rule_id: str, name: str, severity: str, summary: str, fix: str | None = None):
    """Register `fn(path) -> iterable of Finding` as a recipe rule."""
    return _register(RECIPE_RULES, rule_id, name, severity, summary, fix)


# Reported by the runner itself, before any rule can look at the file; never filtered out.
UNREADABLE_FILE = Rule("SG000", "unreadable-file", "error",
                       "the model or recipe file is missing, not valid ONNX or not UTF-8 text, or a model the loader "
                       "refuses (no graph outputs, an element type that is no ONNX type, tensor data its dims "
                       "disagree with, a name that is not UTF-8) (exit code 2)", None, None)


def all_rules() -> dict[str, Rule]:
    """Every rule by id, model rules first (importing the rule modules registers them)."""
    from surgeon.check import recipes, rules  # noqa: F401  (registration side effect)

    return {UNREADABLE_FILE.id: UNREADABLE_FILE, **dict(sorted(MODEL_RULES.items())),
            **dict(sorted(RECIPE_RULES.items()))}


def count_by_severity(findings: Iterable[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for finding in findings:
        counts[finding.severity] += 1
    return counts

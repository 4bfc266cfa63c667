"""Running the rules over files: models (`*.onnx`) and recipes (`*.yaml`), each with its own settings."""
from __future__ import annotations

from pathlib import Path

from surgeon.check.config import Settings
from surgeon.check.facts import ModelFacts
from surgeon.check.findings import MODEL_RULES, RECIPE_RULES, UNREADABLE_FILE, Finding, all_rules
from surgeon.errors import ModelError, SurgeonError, suggest

DEFAULT_TARGET = "onnxruntime"
RECIPE_SUFFIXES = (".yaml", ".yml")


def is_recipe(path) -> bool:
    return Path(path).suffix.lower() in RECIPE_SUFFIXES


def check_file(path, settings: Settings, as_recipe: bool = False) -> list[Finding]:
    """Findings for one model or recipe; an unreadable file gives one SG000 finding."""
    return check_recipe(path, settings) if as_recipe or is_recipe(path) else check_model(path, settings)


def check_model(path, settings: Settings) -> list[Finding]:
    from surgeon.modelio import load_model
    from surgeon.targets import load_target

    all_rules()
    target = load_target(settings.target or DEFAULT_TARGET)
    try:
        model = load_model(path, load_external_data=False)
    except ModelError as exc:
        return [_unreadable(path, exc.message)]
    facts = ModelFacts(Path(path), model, target, settings)
    return [finding for rule_id, rule in MODEL_RULES.items() if settings.wants(rule_id)
            for finding in rule.check(facts) if settings.wants(finding.rule)]


def check_recipe(path, settings: Settings) -> list[Finding]:
    all_rules()
    path = Path(path)
    if not path.is_file():
        return [_unreadable(path, "recipe file not found")]
    # SR001 runs even when filtered out: it is also what reports a recipe that is not text (SG000)
    return [finding for rule_id, rule in RECIPE_RULES.items() if settings.wants(rule_id) or rule_id == "SR001"
            for finding in rule.check(path) if settings.wants(finding.rule)]


def _unreadable(path, message: str) -> Finding:
    return Finding(UNREADABLE_FILE.id, "error", message, file=str(path))


def exit_code(findings: list[Finding]) -> int:
    """2 when a file could not be read, 1 when any error was found, else 0."""
    if any(f.rule == UNREADABLE_FILE.id for f in findings):
        return SurgeonError.exit_code
    return 1 if any(f.severity == "error" for f in findings) else 0

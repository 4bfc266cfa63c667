"""`surgeon check`: lint ONNX models against a target profile and recipes against the pass registry.

    from surgeon.check import Settings, check_file
    findings = check_file("model.onnx", Settings(target="tensorrt-8.6"))

Rules (surgeon/check/rules.py, recipes.py) carry stable ids, a severity and the pass that fixes
them; formatters print text, JSON, GitHub workflow commands or SARIF; settings come from
`[tool.surgeon]` in pyproject.toml (config.py). docs/check.md has the rule table.
"""
from surgeon.check.config import Settings, load_config
from surgeon.check.findings import Finding, Rule, all_rules
from surgeon.check.runner import check_file, exit_code

__all__ = ["Finding", "Rule", "Settings", "all_rules", "check_file", "exit_code", "load_config"]

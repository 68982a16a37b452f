"""Format and style of the answers: JSON that parses (and fits the schema in ``eval.json_schema``), and the
recipe's style rules (``eval.style``) as pass rates — e.g. support_bot answers in polite form and never asks
for a password or card number."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune.fields import setting
from finetune.generate import Answer
from finetune.metrics import Metric, Sample, Scored

_FENCE = re.compile(r"^```[\w-]*\n(.*?)\n?```$", re.DOTALL)


@dataclass
class StyleRule:
    """An answer passes when some ``require_any`` pattern matches (if any are given) and no ``forbid`` pattern
    does. Patterns are Python regular expressions."""

    name: str = "style"
    require_any: list[str] = setting([])
    forbid: list[str] = setting([])


def unfenced(text: str) -> str:
    """The answer without one surrounding Markdown code fence."""
    match = _FENCE.match(text.strip())
    return match.group(1) if match else text.strip()


def _parsed(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(unfenced(text))
    except ValueError:
        return False, None


def json_format(_samples: Sequence[Sample], answers: Sequence[Answer], settings: Any) -> Scored:
    import jsonschema

    schema = settings.json_schema
    validator = jsonschema.Draft202012Validator(schema) if schema is not None else None
    per = []
    for a in answers:
        ok, value = _parsed(a.text)
        row: dict[str, Any] = {"json_valid": float(ok)}
        if validator is not None:
            error = next(iter(validator.iter_errors(value)), None) if ok else None
            row["json_schema"] = float(ok and error is None)
            if error is not None:
                row["json_schema_error"] = error.message[:200]
        per.append(row)
    values: dict[str, float | None] = {"json_valid": _share(per, "json_valid")}
    if validator is not None:
        values["json_schema"] = _share(per, "json_schema")
    return Scored(values, per, {"schema": "eval.json_schema" if schema is not None else None})


def check_style_rules(rules: Sequence[StyleRule]) -> str | None:
    """The first rule pattern that is not a valid regular expression, as a message naming its key."""
    for i, rule in enumerate(rules):
        for key in ("require_any", "forbid"):
            for j, pattern in enumerate(getattr(rule, key)):
                try:
                    re.compile(pattern)
                except re.error as e:
                    return f"eval.style[{i}].{key}[{j}]={pattern!r}: not a regular expression ({e})"
    return None


def _passes(rule: StyleRule, text: str) -> bool:
    required = not rule.require_any or any(re.search(p, text) for p in rule.require_any)
    return required and not any(re.search(p, text) for p in rule.forbid)


def style(_samples: Sequence[Sample], answers: Sequence[Answer], settings: Any) -> Scored:
    rules: Sequence[StyleRule] = settings.style
    per = []
    for a in answers:
        row = {f"style: {r.name}": float(_passes(r, a.text)) for r in rules}
        row["style"] = float(all(row.values()))
        per.append(row)
    names = ["style", *(f"style: {r.name}" for r in rules)] if len(rules) > 1 else ["style"]
    return Scored({n: _share(per, n) for n in names}, per,
                  {"rules": [{"name": r.name, "require_any": r.require_any, "forbid": r.forbid} for r in rules]})


def _share(per: Sequence[dict[str, Any]], key: str) -> float | None:
    return sum(p[key] for p in per) / len(per) if per else None


METRICS = (
    Metric("json", "answers", json_format, True, "share of answers that parse as JSON (and fit eval.json_schema)"),
    Metric("style", "answers", style, True, "share of answers that pass every rule in eval.style"),
)

"""Rows whose text teaches the wrong thing: an empty answer (the model learns silence), a template
placeholder nobody filled in (``{{name}}`` learned as the answer)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from finetune.data.canonical import Conversation, answers
from finetune.data.checks import Check, CheckInput, Finding, Outcome
from finetune.fields import setting

PLACEHOLDER = re.compile(r"\{\{\s*[^{}\s][^{}\n]{0,40}\}\}|\$\{[A-Za-z_]\w*\}|\{%[^%\n]{0,60}%\}")


@dataclass
class EmptyAnswerSettings:
    action: str = setting("drop", choices=("drop", "warn", "error", "off"))


@dataclass
class PlaceholderSettings:
    action: str = setting("warn", choices=("warn", "drop", "error", "off"))


def _empty(c: Conversation) -> str | None:
    if c.is_text:
        return "empty text" if not (c.text or "").strip() else None
    for i, m in enumerate(c.messages):
        if m["role"] in ("user", "assistant") and not m["content"].strip() and not m.get("tool_calls"):
            return f"message {i} ({m['role']}) is empty"
    return None


def _find_empty(data: CheckInput) -> Outcome:
    return Outcome([Finding(i, why) for i, c in enumerate(data.rows) if (why := _empty(c))])


def _find_placeholders(data: CheckInput) -> Outcome:
    findings = []
    for i, c in enumerate(data.rows):
        texts = answers(c) + [m["content"] for m in c.messages if m["role"] != "assistant"]
        match = next((m for t in texts if (m := PLACEHOLDER.search(t))), None)
        if match:
            findings.append(Finding(i, f"unfilled template placeholder {match.group(0)!r}"))
    return Outcome(findings)


EMPTY_ANSWER = Check("empty_answer", "rows", "empty user or assistant turn", EmptyAnswerSettings, _find_empty)
PLACEHOLDERS = Check("placeholders", "rows", "unfilled template placeholder", PlaceholderSettings,
                     _find_placeholders)

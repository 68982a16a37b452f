"""Preference pairs that teach no preference: the rejected answer empty, or the same as the chosen one (after
whitespace), so that the pair's two sequences score alike and its gradient is zero — or, for an empty rejected
answer, the model learns only that saying nothing is worse."""

from __future__ import annotations

from dataclasses import dataclass

from finetune.data.canonical import answers
from finetune.data.checks import Check, CheckInput, Finding, Outcome
from finetune.fields import setting


@dataclass
class PairSettings:
    action: str = setting("drop", choices=("drop", "warn", "error", "off"))


def _find(data: CheckInput) -> Outcome:
    findings = []
    for i, c in enumerate(data.rows):
        if c.rejected is None:
            continue
        if not c.rejected.strip():
            findings.append(Finding(i, "the rejected answer is empty"))
        elif " ".join(c.rejected.split()) == " ".join(answers(c)[-1].split()):
            findings.append(Finding(i, "the chosen and the rejected answer are the same"))
    return Outcome(findings)


CHECK = Check("pairs", "rows", "preference pair with no preference", PairSettings, _find)

"""Whitespace a reader would not see: runs of spaces inside a line, spaces at line ends, more than one blank line,
and blank space around a message. Opt-in (``dataset.checks.whitespace.action=normalize``), as the guide's
``clean_dataset`` collapses whitespace: ``normalize`` rewrites each flagged row and the report counts them.
Indentation at the start of a line is kept, so code in an answer stays code."""

from __future__ import annotations

import re
from dataclasses import dataclass

from finetune.data.canonical import Conversation, rewrite_texts, written_texts
from finetune.data.checks import Check, CheckInput, Finding, Outcome
from finetune.fields import setting

_RUN = re.compile(r"(?<=\S)[ \t\u00a0\u3000]{2,}(?=\S)")  # inside a line: one space
_LINE_END = re.compile(r"[ \t\u00a0\u3000]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class WhitespaceSettings:
    action: str = setting("off", choices=("off", "warn", "normalize"))


def normalized(text: str) -> str:
    text = _LINE_END.sub("", text.replace("\r\n", "\n"))
    return _BLANK_LINES.sub("\n\n", _RUN.sub(" ", text)).strip()


def _find(data: CheckInput) -> Outcome:
    findings, characters = [], 0
    for i, c in enumerate(data.rows):
        removed = sum(len(t) - len(normalized(t)) for t in written_texts(c))
        if removed:
            characters += removed
            findings.append(Finding(i, f"{removed} whitespace characters a reader would not see"))
    return Outcome(findings, {"characters": characters})


def _normalize(c: Conversation, settings: WhitespaceSettings) -> Conversation:
    return rewrite_texts(c, normalized)


CHECK = Check("whitespace", "rows", "invisible whitespace", WhitespaceSettings, _find, rewrites="normalize",
              rewrite=_normalize)

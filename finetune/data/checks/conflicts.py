"""The same question with different answers (the guide's §15 checklist): two rows whose conversation up to the
last answer is the same as near-duplicates compare texts (``minhash.near_text``: Unicode NFKC and case, without
whitespace or punctuation — `返品は できますか？` and `返品はできますか` ask one thing; the system prompt and tools
included) but whose last answers differ just as much. A model trained on both learns neither. Exact and
near-duplicate rows are removed before this check runs, so what is left disagrees; the later row is flagged, naming
the first."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from finetune.data.canonical import Conversation, row_kind
from finetune.data.checks import Check, CheckInput, Finding, Outcome
from finetune.data.minhash import near_text
from finetune.fields import setting


@dataclass
class ConflictSettings:
    action: str = setting("warn", choices=("warn", "drop", "error", "off"))


def _last_answer(c: Conversation) -> int | None:
    """Where the row's last answer is, for a conversation that ends with one (not a pair, a label or a prompt)."""
    if c.is_text or row_kind(c) != "conversation" or not c.messages or c.messages[-1]["role"] != "assistant":
        return None
    return len(c.messages) - 1


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _question(c: Conversation, last: int) -> int:
    tools = json.dumps(c.tools, sort_keys=True, ensure_ascii=False) if c.tools else ""
    return _digest("\x00".join(f"{m['role']}\x01{near_text(m['content'])}" for m in c.messages[:last]) + tools)


def _find(data: CheckInput) -> Outcome:
    first: dict[int, int] = {}  # question digest -> the first row asking it (8 bytes a key at a million rows)
    findings = []
    for i, c in enumerate(data.rows):
        if (last := _last_answer(c)) is None:
            continue
        j = first.setdefault(_question(c, last), i)
        if j != i and near_text(c.messages[last]["content"]) != near_text(data.rows[j].messages[-1]["content"]):
            findings.append(Finding(i, f"the same question as {data.rows[j].location} with a different answer"))
    return Outcome(findings)


CHECK = Check("conflicts", "rows", "conflicting answer", ConflictSettings, _find)

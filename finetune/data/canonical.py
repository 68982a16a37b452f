"""The canonical conversation that every record format is read into and written out of.

A message is ``{"role", "content"}`` with ``content`` always a string; an assistant message may carry
``tool_calls`` (``[{"type": "function", "function": {"name", "arguments": dict}, "id"?}]``, with ``content``
then possibly empty) and a tool message ``tool_call_id`` / ``name``. An assistant message may carry ``weight``, its
loss weight (a number ≥ 0; absent means 1, and 1 is never written): 0 leaves it untrained, a fraction scales its
tokens' share of the loss (``finetune.training``); it travels through the split files with the message. Tool
definitions are JSON schemas in the form ``apply_chat_template(tools=...)`` takes. A plain-text row (continued
pre-training) has ``text`` and no messages: every token of it carries loss. A preference row also has ``rejected``:
the answer not to give in place of its last assistant message, which is the chosen one — so every check that reads
messages sees the chosen answer as it would in a supervised row. A labeled row (KTO's unpaired data) has ``label``
instead: whether its last assistant message is an answer to give (true) or not (false). A prompt-only row (GRPO's)
has ``columns`` instead: its messages are the prompt, which the model answers in training, and ``columns`` its
record's other keys, which reach the reward functions as they are (``reference``: what the built-in rewards compare
an answer with).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import UserError

ROLES = ("system", "user", "assistant", "tool")

Message = dict[str, Any]


class DataError(UserError, ValueError):
    """Bad dataset input; the message is one line naming the file and record."""


@dataclass(frozen=True, slots=True)  # slots: a million rows in memory cost a few hundred MB less
class Conversation:
    messages: list[Message]
    location: str  # "file.jsonl:12", "file.json[3]", for messages about this record
    tools: list[dict[str, Any]] | None = None
    text: str | None = None  # a plain-text row: no messages, loss on every token
    source: str = ""  # the name of the source it came from, when several are mixed
    rejected: str | None = None  # preference data: the non-preferred answer to the last assistant message
    label: bool | None = None  # KTO's unpaired data: whether the last assistant message is a desirable answer
    columns: dict[str, Any] | None = None  # a prompt-only row: its other columns, for the reward functions

    @property
    def is_text(self) -> bool:
        return self.text is not None


def without_weights(messages: Sequence[Message]) -> list[Message]:
    """The messages without their loss ``weight`` (ours, not the data's: what a template renders, what a pair's two
    prompts must share)."""
    return [{k: v for k, v in m.items() if k != "weight"} if "weight" in m else m for m in messages]


def last_answer(messages: Sequence[Message]) -> int | None:
    """The index of the last assistant message: a pair's chosen answer, a labeled row's judged one."""
    return max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)


def row_kind(c: Conversation) -> str:
    """What the row gives an objective to train on (``finetune.objectives.Objective.data``): ``pair`` (a chosen
    and a rejected answer), ``labeled`` (one answer marked desirable or not), ``prompt`` (a question to answer, with
    columns for the rewards) or ``conversation`` (answers to learn, or plain text)."""
    return "pair" if c.rejected is not None else "labeled" if c.label is not None else \
        "prompt" if c.columns is not None else "conversation"


def answers(c: Conversation) -> list[str]:
    """The texts the model is trained to write (assistant turns, or the whole text of a plain row)."""
    if c.is_text:
        return [c.text or ""]
    return [m["content"] for m in c.messages if m["role"] == "assistant"]


def questions(c: Conversation) -> list[str]:
    return [m["content"] for m in c.messages if m["role"] == "user"]


def all_text(c: Conversation) -> str:
    """Every visible string of a row, in order (what duplicate and PII checks look at)."""
    if c.is_text:
        return c.text or ""
    parts = []
    for m in c.messages:
        parts.append(m["content"])
        parts += [json.dumps(call["function"], ensure_ascii=False, sort_keys=True) for call in m.get("tool_calls", ())]
    parts += [c.rejected] if c.rejected is not None else []
    parts += [json.dumps(c.columns, ensure_ascii=False, sort_keys=True)] if c.columns else []
    return "\n".join(parts)


def written_texts(c: Conversation) -> list[str]:
    """Every text someone wrote into the row: the messages, the rejected answer and a prompt-only row's text columns,
    which its rewards read (what the checks that rewrite text look at)."""
    if c.is_text:
        return [c.text or ""]
    return ([m["content"] for m in c.messages] + ([c.rejected] if c.rejected is not None else [])
            + [v for v in (c.columns or {}).values() if isinstance(v, str)])


def rewrite_texts(c: Conversation, rewrite: Callable[[str], str]) -> Conversation:
    """The row with each of its ``written_texts`` rewritten."""
    if c.is_text:
        return dataclasses.replace(c, text=rewrite(c.text or ""))
    columns = None if c.columns is None else \
        {k: rewrite(v) if isinstance(v, str) else v for k, v in c.columns.items()}
    return dataclasses.replace(c, messages=[{**m, "content": rewrite(m["content"])} for m in c.messages],
                               rejected=None if c.rejected is None else rewrite(c.rejected), columns=columns)


def to_row(c: Conversation) -> dict[str, Any]:
    """The split-file row (JSONL): what train and evaluate read back with ``read_split``."""
    if c.is_text:
        return {"text": c.text}
    return {"messages": c.messages, **({"tools": c.tools} if c.tools else {}),
            **({"rejected": c.rejected} if c.rejected is not None else {}),
            **({"label": c.label} if c.label is not None else {}),
            **({"columns": c.columns} if c.columns is not None else {})}


def read_split(path: Path) -> list[Conversation]:
    """The conversations of a split file that the validate stage wrote (JSONL of ``to_row``, already checked)."""
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        rows.append(Conversation(messages=row.get("messages", []), location=f"{path.name}:{i}",
                                 tools=row.get("tools"), text=row.get("text"), rejected=row.get("rejected"),
                                 label=row.get("label"), columns=row.get("columns")))
    return rows

"""Conversations whose shape a chat model cannot learn from: no answer, turns out of order, a tool result
that answers no call."""

from __future__ import annotations

from dataclasses import dataclass

from finetune.data.canonical import Message
from finetune.data.checks import Check, CheckInput, Finding, Outcome
from finetune.fields import setting


@dataclass
class StructureSettings:
    action: str = setting("error", choices=("error", "warn", "drop", "off"))


def problem(messages: list[Message], prompt: bool = False) -> str | None:
    """The first thing wrong with the order of these turns, or None. ``prompt``: the turns are a prompt-only row's,
    which ends where the model's answer will start."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    roles = [m["role"] for m in body]
    if "system" in roles:
        return "a system message after the first turn"
    if prompt and (not roles or roles[-1] == "assistant"):
        return "a prompt must end with a user message (or a tool result) for the model to answer"
    if "user" not in roles or ("assistant" not in roles and not prompt):
        return "a conversation needs at least one user and one assistant message"
    if roles[0] != "user":
        return f"the first message after the system prompt must be from the user, not {roles[0]}"
    offset = len(messages) - len(body)
    called = False  # a tool call since the last user turn
    for i, m in enumerate(body):
        if i and m["role"] == roles[i - 1] and m["role"] in ("user", "assistant") and not m.get("tool_calls"):
            return f"{m['role']} twice in a row (message {i + offset})"
        called = (called and m["role"] != "user") or bool(m.get("tool_calls"))
        if m["role"] == "tool" and not called:
            return f"a tool result without a tool call before it (message {i + offset})"
    return None


def _find(data: CheckInput) -> Outcome:
    return Outcome([Finding(i, p) for i, c in enumerate(data.rows)
                    if not c.is_text and (p := problem(c.messages, prompt=c.columns is not None))])


CHECK = Check("structure", "rows", "turns out of order or missing", StructureSettings, _find)

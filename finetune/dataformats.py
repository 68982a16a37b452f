"""Read a dataset file (JSON array or JSONL) in messages, Alpaca or ShareGPT format into conversations.

Every record is checked; the first problem is reported as one line naming the file and line (JSONL) or item
(JSON array) and what was expected, with a count of the other bad records, so a format error never turns into
"no valid samples" later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "function_call": "assistant", "observation": "tool", "tool": "tool",
}
FORMATS = ("messages", "alpaca", "sharegpt")

Message = dict[str, str]


class DataError(UserError, ValueError):
    """Bad dataset input; the message is one line naming the file and record."""


@dataclass(frozen=True)
class Conversation:
    messages: list[Message]
    location: str  # "file.jsonl:12" or "file.json[3]", for messages about this record


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, with or without a byte-order mark; anything else names the line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); save the file as UTF-8"
        ) from None


def _records(path: Path) -> list[tuple[str, Any]]:
    text = _read_text(path)
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
        return [(f"{path}[{i}]", record) for i, record in enumerate(data)]
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    return records


def detect_format(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("messages"), list):
        return "messages"
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _from_messages(record: dict[str, Any]) -> list[Message]:
    out = []
    for i, m in enumerate(record["messages"]):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"message {i} must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"message {i} has role {m['role']!r}; expected one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": _text(m["content"], f"message {i} content")})
    return out


def _from_sharegpt(record: dict[str, Any]) -> list[Message]:
    out = []
    if record.get("system"):
        out.append({"role": "system", "content": _text(record["system"], "'system'")})
    for i, turn in enumerate(record["conversations"]):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(f"turn {i} must be an object with 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise DataError(f"turn {i} is from {turn['from']!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
        out.append({"role": role, "content": _text(turn["value"], f"turn {i} value")})
    return out


def _from_alpaca(record: dict[str, Any]) -> list[Message]:
    instruction = _text(record["instruction"], "'instruction'")
    extra = _text(record.get("input") or "", "'input'")
    out = []
    if record.get("system"):
        out.append({"role": "system", "content": _text(record["system"], "'system'")})
    out.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction})
    out.append({"role": "assistant", "content": _text(record["output"], "'output'")})
    return out


CONVERTERS = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca}


def _check_turns(messages: list[Message]) -> None:
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in body):
        raise DataError("a system message may only come first")
    if not any(m["role"] == "user" for m in body) or not any(m["role"] == "assistant" for m in body):
        raise DataError("a conversation needs at least one user and one assistant message")
    if body[0]["role"] != "user":
        raise DataError(f"the first message after the system prompt must be from the user, not {body[0]['role']}")


def is_empty(messages: list[Message]) -> bool:
    """True when a user or assistant turn has no text: such rows teach nothing (or teach silence)."""
    return any(not m["content"].strip() for m in messages if m["role"] in ("user", "assistant"))


def load_conversations(path: Path, fmt: str = "auto", system_prompt: str | None = None
                       ) -> tuple[list[Conversation], str]:
    """All records of ``path`` as conversations, and the format they were read as."""
    records = _records(path)
    if not records:
        raise DataError(f"{path}: no records")
    if fmt == "auto":
        location, first = records[0]
        fmt = detect_format(first) or ""
        if not fmt:
            keys = ", ".join(sorted(first)) if isinstance(first, dict) else type(first).__name__
            raise DataError(
                f"{location}: cannot tell the format from keys ({keys}); expected 'messages' (messages format), "
                "'conversations' (ShareGPT) or 'instruction' + 'output' (Alpaca); or set dataset.format"
            )
    conversations, errors = [], []
    for location, record in records:
        try:
            if detect_format(record) != fmt:
                raise DataError(f"not a {fmt}-format record")
            messages = CONVERTERS[fmt](record)
            if system_prompt and messages and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": system_prompt})
            _check_turns(messages)
        except DataError as e:
            errors.append(f"{location}: {e}")
            continue
        conversations.append(Conversation(messages=messages, location=location))
    if errors:
        more = f" (and {len(errors) - 1} more bad records)" if len(errors) > 1 else ""
        raise DataError(errors[0] + more)
    return conversations, fmt


def read_split(path: Path) -> list[list[Message]]:
    """The conversations of a split file that the validate stage wrote (JSONL, messages format, checked)."""
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]

"""Record formats: each entry reads one record (a dict from a reader) into the canonical conversation and,
where a provider takes that format, writes a conversation back out. ``FORMATS`` is the registry that
``dataset.format`` chooses from; ``auto`` tells the format from the first record's keys.

What a format cannot express (tools in Bedrock's format, a plain-text row in a chat format) raises
``CannotExpress`` on writing, so a converted file never loses part of a conversation silently.

Preference records (OpenAI's DPO format, TRL's prompt/chosen/rejected, LLaMA-Factory's ranking ShareGPT and
Alpaca, Anthropic HH's chosen/rejected transcripts) are read into conversations whose last assistant message is the
chosen answer and ``rejected`` the other; only ``openai_dpo`` writes them back, and the
validate stage takes them only for a preference objective (``objective=dpo``). A chat record with a boolean
``label`` (TRL's unpaired prompt/completion/label, LLaMA-Factory's KTO messages/label) is KTO's: its last answer
labeled desirable or not. A record with a ``prompt`` and no answer (TRL's prompt-only data) is GRPO's: the prompt to
answer, its other columns kept for the reward functions.

A message's loss weight — LLaMA-Factory v1's ``loss_weight`` (any number ≥ 0) or OpenAI's ``weight`` (0 or 1) —
is kept on an assistant message as ``weight`` where it is not 1 (``finetune.data.canonical``): 0 leaves the message
untrained, a fraction scales its tokens' share of the loss (``finetune.training``). Weights on other messages are
read, checked and dropped: only assistant messages are trained, as in LLaMA-Factory. A writer keeps a weight where
its format has one (OpenAI's chat format: 0 or 1) and refuses the row where it has none.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune.data.canonical import ROLES, Conversation, DataError, Message, last_answer, without_weights

SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "function_call": "assistant", "observation": "tool", "tool": "tool",
}


class CannotExpress(ValueError):
    """This conversation has something the target format has no place for."""


@dataclass(frozen=True)
class Format:
    name: str
    keys: str  # how a record of this format is recognised, for messages
    detect: Callable[[dict[str, Any]], bool] | None  # None: write-only
    read: Callable[[dict[str, Any]], Conversation] | None
    write: Callable[[Conversation], dict[str, Any]] | None


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        got = "null" if value is None else type(value).__name__
        raise DataError(f"{what} must be a string, got {got}")
    return value


TEXT_PARTS = '{"type": "text", "text"|"value": …}'


def _part_text(part: Any, what: str) -> str | None:
    """A text part's text (OpenAI's ``text``, LLaMA-Factory v1's ``value``), or None for any other part."""
    if isinstance(part, str):
        return part
    if not isinstance(part, dict) or part.get("type", "text") != "text":
        return None
    key = next((k for k in ("text", "value") if k in part), None)
    if key is None:
        return None
    if not isinstance(part[key], str):
        got = "null" if part[key] is None else type(part[key]).__name__
        raise DataError(f"{what} {key} must be a string, got {got}")
    return part[key]


def _content(value: Any, what: str) -> str:
    """A string, or a list of text parts (``[{"type": "text", "text" or "value": ...}]``) joined."""
    if not isinstance(value, list):
        if not isinstance(value, str):
            got = "null" if value is None else type(value).__name__
            raise DataError(f"{what} must be a string or a list of text parts, got {got}")
        return value
    texts = []
    for j, part in enumerate(value):
        text = _part_text(part, f"{what} part {j}")
        if text is None:
            kind = part.get("type") if isinstance(part, dict) else None
            named = isinstance(kind, str) and kind not in part  # a v1 part: its type is not one of its keys
            shape = f"has keys {', '.join(map(str, part))}" if isinstance(part, dict) else \
                f"is {'null' if part is None else type(part).__name__}"
            raise DataError(f"{what} part {j}{f' of type {kind!r}' if named else ''} {shape}: only text parts "
                            f"({TEXT_PARTS}) are read")
        texts.append(text)
    return "".join(texts)


def _json_value(value: Any, what: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} is not valid JSON ({e.msg})") from None


def _tool_calls(value: Any, what: str) -> list[dict[str, Any]]:
    """OpenAI-style calls (``{"type": "function", "function": {...}}``) or bare ``{"name", "arguments"}``."""
    calls = value if isinstance(value, list) else [value]
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise DataError(f"{what} tool call {j} must be an object with 'name' and 'arguments'")
        arguments = _json_value(fn.get("arguments", {}), f"{what} tool call {j} arguments")
        entry = {"type": "function", "function": {"name": fn["name"], "arguments": arguments}}
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def _tools(value: Any) -> list[dict[str, Any]] | None:
    """Tool definitions as ``apply_chat_template(tools=...)`` takes them; a JSON string is parsed."""
    if value in (None, "", []):
        return None
    tools = _json_value(value, "'tools'")
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError("'tools' must be a list of function definitions")
    return [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t}
            for t in tools] or None


def _conversation(messages: list[Message], tools: Any = None) -> Conversation:
    return Conversation(messages=messages, location="", tools=_tools(tools))


def _labeled(c: Conversation, record: dict[str, Any]) -> Conversation:
    """``c`` with the record's ``label``, where it has one: KTO's judgement of its last answer."""
    if "label" not in record:
        return c
    if not isinstance(record["label"], bool):
        raise DataError(f"'label' must be true or false (KTO: whether the last answer is desirable), got "
                        f"{json.dumps(record['label'], ensure_ascii=False)}")
    if not c.messages or c.messages[-1]["role"] != "assistant":
        raise DataError("a record with a 'label' must end with the answer it judges")
    return dataclasses.replace(c, label=record["label"])


# ── OpenAI chat ("messages"); also Bedrock's {"system", "messages"} and typed content parts ──

WEIGHT_KEYS = ("loss_weight", "weight")  # LLaMA-Factory v1's, OpenAI's


def _weight(m: dict[str, Any], i: int) -> float:
    """The message's loss weight (1 where it gives none; null is none, as a column a Dataset fills)."""
    given = {k: m[k] for k in WEIGHT_KEYS if m.get(k) is not None}
    for key, w in given.items():
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
            raise DataError(f"message {i} {key} must be a number ≥ 0 (its share of the loss: 0 leaves the message "
                            f"untrained, 1 is the default), got {json.dumps(w, ensure_ascii=False, default=str)}")
    if len({float(w) for w in given.values()}) > 1:
        raise DataError(f"message {i} has both 'weight' ({given['weight']}) and 'loss_weight' "
                        f"({given['loss_weight']}); give one")
    return float(next(iter(given.values()), 1.0))


def _split_tool_call_parts(content: Any, what: str) -> tuple[Any, list[Any]]:
    """LLaMA-Factory v1's ``{"type": "tool_call", "value": <JSON of name and arguments>}`` parts of an assistant
    message, taken out of its content."""
    if not isinstance(content, list):
        return content, []
    calls = [_json_value(p.get("value"), f"{what} part {j} value") for j, p in enumerate(content)
             if isinstance(p, dict) and p.get("type") == "tool_call"]
    return [p for p in content if not (isinstance(p, dict) and p.get("type") == "tool_call")], calls


def _message(m: Any, i: int) -> Message:
    if not isinstance(m, dict) or "role" not in m:
        raise DataError(f"message {i} must be an object with 'role' and 'content'")
    role = m["role"]
    if role not in ROLES:
        raise DataError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
    weight = _weight(m, i)
    content, calls = m.get("content"), m.get("tool_calls") if role == "assistant" else None
    if role == "assistant":
        content, in_parts = _split_tool_call_parts(content, f"message {i} content")
        if in_parts:
            calls = [*(calls if isinstance(calls, list) else [calls] if calls else []), *in_parts]
    if calls:
        message = {"role": role, "content": _content(content or "", f"message {i} content"),
                   "tool_calls": _tool_calls(calls, f"message {i}")}
    elif "content" not in m:
        raise DataError(f"message {i} must be an object with 'role' and 'content'")
    else:
        message = {"role": role, "content": _content(content, f"message {i} content")}
    if role == "tool":
        message.update({k: m[k] for k in ("tool_call_id", "name") if isinstance(m.get(k), str)})
    if role == "assistant" and weight != 1:
        message["weight"] = weight
    return message


def _read_messages(record: dict[str, Any]) -> Conversation:
    if not isinstance(record["messages"], list):
        raise DataError(f"'messages' must be a list, got {type(record['messages']).__name__}")
    messages = [_message(m, i) for i, m in enumerate(record["messages"])]
    if record.get("system") is not None:  # Bedrock's (Anthropic's) top-level system prompt
        messages.insert(0, {"role": "system", "content": _content(record["system"], "'system'")})
    return _labeled(_conversation(messages, record.get("tools")), record)


def _chat_only(c: Conversation, fmt: str) -> None:
    if c.is_text:
        raise CannotExpress(f"a plain-text row has no place in the {fmt} format")
    if c.rejected is not None:
        raise CannotExpress(f"the {fmt} format has no place for a rejected answer (openai_dpo has)")
    if c.label is not None:
        raise CannotExpress(f"the {fmt} format has no place for a label (KTO's)")
    if c.columns is not None:
        raise CannotExpress(f"the {fmt} format has no place for a prompt without an answer (GRPO's)")


def _weights(c: Conversation) -> list[tuple[int, float]]:
    """(index, weight) of the messages whose loss weight is not 1."""
    return [(i, m["weight"]) for i, m in enumerate(c.messages) if m.get("weight", 1) != 1]


def _unweighted(c: Conversation, fmt: str) -> None:
    if weighted := _weights(c):
        i, w = weighted[0]
        raise CannotExpress(f"the {fmt} format has no per-message loss weight (message {i} has {w:g})")


def _write_openai(c: Conversation) -> dict[str, Any]:
    """OpenAI's chat JSONL; a loss weight of 0 stays ``"weight": 0`` on its assistant message (OpenAI takes 0 or
    1)."""
    _chat_only(c, "OpenAI chat")
    fractional = [(i, w) for i, w in _weights(c) if w != 0]
    if fractional:
        raise CannotExpress(f"the OpenAI chat format takes a weight of 0 or 1 on an assistant message, not "
                            f"{fractional[0][1]:g} (message {fractional[0][0]})")
    return {"messages": _openai_messages(c.messages, weights=True), **({"tools": c.tools} if c.tools else {})}


def _openai_messages(conversation: list[Message], weights: bool = False) -> list[dict[str, Any]]:
    """The messages in OpenAI's shape; ``weights``: with OpenAI's ``weight`` (0) where a message has one (a DPO
    prompt's weights are left out: DPO trains no message of the prompt)."""
    messages = []
    for m in conversation:
        out: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            out["content"] = m["content"] or None
            out["tool_calls"] = [
                {**({"id": t["id"]} if "id" in t else {}), "type": "function",
                 "function": {"name": t["function"]["name"],
                              "arguments": json.dumps(t["function"]["arguments"], ensure_ascii=False)}}
                for t in m["tool_calls"]
            ]
        out.update({k: m[k] for k in ("tool_call_id", "name") if k in m})
        if weights and m.get("weight", 1) != 1:
            out["weight"] = int(m["weight"])
        messages.append(out)
    return messages


def _plain_turns(c: Conversation, fmt: str) -> tuple[str | None, list[Message]]:
    """System prompt and the user/assistant turns, for formats without tools."""
    _chat_only(c, fmt)
    _unweighted(c, fmt)
    if c.tools or any(m["role"] == "tool" or m.get("tool_calls") for m in c.messages):
        raise CannotExpress(f"the {fmt} format has no tool definitions, tool calls or tool results")
    system = c.messages[0]["content"] if c.messages and c.messages[0]["role"] == "system" else None
    turns = c.messages[1:] if system is not None else c.messages
    if any(m["role"] == "system" for m in turns):
        raise CannotExpress(f"the {fmt} format has one system prompt, before the first turn")
    return system, turns


def _write_bedrock(c: Conversation) -> dict[str, Any]:
    """Bedrock's Claude fine-tuning JSONL: ``{"system", "messages"}``, strictly user/assistant alternating."""
    system, turns = _plain_turns(c, "Bedrock")
    roles = [m["role"] for m in turns]
    if roles[::2] != ["user"] * len(roles[::2]) or roles[1::2] != ["assistant"] * len(roles[1::2]) or \
            roles[-1:] != ["assistant"]:
        raise CannotExpress("the Bedrock format needs user/assistant turns alternating, starting with user and "
                            "ending with assistant")
    return {**({"system": system} if system is not None else {}),
            "messages": [{"role": m["role"], "content": m["content"]} for m in turns]}


def _write_bedrock_conversation(c: Conversation) -> dict[str, Any]:
    """Bedrock's conversation schema (``bedrock-conversation-2024``, the Converse API's shape) that Nova and the
    other models Bedrock still fine-tunes take: a system list and messages of text blocks."""
    system, turns = _plain_turns(c, "Bedrock conversation")
    head = {"system": [{"text": system}]} if system is not None else {}
    return {"schemaVersion": "bedrock-conversation-2024", **head,
            "messages": [{"role": m["role"], "content": [{"text": m["content"]}]} for m in turns]}


# ── Gemini / Vertex AI ("contents") ──

GEMINI_ROLES = {"user": "user", "model": "assistant"}


def _gemini_text(entry: Any, what: str) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("parts"), list):
        raise DataError(f"{what} must be an object with 'parts'")
    return _content(entry["parts"], f"{what} parts")


def _read_gemini(record: dict[str, Any]) -> Conversation:
    if not isinstance(record["contents"], list):
        raise DataError(f"'contents' must be a list, got {type(record['contents']).__name__}")
    messages = []
    system = record.get("systemInstruction", record.get("system_instruction"))
    if system is not None:
        messages.append({"role": "system", "content": _gemini_text(system, "'systemInstruction'")})
    for i, entry in enumerate(record["contents"]):
        role = GEMINI_ROLES.get(entry.get("role")) if isinstance(entry, dict) else None
        if role is None:
            raise DataError(f"contents {i} must have role 'user' or 'model'")
        messages.append({"role": role, "content": _gemini_text(entry, f"contents {i}")})
    return _conversation(messages)


def _write_gemini(c: Conversation) -> dict[str, Any]:
    """Vertex AI's Gemini tuning JSONL: ``contents`` of user/model turns, ``systemInstruction``."""
    system, turns = _plain_turns(c, "Gemini")
    contents = [{"role": "model" if m["role"] == "assistant" else "user", "parts": [{"text": m["content"]}]}
                for m in turns]
    head = {"systemInstruction": {"role": "system", "parts": [{"text": system}]}} if system is not None else {}
    return {**head, "contents": contents}


# ── ShareGPT ("conversations" of from/value) ──

def _read_sharegpt(record: dict[str, Any]) -> Conversation:
    if not isinstance(record["conversations"], list):
        raise DataError(f"'conversations' must be a list, got {type(record['conversations']).__name__}")
    messages = []
    if record.get("system"):
        messages.append({"role": "system", "content": _string(record["system"], "'system'")})
    for i, turn in enumerate(record["conversations"]):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(f"turn {i} must be an object with 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise DataError(f"turn {i} is from {turn['from']!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
        value = _string(turn["value"], f"turn {i} value")
        if turn["from"] == "function_call":
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": _tool_calls(_json_value(value, f"turn {i} value"), f"turn {i}")})
        else:
            messages.append({"role": role, "content": value})
    if "chosen" in record:  # LLaMA-Factory's ranking data: the conversation ends with the question
        return _pair(messages, record["chosen"], record.get("rejected"), ("chosen", "rejected"), record.get("tools"))
    return _labeled(_conversation(messages, record.get("tools")), record)


# ── Alpaca (instruction / input / output, optional system and history) ──

def _read_alpaca(record: dict[str, Any]) -> Conversation:
    messages = []
    if record.get("system"):
        messages.append({"role": "system", "content": _string(record["system"], "'system'")})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"'history' must be a list of [instruction, output] pairs, got {type(history).__name__}")
    for i, pair in enumerate(history):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise DataError(f"history {i} must be an [instruction, output] pair")
        messages += [{"role": "user", "content": _string(pair[0], f"history {i} instruction")},
                     {"role": "assistant", "content": _string(pair[1], f"history {i} output")}]
    instruction = _string(record["instruction"], "'instruction'")
    extra = _string(record.get("input") or "", "'input'")
    messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction})
    if "output" not in record:  # LLaMA-Factory's ranking data: a chosen and a rejected answer
        return _pair(messages, record["chosen"], record["rejected"], ("chosen", "rejected"))
    messages.append({"role": "assistant", "content": _string(record["output"], "'output'")})
    return _conversation(messages)


# ── prompt / completion pairs (strings, or TRL's conversational lists of messages) ──

def _read_prompt_completion(record: dict[str, Any]) -> Conversation:
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):
        c = _read_messages({"messages": prompt + completion, "tools": record.get("tools")})
    else:
        c = _conversation([{"role": "user", "content": _string(prompt, "'prompt'")},
                           {"role": "assistant", "content": _string(completion, "'completion'")}])
    return _labeled(c, record)


# ── prompt-only rows (GRPO's): a prompt to answer, the record's other columns for the reward functions ──

# what a reward function is passed besides a row's columns: TRL's GRPOTrainer's keyword arguments, and the most
# tokens of the prompt and its answer that finetune's plan reads (finetune.objectives.grpo)
REWARD_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "length",
                    "trained")
ANSWER_KEYS = ("completion", "chosen", "rejected")


def _read_prompt(record: dict[str, Any]) -> Conversation:
    prompt = record["prompt"]
    messages = _read_messages({"messages": prompt}).messages if isinstance(prompt, list) else \
        [{"role": "user", "content": _string(prompt, "'prompt'")}]
    columns = {k: v for k, v in record.items() if k not in ("prompt", "tools")}
    if clash := [k for k in columns if k in REWARD_ARGUMENTS]:
        raise DataError(f"column {clash[0]!r} has the name of an argument the reward functions are passed besides "
                        f"the columns ({', '.join(REWARD_ARGUMENTS)}); rename it (dataset.columns)")
    return Conversation(messages=messages, location="", tools=_tools(record.get("tools")), columns=columns)


# ── preference pairs (hosted DPO): OpenAI's DPO format and TRL's prompt / chosen / rejected ──

def _answer(value: Any, what: str) -> str:
    """One answer: a string, a list of one assistant message (OpenAI's outputs, TRL's conversational pairs) or a
    ShareGPT turn from the model (LLaMA-Factory's ranking data)."""
    if isinstance(value, dict) and "from" in value:
        if SHAREGPT_ROLES.get(value["from"]) != "assistant" or "value" not in value:
            raise DataError(f"{what} must be a turn from the model ('from': 'gpt', 'value')")
        return _string(value["value"], f"{what} value")
    if not isinstance(value, list):
        return _string(value, what)
    if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
        raise DataError(f"{what} must be one assistant message")
    if (weight := _weight(value[0], 0)) != 1:
        raise DataError(f"{what} has loss weight {weight:g}; a preference pair's answers are trained whole")
    return _content(value[0].get("content"), f"{what} content")


def _pair(prompt: list[Message], chosen: Any, rejected: Any, names: tuple[str, str], tools: Any = None
          ) -> Conversation:
    answer = {"role": "assistant", "content": _answer(chosen, f"'{names[0]}'")}
    return Conversation(messages=[*prompt, answer], location="", tools=_tools(tools),
                        rejected=_answer(rejected, f"'{names[1]}'"))


def _read_openai_dpo(record: dict[str, Any]) -> Conversation:
    source = record["input"]
    if not isinstance(source, dict) or not isinstance(source.get("messages"), list):
        raise DataError("'input' must be an object with 'messages'")
    prompt = _read_messages({"messages": source["messages"]}).messages
    return _pair(prompt, record["preferred_output"], record["non_preferred_output"],
                 ("preferred_output", "non_preferred_output"), source.get("tools"))


def _read_preference(record: dict[str, Any]) -> Conversation:
    prompt = record["prompt"]
    messages = _read_messages({"messages": prompt}).messages if isinstance(prompt, list) else \
        [{"role": "user", "content": _string(prompt, "'prompt'")}]
    return _pair(messages, record["chosen"], record["rejected"], ("chosen", "rejected"), record.get("tools"))


def _read_llamafactory_dpo(record: dict[str, Any]) -> Conversation:
    """LLaMA-Factory v1's pairs: two whole conversations that differ in their last (assistant) message; the
    messages before it are the prompt, whose loss weights do not matter (DPO trains the answers only)."""
    sides = []
    for key in ("chosen_messages", "rejected_messages"):
        if not isinstance(record[key], list):
            raise DataError(f"'{key}' must be a list, got {type(record[key]).__name__}")
        try:
            sides.append(_read_messages({"messages": record[key]}).messages)
        except DataError as e:
            raise DataError(f"'{key}' {e}") from None
    chosen, rejected = sides
    if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant" \
            or without_weights(chosen[:-1]) != without_weights(rejected[:-1]):
        raise DataError("'chosen_messages' and 'rejected_messages' must be one conversation that differs only in its "
                        "last assistant message")
    if rejected[-1].get("tool_calls"):
        raise DataError("the last message of 'rejected_messages' must be a text answer (a rejected answer is text)")
    if rejected[-1].get("weight", 1) != 1:
        raise DataError(f"message {len(rejected) - 1} of 'rejected_messages' has loss weight "
                        f"{rejected[-1]['weight']:g}; a preference pair's answers are trained whole")
    return Conversation(messages=chosen, location="", tools=_tools(record.get("tools")),
                        rejected=rejected[-1]["content"])


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _hh_turns(text: Any, what: str) -> list[Message]:
    """An Anthropic HH transcript (``\\n\\nHuman: …\\n\\nAssistant: …``) as messages."""
    parts = _HH_TURN.split(_string(text, what))
    if parts[0].strip() or len(parts) < 3:
        raise DataError(f"{what} is not a transcript of '\\n\\nHuman:' and '\\n\\nAssistant:' turns")
    return [{"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
            for speaker, content in zip(parts[1::2], parts[2::2], strict=True)]


def _read_hh(record: dict[str, Any]) -> Conversation:
    """Anthropic HH: two whole transcripts that differ in their last Assistant turn; the turns before it are the
    prompt."""
    chosen, rejected = _hh_turns(record["chosen"], "'chosen'"), _hh_turns(record["rejected"], "'rejected'")
    if chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise DataError("'chosen' and 'rejected' must be one conversation that differs only in its last Assistant "
                        "turn")
    return Conversation(messages=chosen, location="", rejected=rejected[-1]["content"])


def _is_hh(record: dict[str, Any]) -> bool:
    chosen = record.get("chosen")
    return (isinstance(chosen, str) and "rejected" in record and chosen.startswith("\n\nHuman:")
            and not {"prompt", "conversations", "instruction"} & set(record))


def _write_openai_dpo(c: Conversation) -> dict[str, Any]:
    """OpenAI's DPO JSONL: the conversation before the chosen answer as ``input``, then both answers."""
    if c.is_text or c.rejected is None:
        raise CannotExpress("the OpenAI DPO format needs a preference pair (a chosen and a rejected answer)")
    last = last_answer(c.messages)
    assert last is not None, "a pair's row has its chosen answer last"
    if c.messages[last].get("weight", 1) != 1:
        raise CannotExpress(f"the OpenAI DPO format has no loss weight for the chosen answer (message {last} has "
                            f"{c.messages[last]['weight']:g})")
    source = {"messages": _openai_messages(c.messages[:last]), **({"tools": c.tools} if c.tools else {})}
    return {"input": source, "preferred_output": [{"role": "assistant", "content": c.messages[last]["content"]}],
            "non_preferred_output": [{"role": "assistant", "content": c.rejected}]}


# ── plain text: continued pre-training, loss on every token ──

def _read_text(record: dict[str, Any]) -> Conversation:
    return Conversation(messages=[], location="", text=_string(record["text"], "'text'"))


def _has(*keys: str) -> Callable[[dict[str, Any]], bool]:
    return lambda record: all(k in record for k in keys)


FORMATS: dict[str, Format] = {
    f.name: f for f in (
        Format("messages", "'messages' (OpenAI chat)", _has("messages"), _read_messages, _write_openai),
        Format("sharegpt", "'conversations' (ShareGPT; + 'chosen' + 'rejected': LLaMA-Factory's ranking)",
               _has("conversations"), _read_sharegpt, None),
        Format("alpaca", "'instruction' + 'output' (Alpaca; 'chosen' + 'rejected' for 'output': ranking)",
               lambda r: _has("instruction", "output")(r) or _has("instruction", "chosen", "rejected")(r),
               _read_alpaca, None),
        Format("gemini", "'contents' (Gemini)", _has("contents"), _read_gemini, _write_gemini),
        Format("prompt_completion", "'prompt' + 'completion'", _has("prompt", "completion"),
               _read_prompt_completion, None),
        Format("prompt", "'prompt' alone, with any other columns (prompt-only, GRPO's)",
               lambda r: "prompt" in r and not any(k in r for k in ANSWER_KEYS), _read_prompt, None),
        Format("openai_dpo", "'input' + 'preferred_output' + 'non_preferred_output' (OpenAI DPO)",
               _has("input", "preferred_output", "non_preferred_output"), _read_openai_dpo, _write_openai_dpo),
        Format("llamafactory_dpo", "'chosen_messages' + 'rejected_messages' (LLaMA-Factory v1 pairs)",
               _has("chosen_messages", "rejected_messages"), _read_llamafactory_dpo, None),
        Format("preference", "'prompt' + 'chosen' + 'rejected' (preference pairs)",
               _has("prompt", "chosen", "rejected"), _read_preference, None),
        Format("hh", "'chosen' + 'rejected' Human/Assistant transcripts (Anthropic HH)", _is_hh, _read_hh, None),
        Format("text", "'text' (plain text, continued pre-training)", _has("text"), _read_text, None),
        Format("bedrock", "'system' + 'messages' (Bedrock)", None, None, _write_bedrock),
        Format("bedrock_conversation", "'schemaVersion' + 'messages' (Bedrock conversation)", None, None,
               _write_bedrock_conversation),
    )
}
READABLE = tuple(name for name, f in FORMATS.items() if f.read is not None)
WRITABLE = {"openai": "messages", "gemini": "gemini", "bedrock": "bedrock",  # output name → format
            "bedrock_conversation": "bedrock_conversation", "openai_dpo": "openai_dpo"}


def _keys(record: Any) -> str:
    return ", ".join(sorted(map(str, record))) if isinstance(record, dict) else type(record).__name__


def detect(record: Any) -> str:
    """The format of ``record`` from its keys; ``text`` only when no chat format matches (Alpaca files
    often carry a rendered ``text`` column too)."""
    if not isinstance(record, dict):
        raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
    matches = [n for n in READABLE if n != "text" and FORMATS[n].detect(record)]
    if not matches and FORMATS["text"].detect(record):
        matches = ["text"]
    if len(matches) == 1:
        return matches[0]
    expected = "; ".join(FORMATS[n].keys for n in READABLE)
    if matches:
        raise DataError(f"keys ({_keys(record)}) fit several formats ({', '.join(matches)}); set dataset.format")
    raise DataError(f"cannot tell the format from keys ({_keys(record)}); expected {expected}; map other "
                    "column names with dataset.columns, or set dataset.format")


def read(record: Any, fmt: str) -> Conversation:
    """One record in format ``fmt`` as a canonical conversation (location left for the caller)."""
    if not isinstance(record, dict):
        raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
    spec = FORMATS[fmt]
    if not spec.detect(record):  # type: ignore[misc]
        try:
            hint = f"; it looks like {detect(record)}: set dataset.format to that, or auto"
        except DataError:
            hint = ""
        raise DataError(f"keys ({_keys(record)}) are not a {fmt} record; expected {spec.keys}{hint}")
    return spec.read(record)  # type: ignore[misc]


def write(c: Conversation, output: str) -> dict[str, Any]:
    """``c`` as a record of provider format ``output`` (openai, openai_dpo, gemini, bedrock, bedrock_conversation);
    ``CannotExpress`` if it holds something that format has no place for."""
    return FORMATS[WRITABLE[output]].write(c)  # type: ignore[misc]

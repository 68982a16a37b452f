"""Turn a conversation into token ids and loss labels through the model's own chat template.

Labels are the token ids on assistant turns and -100 elsewhere. Every assistant turn is trained (not only the
last), with the turn's end-of-turn token (the model learns to stop, whatever the pad token is), and the spans are
exactly what the template renders. They are found in one of two ways:

- by prefixes, for a template that renders a conversation as the concatenation of its turns (ChatML, Llama 3,
  Gemma, …): a turn is what rendering the conversation up to it adds to the rendering up to its generation
  prompt;
- in the full rendering, for a template whose rendering of a turn depends on what follows it (Qwen 3 writes an
  empty ``<think>`` block into the last assistant turn only; Phi-3.5 ends a conversation with EOS): a turn runs
  from its generation prompt, which must be a prefix of the full rendering, through the first end-of-turn token
  after it (the special token the template writes right after an answer) and the whitespace that follows it.

Both give the same spans where both apply (tests/test_chat.py); the first is used whenever the template allows.
A plain-text row (continued pre-training) is trained on every token, with the end-of-sequence token appended.

An assistant message's loss ``weight`` (``finetune.data.canonical``) stays out of the template: a turn of weight 0
gets no labels (as if it were the user's), and a row with another weight than 1 also gets ``weights``, one per token:
its turn's weight on each of its tokens, 1 elsewhere (``train.loss_on=all``), which the loss scales by
(``finetune.training``).

Tools reach the template as ``tools=`` and assistant ``tool_calls``. A template that ignores them (SmolLM2's
does: its rendering does not change) gets them as text instead, in the widespread Hermes form — the tool
definitions appended to the system message inside ``<tools></tools>``, each call as
``<tool_call>{"name": …, "arguments": …}</tool_call>`` in the assistant's turn — so they are never dropped.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune.chat_templates import NAMED, same_format
from finetune.data.canonical import Conversation, Message, last_answer, without_weights
from finetune.errors import UserError

IGNORE_INDEX = -100
TOOLS_PREAMBLE = ("You may call one or more functions to assist with the user query. The function signatures are "
                  "within <tools></tools> XML tags. For each function call, return a JSON object with the "
                  "function name and arguments within <tool_call></tool_call> XML tags.")
_PROBE = "zq_probe_function"


class ChatTemplateError(UserError, ValueError):
    """The tokenizer's chat template cannot be used to find assistant spans."""


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: list[int]
    labels: list[int]
    weights: list[float] | None = None  # per token, where some assistant turn's loss weight is not 1

    @property
    def num_trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def render(tokenizer: Any, messages: Sequence[Message], tools: list[dict] | None = None,
           add_generation_prompt: bool = False) -> str:
    """The model's chat template applied as text (what it will see before tokenization). A template that refuses
    the conversation (Gemma 2's raises on a system message) is a ``ChatTemplateError`` naming its reason."""
    from jinja2 import TemplateError

    messages = without_weights(messages)
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise ChatTemplateError(f"the model's chat template refuses this conversation ({e}); set "
                                f"model.chat_template to one that takes it ({', '.join(NAMED)} or a .jinja file), "
                                "or change the data") from None


@functools.lru_cache(maxsize=8)
def template_takes(tokenizer: Any) -> tuple[bool, bool]:
    """(renders ``tools=``, renders assistant ``tool_calls``): probed by rendering, not by name."""
    user = [{"role": "user", "content": "x"}]
    tool = {"type": "function", "function": {"name": _PROBE, "description": "", "parameters": {"type": "object"}}}
    try:
        tools = _PROBE in render(tokenizer, user, tools=[tool])
    except Exception:  # a template that cannot render tools at all
        tools = False
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                               "function": {"name": _PROBE, "arguments": {}}}]}
    try:
        calls = _PROBE in render(tokenizer, [*user, call])
    except Exception:
        calls = False
    return tools, calls


def tool_call_text(call: dict[str, Any]) -> str:
    fn = call["function"]
    return f"<tool_call>\n{json.dumps({'name': fn['name'], 'arguments': fn['arguments']}, ensure_ascii=False)}\n" \
           "</tool_call>"


def for_template(tokenizer: Any, c: Conversation) -> tuple[list[Message], list[dict] | None]:
    """The messages and ``tools=`` to give this tokenizer's template: tools and calls it cannot render become
    text (module docstring), everything else is passed as is."""
    return _tools_as_text(c, *template_takes(tokenizer))


def text_messages(c: Conversation) -> list[Message]:
    """The conversation as role/content messages only, tools and calls as text: what a model behind an API
    (llama.cpp's chat path, an OpenAI-compatible server) is sent."""
    messages, _ = _tools_as_text(c, takes_tools=False, takes_calls=False)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _tools_as_text(c: Conversation, takes_tools: bool, takes_calls: bool) -> tuple[list[Message], list[dict] | None]:
    messages = [dict(m) for m in c.messages]
    tools = c.tools
    if tools and not takes_tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        text = f"{TOOLS_PREAMBLE}\n<tools>\n{listing}\n</tools>"
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{text}"
        else:
            messages.insert(0, {"role": "system", "content": text})
        tools = None
    if not takes_calls:
        for m in messages:
            if m.get("tool_calls"):
                calls = "\n".join(tool_call_text(call) for call in m.pop("tool_calls"))
                m["content"] = f"{m['content']}\n{calls}" if m["content"] else calls
    return messages, tools


def _ids(tokenizer: Any, messages: Sequence[Message], tools: list[dict] | None, add_generation_prompt: bool
         ) -> list[int]:
    text = render(tokenizer, messages, tools, add_generation_prompt)
    # The template already writes any BOS it wants; adding special tokens again would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template: a base model has none, and trains on plain text only."""
    return bool(getattr(tokenizer, "chat_template", None))


def tokenize_text(tokenizer: Any, text: str) -> TokenizedConversation:
    ids = tokenizer(text)["input_ids"]
    if tokenizer.eos_token_id is not None and ids[-1:] != [tokenizer.eos_token_id]:
        ids = [*ids, tokenizer.eos_token_id]
    return TokenizedConversation(input_ids=ids, labels=list(ids))


def tokenize(tokenizer: Any, c: Conversation) -> TokenizedConversation:
    """A canonical row as training sees it: a chat conversation through the template, or plain text."""
    if c.is_text:
        return tokenize_text(tokenizer, c.text or "")
    messages, tools = for_template(tokenizer, c)
    return tokenize_conversation(tokenizer, messages, tools)


def tokenize_conversation(tokenizer: Any, messages: Sequence[Message], tools: list[dict] | None = None
                          ) -> TokenizedConversation:
    """Tokenize a whole conversation; assistant turns (with their end-of-turn token) carry labels."""
    if not has_chat_template(tokenizer):
        raise ChatTemplateError(f"the model's tokenizer has no chat template: set model.chat_template to "
                                f"{', '.join(NAMED)} or a .jinja file (plain-text data needs none)")
    full = _ids(tokenizer, messages, tools, add_generation_prompt=False)
    if messages[0]["role"] == "system" and drops_the_system_message(tokenizer):
        raise ChatTemplateError(
            "the chat template leaves the system message out of the answers' context (Mistral's write it only into "
            "the last user turn, Mistral-Nemo's only when that turn ends the conversation), so answers would be "
            f"trained without it: set {system_first_way_out(tokenizer)}, or drop the system messages")
    spans = _spans_by_prefixes(tokenizer, messages, tools, full) if renders_by_prefixes(tokenizer) else None
    if spans is None:
        spans = _spans_in_full_rendering(tokenizer, messages, tools, full)
    labels = [IGNORE_INDEX] * len(full)
    turn_weights = [float(m.get("weight", 1)) for m in messages if m["role"] == "assistant"]
    weights = [1.0] * len(full) if any(w != 1 for w in turn_weights) else None
    for (start, end), weight in zip(spans, turn_weights, strict=True):
        if weight:
            labels[start:end] = full[start:end]
        if weights is not None:
            weights[start:end] = [weight] * (end - start)
    return TokenizedConversation(input_ids=full, labels=labels, weights=weights)


Span = tuple[int, int]


def _spans_by_prefixes(tokenizer: Any, messages: Sequence[Message], tools: list[dict] | None, full: list[int]
                       ) -> list[Span] | None:
    """Each assistant turn as what rendering up to it adds to its generation prompt; None where the rendering
    of this conversation is not the concatenation of its turns."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], tools, add_generation_prompt=True)
        prefix_text = render(tokenizer, messages[: i + 1], tools)
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        prefix = tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
        # The prompt's text must begin the turn's (Mistral-Nemo's writes the system message into a final question
        # only); its tokens may merge with the answer's first across the boundary.
        if not prefix_text.startswith(prompt) or full[: len(prefix)] != prefix or not start < len(prefix):
            return None
        spans.append((start, len(prefix)))
    return spans


def _spans_in_full_rendering(tokenizer: Any, messages: Sequence[Message], tools: list[dict] | None,
                             full: list[int]) -> list[Span]:
    """Each assistant turn located in the full rendering: from its generation prompt through the end-of-turn
    token that closes it, and the whitespace the template writes after that token."""
    end_of_turn, special = end_of_turn_id(tokenizer), _special_ids(tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _ids(tokenizer, messages[:i], tools, add_generation_prompt=True)
        start = len(prompt)
        if full[:start] != prompt or end_of_turn not in full[start:]:
            raise ChatTemplateError(
                f"the chat template renders assistant turn {i} neither as a concatenation of turns nor after its "
                f"generation prompt, closed by {tokenizer.convert_ids_to_tokens(end_of_turn)}; assistant spans "
                "cannot be located")
        end = full.index(end_of_turn, start) + 1
        while end < len(full) and full[end] not in special and not tokenizer.decode([full[end]]).strip():
            end += 1
        spans.append((start, end))
    return spans


@functools.lru_cache(maxsize=8)
def renders_by_prefixes(tokenizer: Any) -> bool:
    """Whether the template renders a conversation as the concatenation of its turns: probed on two exchanges,
    where Qwen 3's and Phi-3.5's templates are not. A template that cannot render the probe keeps the first way,
    whose rendering of the real rows then says what is wrong."""
    probe = [{"role": role, "content": f"{role}{n}"} for n in (1, 2) for role in ("user", "assistant")]
    try:
        return _spans_by_prefixes(tokenizer, probe, None, _ids(tokenizer, probe, None, False)) is not None
    except Exception:  # e.g. a template's raise_exception on roles that do not alternate as it wants
        return True


@functools.lru_cache(maxsize=8)
def drops_the_system_message(tokenizer: Any) -> bool:
    """Whether the template renders a conversation of two exchanges without its system message before the first
    answer, as Mistral's do: Mistral-Nemo's writes it only into a final user turn (nowhere, when the conversation ends
    in an answer), Mistral v0.3's into the last user turn (after the first answer). A template that refuses a system
    message says so itself when it renders one."""
    first_answer = f"{_PROBE}_answer"
    probe = [{"role": "system", "content": _PROBE}, {"role": "user", "content": "U1"},
             {"role": "assistant", "content": first_answer}, {"role": "user", "content": "U2"},
             {"role": "assistant", "content": "A2"}]
    try:
        return _PROBE not in render(tokenizer, probe).partition(first_answer)[0]
    except ChatTemplateError:
        return False


def system_first_way_out(tokenizer: Any) -> str:
    """The setting that writes the system message into the first user turn: the named template of the model's own
    format (``chat_templates.same_format``), else any that does."""
    name = same_format(tokenizer)
    if name is None:
        return f"model.chat_template to a template that writes it first ({', '.join(NAMED)} or a .jinja file)"
    return f"model.chat_template={name} (the model's format, the system message in the first user turn) or another"


@functools.lru_cache(maxsize=8)
def _special_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's special tokens, added ones marked special included."""
    added = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return frozenset(tokenizer.all_special_ids) | added


@functools.lru_cache(maxsize=8)
def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn: the special token the template writes right after an answer
    (``<|im_end|>``, ``<|eot_id|>``, ``<|end|>``, ``<end_of_turn>``, ``</s>``), only whitespace between."""
    text = render(tokenizer, [{"role": "user", "content": "U1"}, {"role": "assistant", "content": _PROBE}])
    after = text[text.rindex(_PROBE) + len(_PROBE):]
    special = _special_ids(tokenizer)
    for token in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token in special:
            return token
        if tokenizer.decode([token]).strip():
            break
    raise ChatTemplateError("the chat template ends an assistant turn with no special token; nothing can stop "
                            "generation")


def generation_prompt_ids(tokenizer: Any, prompt: Conversation) -> list[int]:
    """Token ids that prompt the model for its next assistant turn, as at inference time."""
    messages, tools = for_template(tokenizer, prompt)
    return _ids(tokenizer, messages, tools, add_generation_prompt=True)


def last_exchange(c: Conversation) -> tuple[Conversation, Message]:
    """The conversation before its last assistant turn, and that turn: the prompt a preference pair answers twice
    and its chosen answer."""
    i = last_answer(c.messages)
    assert i is not None, "a pair's row has its chosen answer last"
    return Conversation(messages=list(c.messages[:i]), location=c.location, tools=c.tools), c.messages[i]


def first_exchange(c: Conversation) -> tuple[Conversation, Message] | None:
    """The prompt up to the first trained assistant turn (of loss weight other than 0; the first one where all are
    0), and that turn: what a held-out question and answer are (None for a plain-text row, which has no question). A
    prompt-only row is its prompt and its ``reference`` column's text (empty where it has none)."""
    if c.is_text:
        return None
    if c.columns is not None:
        reference = c.columns.get("reference")
        return (Conversation(messages=list(c.messages), location=c.location, tools=c.tools, columns=c.columns),
                {"role": "assistant", "content": "" if reference is None else str(reference)})
    answers = [i for i, m in enumerate(c.messages) if m["role"] == "assistant"]
    i = next((i for i in answers if c.messages[i].get("weight", 1) != 0), answers[0])
    return Conversation(messages=list(c.messages[:i]), location=c.location, tools=c.tools), c.messages[i]

"""Turn a conversation into token ids and loss labels through the model's own chat template.

Labels are the token ids on assistant turns and -100 elsewhere. The assistant spans are found by rendering the
template on growing prefixes of the conversation, so every assistant turn is trained (not only the last), the
turn's end-of-turn token is trained (the model learns to stop, whatever the pad token is), and the spans are
exactly what the template produces at inference time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune.errors import UserError

IGNORE_INDEX = -100
Message = dict[str, str]


class ChatTemplateError(UserError, ValueError):
    """The tokenizer's chat template cannot be used to find assistant spans."""


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def _ids(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    # The template already writes any BOS it wants; adding special tokens again would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_conversation(tokenizer: Any, messages: Sequence[Message]) -> TokenizedConversation:
    """Tokenize a whole conversation; assistant turns (with their end-of-turn token) carry labels."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("the tokenizer has no chat template; set model.chat_template")
    full = _ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:i], add_generation_prompt=True))
        prefix = _ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        end = len(prefix)
        if full[:end] != prefix or not start < end:
            raise ChatTemplateError(
                "the chat template does not render a conversation as a concatenation of its turns "
                f"(assistant turn {i}); assistant spans cannot be located"
            )
        labels[start:end] = full[start:end]
    return TokenizedConversation(input_ids=full, labels=labels)


def generation_prompt_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids that prompt the model for its next assistant turn, as at inference time."""
    return _ids(tokenizer, messages, add_generation_prompt=True)


def first_exchange(messages: Sequence[Message]) -> tuple[list[Message], Message]:
    """The prompt up to the first assistant turn, and that turn: what a held-out question and answer are."""
    i = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return list(messages[:i]), messages[i]

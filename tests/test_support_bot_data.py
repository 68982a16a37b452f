"""The shipped support_bot dataset: size, format, policies visible in the data, no repeated questions."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from finetune.data.load import load_source
from finetune.paths import DATA_DIR

pytestmark = pytest.mark.quick  # no model run, no server, no subprocess: make check

PATH = DATA_DIR / "support_bot" / "conversations.jsonl"


def test_dataset_is_valid_messages_format_with_enough_conversations():
    loaded = load_source(str(PATH))
    conversations = loaded.conversations
    assert loaded.format == "messages" and len(conversations) >= 150
    assert all(c.messages[0]["role"] == "system" for c in conversations)
    multi_turn = sum(sum(m["role"] == "assistant" for m in c.messages) > 1 for c in conversations)
    assert multi_turn >= 20


def test_questions_are_not_repeated():
    rows = [json.loads(line) for line in PATH.read_text(encoding="utf-8").splitlines()]
    questions = Counter(" ".join(m["content"].split()) for r in rows for m in r["messages"] if m["role"] == "user")
    assert questions.most_common(1)[0][1] == 1


def test_policies_show_in_the_answers():
    rows = [json.loads(line) for line in PATH.read_text(encoding="utf-8").splitlines()]
    answers = [m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant"]
    assert sum("営業" in a for a in answers) >= 15  # pricing and contracts go to sales
    assert sum("エスカレーション" in a or "上位サポート" in a for a in answers) >= 10

"""Dataset formats, and errors that say which file, which record and what is wrong."""

from __future__ import annotations

import json

import pytest

from finetune.dataformats import DataError, is_empty, load_conversations


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_messages_alpaca_and_sharegpt_become_the_same_conversation(tmp_path):
    expected = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Translate\n\nhello"},
        {"role": "assistant", "content": "こんにちは"},
    ]
    messages = write_jsonl(tmp_path / "m.jsonl", [{"messages": expected}])
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "Translate", "input": "hello", "output": "こんにちは"}]))
    sharegpt = write_jsonl(tmp_path / "s.jsonl", [{"conversations": [
        {"from": "human", "value": "Translate\n\nhello"}, {"from": "gpt", "value": "こんにちは"}]}])
    for path, fmt in ((messages, "messages"), (alpaca, "alpaca"), (sharegpt, "sharegpt")):
        conversations, detected = load_conversations(path, "auto", system_prompt="Be brief.")
        assert detected == fmt
        assert conversations[0].messages == expected


def test_bad_role_names_file_line_and_expected_roles(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 2
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistnt", "content": "x"}]})
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_conversations(path)
    assert str(e.value) == (
        f"{path}:3: message 1 has role 'assistnt'; expected one of system, user, assistant, tool"
    )


def test_invalid_json_and_unknown_format_are_located(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"messages": []}\n{"messages": [\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: invalid JSON"):
        load_conversations(path)
    path.write_text('{"prompt": "a", "answer": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: cannot tell the format from keys \(answer, prompt\)"):
        load_conversations(path)


def test_conversation_without_assistant_reply_is_rejected_with_count(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(3)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_conversations(path)
    assert str(e.value).endswith("needs at least one user and one assistant message (and 2 more bad records)")


def test_empty_turns_are_detected():
    assert is_empty([{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}])
    assert not is_empty([{"role": "system", "content": ""}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": "a"}])

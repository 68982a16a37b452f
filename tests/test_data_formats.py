"""Record formats and containers: every format the guide teaches reads into the same canonical conversation,
from every container; tools reach the template or the system message; what a provider format can express
round-trips; problems are one line naming the file and record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.data import formats
from finetune.data.canonical import Conversation, DataError, read_split, row_kind, to_row
from finetune.data.load import load_source

pytestmark = pytest.mark.quick  # no model run, no server, no subprocess: make check

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EXPECTED = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Translate\n\nhello"},
    {"role": "assistant", "content": "こんにちは"},
]
SAME_IN_EVERY_FORMAT = {
    "messages": {"messages": EXPECTED},
    "messages with typed parts": {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Translate\n\n"}, {"type": "text", "text": "hello"}]},
        {"role": "assistant", "content": "こんにちは"}]},
    "bedrock (system + messages)": {"system": "Be brief.", "messages": EXPECTED[1:]},
    "alpaca": {"instruction": "Translate", "input": "hello", "output": "こんにちは", "system": "Be brief."},
    "sharegpt": {"system": "Be brief.", "conversations": [
        {"from": "human", "value": "Translate\n\nhello"}, {"from": "gpt", "value": "こんにちは"}]},
    "gemini": {"systemInstruction": {"parts": [{"text": "Be brief."}]}, "contents": [
        {"role": "user", "parts": [{"text": "Translate\n\nhello"}]},
        {"role": "model", "parts": [{"text": "こんにちは"}]}]},
    "prompt/completion (conversational)": {"prompt": EXPECTED[:2], "completion": EXPECTED[2:]},
    # LLaMA-Factory v1 (its data/v1_sft_demo.jsonl): typed parts with "value", a loss_weight on every message
    "LLaMA-Factory v1": {"messages": [
        {"role": "system", "content": [{"type": "text", "value": "Be brief."}], "loss_weight": 0.0},
        {"role": "user", "content": [{"type": "text", "value": "Translate\n\nhello"}], "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "text", "value": "こんにちは"}], "loss_weight": 1.0}]},
}
DETECTED = {"messages": "messages", "messages with typed parts": "messages", "bedrock (system + messages)": "messages",
            "alpaca": "alpaca", "sharegpt": "sharegpt", "gemini": "gemini",
            "prompt/completion (conversational)": "prompt_completion", "LLaMA-Factory v1": "messages"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", list(SAME_IN_EVERY_FORMAT))
def test_every_format_reads_into_the_same_conversation(tmp_path, name):
    loaded = load_source(str(write_jsonl(tmp_path / "d.jsonl", [SAME_IN_EVERY_FORMAT[name]])))
    assert loaded.format == DETECTED[name]
    assert loaded.conversations[0].messages == EXPECTED
    assert loaded.conversations[0].location == f"{tmp_path}/d.jsonl:1"


def test_plain_prompt_completion_and_system_prompt_option(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Translate\n\nhello", "completion": "こんにちは"}])
    loaded = load_source(str(path), system_prompt="Be brief.")
    assert loaded.format == "prompt_completion" and loaded.conversations[0].messages == EXPECTED


def test_alpaca_history_becomes_earlier_turns():
    c = formats.read({"instruction": "And 3?", "output": "9", "history": [["2 squared?", "4"]]}, "alpaca")
    assert [m["content"] for m in c.messages] == ["2 squared?", "4", "And 3?", "9"]
    assert [m["role"] for m in c.messages] == ["user", "assistant", "user", "assistant"]


def test_text_rows_are_plain_text_for_continued_pretraining():
    c = formats.read({"text": "Once upon a time."}, "text")
    assert c.is_text and c.text == "Once upon a time." and c.messages == []
    # an Alpaca file with a rendered `text` column is still Alpaca: text is what is left when nothing else fits
    assert formats.detect({"instruction": "a", "input": "", "output": "b", "text": "a b"}) == "alpaca"


def test_sharegpt_tool_calling_keeps_tools_calls_and_results():
    record = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "gpt", "value": "21 °C."},
        ],
        "tools": '[{"name": "weather", "description": "Current weather", "parameters": {"type": "object"}}]',
    }
    c = formats.read(record, formats.detect(record))
    assert c.tools == [{"type": "function", "function": {"name": "weather", "description": "Current weather",
                                                         "parameters": {"type": "object"}}}]
    assert c.messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}
    assert c.messages[2] == {"role": "tool", "content": '{"temp": 21}'}


def test_openai_tool_calls_with_null_content_and_tool_messages():
    record = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21"},
        {"role": "assistant", "content": "21 °C."}]}
    c = formats.read(record, "messages")
    assert c.messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}, "id": "call_1"}]}
    assert c.messages[2] == {"role": "tool", "content": "21", "tool_call_id": "call_1"}


def v1(role: str, text: str, weight: float | None = None, key: str = "loss_weight") -> dict:
    """A LLaMA-Factory v1 message (OpenAI's, with ``key="weight"``)."""
    return {"role": role, "content": [{"type": "text", "value": text}], **({key: weight} if weight is not None else {})}


def test_loss_weights_of_llamafactory_v1_and_openai_are_kept_on_assistant_messages_through_the_split_file(tmp_path):
    """LLaMA-Factory v1's loss_weight (any number ≥ 0) and OpenAI's weight (0 or 1) are one thing: kept as
    ``weight`` on an assistant message where it is not 1; on other messages (never trained) read, checked, dropped."""
    path = write_jsonl(tmp_path / "v1.jsonl", [
        {"messages": [v1("user", "q1", 0.0), v1("assistant", "a1", 0.0), v1("user", "q2", 1.0),
                      v1("assistant", "a2", 0.5), v1("user", "q3"), v1("assistant", "a3", 2)]},
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "weight": 0},
                      {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "weight": 1}]},
        # a column a Dataset fills where a message has none: null, the default
        {"messages": [v1("user", "q1", None), {**v1("assistant", "a1"), "loss_weight": None}]},
    ])
    loaded = load_source(str(path))
    assert loaded.format == "messages"
    first, openai, nulls = loaded.conversations
    assert first.messages == [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "weight": 0.0},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "weight": 0.5},
        {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3", "weight": 2.0}]
    assert openai.messages == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "weight": 0},
                               {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    assert nulls.messages == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    back = read_split(write_jsonl(tmp_path / "train.jsonl", [to_row(c) for c in loaded.conversations]))
    assert [c.messages for c in back] == [c.messages for c in loaded.conversations]


def test_llamafactory_v1_tool_call_parts_are_tool_calls():
    record = {"messages": [
        v1("user", "Weather in Paris?", 0.0),
        {"role": "assistant", "content": [{"type": "tool_call", "value": json.dumps(
            {"name": "weather", "arguments": {"city": "Paris"}})}], "loss_weight": 1.0},
        {"role": "tool", "content": [{"type": "text", "value": "21"}], "loss_weight": 0.0},
        v1("assistant", "21 °C.", 1.0)], "tools": json.dumps([TOOLS[0]["function"]])}
    c = formats.read(record, formats.detect(record))
    assert c.messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}
    assert c.messages[2:] == [{"role": "tool", "content": "21"}, {"role": "assistant", "content": "21 °C."}]
    assert c.tools == TOOLS


@pytest.mark.parametrize(("record", "message"), [
    ({"question": "q", "answer": "a"},
     "cannot tell the format from keys (answer, question); expected 'messages' (OpenAI chat); 'conversations' "
     "(ShareGPT; + 'chosen' + 'rejected': LLaMA-Factory's ranking); 'instruction' + 'output' (Alpaca; 'chosen' + "
     "'rejected' for 'output': ranking); 'contents' (Gemini); 'prompt' + 'completion'; 'prompt' alone, with any "
     "other columns (prompt-only, GRPO's); 'input' + "
     "'preferred_output' + 'non_preferred_output' (OpenAI DPO); 'chosen_messages' + 'rejected_messages' "
     "(LLaMA-Factory v1 pairs); 'prompt' + 'chosen' + 'rejected' (preference pairs); 'chosen' + 'rejected' "
     "Human/Assistant transcripts (Anthropic HH); 'text' (plain text, continued pre-training); map other column "
     "names with dataset.columns, or set dataset.format"),
    ({"messages": [], "conversations": []},
     "keys (conversations, messages) fit several formats (messages, sharegpt); set dataset.format"),
    (["not", "an", "object"], "a record must be a JSON object, got list"),
])
def test_undetectable_and_ambiguous_records_say_what_they_are(record, message):
    with pytest.raises(DataError) as e:
        formats.detect(record)
    assert str(e.value) == message


def test_a_record_of_another_format_names_the_format_it_looks_like(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}])
    with pytest.raises(DataError) as e:
        load_source(str(path), "messages")
    assert str(e.value) == (f"{path}:1: keys (instruction, output) are not a messages record; expected 'messages' "
                            "(OpenAI chat); it looks like alpaca: set dataset.format to that, or auto")


@pytest.mark.parametrize(("record", "message"), [
    ({"messages": [{"role": "user", "content": None}]}, "message 0 content must be a string or a list of text "
                                                         "parts, got null"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
     'message 0 content part 0 has keys type, image_url: only text parts ({"type": "text", "text"|"value": …}) are '
     'read'),
    # LLaMA-Factory v1's other parts: the type is a value, not a key
    ({"messages": [{"role": "user", "content": [{"type": "text", "value": "Who?"},
                                                {"type": "image_url", "value": "1.jpg"}]}]},
     "message 0 content part 1 of type 'image_url' has keys type, value: only text parts ({\"type\": \"text\", "
     '"text"|"value": …}) are read'),
    ({"messages": [v1("user", "q"), {"role": "assistant", "content": [{"type": "reasoning", "value": "hmm"}]}]},
     "message 1 content part 0 of type 'reasoning' has keys type, value: only text parts ({\"type\": \"text\", "
     '"text"|"value": …}) are read'),
    ({"messages": [{"role": "user", "content": [{"type": "text", "value": None}]}]},
     "message 0 content part 0 value must be a string, got null"),
    ({"messages": [v1("user", "q"), v1("assistant", "a", -0.5)]},
     "message 1 loss_weight must be a number ≥ 0 (its share of the loss: 0 leaves the message untrained, 1 is the "
     "default), got -0.5"),
    ({"messages": [v1("user", "q", "none"), v1("assistant", "a")]},
     "message 0 loss_weight must be a number ≥ 0 (its share of the loss: 0 leaves the message untrained, 1 is the "
     'default), got "none"'),
    ({"messages": [v1("user", "q"), v1("assistant", "a", True, key="weight")]},
     "message 1 weight must be a number ≥ 0 (its share of the loss: 0 leaves the message untrained, 1 is the "
     "default), got true"),
    ({"messages": [v1("user", "q"), {**v1("assistant", "a", 0, key="weight"), "loss_weight": 1.0}]},
     "message 1 has both 'weight' (0) and 'loss_weight' (1.0); give one"),
    ({"instruction": ["a list"], "output": "b"}, "'instruction' must be a string, got list"),
    ({"contents": [{"role": "assistant", "parts": []}]}, "contents 0 must have role 'user' or 'model'"),
    ({"conversations": [{"from": "function_call", "value": "not json"}]},
     "turn 0 value is not valid JSON (Expecting value)"),
])
def test_bad_fields_name_the_field(record, message):
    with pytest.raises(DataError) as e:
        formats.read(record, formats.detect(record))
    assert str(e.value) == message


# ── containers ──

ROWS = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(5)]


def _containers(tmp_path: Path) -> dict[str, str]:
    import datasets
    import pandas as pd

    write_jsonl(tmp_path / "d.jsonl", ROWS)
    (tmp_path / "d.json").write_text(json.dumps(ROWS), encoding="utf-8")
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved_dict"))
    (tmp_path / "bom_crlf.jsonl").write_bytes(b"\xef\xbb\xbf" + b"".join(
        json.dumps(r).encode() + b"\r\n" for r in ROWS))
    return {name: str(tmp_path / name) for name in
            ("d.jsonl", "d.json", "d.csv", "d.parquet", "saved", "saved_dict", "bom_crlf.jsonl")}


def test_every_container_gives_the_same_conversations(tmp_path):
    expected = [c.messages for c in load_source(str(write_jsonl(tmp_path / "ref.jsonl", ROWS))).conversations]
    for name, path in _containers(tmp_path).items():
        loaded = load_source(path)
        assert loaded.format == "alpaca", name
        assert [c.messages for c in loaded.conversations] == expected, name
    assert load_source(str(tmp_path / "d.csv")).conversations[2].location == f"{tmp_path}/d.csv:4"  # header = 1


def test_odd_column_names_map_through_columns(tmp_path):
    import pandas as pd

    pd.DataFrame([{"question": "Q?", "reply": "A."}]).to_csv(tmp_path / "faq.csv", index=False)
    loaded = load_source(str(tmp_path / "faq.csv"), columns={"instruction": "question", "output": "reply"})
    assert loaded.format == "alpaca"
    assert loaded.conversations[0].messages == [{"role": "user", "content": "Q?"},
                                                {"role": "assistant", "content": "A."}]
    with pytest.raises(DataError, match=r"faq\.csv:2: no column 'answer' \(dataset\.columns\.output\); its keys are "
                                        r"question, reply"):
        load_source(str(tmp_path / "faq.csv"), columns={"instruction": "question", "output": "answer"})


def test_skip_invalid_rows_counts_what_it_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "one"}\n{"text": 5}\nnot json\n{"text": "four"}\n\xff\n')
    with pytest.raises(DataError) as e:
        load_source(str(path))
    assert str(e.value) == (f"{path}:2: 'text' must be a string, got int (and 2 more bad records; "
                            "dataset.skip_invalid_rows=true skips them)")
    loaded = load_source(str(path), skip_invalid_rows=True)
    assert [c.text for c in loaded.conversations] == ["one", "four"]
    assert loaded.records == 5 and len(loaded.invalid) == 3
    assert loaded.invalid[2] == (f"{path}:5: not valid UTF-8 (byte 0xff at column 1, byte offset 54); save the "
                                 "file as UTF-8")


# ── preference pairs (hosted DPO) ──

PAIR = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Translate\n\nhello"}]
OPENAI_DPO = {"input": {"messages": PAIR}, "preferred_output": [{"role": "assistant", "content": "こんにちは"}],
              "non_preferred_output": [{"role": "assistant", "content": "Hello."}]}
SAME_PAIR_IN_EVERY_FORMAT = {
    "openai_dpo": OPENAI_DPO,
    "preference (strings)": {"prompt": "Translate\n\nhello", "chosen": "こんにちは", "rejected": "Hello."},
    "preference (conversational)": {"prompt": PAIR, "chosen": OPENAI_DPO["preferred_output"],
                                    "rejected": OPENAI_DPO["non_preferred_output"]},
    # LLaMA-Factory's ranking data (its data/dpo_en_demo.json, README's Alpaca preference layout)
    "sharegpt (ranking)": {"conversations": [{"from": "human", "value": "Translate\n\nhello"}],
                           "chosen": {"from": "gpt", "value": "こんにちは"},
                           "rejected": {"from": "gpt", "value": "Hello."}},
    "alpaca (ranking)": {"instruction": "Translate", "input": "hello", "chosen": "こんにちは", "rejected": "Hello."},
    # LLaMA-Factory v1's pairs (its data/v1_dpo_demo.jsonl): two whole conversations
    "llamafactory_dpo": {
        "chosen_messages": [v1("system", "Be brief.", 0.0), v1("user", "Translate\n\nhello", 0.0),
                            v1("assistant", "こんにちは", 1.0)],
        "rejected_messages": [v1("system", "Be brief.", 0.0), v1("user", "Translate\n\nhello", 0.0),
                              v1("assistant", "Hello.", 1.0)]},
    # Anthropic HH-RLHF: whole transcripts
    "hh": {"chosen": "\n\nHuman: Translate\n\nhello\n\nAssistant: こんにちは",
           "rejected": "\n\nHuman: Translate\n\nhello\n\nAssistant: Hello."},
}


def read_one(tmp_path: Path, record: dict) -> tuple[str, Conversation]:
    """A file of one record read as a source (the system prompt added, as EXPECTED has it): its format and row."""
    loaded = load_source(str(write_jsonl(tmp_path / "d.jsonl", [record])), system_prompt="Be brief.")
    (c,) = loaded.conversations
    return loaded.format, c


@pytest.mark.parametrize("name", list(SAME_PAIR_IN_EVERY_FORMAT))
def test_preference_pairs_read_into_the_chosen_conversation_and_its_rejected_answer(tmp_path, name):
    fmt, c = read_one(tmp_path, SAME_PAIR_IN_EVERY_FORMAT[name])
    assert fmt == name.split(" ")[0]
    assert (c.messages, c.rejected, c.location) == (EXPECTED, "Hello.", f"{tmp_path / 'd.jsonl'}:1")


@pytest.mark.parametrize("name", list(SAME_PAIR_IN_EVERY_FORMAT))
def test_every_preference_format_round_trips_through_openai_dpo(name):
    record = SAME_PAIR_IN_EVERY_FORMAT[name]
    c = formats.read(record, formats.detect(record))
    written = json.loads(json.dumps(formats.write(c, "openai_dpo")))
    assert formats.read(written, formats.detect(written)) == c and c.rejected == "Hello."


def test_a_preference_pair_round_trips_through_openai_dpo_and_the_split_file(tmp_path):
    c = formats.read(SAME_PAIR_IN_EVERY_FORMAT["preference (conversational)"], "preference")
    assert formats.write(c, "openai_dpo") == OPENAI_DPO
    split = write_jsonl(tmp_path / "train.jsonl", [to_row(c)])
    (back,) = read_split(split)
    assert (back.messages, back.rejected) == (c.messages, c.rejected)
    with_tools = Conversation(EXPECTED, "", tools=TOOLS, rejected="Hello.")
    record = json.loads(json.dumps(formats.write(with_tools, "openai_dpo")))
    assert record["input"]["tools"] == TOOLS and formats.read(record, formats.detect(record)) == with_tools


@pytest.mark.parametrize(("record", "message"), [
    ({"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "'chosen' must be one assistant message"),
    ({"input": {"messages": PAIR}, "preferred_output": [], "non_preferred_output": []},
     "'preferred_output' must be one assistant message"),
    ({"input": PAIR, "preferred_output": [], "non_preferred_output": []}, "'input' must be an object with 'messages'"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "human", "value": "a"}, "rejected": "b"},
     "'chosen' must be a turn from the model ('from': 'gpt', 'value')"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"},
     "'chosen' and 'rejected' must be one conversation that differs only in its last Assistant turn"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "just text"},
     "'rejected' is not a transcript of '\\n\\nHuman:' and '\\n\\nAssistant:' turns"),
    ({"chosen_messages": [v1("user", "q"), v1("assistant", "a")], "rejected_messages": [v1("user", "other"),
                                                                                       v1("assistant", "b")]},
     "'chosen_messages' and 'rejected_messages' must be one conversation that differs only in its last assistant "
     "message"),
    ({"chosen_messages": [v1("user", "q"), v1("assistant", "a")],
      "rejected_messages": [v1("user", "q"), v1("assistant", "b", 0.5)]},
     "message 1 of 'rejected_messages' has loss weight 0.5; a preference pair's answers are trained whole"),
    ({"chosen_messages": [v1("user", "q"), v1("assistant", "a", -1)], "rejected_messages": []},
     "'chosen_messages' message 1 loss_weight must be a number ≥ 0 (its share of the loss: 0 leaves the message "
     "untrained, 1 is the default), got -1"),
    ({"prompt": "p", "chosen": [{"role": "assistant", "content": "a", "weight": 0}], "rejected": "b"},
     "'chosen' has loss weight 0; a preference pair's answers are trained whole"),
])
def test_bad_preference_records_name_the_field(record, message):
    with pytest.raises(DataError) as e:
        formats.read(record, formats.detect(record))
    assert str(e.value) == message


# ── answers labeled desirable or not (KTO's unpaired data) ──

SAME_LABELED_ROW_IN_EVERY_FORMAT = {
    "prompt_completion (TRL's unpaired, conversational)": {"prompt": PAIR, "completion": EXPECTED[2:], "label": False},
    "prompt_completion (TRL's unpaired, strings)": {"prompt": "Translate\n\nhello", "completion": "こんにちは",
                                                    "label": False},
    "messages (LLaMA-Factory's kto_en_demo)": {"messages": EXPECTED, "label": False},
    "sharegpt (LLaMA-Factory's KTO tag as label)": {"system": "Be brief.", "conversations": [
        {"from": "human", "value": "Translate\n\nhello"}, {"from": "gpt", "value": "こんにちは"}], "label": False},
}


@pytest.mark.parametrize("name", list(SAME_LABELED_ROW_IN_EVERY_FORMAT))
def test_a_labeled_answer_reads_with_its_label_and_round_trips_through_the_split_file(tmp_path, name):
    fmt, c = read_one(tmp_path, SAME_LABELED_ROW_IN_EVERY_FORMAT[name])
    assert fmt == name.split(" ")[0]
    assert (c.messages, c.label, c.rejected) == (EXPECTED, False, None)
    (back,) = read_split(write_jsonl(tmp_path / "train.jsonl", [to_row(c)]))
    assert (back.messages, back.label) == (c.messages, False)
    assert read_split(write_jsonl(tmp_path / "sft.jsonl", [to_row(Conversation(EXPECTED, ""))]))[0].label is None


@pytest.mark.parametrize(("record", "message"), [
    ({"messages": EXPECTED, "label": "yes"},
     "'label' must be true or false (KTO: whether the last answer is desirable), got \"yes\""),
    ({"messages": EXPECTED[:2], "label": True}, "a record with a 'label' must end with the answer it judges"),
])
def test_bad_labels_name_the_field(record, message):
    with pytest.raises(DataError) as e:
        formats.read(record, formats.detect(record))
    assert str(e.value) == message


PROMPT_ONLY = {
    "strings": ({"prompt": "What is 3 + 4?", "reference": 7, "level": {"digits": 1}},
                [EXPECTED[0], {"role": "user", "content": "What is 3 + 4?"}]),
    "conversational": ({"prompt": EXPECTED[:2], "reference": "こんにちは", "level": None}, EXPECTED[:2]),
}


@pytest.mark.parametrize("name", list(PROMPT_ONLY))
def test_a_prompt_only_row_keeps_its_other_columns_and_round_trips_through_the_split_file(tmp_path, name):
    """TRL's prompt-only data (GRPO's): the prompt is the conversation, every other column kept as it is for the
    reward functions; no chat format can write a row without an answer."""
    record, messages = PROMPT_ONLY[name]
    fmt, c = read_one(tmp_path, record)
    columns = {k: v for k, v in record.items() if k != "prompt"}
    assert (fmt, c.messages, c.columns, row_kind(c)) == ("prompt", messages, columns, "prompt")
    (back,) = read_split(write_jsonl(tmp_path / "train.jsonl", [to_row(c)]))
    assert (back.messages, back.columns) == (messages, columns)
    assert read_split(write_jsonl(tmp_path / "sft.jsonl", [to_row(Conversation(EXPECTED, ""))]))[0].columns is None
    with pytest.raises(formats.CannotExpress, match="no place for a prompt without an answer"):
        formats.write(c, "openai")


def test_a_prompt_column_named_like_a_reward_functions_own_argument_is_refused():
    with pytest.raises(DataError) as e:
        formats.read({"prompt": "q", "completion_ids": [1]}, "prompt")
    assert str(e.value) == ("column 'completion_ids' has the name of an argument the reward functions are passed "
                            "besides the columns (prompts, completions, completion_ids, trainer_state, log_extra, "
                            "log_metric, length, trained); rename it (dataset.columns)")


# ── writing provider formats ──

TOOLS = [{"type": "function", "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}}}]
CAN_EXPRESS = {
    "openai": [
        Conversation(EXPECTED, ""),
        Conversation([{"role": "user", "content": "Weather?"},
                      {"role": "assistant", "content": "", "tool_calls": [
                          {"type": "function", "function": {"name": "weather", "arguments": {"city": "東京"}},
                           "id": "c1"}]},
                      {"role": "tool", "content": "21", "tool_call_id": "c1"},
                      {"role": "assistant", "content": "21 °C."}], "", tools=TOOLS),
        # OpenAI's weight: 0 on an assistant message it does not train
        Conversation([*EXPECTED[:2], {**EXPECTED[2], "weight": 0.0}, *EXPECTED[1:]], ""),
    ],
    "gemini": [Conversation(EXPECTED, ""), Conversation(EXPECTED[1:] * 2, "")],
    "bedrock": [Conversation(EXPECTED, ""), Conversation(EXPECTED[1:] * 2, "")],
    "bedrock_conversation": [Conversation(EXPECTED, ""), Conversation(EXPECTED[1:] * 2, "")],
}
READ_BACK_AS = {"openai": "messages", "gemini": "gemini", "bedrock": "messages", "bedrock_conversation": "messages"}


@pytest.mark.parametrize("output", list(CAN_EXPRESS))
def test_what_a_format_can_express_round_trips_unchanged(output):
    for c in CAN_EXPRESS[output]:
        record = json.loads(json.dumps(formats.write(c, output)))  # through JSON, as in the file
        back = formats.read(record, formats.detect(record))
        assert formats.detect(record) == READ_BACK_AS[output]
        assert (back.messages, back.tools) == (c.messages, c.tools)


def test_provider_shapes():
    assert formats.write(CAN_EXPRESS["openai"][2], "openai")["messages"][2] == {
        "role": "assistant", "content": "こんにちは", "weight": 0}
    assert formats.write(CAN_EXPRESS["openai"][1], "openai")["messages"][1] == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather",
                                                                      "arguments": '{"city": "東京"}'}}]}
    assert formats.write(Conversation(EXPECTED, ""), "gemini") == {
        "systemInstruction": {"role": "system", "parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Translate\n\nhello"}]},
                     {"role": "model", "parts": [{"text": "こんにちは"}]}]}
    assert formats.write(Conversation(EXPECTED, ""), "bedrock") == {"system": "Be brief.", "messages": EXPECTED[1:]}
    assert formats.write(Conversation(EXPECTED, ""), "bedrock_conversation") == {
        "schemaVersion": "bedrock-conversation-2024", "system": [{"text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"text": "Translate\n\nhello"}]},
                     {"role": "assistant", "content": [{"text": "こんにちは"}]}]}


@pytest.mark.parametrize(("c", "output", "why"), [
    (CAN_EXPRESS["openai"][1], "bedrock", "no tool definitions, tool calls or tool results"),
    (CAN_EXPRESS["openai"][1], "gemini", "no tool definitions, tool calls or tool results"),
    (CAN_EXPRESS["openai"][1], "bedrock_conversation", "no tool definitions, tool calls or tool results"),
    (Conversation([*EXPECTED[1:], EXPECTED[0], *EXPECTED[1:]], ""), "bedrock_conversation", "one system prompt"),
    (Conversation([], "", text="plain"), "openai", "a plain-text row has no place"),
    (Conversation(EXPECTED[1:2] * 2 + EXPECTED[2:], ""), "bedrock", "alternating"),
    (Conversation(EXPECTED, "", rejected="Hello."), "openai", "no place for a rejected answer"),
    (Conversation(EXPECTED, "", rejected="Hello."), "gemini", "no place for a rejected answer"),
    (Conversation(EXPECTED, ""), "openai_dpo", "needs a preference pair"),
    (Conversation(EXPECTED, "", label=True), "openai", "no place for a label"),
    (Conversation([*EXPECTED[:2], {**EXPECTED[2], "weight": 0.5}], ""), "openai",
     r"the OpenAI chat format takes a weight of 0 or 1 on an assistant message, not 0.5 \(message 2\)"),
    *((Conversation([*EXPECTED[:2], {**EXPECTED[2], "weight": 0.0}], ""), output,
       r"format has no per-message loss weight \(message 2 has 0\)")
      for output in ("gemini", "bedrock", "bedrock_conversation")),
    (Conversation([*EXPECTED[:2], {**EXPECTED[2], "weight": 0.5}], "", rejected="Hello."), "openai_dpo",
     "no loss weight for the chosen answer"),
])
def test_what_a_format_cannot_express_is_refused_not_dropped(c, output, why):
    with pytest.raises(formats.CannotExpress, match=why):
        formats.write(c, output)


# ── real peer data (../shared/data, present in this setup only) ──

@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not here")
def test_real_alpaca_and_sharegpt_tool_calling_files_read_as_detected():
    alpaca = load_source(str(SHARED / "alpaca_en_demo.json"))
    assert alpaca.format == "alpaca" and len(alpaca.conversations) == alpaca.records == 999
    glaive = load_source(str(SHARED / "glaive_toolcall_en_demo.json"))
    assert glaive.format == "sharegpt" and len(glaive.conversations) == 300
    assert sum(bool(c.tools) for c in glaive.conversations) == 191  # the other 109 have "tools": "[]"
    assert sum(bool(m.get("tool_calls")) for c in glaive.conversations for m in c.messages) == 211

"""The validate stage through the CLI: any format and container, several sources with weights, the report
(JSON, Markdown, the printed table), provider formats written beside the splits, and plain-text data trained
and evaluated on every token."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from finetune.config import load_run_config
from finetune.data.canonical import read_split
from finetune.pipeline import graph
from finetune.pipeline.graph import check_graph, run_graph, stages_for
from finetune.stages import STAGES
from finetune.stages import validate as validate_stage

from .conftest import TINY, conversation, run_cli
from .test_config import composed

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def validate(tmp_path: Path, *args: str) -> tuple[dict, str]:
    proc = run_cli(*TINY, "stages=[validate]", "hydra.run.dir=run", *args, cwd=tmp_path)
    return json.loads((tmp_path / "run" / "validate" / "report.json").read_text()), proc.stdout + proc.stderr


def tool_chat(i: int) -> dict:
    return {"messages": [
        {"role": "user", "content": f"What is the weather in city {conversation(i)['messages'][1]['content']}?"},
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": f"c{i}"})}}]},
        {"role": "tool", "content": json.dumps({"temp": i})},
        {"role": "assistant", "content": f"It is {i} degrees."}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}


def test_report_markdown_table_and_provider_formats(tmp_path):
    rows = [conversation(i) for i in range(20)] + [tool_chat(i) for i in range(20, 30)]
    rows.append(conversation(3))  # an exact duplicate
    rows[5]["messages"][2]["content"] += " Or write to help@example.com."
    jsonl(tmp_path / "d.jsonl", rows)
    report, printed = validate(tmp_path, "dataset.path=d.jsonl", "dataset.write_formats=[openai,gemini,bedrock]",
                               "dataset.checks.pii.action=redact", "train.max_seq_len=512")
    assert report["checks"]["duplicates"]["count"] == 1 and report["checks"]["pii"]["count"] == 1
    assert sum(report["splits"].values()) == 30 and report["tools"]["train_rows_with_tools"] > 0
    assert "appended to the system message" in report["tools"]["definitions"]
    out = tmp_path / "run" / "validate"
    findings = [json.loads(line) for line in (out / "findings.jsonl").read_text().splitlines()]
    assert [f["row"] for f in findings if f["check"] == "duplicates"] == ["d.jsonl:31"]
    assert [f["check"] for f in findings if f["row"] == "d.jsonl:6"] == ["pii"]
    md = (out / "report.md").read_text()
    assert "| duplicates | drop | 1 |" in md and "| pii | redact | 1 |" in md and "## Tools" in md
    assert "duplicates" in printed and "near_duplicates" in printed and "records from 1 source(s)" in printed
    assert "help@example.com" not in (out / "train.jsonl").read_text() + (out / "test.jsonl").read_text() + \
        (out / "validation.jsonl").read_text()
    for split in ("train", "validation", "test"):
        n = report["splits"][split]
        tools = sum(bool(c.tools) for c in read_split(out / f"{split}.jsonl"))
        assert len((out / f"{split}.openai.jsonl").read_text().splitlines()) == n
        for fmt in ("gemini", "bedrock"):  # no place for tools: left out, counted, never half-written
            assert len((out / f"{split}.{fmt}.jsonl").read_text().splitlines()) == n - tools
            assert report["written_formats"][f"{split}.{fmt}.jsonl"]["skipped"] == tools
    first = json.loads((out / "train.openai.jsonl").read_text().splitlines()[0])
    assert set(first) <= {"messages", "tools"}


def test_sources_mix_with_weights_and_any_container(tmp_path):
    import pandas as pd

    jsonl(tmp_path / "a.jsonl", [conversation(i) for i in range(20)])
    pd.DataFrame([{"question": f"Alpaca question {conversation(i)['messages'][1]['content']}",
                   "reply": f"Alpaca answer {conversation(i)['messages'][2]['content']}"}
                  for i in range(100, 120)]).to_parquet(tmp_path / "b.parquet")
    report, _ = validate(tmp_path, "dataset.path=a.jsonl", "dataset.validation_fraction=0.1",
                         "dataset.test_fraction=0.1",
                         "dataset.sources=[{path:b.parquet,weight:2,columns:{instruction:question,output:reply}}]")
    assert [(s["name"], s["format"], s["read"]) for s in report["sources"]] == [
        ("a.jsonl", "messages", 20), ("b.parquet", "alpaca", 20)]
    train = read_split(tmp_path / "run" / "validate" / "train.jsonl")
    from_b = sum(c.messages[0]["content"].startswith("Alpaca question") for c in train)
    held_out = report["splits"]["validation"] + report["splits"]["test"]
    assert len(train) == report["splits"]["train"] == 40 - held_out + from_b // 2
    assert from_b % 2 == 0 and from_b >= 24  # every training row of b twice


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not here")
@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "glaive_toolcall_en_demo.json"])
def test_real_peer_data_validates_as_is(tmp_path, name):
    report, _ = validate(tmp_path, f"dataset.path={SHARED / name}", "train.max_seq_len=2048")
    assert report["format"] == ("alpaca" if name.startswith("alpaca") else "sharegpt")
    dropped = sum(c["count"] for c in report["checks"].values() if c["action"] == "drop")
    assert sum(report["splits"].values()) + dropped == report["records"]  # every record accounted for
    assert sum(report["splits"].values()) >= 0.8 * report["records"]


def test_plain_text_trains_and_evaluates_on_every_token(tmp_path):
    texts = [{"text": " ".join(conversation(i)["messages"][2]["content"] for _ in range(3))} for i in range(30)]
    jsonl(tmp_path / "corpus.jsonl", texts)
    run_cli(*TINY, "dataset.path=corpus.jsonl", "train.max_steps=2", "stages=[validate,train,merge,evaluate]",
            "hydra.run.dir=run", cwd=tmp_path)
    report = json.loads((tmp_path / "run" / "validate" / "report.json").read_text())
    assert report["format"] == "text" and report["plain_text_train"] == report["splits"]["train"]
    assert report["tokens_per_conversation"]["train"] == report["loss_tokens_per_conversation"]["train"]
    result = json.loads((tmp_path / "run" / "evaluate" / "eval.json").read_text())
    assert result["details"]["perplexity"]["base"]["tokens"] == \
        report["loss_tokens_per_conversation"]["test"]["total"] - report["splits"]["test"]  # all but the first
    assert result["prompts"] == 0 and "rougeL" not in result["metrics"]  # no questions to answer in plain text
    assert (tmp_path / "run" / "evaluate" / "samples.jsonl").read_text() == ""


def test_a_run_plans_once_hashes_the_data_once_and_reads_it_once(chat_dataset, tmp_path, monkeypatch):
    """What validate's pre-run check read, checked and tokenized reaches its run through the graph's plan."""
    calls: Counter[str] = Counter()

    def counting(name, function):
        def counted(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return counted

    real_hash = graph.sha256_path
    monkeypatch.setattr(graph, "sha256_path", lambda path: calls.update(["hash"] * (path == chat_dataset))
                        or real_hash(path))  # the stage's artifacts are hashed too, once each
    monkeypatch.setattr(graph, "_plan", counting("plan", graph._plan))
    monkeypatch.setattr(validate_stage, "prepare", counting("prepare", validate_stage.prepare))
    spec = load_run_config(composed(*TINY, "stages=[validate]", f"dataset.path={chat_dataset}"))
    stages, _ = stages_for(spec, STAGES)  # as the CLI runs them
    run_dir = tmp_path / "run"
    run_graph(spec, run_dir, stages, check_graph(spec, run_dir, stages))
    assert calls == {"plan": 1, "hash": 1, "prepare": 1}
    assert len(read_split(run_dir / "validate" / "train.jsonl")) > 0

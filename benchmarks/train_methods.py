"""Every training method on the real model: `python benchmarks/train_methods.py [STEPS]` (default 8).

Runs `python -m finetune +recipe=support_bot 'stages=[validate,train]' method=M train.max_steps=STEPS` for
M in full, lora, dora, qlora (each into a temporary run directory) and records, from each run's `plan.json` and
`metrics.json`: trainable parameters, training tokens/s, final train loss, and the plan's memory estimate beside
the measured peak with the error. Results: benchmarks/results/train_methods.json.
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
METHODS = ("full", "lora", "dora", "qlora")


def main(steps: int) -> None:
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            run_dir = Path(tmp) / method
            subprocess.run([sys.executable, "-m", "finetune", "+recipe=support_bot", "stages=[validate,train]",
                            f"method={method}", f"train.max_steps={steps}", f"hydra.run.dir={run_dir}"],
                           cwd=REPO, check=True)
            plan = json.loads((run_dir / "train" / "plan.json").read_text())
            metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
            memory = metrics["memory"]
            results[method] = {
                "trainable_parameters": plan["trainable_parameters"],
                "tokens_per_s": metrics["tokens_per_s"],
                "train_loss": round(metrics["train_loss"], 4),
                "memory_estimate_gb": round(memory["estimate_bytes"] / 1e9, 2),
                "memory_measured_gb": round(memory["measured_bytes"] / 1e9, 2),
                "memory_error_percent": memory["error_percent"],
                "estimate_parts_gb": {k: round(v / 1e9, 3) for k, v in plan["memory_estimate_bytes"].items()},
            }
    out = {"command": f"python benchmarks/train_methods.py {steps}",
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, cpu", "steps": steps,
           "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_methods.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)

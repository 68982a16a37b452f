"""Every training method on the real model: `python benchmarks/train_methods.py [STEPS] [ROUNDS]` (default 8, 1).

Runs `python -m finetune +recipe=support_bot 'stages=[validate,train]' method=M train.max_steps=STEPS` for
M in full, lora, dora, qlora (each into a temporary run directory), ROUNDS times in turn, and records, from each
run's `plan.json` and `metrics.json`: trainable parameters, training tokens/s, final train loss, and the plan's
memory estimate beside the measured peak with the error — one value per round, since the peak RSS of identical runs
moves with glibc's heap; the fp32 matmul rate before and after. Results: benchmarks/results/train_methods.json.
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
sys.path.insert(0, str(Path(__file__).parent))
from train_speed import matmul_peak  # noqa: E402


def main(steps: int, rounds: int) -> None:
    import torch

    results: dict[str, dict] = {}
    before = matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            for method in METHODS:
                run_dir = Path(tmp) / f"{method}-{round_}"
                subprocess.run([sys.executable, "-m", "finetune", "+recipe=support_bot", "stages=[validate,train]",
                                f"method={method}", f"train.max_steps={steps}", f"hydra.run.dir={run_dir}"],
                               cwd=REPO, check=True)
                plan = json.loads((run_dir / "train" / "plan.json").read_text())
                metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
                memory = metrics["memory"]
                result = results.setdefault(method, {
                    "trainable_parameters": plan["trainable_parameters"],
                    "train_loss": round(metrics["train_loss"], 4),
                    "memory_estimate_gb": round(memory["estimate_bytes"] / 1e9, 2),
                    "estimate_parts_gb": {k: round(v / 1e9, 3) for k, v in plan["memory_estimate_bytes"].items()},
                    "tokens_per_s": [], "memory_measured_gb": [], "memory_error_percent": []})
                result["tokens_per_s"].append(metrics["tokens_per_s"])
                result["memory_measured_gb"].append(round(memory["measured_bytes"] / 1e9, 2))
                result["memory_error_percent"].append(memory["error_percent"])
    after = matmul_peak()
    out = {"command": f"python benchmarks/train_methods.py {steps} {rounds}",
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, cpu", "steps": steps, "rounds": rounds,
           "matmul_gflops_before_after": [round(before / 1e9, 1), round(after / 1e9, 1)], "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_methods.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8, int(sys.argv[2]) if len(sys.argv) > 2 else 1)

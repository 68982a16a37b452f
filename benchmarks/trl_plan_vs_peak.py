"""The plan's memory estimate against the measured peak under TRL's trainers: `python benchmarks/trl_plan_vs_peak.py`.

Four optimizer steps each of DPO and ORPO on SmolLM2-135M LoRA (the support_bot recipe's settings) and of the
arithmetic_grpo recipe, every micro-batch as long as the longest, so that the first steps already reach the run's
peak: the pairs are support_bot's one-question conversations, each rejected answer another conversation's answer
(the same style and length), cut at `train.max_seq_len=256` — every prompt and answer fills it. Each run's
`train/metrics.json` holds the peak RSS beside the plan's estimate; the plan's parts come from `train/plan.json`.
Results: benchmarks/results/trl_plan_vs_peak.json.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))

from train_speed import matmul_peak  # noqa: E402

CONVERSATIONS = REPO / "bundled_data" / "support_bot" / "conversations.jsonl"


def write_pairs(path: Path) -> int:
    """support_bot's one-question conversations as pairs, each rejected answer the next one's answer."""
    rows = [json.loads(line)["messages"] for line in CONVERSATIONS.read_text(encoding="utf-8").splitlines()]
    single = [m for m in rows if [x["role"] for x in m] == ["system", "user", "assistant"]]
    pairs = [{"prompt": m[:2], "chosen": [m[2]], "rejected": [single[(i + 1) % len(single)][2]]}
             for i, m in enumerate(single)]
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
    return len(pairs)


def run(name: str, folder: Path, overrides: list[str]) -> dict:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "finetune", *overrides, "train.max_steps=4", "stages=[validate,train]",
                    f"hydra.run.dir={folder}"], cwd=REPO, check=True, capture_output=True)
    plan = json.loads((folder / "train" / "plan.json").read_text())
    memory = json.loads((folder / "train" / "metrics.json").read_text())["memory"]
    return {"objective": name, "overrides": overrides, "wall_s": round(time.monotonic() - started, 1),
            "largest_micro_batch_tokens": plan["largest_micro_batch_tokens"],
            "plan_parts_gb": {k: round(v / 1e9, 3) for k, v in plan["memory_estimate_bytes"].items()},
            "estimate_gb": round(memory["estimate_bytes"] / 1e9, 2),
            "measured_gb": round(memory["measured_bytes"] / 1e9, 2),
            "measured_as": memory["measured_as"], "error_percent": memory["error_percent"]}


def main() -> None:
    before = matmul_peak() / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.jsonl"
        count = write_pairs(pairs)
        common = ["+recipe=support_bot", f"dataset.path={pairs}", "train.max_seq_len=256",
                  "dataset.checks.pii.action=warn"]
        runs = [run(o, Path(tmp) / o, [*common, f"objective={o}"]) for o in ("dpo", "orpo")]
        runs.append(run("grpo", Path(tmp) / "grpo", ["+recipe=arithmetic_grpo"]))
    result = {"command": "python benchmarks/trl_plan_vs_peak.py", "machine": f"{platform.machine()}",
              "when": time.strftime("%Y-%m-%d %H:%M"), "matmul_gflops_before_after": [round(before, 1),
                                                                                    round(matmul_peak() / 1e9, 1)],
              "pairs": count, "runs": runs}
    for r in runs:
        print(f"{r['objective']}: plan {r['estimate_gb']} GB, measured {r['measured_gb']} GB "
              f"({r['error_percent']:+} %), largest micro-batch {r['largest_micro_batch_tokens']} tokens")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trl_plan_vs_peak.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

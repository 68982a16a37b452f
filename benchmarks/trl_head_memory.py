"""What TRL's trainers hold for the vocabulary on a CPU, for the plan's `logits` part:
`python benchmarks/trl_head_memory.py`.

Two heads, each measured alone in a fresh process as its peak resident set above the process's before the call
(VmHWM after `/proc/self/clear_refs`), a forward and a backward over hidden states of SmolLM2-135M's width (576)
and a vocabulary of 49,152 (and 16,000 and 128,256, to see the tile's width):
- `fused`: `trl.kernels.ChunkedLogProbFunction`, the chunked log-probability head of TRL's DPO, KTO and GRPO
  trainers. Without Triton it scores every position, in tiles of at most 4,096 positions × 32,768 vocabulary
  entries; the result is in tiles of `min(N, 4096) × min(V, 32768)` fp32 values.
- `full`: what TRL's ORPO and CPO trainers do with the logits of a pair (`ORPOTrainer.concatenated_forward`: the
  chosen answer's cross-entropy over a contiguous copy, `selective_log_softmax` over both, the logits' mean for the
  metrics); the result is in copies of the logits (`rows × T × V` fp32).
The slope over N (a least-squares line through the sizes) is the multiple the plan uses; the line's intercept is
what the first backward of a process costs whatever the size (autograd's threads and buffers), which a training
run has paid by its peak anyway. Results: benchmarks/results/trl_head_memory.json.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
HIDDEN = 576

ONE = """
import json, sys, torch
from pathlib import Path

def status(key):
    return next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines()
                if l.startswith(key + ":"))

head, n, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
weight = torch.randn(vocab, HIDDEN) * 0.02
if head == "fused":
    from trl.kernels import ChunkedLogProbFunction
    hidden = torch.randn(n, HIDDEN, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
else:
    from torch import nn
    from trl.trainer.utils import selective_log_softmax
    hidden = torch.randn(2, n // 2, HIDDEN, requires_grad=True)
    labels = torch.randint(0, vocab, (2, n // 2))
base = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
if head == "fused":  # DPO's outputs; only the log-probabilities reach the loss
    out = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 32768, None, 1.0,
                                       ("log_probs", "entropy", "mean_logits", "is_top1"))
    loss = out[0].sum()
    unit = min(n, 4096) * min(vocab, 32768) * 4
else:  # ORPOTrainer.concatenated_forward and get_batch_loss_metrics, the model's head being hidden @ weight.T
    logits = hidden @ weight.T
    nll = nn.CrossEntropyLoss()(logits[:1, :-1].contiguous().view(-1, vocab), labels[:1, 1:].reshape(-1))
    logps = selective_log_softmax(logits[:, :-1], labels[:, 1:]).mean(-1)
    chosen, rejected = logps
    odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
    metrics = (logits[:1, :-1].detach().mean(), logits[1:, :-1].detach().mean())
    loss = nll - torch.nn.functional.logsigmoid(odds)
    unit = n * vocab * 4
loss.backward()
print(json.dumps({"head": head, "positions": n, "vocab": vocab, "peak_bytes": status("VmHWM") - base,
                  "unit_bytes": unit}))
""".replace("HIDDEN", str(HIDDEN))


def measure(head: str, positions: int, vocab: int) -> dict:
    done = subprocess.run([sys.executable, "-c", ONE, head, str(positions), str(vocab)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def slope(points: list[dict]) -> tuple[float, float]:
    """Least squares of peak bytes on unit bytes: (units per unit, intercept bytes)."""
    xs, ys = [p["unit_bytes"] for p in points], [p["peak_bytes"] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return k, my - k * mx


def main() -> None:
    result: dict = {"command": "python benchmarks/trl_head_memory.py", "machine": f"{platform.machine()}",
                    "when": time.strftime("%Y-%m-%d %H:%M"), "hidden": HIDDEN, "heads": {}}
    for head, sizes in (("fused", (512, 1024, 2048, 4096)), ("full", (256, 512, 1024, 2048))):
        points = [measure(head, n, 49152) for n in sizes]
        k, b = slope(points)
        other = [measure(head, 1024, v) for v in (16000, 128256)]
        result["heads"][head] = {"points": points + other, "units_per_unit": round(k, 2),
                                 "intercept_mb": round(b / 1e6), "unit": "fp32 tile" if head == "fused" else
                                 "fp32 logits of every position",
                                 "other_vocabularies_units": [round((p["peak_bytes"] - b) / p["unit_bytes"], 2)
                                                              for p in other]}
        print(f"{head}: {k:.2f} units per unit (intercept {b / 1e6:.0f} MB); at other vocabularies: "
              f"{result['heads'][head]['other_vocabularies_units']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trl_head_memory.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

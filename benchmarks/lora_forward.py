"""LoRA's forward as one addmm (`finetune.lora_forward`) against peft's, side by side in one process:
`python benchmarks/lora_forward.py [ROWS]` (default 24).

The support_bot recipe's model as its train stage builds it (SmolLM2-135M, LoRA r=16, alpha 32 on every
projection, fp32), and its first ROWS training conversations as training batches them (one row a micro-batch, the
loss on the assistant tokens, `training.token_loss_sum`). Each row's forward and backward pass runs twice, once
with each forward, in alternating order; no optimizer step, so both see the same weights, and their gradients are
compared bit for bit. The machine's speed moves within minutes: alternating row by row is what makes the two
comparable. The fp32 matmul rate is measured before and after. Results: benchmarks/results/lora_forward.json.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import matmul_peak  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def main(rows: int = 24) -> None:
    import torch
    from peft.tuners.lora.layer import Linear

    from finetune import resolvers
    from finetune.backends import hf
    from finetune.cli import register_recipes
    from finetune.lora_forward import AddmmLoraLinear
    from finetune.models import load_tokenizer, resolve_model_source
    from finetune.objectives import sft
    from finetune.plan_command import composed
    from finetune.stages import validate
    from finetune.training import Batcher, token_loss_sum

    resolvers.register()
    register_recipes()
    run = composed(["+recipe=support_bot"])
    tokenizer = load_tokenizer(resolve_model_source(run.model), run.model)
    train, _ = sft.datasets(run, tokenizer, validate.prepare(run).splits["train"][:rows], [])
    model = hf.load(run).train()
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    collate = Batcher(pad_id=tokenizer.pad_token_id or 0, packing=False)

    def step(batch: dict, forward: type) -> tuple[float, list]:
        for layer in layers:
            layer.__class__ = forward
        started = time.perf_counter()
        total, count = token_loss_sum(model, batch)
        (total / count).backward()
        seconds = time.perf_counter() - started
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
        return seconds, grads

    before = matmul_peak()
    seconds = {"peft": 0.0, "addmm": 0.0}
    tokens, identical = 0, 0
    step(collate([train[0]]), Linear)  # warm-up: first-call allocations
    for i, row in enumerate(train):
        batch = collate([row])
        order = (("peft", Linear), ("addmm", AddmmLoraLinear))
        grads = {}
        for name, forward in order if i % 2 == 0 else order[::-1]:
            took, grads[name] = step(batch, forward)
            seconds[name] += took
        tokens += len(row["input_ids"])
        identical += all(a.equal(b) for a, b in zip(grads["peft"], grads["addmm"], strict=True))
    after = matmul_peak()
    rate = {name: round(tokens / s, 1) for name, s in seconds.items()}
    out = {"command": f"python benchmarks/lora_forward.py {rows}",
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, cpu",
           "matmul_gflops_before_after": [round(before / 1e9, 1), round(after / 1e9, 1)],
           "rows": len(train), "tokens": tokens, "lora_layers": len(layers),
           "seconds": {name: round(s, 2) for name, s in seconds.items()},
           "tokens_per_s": rate, "speedup": round(seconds["peft"] / seconds["addmm"], 3),
           "rows_with_identical_gradients": identical}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lora_forward.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))

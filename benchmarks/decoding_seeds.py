"""How far the answer metrics move with the decoding seed alone: `python benchmarks/decoding_seeds.py RUN_DIR
[RUN_DIR ...] [--seeds 42-47] [--out FILE]`.

Each finished run's Modelfile GGUF answers the run's held-out prompts once per seed, by llama.cpp under the run's own
evaluation decoding (the Modelfile's sampling, `eval.max_new_tokens`), as its evaluate stage answered them; the
answer metrics the run lists in `eval.metrics` are computed as there. With the run's own seed the figures are its
`eval.json`'s; the other seeds show the spread of one sampled evaluation of 18 answers — what two models' figures must
differ by before the difference is more than that noise. Results: benchmarks/results/decoding_seeds.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import matmul_peak  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def seeded_figures(run_dir: str, seeds: list[int]) -> dict:
    from finetune.data.canonical import read_split
    from finetune.finished_run import FinishedRun
    from finetune.generate.llama_cpp import LlamaCppModel
    from finetune.metrics import METRICS
    from finetune.stages.evaluate import decoding_for, held_out_samples

    finished = FinishedRun.read(run_dir)
    run, tokenizer = finished.run, finished.tokenizer()
    samples = held_out_samples(read_split(finished.artifact("validate", "test"))[: run.eval.max_samples])
    metrics = [METRICS[name] for name in run.eval.metrics if METRICS[name].needs == "answers"]
    gguf = finished.gguf(None)
    model = LlamaCppModel(gguf, tokenizer, "tuned")
    by_seed = {}
    try:
        for seed in seeds:
            decoding = dataclasses.replace(decoding_for(run, tokenizer), seed=seed)
            answers = model.generate([s.prompt for s in samples], decoding)
            by_seed[seed] = {row: value for m in metrics for row, value in m.compute(samples, answers, run.eval)
                             .values.items()}
    finally:
        model.close()
    rows = by_seed[seeds[0]].keys()
    spread = {}
    for row in rows:
        values = [v[row] for v in by_seed.values() if v[row] is not None]
        if values:
            spread[row] = {"mean": round(statistics.mean(values), 4), "sd": round(statistics.stdev(values), 4)
                           if len(values) > 1 else None, "min": round(min(values), 4), "max": round(max(values), 4)}
    return {"run_dir": str(finished.dir), "gguf": gguf.name, "run_seed": run.seed, "samples": len(samples),
            "by_seed": by_seed, "spread": spread}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--seeds", default="42-47", help="FIRST-LAST")
    parser.add_argument("--out", type=Path, default=RESULTS / "decoding_seeds.json")
    args = parser.parse_args()
    first, last = (int(s) for s in args.seeds.split("-"))
    before = matmul_peak()
    runs = [seeded_figures(r, list(range(first, last + 1))) for r in args.runs]
    after = matmul_peak()
    out = {"command": "python benchmarks/decoding_seeds.py " + " ".join([*args.runs, f"--seeds {args.seeds}"]),
           "matmul_gflops_before_after": [round(before / 1e9, 1), round(after / 1e9, 1)], "runs": runs}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for r in runs:
        print(r["run_dir"], json.dumps(r["spread"], ensure_ascii=False))


if __name__ == "__main__":
    main()

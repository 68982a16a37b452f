"""Time a recipe end to end: `python benchmarks/recipe_run.py RECIPE [overrides...]` (RECIPE: support_bot,
code_assistant).

Runs `python -m finetune +recipe=RECIPE` from the repository root (the run lands in outputs/ as usual), then
writes the wall time, each stage's duration (from its manifest), training throughput and the evaluation summary
to benchmarks/results/RECIPE_<device>.json (or the file named by --out). With `hydra.run.dir=DIR` it goes on in that
run folder, where the stages whose settings did not change are skipped (their durations are the earlier run's).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def main(recipe: str, overrides: list[str], out: Path | None) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    given = [REPO / o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    before = set((REPO / "outputs").glob(f"{recipe}/*"))
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "finetune", f"+recipe={recipe}", *overrides], cwd=REPO, check=True)
    wall = time.monotonic() - t0
    [run_dir] = given or set((REPO / "outputs").glob(f"{recipe}/*")) - before
    stages = {p.parent.name: json.loads(p.read_text())["duration_s"] for p in run_dir.glob("*/manifest.json")}
    train = json.loads((run_dir / "train" / "metrics.json").read_text())
    evaluation = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    parity = json.loads((run_dir / "export" / "parity.json").read_text())
    result = {
        "command": " ".join([f"python -m finetune +recipe={recipe}", *overrides]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {device}",
        "run_dir": str(run_dir.relative_to(REPO)),
        "wall_s": round(wall, 1),
        "stage_s": stages,
        "train": {k: train[k] for k in ("global_step", "input_tokens_seen", "tokens_per_s", "train_runtime_s")},
        "decoding": evaluation["decoding_text"],
        "metrics": {name: {k: row.get(k) for k in ("base", "tuned", "delta")}
                    for name, row in evaluation["metrics"].items()},
        "parity": {name: {k: r[k] for k in ("top1_agreement", "perplexity", "perplexity_hf", "greedy_identical",
                                            "passed", "greedy_example")}
                   for name, r in parity["files"].items()},
        "template_failures": parity["template_failures"],
    }
    RESULTS.mkdir(exist_ok=True)
    out = out or RESULTS / f"{recipe}_{device}.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--out", type=Path, help="the results file (default: benchmarks/results/RECIPE_<device>.json)")
    a = parser.parse_intermixed_args()
    main(a.recipe, a.overrides, a.out)

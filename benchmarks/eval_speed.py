"""The evaluate stage, an earlier commit's code against today's, side by side on one finished run:
`python benchmarks/eval_speed.py [--before COMMIT] [--recipe support_bot] [--repeats 1] [--out FILE] RUN_DIR
[overrides...]`.

RUN_DIR is a run of the recipe through merge (`python -m finetune +recipe=support_bot 'stages=[validate,train,
merge]'`). Each code version evaluates its own copy of it (`+recipe=RECIPE hydra.run.dir=COPY 'stages=[evaluate]'`,
the earlier commit from a git worktree), alternating, `--repeats` times each; the matmul rate is measured before and
after. Writes each one's stage time and every metric of both, and their differences, to FILE
(benchmarks/results/eval_speed.json). Overrides follow RUN_DIR: a run made from another folder than this one takes
dataset.path=<that folder's bundled_data/…>, as the data file's path is part of the run's settings.
A support_bot run made before 2026-12-07, when LoRA's dropout was on by default, takes method.dropout=0.05
(without it the copy's train stage is out of date for today's settings).

`--before-run DIR`: the earlier commit evaluates a copy of DIR instead, a run made through merge by its own code —
for a commit that cannot read RUN_DIR (it checks each stage's settings by its own fingerprints, and calls a run made
by later code out of date). The two runs' merged weights must be equal, tensor for tensor, so that both versions
evaluate the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
KEPT = ("validate", "train", "merge", "finetune.log")  # what evaluate reads; its own folder is made anew


def worktree(commit: str) -> Path:
    folder = Path("/tmp") / f"finetune-eval-before-{commit[:10]}"
    if not folder.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(folder), commit], cwd=REPO, check=True)
    return folder


def copy_run(run_dir: Path, to: Path) -> None:
    if to.exists():
        shutil.rmtree(to)
    to.mkdir(parents=True)
    for name in (*KEPT, ".hydra"):
        source = run_dir / name
        if source.is_dir():
            shutil.copytree(source, to / name, symlinks=True)
        elif source.is_file():
            shutil.copy2(source, to / name)


def same_merged_weights(a: Path, b: Path) -> bool:
    """Whether two runs' merged models hold the same tensors, bit for bit."""
    import numpy as np
    from safetensors.numpy import load_file

    def tensors(run_dir: Path) -> dict:
        files = sorted((run_dir / "merge" / "model").glob("*.safetensors"))
        return {k: v for f in files for k, v in load_file(f).items()}

    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)


def evaluate(code: Path, run_dir: Path, recipe: str, overrides: list[str]) -> dict:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "finetune", f"+recipe={recipe}", f"hydra.run.dir={run_dir}",
                           "stages=[evaluate]", *overrides], cwd=code, env={**os.environ, "PYTHONPATH": str(code)},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{code}: evaluate failed:\n{done.stderr[-3000:]}")
    manifest = json.loads((run_dir / "evaluate" / "manifest.json").read_text())
    evaluation = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    return {"wall_s": round(time.monotonic() - started, 1), "stage_s": manifest["duration_s"],
            "metrics": {name: {k: row.get(k) for k in ("base", "tuned")}
                        for name, row in evaluation["metrics"].items()},
            "models": evaluation["models"],
            "answers": [json.loads(line)["answers"] for line in (run_dir / "evaluate" / "samples.jsonl").open()]}


def main() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_speed import matmul_peak

    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--before", default="85d45bb")
    parser.add_argument("--recipe", default="support_bot")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_speed.json")
    parser.add_argument("--before-run", type=Path, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", args.before], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    now = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "finetune"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip())
    codes = {"before": worktree(commit), "now": REPO}
    sources = {"before": (args.before_run or args.run_dir).resolve(), "now": args.run_dir.resolve()}
    if not same_merged_weights(sources["before"], sources["now"]):
        raise SystemExit(f"{sources['before']} and {sources['now']} hold different merged models")
    matmul_before = matmul_peak() / 1e9
    runs: dict[str, list[dict]] = {"before": [], "now": []}
    for i in range(args.repeats):
        for label in ("now", "before") if i % 2 == 0 else ("before", "now"):
            copy = Path("/tmp") / "finetune-eval-speed" / label
            copy_run(sources[label], copy)
            runs[label].append(evaluate(codes[label], copy, args.recipe, args.overrides))
            print(f"{label}: evaluate {runs[label][-1]['stage_s']} s", flush=True)
    matmul_after = matmul_peak() / 1e9
    before, after = runs["before"][0], runs["now"][0]
    metrics = {name: {who: {"before": row.get(who), "now": after["metrics"].get(name, {}).get(who)}
                      for who in ("base", "tuned")} for name, row in before["metrics"].items()}
    stage = {label: [r["stage_s"] for r in rs] for label, rs in runs.items()}
    result = {
        "command": " ".join(["python benchmarks/eval_speed.py", "--before", args.before, "--recipe", args.recipe,
                             "--repeats", str(args.repeats), "--out", str(args.out),
                             *(["--before-run", str(args.before_run)] if args.before_run else []), str(args.run_dir),
                             *args.overrides]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "matmul_gflops_before_after": [round(matmul_before, 1), round(matmul_after, 1)],
        "code": {"before": commit[:10], "now": now + (" + uncommitted changes" if dirty else "")},
        "runs": {label: str(path) for label, path in sources.items()},  # their merged weights checked equal
        "evaluate_stage_s": stage,
        "speedup": round(min(stage["before"]) / min(stage["now"]), 2),
        "answers_by": {label: sorted({m.get("answers_by", "transformers") for m in rs[0]["models"].values()})
                       for label, rs in runs.items()},
        "metrics": metrics,
        "samples": {label: rs[0]["answers"] for label, rs in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

"""Does a rerun from a run's saved config reproduce it bit for bit?
`python benchmarks/rerun_identical.py [RECIPE] [overrides...] [--out DIR]` (RECIPE: support_bot by default).

Runs `python -m finetune +recipe=RECIPE [overrides]` into DIR/first, then reruns it from its saved config into
DIR/rerun as docs/sweeps-and-reproducibility.md documents (`--config-path <run>/.hydra --config-name config`), and
compares the sha256 of the split files, the adapter, the merged weights and every GGUF, and the evaluation numbers.
Writes benchmarks/results/rerun_identical.json and prints a one-line verdict; exits 1 when something differs.
DIR defaults to outputs/rerun_identical/<recipe>-<time>.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# What a rerun must reproduce, relative to the run directory; a folder is hashed whole (weights, configs, tokenizer)
PATTERNS = ("validate/train.jsonl", "validate/validation.jsonl", "validate/test.jsonl", "train/adapter", "train/model",
            "merge/model", "export/*.gguf")


def _finetune(args: list[str]) -> float:
    """Run the pipeline from the repository root; returns its wall time."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "finetune", *args], cwd=REPO, check=True)
    return round(time.monotonic() - t0, 1)


def _files(run_dir: Path) -> list[str]:
    return sorted(path.relative_to(run_dir).as_posix() for pattern in PATTERNS for path in run_dir.glob(pattern))


def _sha256(path: Path) -> str | None:
    from finetune.pipeline.manifest import sha256_path

    return sha256_path(path) if path.exists() else None


def _stage_durations(run_dir: Path) -> dict[str, float]:
    return {path.parent.name: json.loads(path.read_text())["duration_s"] for path in run_dir.glob("*/manifest.json")}


def _metrics(run_dir: Path) -> dict[str, dict]:
    return json.loads((run_dir / "evaluate" / "eval.json").read_text())["metrics"]


def main(recipe: str, overrides: list[str], out: Path) -> int:
    from finetune.pipeline.env import environment

    first, rerun = out / "first", out / "rerun"
    wall = {"first": _finetune([f"+recipe={recipe}", *overrides, f"hydra.run.dir={first}"]),
            "rerun": _finetune(["--config-path", str(first.resolve() / ".hydra"), "--config-name", "config",
                                f"hydra.run.dir={rerun}"])}
    files = {}
    for rel in _files(first):
        a, b = _sha256(first / rel), _sha256(rerun / rel)
        files[rel] = {"sha256_a": a, "sha256_b": b, "identical": a == b}
    metrics_a, metrics_b = _metrics(first), _metrics(rerun)
    metrics_differ = sorted(name for name in {*metrics_a, *metrics_b} if metrics_a.get(name) != metrics_b.get(name))
    differ = [rel for rel, f in files.items() if not f["identical"]] + [f"eval {name}" for name in metrics_differ]
    result = {
        "command": " ".join([f"python -m finetune +recipe={recipe}", *overrides]),
        "environment": environment(),
        "runs": {"first": str(first), "rerun": str(rerun)},
        "identical": not differ,
        "files": files,
        "eval_identical": not metrics_differ,
        "eval_differences": {name: {"a": metrics_a.get(name), "b": metrics_b.get(name)} for name in metrics_differ},
        "durations_s": {name: {"wall": wall[name], "stages": _stage_durations(run)}
                        for name, run in (("first", first), ("rerun", rerun))},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rerun_identical.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    timing = f"(first {wall['first']} s, rerun {wall['rerun']} s)"
    if differ:
        print(f"rerun DIFFERS: {', '.join(differ)} {timing}")
        return 1
    print(f"rerun identical: {len(files)} files and {len(metrics_a)} eval metrics match {timing}")
    return 0


def _parse(argv: list[str]) -> tuple[str, list[str], Path]:
    """RECIPE (optional, first), Hydra overrides, and ``--out DIR``."""
    out = None
    if "--out" in argv:
        at = argv.index("--out")
        if at + 1 == len(argv):
            sys.exit("usage: --out DIR")
        out, argv = Path(argv[at + 1]).resolve(), argv[:at] + argv[at + 2:]
    recipe, overrides = (argv[0], argv[1:]) if argv and "=" not in argv[0] else ("support_bot", argv)
    default = REPO / "outputs" / "rerun_identical" / f"{recipe}-{datetime.now():%Y-%m-%d_%H-%M-%S}"
    return recipe, overrides, out or default


if __name__ == "__main__":
    if any(arg.startswith("-") and arg != "--out" for arg in sys.argv[1:]):
        sys.exit(__doc__)
    sys.exit(main(*_parse(sys.argv[1:])))

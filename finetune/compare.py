"""``python -m finetune compare RUN_A RUN_B [--json]``: what differs between two runs, in one table.

Rows are the config keys whose values differ (from each run's saved ``.hydra/config.yaml``) and the library
versions or source commit that differ (from the manifests), then the numbers
the runs produced: training loss and speed, every evaluation metric (tuned and base model), GGUF parity and each
stage's duration. Columns: key | A | B | Δ (B − A, for numbers). A run directory alone is enough: nothing is
recomputed.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from finetune.config import flatten
from finetune.errors import UserError
from finetune.pipeline.manifest import MANIFEST_NAME
from finetune.stages import STAGES

USAGE = "usage: python -m finetune compare RUN_A RUN_B [--json]"
ABSENT = "—"
TRAIN_METRICS = ("train_loss", "last_eval_loss", "best_eval_loss", "tokens_per_s", "global_step")


class NotARun(UserError):
    """A path given to compare is not a run directory."""


def run_directory(arg: str) -> Path:
    """The run directory ``arg`` names; refuses anything without a saved config, and says what it is instead."""
    path = Path(arg)
    if (path / ".hydra" / "config.yaml").is_file():
        return path
    if not path.exists():
        raise NotARun(f"{path}: no such directory; expected a run directory (one holding .hydra/config.yaml)")
    jobs = sorted(p.parent.parent.name for p in path.glob("*/.hydra/config.yaml"))
    if jobs:
        raise NotARun(f"{path}: a sweep folder with {len(jobs)} jobs; expected one job's folder, e.g. {path / jobs[0]}")
    raise NotARun(f"{path}: not a run directory; expected a folder holding .hydra/config.yaml (outputs/<name>/<time>)")


def config_values(run_dir: Path) -> dict[str, Any]:
    """The run's saved config as dotted keys, interpolations resolved where they resolve here (a path or an
    environment variable of another machine may not: those keep their ``${…}`` text)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from finetune import resolvers

    resolvers.register()
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    flat = flatten(OmegaConf.to_container(cfg, resolve=False))
    for key, value in flat.items():
        if isinstance(value, str) and "${" in value:
            with contextlib.suppress(OmegaConfBaseException):  # else shown as the run saved it
                flat[key] = OmegaConf.select(cfg, key)
    return flat


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_numbers(run_dir: Path) -> dict[str, Any]:
    """The numbers a run produced, by row name; a stage that did not run adds no rows."""
    numbers: dict[str, Any] = {}
    train = _read_json(run_dir / "train" / "metrics.json")
    numbers.update({f"train.{name}": train[name] for name in TRAIN_METRICS if name in train})
    for name, row in _read_json(run_dir / "evaluate" / "eval.json").get("metrics", {}).items():
        numbers[f"eval.{name} (tuned)"] = row.get("tuned")
        numbers[f"eval.{name} (base)"] = row.get("base")
    for name, row in _read_json(run_dir / "export" / "parity.json").get("files", {}).items():
        numbers[f"parity.{name} top1"] = row.get("top1_agreement")
    for stage in STAGES:
        if (manifest := run_dir / stage.name / MANIFEST_NAME).is_file():
            numbers[f"duration_s.{stage.name}"] = _read_json(manifest).get("duration_s")
    return numbers


def environment_values(run_dir: Path) -> dict[str, Any]:
    """The library versions and source commit the run's stages recorded (the first manifest that has them)."""
    for stage in STAGES:
        environment = _read_json(run_dir / stage.name / MANIFEST_NAME).get("environment")
        if environment:
            git = environment.get("git") or {}
            return {**{f"version.{name}": v for name, v in environment.get("versions", {}).items()},
                    "git.commit": git.get("commit")}
    return {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.6g}" if isinstance(value, float) else json.dumps(value, ensure_ascii=False)


def _row(key: str, a: Any, b: Any) -> dict[str, Any]:
    return {"key": key, "a": a, "b": b, "delta": b - a if _is_number(a) and _is_number(b) else None}


def rows(a_dir: Path, b_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """The rows of the comparison (config keys, then library versions and source commit, that differ; then every
    number), and how many config keys are equal."""
    config_a, config_b = config_values(a_dir), config_values(b_dir)
    keys = list(dict.fromkeys([*config_a, *config_b]))
    differing = [key for key in keys if config_a.get(key, ABSENT) != config_b.get(key, ABSENT)]
    numbers_a, numbers_b = run_numbers(a_dir), run_numbers(b_dir)
    table = [_row(key, config_a.get(key, ABSENT), config_b.get(key, ABSENT)) for key in differing]
    env_a, env_b = environment_values(a_dir), environment_values(b_dir)
    table += [{"key": key, "a": env_a.get(key, ABSENT), "b": env_b.get(key, ABSENT), "delta": None}
              for key in dict.fromkeys([*env_a, *env_b]) if env_a.get(key, ABSENT) != env_b.get(key, ABSENT)]
    table += [_row(key, numbers_a.get(key, ABSENT), numbers_b.get(key, ABSENT))
              for key in dict.fromkeys([*numbers_a, *numbers_b])]
    return table, len(keys) - len(differing)


def markdown(table: list[dict[str, Any]]) -> str:
    """The rows as an aligned markdown table."""
    cells = [["key", "A", "B", "Δ (B − A)"]] + [
        [row["key"], _text(row["a"]), _text(row["b"]), "" if row["delta"] is None else _text(row["delta"])]
        for row in table
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |"
             for line in cells]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def _as_json(value: Any) -> Any:
    return None if value is ABSENT else value


def main(argv: list[str]) -> int:
    """Compare two runs; prints the table (or JSON with ``--json``). Returns 0, or 2 on bad input."""
    as_json = "--json" in argv
    args = [arg for arg in argv if arg != "--json"]
    try:
        if len(args) != 2 or any(arg.startswith("-") for arg in args):
            raise UserError(f"expected two run directories, got {' '.join(argv) or 'none'}; {USAGE}")
        a_dir, b_dir = run_directory(args[0]), run_directory(args[1])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table, equal = rows(a_dir, b_dir)
    if as_json:
        print(json.dumps({"a": str(a_dir), "b": str(b_dir), "equal_config_keys": equal,
                          "rows": [{k: _as_json(v) for k, v in row.items()} for row in table]}, indent=2))
    else:
        print(f"A: {a_dir}\nB: {b_dir}\n{equal} config keys are equal and left out.\n")
        print(markdown(table))
    return 0

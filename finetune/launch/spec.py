"""What a worker needs to train a run: the resolved run config and the stage's context, as JSON. Launchers write
it (a file beside the stage's output, or a Ray Train config) and ``finetune.worker`` reads it back; global rank 0
hands the stage's artifacts back to the launcher through the stage's folder, wherever it ran."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

ARTIFACTS = "artifacts.json"


def to_json(run: Any, ctx: Any) -> dict[str, Any]:
    return {"run": dataclasses.asdict(run), "cwd": os.getcwd(),
            "context": {"run_dir": str(ctx.run_dir), "out_dir": str(ctx.out_dir), "resume": ctx.resume,
                        "inputs": {stage: {k: str(v) for k, v in a.items()} for stage, a in ctx.inputs.items()}}}


def from_json(spec: dict[str, Any], resume: bool = False) -> tuple[Any, Any]:
    """The run and the context; ``resume``: also resume when the launcher did not ask (a restarted worker group
    goes on from the last checkpoint this attempt wrote)."""
    from omegaconf import OmegaConf

    from finetune.config import load_run_config
    from finetune.pipeline.graph import StageContext

    # relative paths in the config mean what they meant to the command (Ray starts its workers in a folder of its own)
    if Path(spec["cwd"]).is_dir():
        os.chdir(spec["cwd"])
    c = spec["context"]
    ctx = StageContext(run_dir=Path(c["run_dir"]), out_dir=Path(c["out_dir"]), resume=c["resume"] or resume,
                       inputs={s: {k: Path(v) for k, v in a.items()} for s, a in c["inputs"].items()})
    return load_run_config(OmegaConf.create(spec["run"])), ctx


def hand_back(ctx: Any, artifacts: dict[str, str]) -> None:
    """Rank 0's artifacts, for the launcher (``take_back``)."""
    from finetune.pipeline.manifest import atomic_write_json

    atomic_write_json(ctx.out_dir / ARTIFACTS, artifacts)


def take_back(out_dir: Path) -> dict[str, str]:
    """The artifacts rank 0 handed back; the file goes, as it is no artifact of the stage."""
    path = out_dir / ARTIFACTS
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    finally:
        path.unlink()

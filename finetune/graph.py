"""The stage graph: order, ``stages=[...]`` selection, skipping what is done, resuming what was interrupted.

Each stage writes under ``<run_dir>/<stage>/`` and the graph keeps a manifest there. A stage's fingerprint
hashes the config keys it reads and its upstream stages' fingerprints and artifact hashes, so a stage reruns
exactly when something it depends on changed. A stage left ``running`` or ``failed`` with the same fingerprint
is called again with ``resume=True`` and its folder kept (training continues from its last checkpoint);
otherwise its folder is emptied first, so no stale file survives.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from finetune.config import RunConfig, section
from finetune.errors import UserError
from finetune.manifest import Manifest, fingerprint, sha256_path

log = logging.getLogger(__name__)


class StageOrderError(UserError, RuntimeError):
    """A selected stage's upstream is missing or out of date in the run directory."""


@dataclass(frozen=True)
class StageContext:
    """What a stage gets besides the config: where to write, and its upstream stages' artifacts."""

    run_dir: Path
    out_dir: Path
    inputs: dict[str, dict[str, Path]]  # upstream stage -> artifact name -> absolute path
    resume: bool

    def input(self, stage: str, artifact: str) -> Path:
        return self.inputs[stage][artifact]


# A stage returns its artifacts: name -> path relative to its own folder.
StageFn = Callable[[RunConfig, StageContext], dict[str, str]]


@dataclass(frozen=True)
class Stage:
    name: str
    run: StageFn
    needs: tuple[str, ...]
    config_keys: tuple[str, ...]  # the config keys it reads; a change to one of them reruns it
    input_files: Callable[[RunConfig], list[Path]] = lambda run: []  # files it reads; edited → rerun


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fingerprint(stage: Stage, run: RunConfig, done: dict[str, Manifest]) -> str:
    return fingerprint({
        "stage": stage.name,
        "config": {key: section(run, key) for key in stage.config_keys},
        "files": {str(path): sha256_path(path) for path in stage.input_files(run)},
        "inputs": {
            need: {"fingerprint": done[need].fingerprint, "artifacts": done[need].artifacts}
            for need in stage.needs
        },
    })


def _is_current(manifest: Manifest | None, fp: str, stage_dir: Path) -> bool:
    return (
        manifest is not None
        and manifest.status == "complete"
        and manifest.fingerprint == fp
        and all(p.exists() for p in manifest.artifact_paths(stage_dir).values())
    )


def _execute(stage: Stage, run: RunConfig, run_dir: Path, fp: str, done: dict[str, Manifest]) -> Manifest:
    stage_dir = run_dir / stage.name
    previous = Manifest.read(stage_dir)
    resume = previous is not None and previous.status in ("running", "failed") and previous.fingerprint == fp
    if not resume and stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(stage=stage.name, status="running", fingerprint=fp, started=_now())
    manifest.write(stage_dir)
    ctx = StageContext(
        run_dir=run_dir,
        out_dir=stage_dir,
        inputs={need: done[need].artifact_paths(run_dir / need) for need in stage.needs},
        resume=resume,
    )
    log.info("── stage %s%s", stage.name, " (resuming)" if resume else "")
    t0 = time.monotonic()
    try:
        artifacts = stage.run(run, ctx)
    except BaseException as e:
        manifest.status, manifest.error = "failed", f"{type(e).__name__}: {e}"
        manifest.finished, manifest.duration_s = _now(), round(time.monotonic() - t0, 2)
        manifest.write(stage_dir)
        raise
    manifest.artifacts = {
        name: {"path": rel, "sha256": sha256_path(stage_dir / rel)} for name, rel in artifacts.items()
    }
    manifest.status, manifest.finished = "complete", _now()
    manifest.duration_s = round(time.monotonic() - t0, 2)
    manifest.write(stage_dir)
    log.info("── stage %s done in %.1f s", stage.name, manifest.duration_s)
    return manifest


def run_graph(run: RunConfig, run_dir: Path, stages: Sequence[Stage]) -> dict[str, Manifest]:
    """Run the selected stages in graph order; returns the manifest of every stage that is complete."""
    selected = set(run.stages)
    done: dict[str, Manifest] = {}
    stale: set[str] = set()
    for stage in stages:
        stage_dir = run_dir / stage.name
        missing = [need for need in stage.needs if need not in done]
        if missing:
            if stage.name in selected:
                need = missing[0]
                why = "is out of date for this config" if need in stale else "has not run"
                raise StageOrderError(
                    f"stage {stage.name!r} needs {need!r}, which {why} in {run_dir}; add {need!r} to stages"
                )
            continue
        fp = _fingerprint(stage, run, done)
        existing = Manifest.read(stage_dir)
        if _is_current(existing, fp, stage_dir):
            assert existing is not None
            if stage.name in selected:
                log.info("── stage %s: complete with the same inputs, skipped", stage.name)
            done[stage.name] = existing
        elif stage.name in selected:
            done[stage.name] = _execute(stage, run, run_dir, fp, done)
        elif existing is not None:
            stale.add(stage.name)
    return done

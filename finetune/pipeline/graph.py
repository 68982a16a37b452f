"""The stage graph: order, ``stages=[...]`` selection, skipping what is done, resuming what was interrupted.

Each stage writes under ``<run_dir>/<stage>/`` and the graph keeps a manifest there. A stage's fingerprint
hashes the config keys it reads and its upstream stages' fingerprints and artifact hashes, so a stage reruns
exactly when something it depends on changed. A resumable stage (``train``) left ``running``, ``failed`` or
``interrupted`` with the same fingerprint is called again with ``resume=True`` and its folder kept (training
continues from its last checkpoint); every other stage that runs starts from an empty folder, so no stale or
half-written file survives.

Each manifest records the config values the stage read and the environment it ran in (``env.py``). A stage kept
from an earlier run (skipped as current, or resumed) whose library versions differ from this process's gets one
warning naming them: its fingerprint is unchanged, so it does not rerun, but its results may differ from a fresh
run's.

``check_graph`` runs before anything is written: the stage order, then each stage's own checks (data, model,
method), so that bad input is refused before the first stage instead of in the middle of the run. Its ``Plan``
goes to ``run_graph``: the graph plans once, hashes each input file once, and a check that computed what its
stage's run needs (validate reads and checks the data) hands that over as ``StageContext.prepared``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune.config import RunConfig, section
from finetune.errors import UserError
from finetune.models import parent_run
from finetune.pipeline.env import changed_versions, environment
from finetune.pipeline.manifest import Manifest, fingerprint, sha256_path, umask_mode
from finetune.redact import redact_text

log = logging.getLogger(__name__)


class StageOrderError(UserError, RuntimeError):
    """A selected stage's upstream is missing or out of date in the run directory."""


class StorageError(UserError, OSError):
    """A stage could not write its files: the disk is full or a file size limit was hit."""


class StopHere(Exception):  # noqa: N818 — not an error: the run ends here, successfully
    """A stage did all it may do without the user's go-ahead (a hosted backend wrote its plan and cost but
    ``backend.submit`` is false): the run stops after it, and the message says what to do next."""


@dataclass(frozen=True)
class StageContext:
    """What a stage gets besides the config: where to write, and its upstream stages' artifacts."""

    run_dir: Path
    out_dir: Path
    inputs: dict[str, dict[str, Path]]  # upstream stage -> artifact name -> absolute path
    resume: bool
    prepared: Any = None  # what the stage's pre-run check computed for it (``Stage.prepare``), or None

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
    resumable: bool = False  # True: an interrupted run continues from what is in its folder
    # Checks that refuse bad input before any stage runs (raise a UserError); one function shared by several
    # stages runs once.
    checks: tuple[Callable[[RunConfig], None], ...] = ()
    # A check, run after ``checks``, that also computes what the stage's run needs: its result reaches ``run`` as
    # ``ctx.prepared`` (None when the graph ran without checks, or when it had nothing to hand over).
    prepare: Callable[[RunConfig], Any] | None = None
    # Why this run has no such stage (a hosted backend has no local weights to merge), or None: it has one.
    left_out: Callable[[RunConfig], str | None] = lambda run: None
    # The config keys, when they depend on the run (a hosted job reads other settings than local training)
    keys_for: Callable[[RunConfig], tuple[str, ...]] | None = None


def stages_for(run: RunConfig, stages: Sequence[Stage]) -> tuple[list[Stage], dict[str, str]]:
    """The stages this run has, with the config keys they read in this run, and why each other one is left out.
    A stage that needs a left-out one runs without it (a hosted backend's ``evaluate`` asks the tuned model
    through its API instead of reading ``merge``)."""
    left_out = {stage.name: why for stage in stages if (why := stage.left_out(run))}
    kept = [replace(stage, needs=tuple(need for need in stage.needs if need not in left_out),
                    config_keys=stage.keys_for(run) if stage.keys_for else stage.config_keys)
            for stage in stages if stage.name not in left_out]
    return kept, left_out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _config_values(stage: Stage, run: RunConfig) -> dict[str, Any]:
    """The config values the stage reads: what its fingerprint hashes and its manifest records."""
    return {key: section(run, key) for key in stage.config_keys}


def _recorded(value: Any) -> Any:
    """A config value as a manifest records it: plain JSON data, with secret environment values masked (config
    keys name the variables that hold keys, never the keys, but a value may still quote one)."""
    if isinstance(value, dict):
        return {key: _recorded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_recorded(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact_text(str(value))


def _fingerprint(stage: Stage, run: RunConfig, done: dict[str, Manifest]) -> str:
    parent = parent_run(run.model)  # a run started from an earlier run's model reruns when that model changes
    return fingerprint({
        "stage": stage.name,
        "config": _config_values(stage, run),
        "files": {str(path): sha256_path(path) for path in stage.input_files(run)},
        "inputs": {
            need: {"fingerprint": done[need].fingerprint, "artifacts": done[need].artifacts}
            for need in stage.needs
        },
        **({"parent": parent} if parent else {}),
    })


def _named(versions: dict[str, str | None]) -> str:
    """"transformers 5.24.0 and peft 0.21.2", as a warning names library versions."""
    named = [f"{name} {version}" if version else f"no {name}" for name, version in versions.items()]
    return " and ".join(named) if len(named) < 3 else ", ".join(named[:-1]) + " and " + named[-1]


def warn_if_versions_changed(manifest: Manifest, where: str | None = None) -> None:
    """One warning line when a stage kept from an earlier run (or the run a rerun reproduces, ``where``) was made
    with other library versions."""
    changed = changed_versions(manifest.environment, environment())
    if changed:
        log.warning("%s was made with %s; now %s — its results may differ from a fresh run",
                    where or f"{manifest.stage}/",
                    _named({name: old for name, (old, _) in changed.items()}),
                    _named({name: new for name, (_, new) in changed.items()}))


def _is_current(manifest: Manifest | None, fp: str, stage_dir: Path) -> bool:
    return (
        manifest is not None
        and manifest.status == "complete"
        and manifest.fingerprint == fp
        and all(p.exists() for p in manifest.artifact_paths(stage_dir).values())
    )


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _storage_failure(error: BaseException) -> str | None:
    """Why writing failed, when it is the disk (full, quota, file size limit); None for anything else.
    Libraries that write natively (safetensors, torch.save, tokenizers) wrap the OS error in their own
    exception and keep only its text; numpy reports a short write without an errno."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRNOS:
            return os.strerror(seen.errno)
        for code in _STORAGE_ERRNOS:
            if os.strerror(code) in str(seen) or f"os error {code})" in str(seen):
                return os.strerror(code)
        if isinstance(seen, OSError) and seen.errno is None and re.search(r"\d+ requested and \d+ written", str(seen)):
            limited = resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY
            return os.strerror(errno.EFBIG if limited else errno.ENOSPC)
        seen = seen.__cause__ or seen.__context__
    return None


def _apply_umask(stage_dir: Path) -> None:
    """Some writers (safetensors, temp files renamed into place) leave files owner-only; a stage's outputs
    are for sharing (Modelfile, card, weights), so they get the mode the user's umask gives any new file."""
    mode = umask_mode()
    for path in stage_dir.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def _execute(stage: Stage, run: RunConfig, run_dir: Path, fp: str, done: dict[str, Manifest], prepared: Any
             ) -> Manifest:
    stage_dir = run_dir / stage.name
    previous = Manifest.read(stage_dir)
    resume = (stage.resumable and previous is not None and previous.fingerprint == fp
              and previous.status in ("running", "failed", "interrupted"))
    if resume:
        assert previous is not None
        warn_if_versions_changed(previous)
    elif stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(stage=stage.name, status="running", fingerprint=fp, started=_now(),
                        config=_recorded(_config_values(stage, run)), environment=environment(),
                        parent=parent_run(run.model))
    manifest.write(stage_dir)
    ctx = StageContext(
        run_dir=run_dir,
        out_dir=stage_dir,
        inputs={need: done[need].artifact_paths(run_dir / need) for need in stage.needs},
        resume=resume,
        prepared=prepared,
    )
    log.info("── stage %s%s", stage.name, " (resuming)" if resume else "")
    t0 = time.monotonic()
    try:
        artifacts = stage.run(run, ctx)
    except BaseException as e:
        manifest.status = "interrupted" if isinstance(e, KeyboardInterrupt) else \
            "stopped" if isinstance(e, StopHere) else "failed"
        manifest.error = None if isinstance(e, StopHere) else redact_text(f"{type(e).__name__}: {e}")
        manifest.finished, manifest.duration_s = _now(), round(time.monotonic() - t0, 2)
        with contextlib.suppress(OSError):  # a full disk may refuse the manifest too; the status stays running
            manifest.write(stage_dir)
        if why := _storage_failure(e):
            raise StorageError(
                f"stage {stage.name}: cannot write to {stage_dir} ({why}); free space or raise the limit, then "
                "run the same command again"
            ) from e
        raise
    _apply_umask(stage_dir)
    manifest.artifacts = {
        name: {"path": rel, "sha256": sha256_path(stage_dir / rel)} for name, rel in artifacts.items()
    }
    manifest.status, manifest.finished = "complete", _now()
    manifest.duration_s = round(time.monotonic() - t0, 2)
    manifest.write(stage_dir)
    log.info("── stage %s done in %.1f s", stage.name, manifest.duration_s)
    return manifest


@dataclass
class Plan:
    """What ``check_graph`` found, for ``run_graph``."""

    runs: list[str]  # the stages that execute, in order
    # The fingerprints known before anything runs: those of stages whose upstream does not execute now
    fingerprints: dict[str, str]
    prepared: dict[str, Any] = field(default_factory=dict)  # stage -> what its ``prepare`` check computed


def _plan(run: RunConfig, run_dir: Path, stages: Sequence[Stage]) -> Plan:
    """The stages this run executes: selected ones that are not complete with the same inputs (or whose
    upstream executes). Raises ``StageOrderError`` when a selected stage's upstream neither is complete and
    current nor executes now."""
    selected = set(run.stages)
    current: dict[str, Manifest] = {}
    runs: list[Stage] = []
    stale: set[str] = set()
    fingerprints: dict[str, str] = {}
    for stage in stages:
        stage_dir = run_dir / stage.name
        existing = Manifest.read(stage_dir)
        running = {s.name for s in runs}
        missing = [need for need in stage.needs if need not in running and need not in current]
        if missing and stage.name in selected:
            need = missing[0]
            why = "is out of date for this config" if need in stale else "has not run"
            raise StageOrderError(
                f"stage {stage.name!r} needs {need!r}, which {why} in {run_dir}; add {need!r} to stages"
            )
        if not missing and not running.intersection(stage.needs):
            fingerprints[stage.name] = _fingerprint(stage, run, current)
        if stage.name in fingerprints and _is_current(existing, fingerprints[stage.name], stage_dir):
            assert existing is not None
            current[stage.name] = existing
        elif not missing and stage.name in selected:
            runs.append(stage)
        elif existing is not None:
            stale.add(stage.name)
    return Plan([stage.name for stage in runs], fingerprints)


def check_graph(run: RunConfig, run_dir: Path, stages: Sequence[Stage]) -> Plan:
    """Everything that can refuse this run before anything is written: the stage order, then the checks of
    each stage that will execute, in stage order (a check function shared by several stages once)."""
    plan = _plan(run, run_dir, stages)
    checked: set[Callable[[RunConfig], None]] = set()
    for stage in (stage for stage in stages if stage.name in plan.runs):
        for check in stage.checks:
            if check not in checked:
                checked.add(check)
                check(run)
        if stage.prepare is not None and (prepared := stage.prepare(run)) is not None:
            plan.prepared[stage.name] = prepared
    return plan


def run_graph(run: RunConfig, run_dir: Path, stages: Sequence[Stage], plan: Plan | None = None
              ) -> dict[str, Manifest]:
    """Run the selected stages in graph order, as ``check_graph`` planned them (or as planned now, without the
    checks); returns the manifest of every stage that is complete."""
    plan = plan or _plan(run, run_dir, stages)
    done: dict[str, Manifest] = {}
    for stage in stages:
        if any(need not in done for need in stage.needs):
            continue  # neither selected nor current upstream: _plan refused the selected ones
        stage_dir = run_dir / stage.name
        # known from the plan unless an upstream stage executed since (its artifacts are new)
        fp = plan.fingerprints.get(stage.name) or _fingerprint(stage, run, done)
        existing = Manifest.read(stage_dir)
        if _is_current(existing, fp, stage_dir):
            assert existing is not None
            if stage.name in run.stages:
                log.info("── stage %s: complete with the same inputs, skipped", stage.name)
            warn_if_versions_changed(existing)
            done[stage.name] = existing
        elif stage.name in plan.runs:
            done[stage.name] = _execute(stage, run, run_dir, fp, done, plan.prepared.pop(stage.name, None))
    return done

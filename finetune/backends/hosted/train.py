"""The ``train`` stage of a hosted backend: plan, submit (only with ``backend.submit=true``), poll, record.

The job id goes to ``job.json`` the moment the provider returns it, before the first poll: a rerun after a crash,
a Ctrl-C or a closed laptop finds it (the graph resumes ``train`` with its folder kept) and attaches to the same
job instead of paying for a second one. Ctrl-C never cancels a job; the message says how to reattach or cancel.
A job that failed or was cancelled is set aside (``job-<id>.failed.json``), so the next run submits a new one.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finetune import curves
from finetune.backends.hosted import FINISHED, SUCCEEDED, HostedError, Job, Provider, Session
from finetune.backends.hosted.plan import UPLOADED, cost_text, prepare
from finetune.data.canonical import read_split
from finetune.pipeline.graph import StageContext, StopHere
from finetune.pipeline.manifest import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def _submit(provider: Provider, session: Session, run: Any, files: dict[str, Path], job_file: Path) -> str:
    job_id = session.submit(files, run)
    atomic_write_json(job_file, {"id": job_id, "provider": provider.name, "base_model": run.backend.base_model,
                                 "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    log.info("%s: submitted job %s (saved in %s: a rerun attaches to it)", provider.title, job_id, job_file)
    return job_id


def _progress_line(job: Job) -> str:
    step = f"step {job.step}" + (f"/{job.total_steps}" if job.total_steps else "") if job.step is not None else ""
    loss = f"train loss {job.train_loss:.4f}" if job.train_loss is not None else ""
    return ", ".join(part for part in (job.provider_state, step, loss) if part)


def _poll(session: Session, job_id: str, interval_s: float, title: str) -> Job:
    """Until the job finishes: one progress bar whose text is the provider's status, step and train loss."""
    from finetune.progress import Bar

    with Bar(desc=f"{title} job {job_id}", unit="step") as bar:
        while True:
            job = session.job(job_id)
            if job.total_steps and bar.total != job.total_steps:
                bar.total = job.total_steps
            if job.step is not None and job.step > bar.n:
                bar.update(job.step - bar.n)
            bar.set_postfix_str(_progress_line(job), refresh=True)
            if job.state in FINISHED:
                return job
            time.sleep(interval_s)


def _record(job: Job, checkpoints: list[dict[str, Any]], out_dir: Path, provider: Provider, run: Any,
            plan: dict[str, Any]) -> None:
    atomic_write_text(out_dir / "loss.jsonl", (json.dumps({"step": r["step"], "loss": r["train_loss"]}) + "\n"
                                               for r in job.losses))
    train = [{"step": r["step"], "loss": r["train_loss"]} for r in job.losses]
    if train:
        curves.plot(train, [], out_dir / "training_curves.png")
    atomic_write_json(out_dir / "metrics.json", {
        "backend": provider.name, "service": provider.title, "job_id": job.id, "state": job.provider_state,
        "base_model": run.backend.base_model, "tuned_model": job.tuned_model, "trained_tokens": job.trained_tokens,
        "steps": job.step, "final_train_loss": job.train_loss, "hyperparameters": plan["hyperparameters"],
        "estimated_usd": plan["estimated_usd"], "checkpoints": checkpoints,
    })


def run(provider: Provider, run: Any, ctx: StageContext) -> dict[str, str]:
    splits = {name: read_split(ctx.input("validate", name)) for name in UPLOADED if name in ctx.inputs["validate"]}
    files, plan = prepare(provider, run, splits, ctx.out_dir)
    for notice in plan["notices"]:
        log.warning("%s", notice)
    log.info("%s plan: %s; files %s", provider.title, cost_text(plan), ", ".join(p.name for p in files.values()))
    job_file = ctx.out_dir / "job.json"
    if not job_file.exists() and not run.backend.submit:
        raise StopHere(f"backend={provider.name}: nothing was submitted. The plan is in {ctx.out_dir / 'plan.md'} "
                       f"({cost_text(plan)}) and the exact files beside it; run again with backend.submit=true to "
                       "start the job (it costs money)")
    session = provider.connect(run)
    if job_file.exists():
        job_id = json.loads(job_file.read_text(encoding="utf-8"))["id"]
        log.info("%s: attaching to job %s from %s (no second job is submitted)", provider.title, job_id, job_file)
    else:
        job_id = _submit(provider, session, run, files, job_file)
    try:
        job = _poll(session, job_id, run.backend.poll_interval_s, provider.title)
    except KeyboardInterrupt:
        log.warning("job %s keeps running at %s: run the same command again to attach to it, or cancel it: %s",
                    job_id, provider.title, session.cancel_hint(job_id))
        raise
    if job.state != SUCCEEDED:
        job_file.rename(ctx.out_dir / f"job-{job_id.replace('/', '_')}.failed.json")
        raise HostedError(f"{provider.title} job {job_id} {job.state} ({job.provider_state}): "
                          f"{job.error or 'no reason given'}; the next run submits a new job")
    _record(job, session.checkpoints(job_id), ctx.out_dir, provider, run, plan)
    artifacts = {"plan": "plan.json", "plan_md": "plan.md", "job": "job.json", "metrics": "metrics.json",
                 "loss_log": "loss.jsonl", **{f"{split}_data": path.name for split, path in files.items()}}
    if (ctx.out_dir / "training_curves.png").exists():
        artifacts["curves"] = "training_curves.png"
    return artifacts

"""publish: push the card with the merged model, GGUF files or adapter to a Hub repo (``publish.*``); off while
``publish.repo_id`` is null, a dry run (``publish.dry_run=true``) writes the exact folder and file list only."""

from __future__ import annotations

import logging
from pathlib import Path

from finetune.config import RunConfig
from finetune.export.publish import stage_folder, token, upload
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json

log = logging.getLogger(__name__)

CONFIG_KEYS = ("publish",)


def check(run: RunConfig) -> None:
    """A real upload needs its token before any stage runs, not after an hour of training."""
    if run.publish.repo_id and not run.publish.dry_run:
        token(run.publish)


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    cfg = run.publish
    if not cfg.repo_id:
        log.info("publish: off (set publish.repo_id to push to the Hub)")
        return {}
    export = ctx.inputs["export"]
    ggufs = [(path, path.name) for key, path in export.items()
             if key.startswith("gguf_") or key in ("modelfile",)]
    adapter = [(p, p.name) for key, p in export.items() if key in ("adapter_gguf", "modelfile_adapter")]
    if "adapter" in ctx.inputs["train"]:
        adapter.append((ctx.input("train", "adapter"), "adapter"))
    parts: dict[str, list[tuple[Path, str]]] = {"merged": [(ctx.input("merge", "model"), ".")], "gguf": ggufs,
                                                 "adapter": adapter}
    folder = ctx.out_dir / "upload"
    files = stage_folder(folder, ctx.input("card", "model_card"), parts, cfg.include)
    plan = {"repo_id": cfg.repo_id, "private": cfg.private, "endpoint": cfg.endpoint or "https://huggingface.co",
            "dry_run": cfg.dry_run, "files": files, "bytes": sum(f["bytes"] for f in files)}
    if cfg.dry_run:
        log.info("publish (dry run): %d files, %.1f MB would go to %s; folder %s", len(files), plan["bytes"] / 1e6,
                 cfg.repo_id, folder)
    else:
        plan |= upload(folder, cfg)
        log.info("published %d files to %s (%s)", len(files), cfg.repo_id, plan["commit_url"])
    atomic_write_json(ctx.out_dir / "upload.json", plan)
    return {"upload": "upload", "upload_list": "upload.json"}

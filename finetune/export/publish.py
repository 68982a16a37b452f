"""Publishing to a Hugging Face Hub model repo: the exact folder to upload, then (unless a dry run) the upload.

The folder holds the model card and what ``publish.include`` names — the merged model, the GGUF files with the
Modelfile, the LoRA adapter — hard-linked from the run (copied across filesystems). ``upload.json`` lists every
file with its size and sha256. The token is read from the environment at upload time and passed to
huggingface_hub only; it is never written to the folder, the log or a manifest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from finetune.config import PublishConfig
from finetune.errors import UserError
from finetune.pipeline.manifest import sha256_path


class PublishError(UserError, RuntimeError):
    """Publishing cannot start: no token, or nothing to publish."""


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage_folder(folder: Path, card: Path, parts: dict[str, list[tuple[Path, str]]], include: list[str]
                 ) -> list[dict[str, Any]]:
    """Fill ``folder`` with the card and the files of each included part (source path, name in the repo);
    returns the upload list."""
    _link(card, folder / "README.md")
    for part in include:
        if not parts.get(part):
            raise PublishError(f"publish.include: {part!r} has nothing to publish in this run "
                               f"(available: {', '.join(k for k, v in parts.items() if v)})")
        for src, name in parts[part]:
            for path in sorted(src.rglob("*")) if src.is_dir() else [src]:
                if path.is_file():
                    _link(path, folder / name / path.relative_to(src) if src.is_dir() else folder / name)
    return [{"path": str(p.relative_to(folder)), "bytes": p.stat().st_size, "sha256": sha256_path(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()]


def token(cfg: PublishConfig) -> str:
    value = os.environ.get(cfg.token_env)
    if not value:
        raise PublishError(f"publish.token_env: environment variable {cfg.token_env} is not set; export a Hub token "
                           "with write access there (or set publish.dry_run=true)")
    return value


def upload(folder: Path, cfg: PublishConfig) -> dict[str, Any]:
    """Create the repo if needed and upload the folder in one commit; returns where it went."""
    from huggingface_hub import HfApi

    assert cfg.repo_id is not None
    api = HfApi(endpoint=cfg.endpoint, token=token(cfg))
    repo = api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=folder, repo_id=cfg.repo_id, repo_type="model",
                               commit_message="Upload from finetune")
    return {"repo_url": str(repo), "commit_url": commit.commit_url, "commit": commit.oid}

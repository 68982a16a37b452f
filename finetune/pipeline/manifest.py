"""A stage's manifest (``<run>/<stage>/manifest.json``): status, timing, artifacts with content hashes, the
fingerprint of the inputs it was made from, and what reproduces it: the config values it read and the environment
(library versions, source commit, hardware) it ran in. Also the atomic-write and hashing helpers every stage uses."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as the user's umask leaves it: what ``open()`` would give a new file (0o777 for folders).
    Temp files and folders start owner-only; what we rename into place gets this mode, like any file."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def atomic_write_text(path: Path, text: str | Iterable[str]) -> None:
    """Write through a temp file in the same folder and rename, so readers never see half a file. ``text``
    may be an iterable of pieces, written as they come (a million-row split is never one string)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines([text] if isinstance(text, str) else text)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def sha256_path(path: Path) -> str:
    """Content hash of a file, or of a folder's files (relative names and contents, in sorted order)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Manifest:
    stage: str
    status: str  # running | complete | failed
    fingerprint: str
    started: str
    finished: str | None = None
    duration_s: float | None = None
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {path, sha256}
    error: str | None = None
    # What reproduces the stage; empty in manifests written before they were recorded.
    config: dict[str, Any] = field(default_factory=dict)  # config key -> the value the stage read
    environment: dict[str, Any] = field(default_factory=dict)  # versions, git, hardware (pipeline/env.py)
    # The earlier run whose merged model this run starts from (model.source=run:<dir>): models.parent_run
    parent: dict[str, str] | None = None

    def write(self, stage_dir: Path) -> None:
        atomic_write_json(stage_dir / MANIFEST_NAME, asdict(self))

    @classmethod
    def read(cls, stage_dir: Path) -> Manifest | None:
        path = stage_dir / MANIFEST_NAME
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def artifact_paths(self, stage_dir: Path) -> dict[str, Path]:
        return {name: stage_dir / a["path"] for name, a in self.artifacts.items()}

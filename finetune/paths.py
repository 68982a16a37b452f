"""Where the bundled configs, recipes and data live, and where caches go.

In a source checkout they sit at the top of the repository; in an installed wheel they are package data
inside ``finetune/`` (pyproject's force-include). Nothing here depends on the current working directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else PACKAGE_DIR.parent / name


CONF_DIR = _bundled("conf")
RECIPES_DIR = _bundled("recipes")
DATA_DIR = _bundled("bundled_data")


def cache_dir() -> Path:
    """``$FINETUNE_CACHE``, else ``$XDG_CACHE_HOME/finetune``, else ``~/.cache/finetune``."""
    if env := os.environ.get("FINETUNE_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "finetune"


def cache_key(*parts: object) -> str:
    """A short name for a cache entry made from ``parts`` (a source file's digest, settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, what a cache entry made from the file is keyed by: the same model installed
    again (a new virtual environment: another path, another mtime) finds the entry made the first time instead of
    adding another copy. Hashed once per path, size and mtime (a 5 GB GGUF takes ~15 s), remembered in the cache."""
    from finetune.pipeline.manifest import atomic_write_text, sha256_path

    stat = path.stat()
    memo = cache_dir() / "digests" / cache_key(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo.is_file():
        return memo.read_text(encoding="utf-8")
    digest = sha256_path(path)
    with contextlib.suppress(OSError):  # a cache others filled, read-only here: hashed again next time
        atomic_write_text(memo, digest)
    return digest

"""What a stage was made with: library versions, the git commit of this source, and the hardware.

Every manifest records it, so that a run directory says what reproduces it, and a rerun under other library
versions can warn that its results may differ. Collected once per process: none of it changes while a run runs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

# Name shown -> distribution name: the libraries whose version changes what a run produces.
LIBRARIES = {
    "torch": "torch", "transformers": "transformers", "peft": "peft", "trl": "trl", "accelerate": "accelerate",
    "datasets": "datasets", "tokenizers": "tokenizers", "safetensors": "safetensors", "gguf": "gguf",
    "llama-cpp-python": "llama_cpp_python", "lm_eval": "lm_eval", "openai": "openai", "numpy": "numpy",
    "finetune": "finetune",
}
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `finetune` package


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Python's and each library's version; None for a library that is not installed."""
    return {"python": platform.python_version(), **{name: _version(dist) for name, dist in LIBRARIES.items()}}


def _git(*args: str) -> str | None:
    """``git args`` in the source folder: its output, or None when git is missing or refuses."""
    try:
        proc = subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def source_commit() -> dict[str, Any] | None:
    """The commit this source was checked out at, and whether it has local changes; None for an installed
    package (its folder is not tracked by a checkout) or when git is not there."""
    if _git("ls-files", "--error-unmatch", "--", "finetune/__init__.py") is None:
        return None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    if commit is None or status is None:
        return None
    return {"commit": commit, "dirty": bool(status)}


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 9454P"); the architecture where the system does not say."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_total_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (AttributeError, ValueError, OSError):
        return None


def hardware() -> dict[str, Any]:
    """The machine: results (speed, and floating-point details on GPUs) depend on it."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "python_implementation": platform.python_implementation(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_total_gb": _ram_total_gb(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda": torch.version.cuda if cuda else None,
        "torch_threads": torch.get_num_threads(),
    }


@functools.cache
def environment() -> dict[str, Any]:
    """Versions, source commit and hardware of this process, as a manifest records them."""
    return {"versions": versions(), "git": source_commit(), "hardware": hardware()}


def changed_versions(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    """Library -> (recorded version, current version), for each library whose version differs between two
    environments. An environment recorded before versions were (an old manifest) differs in nothing."""
    before, now = recorded.get("versions") or {}, current.get("versions") or {}
    return {name: (before[name], now.get(name)) for name in before if before[name] != now.get(name)}

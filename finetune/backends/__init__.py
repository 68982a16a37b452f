"""Training backends as a registry: ``backend.name`` picks where and how the model is trained.

A local backend (``hf``, ``unsloth``) loads the model and wraps it for training (``load``); the training loop
(``finetune.training``), checkpoints and saving are the same for each. A hosted backend (``openai``, ``vertex``,
``bedrock``) trains through a provider's API (``provider``): there are no local weights, so the stages that need
them are left out of the run, by capability, not by backend name (``finetune.stages``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune.backends import hf, unsloth
from finetune.backends.hosted import Provider
from finetune.backends.hosted.bedrock import BEDROCK
from finetune.backends.hosted.openai_ft import OPENAI
from finetune.backends.hosted.vertex import VERTEX

LOCAL_WEIGHTS = "local weights"  # merge, GGUF export and publishing read them
LOGPROBS = "token scores"  # likelihood metrics (perplexity, forgetting) and lm-eval need the model's logprobs


@dataclass(frozen=True)
class Backend:
    name: str
    check: Callable[[Any], None]  # RunConfig -> None; raises UserError with one line
    load: Callable[[Any], Any] | None = None  # RunConfig -> the model to train (local backends)
    provider: Provider | None = None  # the provider's API (hosted backends)
    capabilities: frozenset[str] = frozenset({LOCAL_WEIGHTS, LOGPROBS})

    @property
    def hosted(self) -> bool:
        return self.provider is not None


def _hosted(provider: Provider) -> Backend:
    return Backend(provider.name, provider.check, provider=provider, capabilities=frozenset())


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("hf", hf.check, hf.load),
    Backend("unsloth", unsloth.check, unsloth.load),
    _hosted(OPENAI),
    _hosted(VERTEX),  # type: ignore[arg-type]
    _hosted(BEDROCK),  # type: ignore[arg-type]
)}


def lacks(capability: str) -> Callable[[Any], str | None]:
    """A stage's ``left_out``: why a run whose backend lacks ``capability`` has no such stage."""

    def why(run: Any) -> str | None:
        backend = BACKENDS[run.backend.name]
        return None if capability in backend.capabilities else f"backend={backend.name} has no {capability}"

    return why

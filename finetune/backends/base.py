"""The one interface to a training backend, and its registry entry.

A backend trains (``train``), gives the base and tuned models to ask as ``generate`` implementations
(``generators``), says which config keys its training reads (``config_keys``) and refuses, before any stage runs,
what it cannot do (``check``). What it can do is data on its entry (``capabilities``, ``objectives``), which the
schema and the graph read without importing the backend: the entry imports its implementation only when a stage
calls it, so ``import finetune.config`` loads no backend, provider module or SDK. Stages call the entry and hold
no backend names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

LOCAL_WEIGHTS = "local weights"  # merge, GGUF export and publishing read them
LOGPROBS = "token scores"  # likelihood metrics (perplexity, forgetting) and lm-eval need the model's logprobs
LOCAL = frozenset({LOCAL_WEIGHTS, LOGPROBS})


@dataclass(frozen=True)
class Asked:
    """A model a backend gives to ask, and what the evaluation records of it."""

    # A finetune.generate Generator; where the backend has LOGPROBS, one that also has the loaded ``model`` and
    # its ``tokenizer`` to score tokens with, and ``release()`` to free it (finetune.generate.hf.InProcessModel)
    generator: Any
    source: str  # its model id or folder
    via: str  # how it is asked: "transformers", "Vertex AI Gemini tuning at https://…"
    endpoint: str | None = None  # the OpenAI-compatible URL that serves it, where one does


class Implementation(Protocol):
    def check(self, run: Any) -> None:
        """Refuse what this machine or the provider cannot train (a UserError of one line naming the key)."""

    def config_keys(self, run: Any) -> tuple[str, ...]:
        """The config keys its training reads: a change to one of them trains again."""

    def train(self, run: Any, ctx: Any) -> dict[str, str]:
        """The train stage's run: artifacts by name, paths relative to ``ctx.out_dir``."""

    def generators(self, run: Any, ctx: Any) -> dict[str, Asked]:
        """``base`` and ``tuned``, to ask (``ctx``: the evaluate stage's)."""


@dataclass(frozen=True)
class Backend:
    name: str
    implementation: Callable[[], Implementation]  # imports it: called on first use only
    capabilities: frozenset[str] = LOCAL
    objectives: tuple[str, ...] = ("sft",)  # the objective.name values it trains (finetune/objectives/)

    def check(self, run: Any) -> None:
        self.implementation().check(run)

    def config_keys(self, run: Any) -> tuple[str, ...]:
        return self.implementation().config_keys(run)

    def train(self, run: Any, ctx: Any) -> dict[str, str]:
        return self.implementation().train(run, ctx)

    def generators(self, run: Any, ctx: Any) -> dict[str, Asked]:
        return self.implementation().generators(run, ctx)

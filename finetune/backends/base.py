"""A backend's registry entry: its name, what it can do, and where its code is. The entry is light and imports
its implementation only when a stage uses it, so the schema takes ``backend.name``'s choices and the graph its
capabilities without loading any backend, provider module or SDK."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOCAL_WEIGHTS = "local weights"  # merge, GGUF export and publishing read them
LOGPROBS = "token scores"  # likelihood metrics (perplexity, forgetting) and lm-eval need the model's logprobs


@dataclass(frozen=True)
class Backend:
    name: str
    # Imports and returns the implementation: a local backend's module (``check``, ``load``) or a hosted Provider
    implementation: Callable[[], Any]
    hosted: bool = False  # a provider's API trains it (finetune.backends.hosted)
    capabilities: frozenset[str] = frozenset({LOCAL_WEIGHTS, LOGPROBS})

"""Reward functions for tests, by import path (``reward.functions=[tests.rewards_for_tests:…]``), in TRL's
signature: one that a tiny random model can learn, and ones that fail each way a user's function can."""

from __future__ import annotations

from typing import Any

HALF_VOCABULARY = 49152 // 2  # SmolLM2's vocabulary, the tiny random model's


def low_tokens(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], **_: Any) -> list[float]:
    """The share of an answer's tokens from the lower half of the vocabulary: 0.5 for a random model's answers, and
    learnable — it rises only when the answers scored come from the policy being trained."""
    return [sum(i < HALF_VOCABULARY for i in ids) / max(1, len(ids)) for ids in completion_ids]


def raises(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    raise KeyError("answer")


def one_value(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    return [1.0]


def not_a_number(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    return [float("nan")] * len(completions)

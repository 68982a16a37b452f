"""Reward functions for ``objective=grpo``: ``reward.functions`` names built-ins (``REWARDS``, each scoring an
answer as ``finetune/metrics/`` scores it in evaluation) or user functions by import path
(``package.module:function``). Every one is called as TRL's GRPOTrainer calls a reward function —
``f(prompts=…, completions=…, completion_ids=…, reference=…, **columns)`` returning one float (or None) per
completion — and is checked on a probe before training: one that fails to import, raises, returns the wrong length
or NaN stops the run in one line naming it (``RewardError``), as does one that fails so during training."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from finetune.errors import UserError

RewardFunction = Callable[..., list[float | None]]


class RewardError(UserError, RuntimeError):
    """A reward function cannot be loaded or called, or answered wrongly; the message names it."""


@dataclass(frozen=True)
class Reward:
    name: str
    description: str
    metric: str  # the finetune/metrics entry that scores it
    value: str  # the per-answer value of that metric that is the reward


REWARDS = {r.name: r for r in (
    Reward("json_valid", "1 when the answer parses as JSON", "json", "json_valid"),
    Reward("json_schema", "1 when the answer is JSON that fits eval.json_schema", "json", "json_schema"),
    Reward("exact_match", "1 when the answer equals the reference (NFKC, whitespace)", "exact_match", "exact_match"),
    Reward("numeric_match", "1 when the answer's last number equals the reference's (None: the reference has none)",
           "numeric_match", "numeric_match"),
    Reward("rouge_l", "ROUGE-L F1 against the reference, in CJK characters and words", "rouge", "rougeL"),
    Reward("style", "1 when the answer passes every rule of eval.style", "style", "style"),
    Reward("stopped", "1 when the answer ends with the end-of-turn token before max_completion_length", "stopped",
           "stopped"),
)}


def _text(completion: Any) -> str:
    """A completion's text: TRL gives conversational completions as a list of one assistant message."""
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


def built_in(reward: Reward, eval_settings: Any, end_ids: Sequence[int]) -> RewardFunction:
    """The metric ``reward.metric`` as a reward function: each completion scored as an evaluation answer."""
    from finetune.data.canonical import Conversation
    from finetune.generate import Answer
    from finetune.metrics import METRICS, Sample

    metric = METRICS[reward.metric]

    def score(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None = None,
              reference: list[str] | None = None, **_: Any) -> list[float | None]:
        ids = completion_ids or [[] for _ in completions]
        answers = [Answer(text=_text(c), finish_reason="stop" if i and i[-1] in end_ids else "length", tokens=len(i))
                   for c, i in zip(completions, ids, strict=True)]
        samples = [Sample(prompt=Conversation(messages=[], location=""), reference=r)
                   for r in (reference or [""] * len(completions))]
        per = metric.compute(samples, answers, eval_settings).per_sample or []
        return [row.get(reward.value) for row in per]

    score.__name__ = reward.name  # TRL logs each reward under its function's name
    return score


def _imported(path: str, key: str) -> RewardFunction:
    module_name, _, attribute = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise RewardError(f"{key}: cannot import it ({type(e).__name__}: {e})") from None
    if not callable(function):
        raise RewardError(f"{key}: not a function")
    return function


def _checked(function: RewardFunction, key: str) -> RewardFunction:
    """``function`` raising ``RewardError`` naming ``key`` when it raises, returns the wrong number of values, a
    value that is not a number, or NaN."""

    def call(*args: Any, **kwargs: Any) -> list[float | None]:
        try:
            values = function(*args, **kwargs)
        except Exception as e:  # a user's function: whatever it raises is named, in one line
            raise RewardError(f"{key}: raised {type(e).__name__}: {e}") from None
        expected = len(kwargs["completions"])
        if not isinstance(values, list | tuple) or len(values) != expected:
            got = f"{len(values)} values" if isinstance(values, list | tuple) else type(values).__name__
            raise RewardError(f"{key}: returned {got} for {expected} completions")
        for v in values:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v)):
                raise RewardError(f"{key}: returned {v!r}; expected a number (or None to skip the answer)")
        return list(values)

    call.__name__ = getattr(function, "__name__", key)
    return call


def functions(reward_settings: Any, eval_settings: Any, end_ids: Sequence[int]) -> list[RewardFunction]:
    """``reward.functions`` loaded, each checked on every call."""
    loaded = []
    for i, name in enumerate(reward_settings.functions):
        key = f"reward.functions[{i}]={name}"
        function = built_in(REWARDS[name], eval_settings, end_ids) if name in REWARDS else _imported(name, key)
        loaded.append(_checked(function, key))
    return loaded


def check(reward_settings: Any, eval_settings: Any) -> None:
    """Before training: every function loads and answers a probe of two completions with two numbers."""
    if "json_schema" in reward_settings.functions and eval_settings.json_schema is None:
        raise RewardError("reward.functions: json_schema scores answers against eval.json_schema, which is not set")
    prompts = [[{"role": "user", "content": "Say hello."}]] * 2
    completions = [[{"role": "assistant", "content": "Hello."}], [{"role": "assistant", "content": '{"a": 1}'}]]
    for function in functions(reward_settings, eval_settings, end_ids=[0]):
        function(prompts=prompts, completions=completions, completion_ids=[[1, 0], [2, 3]],
                 reference=["Hello.", "Hi."])

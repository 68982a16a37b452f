"""Reward functions for ``objective=grpo``: ``reward.functions`` names built-ins (``REWARDS``, each scoring an
answer as ``finetune/metrics/`` scores it in evaluation) or user functions by import path
(``package.module:function``). Every one is called as TRL's GRPOTrainer calls a reward function —
``f(prompts=…, completions=…, completion_ids=…, reference=…, **columns)`` returning one float (or None) per
completion — and is checked on a probe before training: one that fails to import, raises, returns the wrong length
or NaN stops the run in one line naming it (``RewardError``), as does one that fails so during training. The
evaluate stage scores the held-out answers of base and tuned model with the same functions (``held_out``). The
``judge`` reward asks ``eval.judge`` to grade each answer; a GGUF judge is served by llama.cpp while training runs
(``serving``)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from finetune.errors import UserError

log = logging.getLogger(__name__)

RewardFunction = Callable[..., list[float | None]]


class RewardError(UserError, RuntimeError):
    """A reward function cannot be loaded or called, or answered wrongly; the message names it."""


@dataclass(frozen=True)
class Reward:
    name: str
    description: str
    metric: str | None  # the finetune/metrics entry that scores it (None: ``make`` builds it)
    value: str | None  # the per-answer value of that metric that is the reward
    compares: bool = False  # compares the answer with the row's reference
    # the function, from (eval settings, end-of-turn ids, max tokens, seed); None: the metric's value (``built_in``)
    make: Callable[[Any, Sequence[int], int, int], RewardFunction] | None = None
    # what it lacks in the eval settings, said before training (None: nothing)
    lacks: Callable[[Any], str | None] = lambda eval_settings: None


REWARDS = {r.name: r for r in (
    Reward("json_valid", "1 when the answer parses as JSON", "json", "json_valid"),
    Reward("json_schema", "1 when the answer is JSON that fits eval.json_schema", "json", "json_schema",
           lacks=lambda ev: None if ev.json_schema is not None else
           "scores answers against eval.json_schema, which is not set"),
    Reward("exact_match", "1 when the answer equals the reference (NFKC, whitespace)", "exact_match", "exact_match",
           compares=True),
    Reward("numeric_match", "1 when the answer's last number equals the reference's (None: the reference has none)",
           "numeric_match", "numeric_match", compares=True),
    Reward("rouge_l", "ROUGE-L F1 against the reference, in CJK characters and words", "rouge", "rougeL",
           compares=True),
    Reward("style", "1 when the answer passes every rule of eval.style", "style", "style"),
    Reward("stopped", "1 when the answer ends with the end-of-turn token before max_completion_length", "stopped",
           "stopped"),
    Reward("brevity", "1 − answer tokens / max_completion_length: the shorter, the higher", "length", "brevity"),
    Reward("judge", "eval.judge's grade of the answer (its criteria, 1 to scale) as 0–1; None when it gives none",
           None, None, make=lambda ev, end_ids, max_tokens, seed: JudgeReward(ev.judge, seed),
           lacks=lambda ev: None if ev.judge.base_url or ev.judge.gguf else
           "asks eval.judge, which is not set (eval.judge.gguf: a GGUF served by llama.cpp, or eval.judge.base_url: "
           "an OpenAI-compatible endpoint)"),
)}


def _text(completion: Any) -> str:
    """A completion's text: TRL gives conversational completions as a list of one assistant message."""
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


def built_in(reward: Reward, eval_settings: Any, end_ids: Sequence[int], max_tokens: int) -> RewardFunction:
    """The metric ``reward.metric`` as a reward function: each completion scored as an evaluation answer of at most
    ``max_tokens`` (objective.max_completion_length)."""
    from finetune.data.canonical import Conversation
    from finetune.generate import Answer
    from finetune.metrics import METRICS, Sample

    metric = METRICS[reward.metric]
    eval_settings = dataclasses.replace(eval_settings, max_new_tokens=max_tokens)

    def score(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None = None,
              reference: list[str] | None = None, **_: Any) -> list[float | None]:
        ids = completion_ids or [[] for _ in completions]
        answers = [Answer(text=_text(c), finish_reason="stop" if i and i[-1] in end_ids else "length", tokens=len(i))
                   for c, i in zip(completions, ids, strict=True)]
        samples = [Sample(prompt=Conversation(messages=[], location=""), reference="" if r is None else str(r))
                   for r in (reference or [None] * len(completions))]
        per = metric.compute(samples, answers, eval_settings).per_sample or []
        return [row.get(reward.value) for row in per]

    score.__name__ = reward.name  # TRL logs each reward under its function's name
    return score


class JudgeReward:
    """The ``judge`` reward: ``eval.judge`` grades each answer with the question and the reference in view (as
    evaluation's judge does); the mean of its grades, from 1 to ``scale``, is scaled to 0–1, and an answer it gives
    no usable grade is None (skipped). A GGUF judge is served by llama.cpp while ``served()`` lasts — all of
    training, through ``serving`` — and for the call alone when called outside it."""

    __name__ = "judge"

    def __init__(self, settings: Any, seed: int) -> None:
        self.settings, self.seed, self.url = settings, seed, None

    @contextlib.contextmanager
    def served(self) -> Iterator[None]:
        from finetune.metrics.judge import endpoint

        with endpoint(self.settings, "judge for the reward") as self.url:
            try:
                yield
            finally:
                self.url = None

    def __call__(self, prompts: list[Any], completions: list[Any], reference: list[Any] | None = None, **_: Any
                 ) -> list[float | None]:
        if self.url is None:
            with self.served():
                return self(prompts, completions, reference)
        from finetune.data.canonical import Conversation
        from finetune.metrics import Sample
        from finetune.metrics.judge import Judge

        judge = Judge(self.settings, self.url, self.seed, local=not self.settings.base_url)
        scores: list[float | None] = []
        for prompt, completion, ref in zip(prompts, completions, reference or [None] * len(completions),
                                           strict=True):
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
            sample = Sample(Conversation(messages, ""), "" if ref is None else str(ref))
            grades = judge.grade(sample, _text(completion)).value
            scores.append(None if grades is None else
                          (sum(grades.values()) / len(grades) - 1) / (self.settings.scale - 1))
        return scores


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
    call.__wrapped__ = function  # type: ignore[attr-defined]
    return call


def functions(reward_settings: Any, eval_settings: Any, end_ids: Sequence[int], max_tokens: int, seed: int = 0
              ) -> list[RewardFunction]:
    """``reward.functions`` loaded, each checked on every call."""
    loaded = []
    for i, name in enumerate(reward_settings.functions):
        key = f"reward.functions[{i}]={name}"
        if (reward := REWARDS.get(name)) is None:
            function = _imported(name, key)
        elif reward.make is not None:
            function = reward.make(eval_settings, end_ids, max_tokens, seed)
        else:
            function = built_in(reward, eval_settings, end_ids, max_tokens)
        loaded.append(_checked(function, key))
    return loaded


@contextlib.contextmanager
def serving(loaded: Sequence[RewardFunction]) -> Iterator[None]:
    """The servers ``loaded`` rewards need (a GGUF judge: those with a ``served()``), up for as long as the block
    runs."""
    with contextlib.ExitStack() as stack:
        for function in loaded:
            if served := getattr(getattr(function, "__wrapped__", function), "served", None):
                stack.enter_context(served())
        yield


def held_out(run: Any, samples: Sequence[Any], answers: Sequence[Any], tokenizer: Any) -> Any:
    """The reward of each held-out answer as training computes it — ``reward.functions`` called as TRL calls them
    (the answer's tokens, its end of turn when it stopped, the row's columns), weighted and summed with a None as 0
    (TRL's nansum) — and its mean: the ``reward`` row of evaluation, each function's mean beside it."""
    from finetune.chat import end_of_turn_id
    from finetune.metrics import Scored

    end = end_of_turn_id(tokenizer)
    loaded = functions(run.reward, run.eval, [end], run.objective.max_completion_length, run.seed)
    weights = list(run.reward.weights) or [1.0] * len(loaded)
    names = list(dict.fromkeys(k for s in samples for k in (s.prompt.columns or {})))
    columns = {name: [(s.prompt.columns or {}).get(name) for s in samples] for name in names}
    # as training passes it: a prompt-only row's own column, a conversation's answer
    columns["reference"] = [s.reference if s.prompt.columns is None else s.prompt.columns.get("reference")
                            for s in samples]
    ids = [tokenizer(a.text, add_special_tokens=False)["input_ids"] + ([end] if a.finish_reason == "stop" else [])
           for a in answers]
    with serving(loaded):
        scores = {name: f(prompts=[s.prompt.messages for s in samples],
                          completions=[[{"role": "assistant", "content": a.text}] for a in answers],
                          completion_ids=ids, **columns)
                  for name, f in zip(run.reward.functions, loaded, strict=True)}
    total = [sum(w * (v or 0.0) for w, v in zip(weights, values, strict=True))
             for values in zip(*scores.values(), strict=True)]
    per = [{"reward": round(t, 4)} for t in total]

    def mean(values: Sequence[float | None]) -> float | None:
        given = [v for v in values if v is not None]
        return sum(given) / len(given) if given else None

    return Scored({"reward": mean(total), **{f"reward: {name}": mean(v) for name, v in scores.items()}}, per,
                  {"definition": "the sum of reward.functions weighted by reward.weights (a None counts 0), per "
                                 "answer, mean; each function: its mean over the answers it scored",
                   "weights": weights})


def check(reward_settings: Any, eval_settings: Any) -> None:
    """Before training: every function loads and answers a probe of two completions with two numbers."""
    for name in reward_settings.functions:
        if name in REWARDS and (missing := REWARDS[name].lacks(eval_settings)):
            raise RewardError(f"reward.functions: {name} {missing}")
    prompts = [[{"role": "user", "content": "Say hello."}]] * 2
    completions = [[{"role": "assistant", "content": "Hello."}], [{"role": "assistant", "content": '{"a": 1}'}]]
    loaded = functions(reward_settings, eval_settings, end_ids=[0], max_tokens=8)
    with serving(loaded):
        for function in loaded:
            function(prompts=prompts, completions=completions, completion_ids=[[1, 0], [2, 3]],
                     reference=["Hello.", "Hi."])

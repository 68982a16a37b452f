"""Synthetic conversations (guide §4): ask a model behind any OpenAI-compatible URL for examples about a topic
and keep the good ones.

Each request asks for ONE question and its answer as a JSON object (with ``response_format=json_schema``
llama.cpp's server turns the schema into a grammar, so even a 135M model answers in shape). A reply is parsed
robustly — the first JSON object wherever it is, code fences and prose around it allowed, raw line breaks
inside strings too (small models write them; a grammar lets them through) — or refused with a reason:
unparseable, truncated (cut at ``max_tokens``), schema, empty (no words: "..."), or duplicate (the same question
after NFKC, case folding and whitespace collapsing; near-duplicates are left to ``validate``'s
``near_duplicates`` check, over the whole pool). Refused requests are asked again, up to ``count × max_attempts``
requests in all.

A small or greedy model says the same thing to the same prompt, so every request differs: a kind of question
drawn from the run's seed, its own sampling seed, and the last questions kept listed as ones not to repeat.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from finetune.data.minhash import normalize
from finetune.errors import UserError
from finetune.generate import json_objects

if TYPE_CHECKING:
    from finetune.config import SyntheticConfig

SCHEMA = {"type": "object", "required": ["question", "answer"], "additionalProperties": False,
          "properties": {"question": {"type": "string", "minLength": 1}, "answer": {"type": "string", "minLength": 1}}}
REASONS = ("unparseable", "truncated", "schema", "empty", "duplicate")
ANGLES = ("a how-to question", "a question a beginner would ask", "a question about a common mistake",
          "a question that asks why", "a question comparing two options", "a question asking for an example",
          "a question about good practice", "a question about one specific detail", "a troubleshooting question",
          "a question about a limit or an edge case")
SYSTEM = "You write training data for an AI assistant: questions real users ask, and the assistant's best answers."
RECENT = 5  # questions kept so far that the prompt asks not to repeat


class SyntheticError(UserError, RuntimeError):
    """The endpoint could not be asked, or nothing it answered was usable."""


class Rejected(Exception):  # noqa: N818 — a reply's verdict, not a failure of the run
    """A reply that gives no usable example; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def parse_example(reply: str) -> tuple[str, str]:
    """(question, answer) from the first JSON object in ``reply`` that has both as strings; raises ``Rejected``."""
    objects = json_objects(reply)
    if not objects:
        raise Rejected("unparseable", "no JSON object in the reply")
    for obj in objects:
        question, answer = obj.get("question"), obj.get("answer")
        if isinstance(question, str) and isinstance(answer, str):
            if not any(c.isalnum() for c in question) or not any(c.isalnum() for c in answer):
                raise Rejected("empty", f"question {question[:40]!r}, answer {answer[:40]!r}: no words")
            return question.strip(), answer.strip()
    keys = ", ".join(sorted(map(str, objects[0]))) or "none"
    raise Rejected("schema", f"no object with a string question and answer (keys: {keys})")


def prompt(cfg: SyntheticConfig, angle: str, recent: list[str]) -> list[dict[str, str]]:
    """The request for one example: the topic, the assistant's role, a kind of question, what not to repeat."""
    lines = [f"Topic: {cfg.topic}"]
    if cfg.system_prompt:
        lines.append(f"The assistant's system prompt: {cfg.system_prompt}")
    lines.append(f"Write {angle} that a user might ask about the topic, and the assistant's answer to it, both in "
                 "the language the topic is written in.")
    if recent:
        lines.append("Ask something different from these questions:\n" + "\n".join(f"- {q}" for q in recent))
    lines.append('Reply with only a JSON object with two keys: "question" (the question) and "answer" (the answer).')
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def _response_format(kind: str) -> dict[str, Any] | None:
    return {"text": None, "json_object": {"type": "json_object"},
            "json_schema": {"type": "json_object", "schema": SCHEMA}}[kind]


class Pool:
    """The conversations kept so far, and every refused reply counted by reason (with the first of each)."""

    def __init__(self, system_prompt: str | None = None) -> None:
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.rows: list[dict[str, Any]] = []  # {"messages": [...]} in OpenAI's chat format
        self.questions: list[str] = []
        self.seen: set[str] = set()
        self.rejects: Counter[str] = Counter()
        self.examples: dict[str, dict[str, str]] = {}

    def offer(self, reply: str, cut_at: int | None = None) -> Rejected | None:
        """Keep the reply's conversation, or count it refused and say why. ``cut_at``: the reply was cut at
        this many tokens (max_tokens)."""
        try:
            question, answer = parse_example(reply)
            if normalize(question) in self.seen:
                raise Rejected("duplicate", f"the question {question[:80]!r} was already kept")
        except Rejected as e:
            verdict = Rejected("truncated", f"cut at dataset.synthetic.max_tokens={cut_at}; raise it") \
                if cut_at and e.reason == "unparseable" else e
            self.rejects[verdict.reason] += 1
            self.examples.setdefault(verdict.reason, {"detail": verdict.detail, "reply": reply[:500]})
            return verdict
        self.seen.add(normalize(question))
        self.questions.append(question)
        self.rows.append({"messages": [*self.system, {"role": "user", "content": question},
                                       {"role": "assistant", "content": answer}]})
        return None


class _Endpoint:
    """One chat request at a time; the API's failures become one line naming the config key."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        from finetune.generate.openai_compat import client

        self.cfg = cfg
        self.client = client(cfg.base_url, cfg.api_key_env, cfg.timeout_s, max_retries=2)

    def ask(self, messages: list[dict[str, str]], seed: int) -> tuple[str, str]:
        """The reply's text and finish reason."""
        from openai import APIConnectionError, APIStatusError

        cfg, fmt = self.cfg, _response_format(self.cfg.response_format)
        try:
            out = self.client.chat.completions.create(
                model=cfg.model, messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                seed=seed, **({"response_format": fmt} if fmt else {}))
        except APIConnectionError as e:
            raise SyntheticError(f"dataset.synthetic.base_url: cannot reach {cfg.base_url} ({e})") from None
        except APIStatusError as e:
            hint = {401: f" (is {cfg.api_key_env} set?)", 403: f" (is {cfg.api_key_env} set?)",
                    404: f" (does it serve dataset.synthetic.model={cfg.model!r}?)"}.get(e.status_code, "")
            raise SyntheticError(f"dataset.synthetic: {cfg.base_url} answered {' '.join(str(e).split())[:300]}"
                                 f"{hint}") from None
        choice = out.choices[0]
        return choice.message.content or "", choice.finish_reason or ""


def synthesize(cfg: SyntheticConfig, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Up to ``cfg.count`` distinct conversations, and a report of what was asked and what was refused."""
    from finetune.progress import Bar

    endpoint, rng, pool = _Endpoint(cfg), random.Random(seed), Pool(cfg.system_prompt)
    attempts, started = 0, time.monotonic()
    with Bar(total=cfg.count, desc="synthesize", unit="conversation") as bar:
        while len(pool.rows) < cfg.count and attempts < cfg.count * cfg.max_attempts:
            attempts += 1
            reply, finish = endpoint.ask(prompt(cfg, rng.choice(ANGLES), pool.questions[-RECENT:]), seed + attempts)
            if pool.offer(reply, cut_at=cfg.max_tokens if finish == "length" else None):
                bar.set_postfix(rejected=pool.rejects.total())
            else:
                bar.update(1)
    written = len(pool.rows)
    report = {
        "topic": cfg.topic, "model": cfg.model, "endpoint": cfg.base_url, "response_format": cfg.response_format,
        "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": seed, "requested": cfg.count,
        "written": written, "complete": written == cfg.count, "attempts": attempts, "max_attempts": cfg.max_attempts,
        "rejects": {reason: pool.rejects[reason] for reason in REASONS}, "reject_examples": pool.examples,
        "seconds": round(time.monotonic() - started, 2),
    }
    return pool.rows, report


def summary(report: dict[str, Any]) -> str:
    """One line: what was kept, and what was refused and why."""
    refused = ", ".join(f"{reason} {n}" for reason, n in report["rejects"].items() if n) or "none"
    return (f"{report['written']} of {report['requested']} conversations kept from {report['attempts']} replies of "
            f"{report['model']}; rejected: {refused}")


def nothing_usable(report: dict[str, Any]) -> SyntheticError:
    """The error for a run where every reply was refused: the commonest reason, its count and an example."""
    reason, count = max(report["rejects"].items(), key=lambda item: item[1])
    example = report["reject_examples"][reason]
    reply = " ".join(example["reply"].split())[:120]
    return SyntheticError(f"dataset.synthetic: none of {report['attempts']} replies of {report['model']} at "
                          f"{report['endpoint']} was usable: {reason} {count}× ({example['detail']}; e.g. {reply!r})")

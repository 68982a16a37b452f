"""One way to ask a model for answers: ``generator.generate(prompts, decoding) -> answers``.

Evaluation, the LLM judge, ``finetune chat``, synthetic data and hosted models all ask a model something; each is
written once against this interface. Implementations: the HF model in process (``hf``), a GGUF through llama.cpp —
prompted with the training template's tokens and sampled by ``sampling.py``, or through llama-cpp-python's chat
path (``llama_cpp``) — and any OpenAI-compatible endpoint (``openai_compat``). Those that run a model here also
``stream`` one answer to a prompt's token ids (``chat``).

``Decoding`` follows llama.cpp's sampler (what Ollama serves with): repetition penalty over the last
``repeat_last_n`` tokens of the context, then top-k, then top-p, then temperature; temperature 0 is greedy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from finetune.data.canonical import Conversation

# Ollama's defaults for the parameters our Modelfile does not set (https://github.com/ollama/ollama/blob/main/docs/modelfile.md)
OLLAMA_TOP_K = 40
OLLAMA_REPEAT_LAST_N = 64


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = OLLAMA_REPEAT_LAST_N
    seed: int = 0
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def describe(self) -> str:
        """One line for eval.md: what produced the answers."""
        how = "greedy" if self.greedy else \
            f"sampled: temperature {self.temperature}, top_p {self.top_p}, top_k {self.top_k}, seed {self.seed}"
        penalty = f"repeat penalty {self.repeat_penalty} over the last {self.repeat_last_n} tokens" \
            if self.repeat_penalty != 1 else "no repeat penalty"
        stops = ", ".join(f"`{s}`" for s in self.stop) or "end-of-sequence"
        return f"{how}; {penalty}; at most {self.max_new_tokens} new tokens; stop at {stops}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stop": list(self.stop)}


@dataclass(frozen=True)
class Answer:
    text: str  # the answer as scored: a thinking block before it set aside (``reasoning``)
    finish_reason: str  # "stop" (an end-of-turn or stop string) or "length" (cut at max_new_tokens)
    tokens: int
    reasoning: str = ""

    @classmethod
    def of_reply(cls, reply: str, finish_reason: str, tokens: int) -> Answer:
        """A model's reply, its ``<think>…</think>`` block (Qwen 3, DeepSeek-R1, also when empty) apart from the
        answer, as those models' chat templates take a past turn apart: the answer is what follows the last
        ``</think>``."""
        if "</think>" not in reply:
            return cls(reply.strip(), finish_reason, tokens)
        thought, _, answer = reply.rpartition("</think>")
        return cls(answer.strip(), finish_reason, tokens, thought.split("<think>")[-1].strip())


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in a model's reply, wherever it starts (code fences, prose around it); raw line breaks
    inside strings allowed, as small models write them even through a grammar."""
    decoder = json.JSONDecoder(strict=False)
    found = []
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


class Generator(Protocol):
    """Who is asked. ``label`` names it in logs and progress bars."""

    label: str

    def generate(self, prompts: Sequence[Conversation], decoding: Decoding) -> list[Answer]: ...

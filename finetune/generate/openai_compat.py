"""Any OpenAI-compatible chat endpoint (``base_url``): a hosted model, vLLM, llama.cpp's server. The key comes
from an environment variable named in config and is never written anywhere. Rate limits and server errors are
retried with backoff by the official client."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from finetune.chat import text_messages
from finetune.data.canonical import Conversation
from finetune.errors import UserError
from finetune.generate import Answer, Decoding

log = logging.getLogger(__name__)


class ChatRefused(UserError, RuntimeError):
    """The endpoint answered a chat request with an error status (4xx after retries, or 5xx)."""


def client(base_url: str, api_key_env: str | None, timeout_s: float, max_retries: int) -> Any:
    """An OpenAI client for ``base_url``; ``api_key_env`` None for a server of our own, which needs no key."""
    from openai import OpenAI

    key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not key:
        log.info("%s is not set: asking %s without an API key", api_key_env, base_url)
    return OpenAI(base_url=base_url, api_key=key or "no-key", timeout=timeout_s, max_retries=max_retries)


class OpenAICompatGenerator:
    """``sampler_extras`` also sends top_k and repeat_penalty, which OpenAI's API does not define (llama.cpp
    and vLLM servers take them); without it only temperature, top_p, seed and stop reach the server."""

    def __init__(self, base_url: str, model: str, label: str, api_key_env: str = "OPENAI_API_KEY",
                 sampler_extras: bool = False, timeout_s: float = 120.0, max_retries: int = 4) -> None:
        self.client = client(base_url, api_key_env, timeout_s, max_retries)
        self.model, self.label, self.sampler_extras = model, label, sampler_extras

    def ask(self, prompt: Conversation, decoding: Decoding) -> Answer:
        """One chat completion."""
        import openai

        extra = {"top_k": decoding.top_k, "repeat_penalty": decoding.repeat_penalty} if self.sampler_extras else None
        try:
            out = self.client.chat.completions.create(
                model=self.model, messages=text_messages(prompt), max_tokens=decoding.max_new_tokens,
                temperature=decoding.temperature, top_p=decoding.top_p, seed=decoding.seed,
                stop=list(decoding.stop) or None, extra_body=extra,
            )
        except openai.APIStatusError as e:  # an expired key, a model not deployed: the user can fix it
            raise ChatRefused(f"{self.label}: {self.client.base_url} refused model {self.model}: HTTP "
                              f"{e.status_code} {' '.join(str(e.message).split())}") from None
        choice = out.choices[0]
        return Answer.of_reply(choice.message.content or "", choice.finish_reason,
                               out.usage.completion_tokens if out.usage else 0)

    def generate(self, prompts: Sequence[Conversation], decoding: Decoding) -> list[Answer]:
        from finetune.progress import Bar

        return [self.ask(prompt, decoding) for prompt in Bar(prompts, desc=f"{self.label}: answers", unit="prompt")]

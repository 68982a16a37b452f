"""A GGUF through llama-cpp-python's own chat path: the template embedded in the GGUF, its stop tokens, and
llama.cpp's sampler — what quantisation and conversion cost, measured on the same prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from finetune.chat import text_messages
from finetune.data.canonical import Conversation
from finetune.generate import Answer, Decoding


class LlamaCppGenerator:
    def __init__(self, gguf: Path, label: str, n_ctx: int = 2048) -> None:
        self.gguf, self.label, self.n_ctx = gguf, label, n_ctx

    def generate(self, prompts: Sequence[Conversation], decoding: Decoding) -> list[Answer]:
        from llama_cpp import Llama

        from finetune.progress import Bar

        llm = Llama(model_path=str(self.gguf), n_ctx=self.n_ctx, seed=decoding.seed,
                    last_n_tokens_size=decoding.repeat_last_n, verbose=False)
        answers = []
        for prompt in Bar(prompts, desc=f"{self.label}: answers", unit="prompt"):
            out = llm.create_chat_completion(
                messages=text_messages(prompt), max_tokens=decoding.max_new_tokens, temperature=decoding.temperature,
                top_p=decoding.top_p, top_k=decoding.top_k, repeat_penalty=decoding.repeat_penalty,
                stop=list(decoding.stop) or None, seed=decoding.seed,
            )
            choice = out["choices"][0]
            answers.append(Answer.of_reply(choice["message"]["content"] or "", choice["finish_reason"],
                                          out["usage"]["completion_tokens"]))
        return answers

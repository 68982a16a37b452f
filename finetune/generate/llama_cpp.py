"""A GGUF asked through llama-cpp-python, two ways.

- ``LlamaCppModel``: the prompt is the training template's own tokens (``chat.generation_prompt_ids``), llama.cpp
  runs the forward passes and ``sampling.next_token`` chooses each token — the chain ``generate/hf.py`` uses, so a
  GGUF of a model answers as the model in process does, several times faster on a CPU. Evaluation's base and tuned
  answers and ``finetune chat`` go this way.
- ``LlamaCppChat``: llama-cpp-python's own chat path (the template embedded in the GGUF, its stop tokens, llama.cpp's
  sampler): what a GGUF named in ``eval.compare`` gives whoever serves it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from finetune.chat import generation_prompt_ids, text_messages
from finetune.data.canonical import Conversation
from finetune.generate import Answer, Decoding


def cpu_threads() -> int:
    """llama.cpp's thread count: ``OMP_NUM_THREADS`` where it is set (as torch's kernels take it), else the cores
    this process may run on (llama-cpp-python's default is half of them — on a 2-core machine one thread, half the
    speed of two)."""
    if (given := os.environ.get("OMP_NUM_THREADS", "")).isdigit() and int(given) > 0:
        return int(given)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


KV_BUDGET_BYTES = 2 << 30  # the most the sequences answered side by side may hold in llama.cpp's KV cache
MAX_PARALLEL = 32  # the most sequences in one context


def open_gguf(gguf: Path) -> Any:
    """The GGUF's weights in llama.cpp (llama-cpp-python's binding of its C API), on the GPU where the build has
    one."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0x7FFFFFFF  # every layer
    with quiet_llama_cpp():
        return LlamaModel(path_model=str(gguf), params=params, verbose=False)


@contextlib.contextmanager
def quiet_llama_cpp() -> Iterator[None]:
    """llama.cpp's own log (through llama-cpp-python's) held back while a model or context is made or freed, as
    ``Llama(verbose=False)`` does; the level is put back after, so that what the quantizer reports still reaches
    the run's log."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def kv_bytes_per_token(model: Any) -> int:
    """What one token of one sequence holds in llama.cpp's KV cache (f16 keys and values of every layer)."""
    import llama_cpp

    m = model.model
    head_dim = llama_cpp.llama_model_n_embd(m) // max(1, llama_cpp.llama_model_n_head(m))
    return 2 * 2 * llama_cpp.llama_model_n_layer(m) * llama_cpp.llama_model_n_head_kv(m) * head_dim


class GGUFContext:
    """A llama.cpp context over an opened GGUF with room for ``n_seq`` sequences of up to ``seq_ctx`` tokens each,
    decoded side by side: one pass over the weights per step answers every sequence, where one sequence at a time
    reads all of them per token (on a CPU, memory bandwidth is what a step costs)."""

    def __init__(self, model: Any, n_seq: int, seq_ctx: int, n_batch: int = 512, adapter: Any = None,
                 adapter_scale: float = 1.0, flash_attention: bool | None = None) -> None:
        """``adapter``: a LoRA adapter llama.cpp has loaded over ``model`` (``Llama(lora_path=…)``'s), applied here;
        ``flash_attention`` None: llama.cpp's choice for the device."""
        import ctypes

        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext

        seq_ctx = -(-seq_ctx // 256) * 256  # llama.cpp pads each sequence's cache to 256 cells, with a warning
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_seq_max, params.kv_unified = n_seq * seq_ctx, n_seq, False  # a KV stream each
        params.n_batch = params.n_ubatch = n_batch
        params.n_threads = params.n_threads_batch = cpu_threads()
        params.no_perf = True
        if flash_attention is not None:
            params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attention
                                      else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        with quiet_llama_cpp():
            self.context = LlamaContext(model=model, params=params, verbose=False)
        self.batch = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        self.n_seq, self.seq_ctx, self.n_batch = n_seq, seq_ctx, n_batch
        if adapter is not None and llama_cpp.llama_set_adapters_lora(
                self.context.ctx, (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter), 1,
                (ctypes.c_float * 1)(adapter_scale)):
            self.close()
            raise RuntimeError("llama.cpp could not apply the LoRA adapter to a new context")
        self.n_vocab = model.n_vocab()

    def decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> Any:
        """Feed (token, position, sequence, wants logits) entries; the logits of those that want them, in order, as
        the rows of one float32 array. Quietly: after a ``move`` llama.cpp copies the stream and plans its graph
        anew, and logs both, ~150 lines."""
        import llama_cpp
        import numpy as np

        out = np.empty((sum(1 for entry in entries if entry[3]), self.n_vocab), dtype=np.float32)
        done = 0
        batch = self.batch.batch
        for first in range(0, len(entries), self.n_batch):
            chunk = entries[first:first + self.n_batch]
            for i, (token, position, sequence, logits) in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, 1, logits
                batch.seq_id[i][0] = sequence
            batch.n_tokens = len(chunk)
            with quiet_llama_cpp():
                self.context.decode(self.batch)
            if wanted := sum(1 for entry in chunk if entry[3]):  # llama.cpp's outputs, in the order of the batch
                out[done:done + wanted] = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.context.ctx),
                                                                shape=(wanted, self.n_vocab))
                done += wanted
        return out

    def clear(self) -> None:
        self.context.kv_cache_clear()

    def truncate(self, sequence: int, length: int) -> None:
        """Keep the first ``length`` tokens of ``sequence`` in the cache, so that decoding goes on from there."""
        self.context.kv_cache_seq_rm(sequence, length, -1)

    def move(self, sequence: int, stream: int) -> None:
        """``sequence``'s cache moved to sequence ``stream``, whose own is dropped: llama.cpp copies the data between
        the two streams, so decoding goes on there as it would have in the first."""
        self.context.kv_cache_seq_rm(stream, -1, -1)
        self.context.kv_cache_seq_cp(sequence, stream, -1, -1)
        self.context.kv_cache_seq_rm(sequence, -1, -1)

    def close(self) -> None:
        with quiet_llama_cpp():
            self.batch.close()
            self.context.close()


def continue_side_by_side(context: GGUFContext, prompts: Sequence[list[int]], last_logits: Sequence[Any],
                          choose: Callable[[int, Any, list[int]], int], stops: frozenset[int], limit: int,
                          on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Prompt i, in sequence i of ``context`` with ``last_logits[i]`` its logits at its last token, continued a token
    at a time, all of them side by side: ``choose(i, logits, so_far)`` picks its next token, until a stop token (kept,
    last) or ``limit`` tokens; ``on_token(i, token)`` sees each other token as it comes.

    The prompts still going stay in sequences 0 to n-1: when some end, those in the highest sequences move into the
    freed ones. llama.cpp decodes a step in one pass over the weights only while its sequences' streams are
    neighbours, and splits it at every gap: 12 sequences at position 435 with four gaps took 137 ms a step here, the
    same 12 side by side 61 ms (the base SmolLM2's 18 support_bot answers: 40.9 s → 26.0 s, every answer the same)."""
    out: list[list[int]] = [[] for _ in prompts]
    sequence = list(range(len(prompts)))  # where prompt i's cache is now
    active, logits = list(range(len(prompts))), last_logits
    while active:
        going, ended = [], []
        for i, row in zip(active, logits, strict=True):
            token = choose(i, row, out[i])
            out[i].append(token)
            if token in stops:
                ended.append(i)
                continue
            if on_token is not None:
                on_token(i, token)
            (going if len(out[i]) < limit else ended).append(i)
        freed = sorted(sequence[i] for i in ended if sequence[i] < len(going))
        beyond = sorted((i for i in going if sequence[i] >= len(going)), key=sequence.__getitem__)
        for free, i in zip(freed, beyond, strict=True):
            context.move(sequence[i], free)
            sequence[i] = free
        active = sorted(going, key=sequence.__getitem__)
        logits = context.decode([(out[i][-1], len(prompts[i]) + len(out[i]) - 1, sequence[i], True)
                                 for i in active]) if active else []
    return out


def answer_side_by_side(context: GGUFContext, prompts: Sequence[list[int]], decoding: Decoding, seeds: Sequence[int],
                        stops: frozenset[int], on_token: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Each prompt's answer tokens (up to, not including, a stop token; at most ``decoding.max_new_tokens``),
    decoded side by side in ``context`` (``len(prompts) <= context.n_seq``), each drawn with its own seed by
    ``sampling.next_token``; ``on_token(i, token)`` sees each as it comes."""
    import numpy as np

    from finetune.generate.sampling import next_token

    context.clear()
    rngs = [np.random.default_rng(seed) for seed in seeds]
    logits = context.decode([(t, pos, i, pos == len(p) - 1) for i, p in enumerate(prompts) for pos, t in enumerate(p)])
    out = continue_side_by_side(context, prompts, logits,
                                lambda i, row, so_far: next_token(row, [*prompts[i], *so_far], decoding, rngs[i]),
                                stops, decoding.max_new_tokens, on_token)
    return [tokens[:-1] if tokens and tokens[-1] in stops else tokens for tokens in out]


class LlamaCppModel:
    """A GGUF of a model whose tokenizer (and chat template) is ``tokenizer``'s, in a ``GGUFContext`` sized for what
    it is asked (made anew when a longer prompt comes)."""

    def __init__(self, gguf: Path, tokenizer: Any, label: str) -> None:
        self.gguf, self.tokenizer, self.label = gguf, tokenizer, label
        self._model: Any = None
        self._context: GGUFContext | None = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = open_gguf(self.gguf)
        return self._model

    def _context_for(self, n_seq: int, seq_ctx: int) -> GGUFContext:
        seq_ctx = max(512, seq_ctx)
        c = self._context
        if c is None or n_seq > c.n_seq or seq_ctx > c.seq_ctx:
            if c is not None:
                c.close()
            c = self._context = GGUFContext(self.model, n_seq, seq_ctx)
        return c

    def _answer(self, kept: list[int], max_new_tokens: int) -> Answer:
        stopped = len(kept) < max_new_tokens
        return Answer.of_reply(self.tokenizer.decode(kept, skip_special_tokens=True), "stop" if stopped else "length",
                               len(kept) + stopped)

    def stream(self, prompt: list[int], decoding: Decoding, seed: int,
               on_text: Callable[[str], None] | None = None) -> Answer:
        """One answer to ``prompt``'s token ids; ``on_text`` gets each new piece of its text as it is generated."""
        from finetune.generate.hf import stop_token_ids

        context = self._context_for(1, len(prompt) + decoding.max_new_tokens)
        kept: list[int] = []
        shown = ""

        def show(_: int, token: int) -> None:
            nonlocal shown
            kept.append(token)
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            if on_text is not None and not text.endswith("\ufffd"):  # a character whose bytes are not all there
                on_text(text[len(shown):])
                shown = text

        [answer] = answer_side_by_side(context, [prompt], decoding, [seed],
                                       frozenset(stop_token_ids(self.tokenizer, decoding.stop)), show)
        return self._answer(answer, decoding.max_new_tokens)

    def generate(self, prompts: Sequence[Conversation], decoding: Decoding) -> list[Answer]:
        """Every prompt answered, as many side by side as ``KV_BUDGET_BYTES`` holds (at most ``MAX_PARALLEL``);
        prompt i drawn with seed + i, whichever prompts it is decoded beside. Its logits may differ from those of the
        prompt decoded alone by flash attention's rounding, which llama.cpp turns on for a CPU: up to 0.044 on
        support_bot's prompts, and 0 with it off, which costs ~30 % more time there."""
        from finetune.generate.hf import stop_token_ids
        from finetune.progress import Bar

        encoded = [generation_prompt_ids(self.tokenizer, p) for p in prompts]
        if not encoded:
            return []
        seq_ctx = max(map(len, encoded)) + decoding.max_new_tokens
        n_seq = max(1, min(MAX_PARALLEL, len(encoded), KV_BUDGET_BYTES // (kv_bytes_per_token(self.model) * seq_ctx)))
        context = self._context_for(n_seq, seq_ctx)
        stops = frozenset(stop_token_ids(self.tokenizer, decoding.stop))
        answers: list[Answer] = []
        with Bar(total=len(encoded), desc=f"{self.label}: answers", unit="prompt") as bar:
            for first in range(0, len(encoded), n_seq):
                group = encoded[first:first + n_seq]
                seeds = [decoding.seed + first + i for i in range(len(group))]
                answers += [self._answer(a, decoding.max_new_tokens)
                            for a in answer_side_by_side(context, group, decoding, seeds, stops)]
                bar.update(len(group))
        return answers

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
        if self._model is not None:
            with quiet_llama_cpp():
                self._model.close()
            self._model = None


class LlamaCppChat:
    def __init__(self, gguf: Path, label: str, n_ctx: int = 2048) -> None:
        self.gguf, self.label, self.n_ctx = gguf, label, n_ctx

    def generate(self, prompts: Sequence[Conversation], decoding: Decoding) -> list[Answer]:
        from llama_cpp import Llama

        from finetune.progress import Bar

        llm = Llama(model_path=str(self.gguf), n_ctx=self.n_ctx, seed=decoding.seed, n_threads=cpu_threads(),
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

"""The HF model in process: prompts rendered with the chat template as in training, generated in left-padded
batches with llama.cpp's sampler order (``Decoding``), so that the answers are those an Ollama user would get
from the exported model, up to sampling noise."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

from finetune.chat import generation_prompt_ids
from finetune.data.canonical import Conversation
from finetune.generate import Answer, Decoding


def _recent_repetition_penalty(penalty: float, last_n: int, prompt_starts: list[int]) -> Any:
    """llama.cpp's repeat penalty: every token seen in the last ``last_n`` positions of the context (prompt and
    answer, never left padding) has its logit divided by ``penalty`` (multiplied when negative). transformers'
    own processor looks at the whole context, padding included."""
    import torch
    from transformers import LogitsProcessor

    class RecentRepetitionPenalty(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            width = input_ids.shape[1]
            for row, start in enumerate(prompt_starts):
                seen = input_ids[row, max(start, width - last_n):].unique()
                logits = scores[row, seen]
                scores[row, seen] = torch.where(logits < 0, logits * penalty, logits / penalty)
            return scores

    return RecentRepetitionPenalty()


def _processors(decoding: Decoding, prompt_starts: list[int]) -> Any:
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    chain: list[Any] = []
    if decoding.repeat_penalty != 1:
        chain.append(_recent_repetition_penalty(decoding.repeat_penalty, decoding.repeat_last_n, prompt_starts))
    if not decoding.greedy:
        if decoding.top_k > 0:
            chain.append(TopKLogitsWarper(decoding.top_k))
        if decoding.top_p < 1:
            chain.append(TopPLogitsWarper(decoding.top_p))
        chain.append(TemperatureLogitsWarper(decoding.temperature))
    return LogitsProcessorList(chain)


def stop_token_ids(tokenizer: Any, stop: Sequence[str]) -> list[int]:
    """The end-of-sequence token and every stop string that is one token of this vocabulary."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for text in stop:
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1:
            ids.add(encoded[0])
    return sorted(ids)


class _TextStream:
    """transformers' streamer protocol (``put``/``end``): the answer's new text to ``on_text`` as it is generated,
    a character only once all its bytes are there."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.shown = ""
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        self.ids += value.flatten().tolist()
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self.on_text(text[len(self.shown):])
            self.shown = text

    def end(self) -> None:
        pass


class HFGenerator:
    def __init__(self, model: Any, tokenizer: Any, label: str, batch_size: int = 8) -> None:
        self.model, self.tokenizer, self.label, self.batch_size = model, tokenizer, label, batch_size

    def _batch(self, batch: list[list[int]], decoding: Decoding, seed: int, streamer: Any = None) -> list[Answer]:
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        stops = stop_token_ids(self.tokenizer, decoding.stop)
        width = max(map(len, batch))
        starts = [width - len(ids) for ids in batch]
        input_ids = torch.tensor([[pad] * s + ids for s, ids in zip(starts, batch, strict=True)],
                                 device=self.model.device)
        mask = torch.tensor([[0] * s + [1] * len(ids) for s, ids in zip(starts, batch, strict=True)],
                            device=self.model.device)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=decoding.max_new_tokens,
                do_sample=not decoding.greedy, temperature=None, top_p=None, top_k=None,
                logits_processor=_processors(decoding, starts), eos_token_id=stops, pad_token_id=pad,
                streamer=streamer,
            )
        answers = []
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in stops), None)
            kept = row if end is None else row[:end]
            answers.append(Answer.of_reply(self.tokenizer.decode(kept, skip_special_tokens=True),
                                           "length" if end is None else "stop", len(kept) + (end is not None)))
        return answers

    def generate(self, prompts: Sequence[Conversation], decoding: Decoding) -> list[Answer]:
        from finetune.progress import Bar

        encoded = [generation_prompt_ids(self.tokenizer, p) for p in prompts]
        answers: list[Answer] = []
        with Bar(total=len(prompts), desc=f"{self.label}: answers", unit="prompt") as bar:
            for first in range(0, len(encoded), self.batch_size):
                batch = encoded[first:first + self.batch_size]
                # the same draws for every model asked these prompts
                answers += self._batch(batch, decoding, decoding.seed + first)
                bar.update(len(batch))
        return answers

    def stream(self, prompt: list[int], decoding: Decoding, seed: int,
               on_text: Callable[[str], None] | None = None) -> Answer:
        """One answer to ``prompt``'s token ids; ``on_text`` gets each new piece of its text as it is generated."""
        return self._batch([prompt], decoding, seed, _TextStream(self.tokenizer, on_text) if on_text else None)[0]


class InProcessModel:
    """A model folder or Hub id asked in this process, loaded when first used: one load answers (``generate``) and
    scores tokens (``model``: likelihood metrics, lm-eval); ``release`` frees it before the next model loads."""

    def __init__(self, source: str, model_config: Any, tokenizer: Any, label: str, batch_size: int = 8) -> None:
        self.source, self.model_config, self.tokenizer = source, model_config, tokenizer
        self.label, self.batch_size = label, batch_size
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            import torch

            from finetune.models import load_model

            gpu = {"": 0} if torch.cuda.is_available() else None  # on the GPU where there is one, as export's gate
            self._model = load_model(self.source, self.model_config, device_map=gpu).eval()
        return self._model

    def generate(self, prompts: Sequence[Conversation], decoding: Decoding) -> list[Answer]:
        return HFGenerator(self.model, self.tokenizer, self.label, self.batch_size).generate(prompts, decoding)

    def stream(self, prompt: list[int], decoding: Decoding, seed: int,
               on_text: Callable[[str], None] | None = None) -> Answer:
        return HFGenerator(self.model, self.tokenizer, self.label).stream(prompt, decoding, seed, on_text)

    def release(self) -> None:
        from finetune.plan import release_freed_memory

        self._model = None
        gc.collect()
        release_freed_memory()

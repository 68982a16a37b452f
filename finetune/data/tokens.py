"""Token counts per row, as training will see them, fast enough for a million rows.

``chat.tokenize`` finds assistant spans by rendering and tokenizing growing prefixes of each conversation:
exact, and the definition, but three template renders and three tokenizer calls per turn. Here each chat row is
rendered once; its assistant spans are located in the text (the generation prompt, the answer, the template's
end-of-turn text — learned once per template from probe conversations and checked against the exact method
there); all rows of a chunk are tokenized in one batch (the Rust tokenizer on every core); and a span becomes
token indices with ``char_to_token``. A row whose span does not start and end on token boundaries, a row with
tools (whose rendering depends on the template), and every row of a template the probes do not confirm take
the exact path. Only counts are kept (four integers a row), so a million rows cost a few megabytes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.chat import IGNORE_INDEX, generation_prompt_ids, has_chat_template, render, tokenize
from finetune.data.canonical import Conversation, DataError, without_weights

CHUNK = 4096
PROGRESS_FROM = 50_000
_SENTINEL = "\ue000answer\ue001"


@dataclass
class TokenStats:
    """Per row: tokens after the chat template, tokens that carry loss, the index of the first of those
    (the length when none), and loss tokens within ``max_seq_len``."""

    length: np.ndarray
    trained: np.ndarray
    first_trained: np.ndarray
    trained_within: np.ndarray
    max_seq_len: int
    fast_rows: int = 0

    def __len__(self) -> int:
        return len(self.length)

    def take(self, index: Sequence[int] | np.ndarray) -> TokenStats:
        index = np.asarray(index, dtype=np.int64)
        return TokenStats(self.length[index], self.trained[index], self.first_trained[index],
                          self.trained_within[index], self.max_seq_len, self.fast_rows)

    @classmethod
    def concat(cls, parts: list[TokenStats], max_seq_len: int) -> TokenStats:
        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0, dtype=np.int64)

        return cls(cat("length"), cat("trained"), cat("first_trained"), cat("trained_within"), max_seq_len,
                   sum(p.fast_rows for p in parts))


@dataclass(frozen=True)
class FastTemplate:
    """How this tokenizer's template frames an answer, and a renderer without ``apply_chat_template``'s
    per-call copying of the messages (the same compiled template and variables)."""

    prompt: str  # the generation prompt, right before an answer
    end: str  # what the template writes right after an answer (its end-of-turn text)
    render: Any  # messages -> text, for plain string-content messages


def _direct_renderer(tokenizer: Any) -> Any:
    from transformers.utils.chat_template_utils import _compile_jinja_template

    template = _compile_jinja_template(tokenizer.chat_template)
    variables = dict(tokenizer.special_tokens_map)
    return lambda messages: template.render(messages=messages, tools=None, documents=None,
                                            add_generation_prompt=False, **variables)


PROBES = [
    [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
     {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "And then?"},
     {"role": "assistant", "content": "Then, bye."}],
    [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "A\nB"},
     {"role": "user", "content": "C"}, {"role": "assistant", "content": "D"}],
]


@functools.lru_cache(maxsize=8)
def fast_template(tokenizer: Any) -> FastTemplate | None:
    """The template's answer frame, or None when the template does not render every assistant turn as
    exactly that frame (then every row takes the exact path). Checked on probe conversations against the
    prefix renders that define the spans, and the direct renderer against ``apply_chat_template``."""
    if not has_chat_template(tokenizer) or not isinstance(tokenizer.chat_template, str):
        return None
    user = PROBES[0][:1]
    try:
        base = render(tokenizer, user)
        prompt = render(tokenizer, user, add_generation_prompt=True)
        with_answer = render(tokenizer, [*user, {"role": "assistant", "content": _SENTINEL}])
        direct = _direct_renderer(tokenizer)
        if any(direct(m) != render(tokenizer, m) for m in PROBES):
            direct = functools.partial(render, tokenizer)
    except Exception:
        return None
    if not prompt.startswith(base) or not with_answer.startswith(prompt + _SENTINEL):
        return None
    fast = FastTemplate(prompt[len(base):], with_answer[len(prompt) + len(_SENTINEL):], direct)
    for messages in PROBES:
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        exact = [(len(render(tokenizer, messages[:i], add_generation_prompt=True)),
                  len(render(tokenizer, messages[:i + 1]))) for i in answers]
        if _char_spans(render(tokenizer, messages), messages, fast) != exact:
            return None
    return fast


def _char_spans(text: str, messages: list[dict], fast: FastTemplate) -> list[tuple[int, int]] | None:
    prompt, end = fast.prompt, fast.end
    spans, cursor = [], 0
    for m in messages:
        if m["role"] != "assistant":
            continue
        at = text.find(prompt + m["content"] + end, cursor)
        if at < 0:
            return None
        start = at + len(prompt)
        cursor = start + len(m["content"]) + len(end)
        spans.append((start, cursor))
    return spans


def _token_span(encoding: Any, text_len: int, n: int, start: int, end: int) -> tuple[int, int] | None:
    """Token indices [t0, t1) of chars [start, end), or None unless both ends are token boundaries."""
    t0 = encoding.char_to_token(start) if start < text_len else n
    t1 = encoding.char_to_token(end) if end < text_len else n
    if t0 is None or t1 is None:
        return None
    if (t0 < n and encoding.token_to_chars(t0)[0] != start) or (t1 < n and encoding.token_to_chars(t1)[0] != end):
        return None
    return t0, t1


def _exact(tokenizer: Any, c: Conversation, max_seq_len: int) -> tuple[int, int, int, int]:
    if c.columns is not None:  # a prompt-only row: its answer is the model's, in training (objective=grpo)
        n = len(generation_prompt_ids(tokenizer, c))
        return n, 0, n, 0
    try:
        t = tokenize(tokenizer, c)
    except ValueError as e:
        raise DataError(f"{c.location}: {e}") from e
    trained = [i for i, label in enumerate(t.labels) if label != IGNORE_INDEX]
    return (len(t.input_ids), len(trained), trained[0] if trained else len(t.input_ids),
            sum(i < max_seq_len for i in trained))


def _chunk(tokenizer: Any, rows: Sequence[Conversation], max_seq_len: int) -> TokenStats:
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a slow (Python) tokenizer has none: exact path
    fast_path = fast_template(tokenizer) if backend is not None else None
    out = np.zeros((len(rows), 4), dtype=np.int64)
    fast = [False] * len(rows)
    chat = [i for i, c in enumerate(rows) if fast_path and not c.is_text and not c.tools and c.columns is None
            and not any(m.get("tool_calls") for m in c.messages)]
    if chat:
        assert fast_path is not None
        texts = [fast_path.render(without_weights(rows[i].messages)) for i in chat]
        for i, text, enc in zip(chat, texts, backend.encode_batch(texts, add_special_tokens=False), strict=True):
            spans = _char_spans(text, rows[i].messages, fast_path)
            n = len(enc)
            tokens = [_token_span(enc, len(text), n, s, e) for s, e in spans] if spans else [None]
            if any(t is None for t in tokens):
                continue
            # a turn of loss weight 0 is not trained (finetune.chat)
            weights = [m.get("weight", 1) for m in rows[i].messages if m["role"] == "assistant"]
            tokens = [t for t, w in zip(tokens, weights, strict=True) if w]
            trained = sum(t1 - t0 for t0, t1 in tokens)
            within = sum(max(0, min(t1, max_seq_len) - t0) for t0, t1 in tokens)
            out[i] = (n, trained, tokens[0][0] if tokens else n, within)
            fast[i] = True
    text_rows = [i for i, c in enumerate(rows) if c.is_text and backend is not None]
    if text_rows:
        eos = tokenizer.eos_token_id
        encoded = backend.encode_batch([rows[i].text or "" for i in text_rows], add_special_tokens=True)
        for i, enc in zip(text_rows, encoded, strict=True):
            n = len(enc) + (eos is not None and (not enc.ids or enc.ids[-1] != eos))
            out[i] = (n, n, 0, min(n, max_seq_len))
            fast[i] = True
    for i, c in enumerate(rows):
        if not fast[i]:
            out[i] = _exact(tokenizer, c, max_seq_len)
    return TokenStats(out[:, 0], out[:, 1], out[:, 2], out[:, 3], max_seq_len, fast_rows=sum(fast))


def token_stats(tokenizer: Any, rows: Sequence[Conversation], max_seq_len: int) -> TokenStats:
    """Token counts of every row under ``tokenizer``'s chat template (see the module docstring); a progress
    bar from ``PROGRESS_FROM`` rows on, where this takes long enough to watch."""
    from finetune.progress import Bar

    parts = []
    with Bar(total=len(rows), desc="counting tokens", unit=" rows", disable=len(rows) < PROGRESS_FROM,
             leave=False) as bar:
        for i in range(0, len(rows), CHUNK):
            parts.append(_chunk(tokenizer, rows[i:i + CHUNK], max_seq_len))
            bar.update(len(parts[-1]))
    return TokenStats.concat(parts, max_seq_len)

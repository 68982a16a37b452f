"""Lengths in the target model's own tokens, after its chat template: rows with almost nothing to learn,
rows that ``train.max_seq_len`` will cut, and rows whose answer starts after the cut (no loss at all). A prompt-only
row (GRPO's) has no answer of its own: it is found only where the prompt leaves no room for one."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.data.canonical import Conversation
from finetune.data.checks import Check, CheckInput, Finding, Outcome
from finetune.fields import setting


@dataclass
class TooShortSettings:
    action: str = setting("warn", choices=("warn", "drop", "error", "off"))
    min_loss_tokens: int = setting(2, low=1)  # answer tokens (end of turn included) a row must carry


@dataclass
class TooLongSettings:
    action: str = setting("warn", choices=("warn", "drop", "error", "off"))


@dataclass
class NoLossSettings:
    action: str = setting("drop", choices=("drop", "warn", "error", "off"))


def _prompts(rows: list[Conversation]) -> np.ndarray:
    return np.array([c.columns is not None for c in rows], dtype=bool)


def _find_short(data: CheckInput) -> Outcome:
    t, minimum = data.tokens, data.settings.min_loss_tokens
    assert t is not None
    return Outcome([Finding(int(i), f"{t.trained[i]} answer tokens (fewer than {minimum})")
                    for i in np.flatnonzero((t.trained < minimum) & ~_prompts(data.rows))])


def _find_long(data: CheckInput) -> Outcome:
    t = data.tokens
    assert t is not None
    return Outcome([Finding(int(i), f"{t.length[i]} tokens, cut at train.max_seq_len={t.max_seq_len} "
                                    f"({t.trained[i] - t.trained_within[i]} answer tokens lost)")
                    for i in np.flatnonzero(t.length > t.max_seq_len)])


def _find_no_loss(data: CheckInput) -> Outcome:
    t = data.tokens
    assert t is not None
    prompts = _prompts(data.rows)
    return Outcome([Finding(int(i), f"the prompt's {t.length[i]} tokens leave no room for an answer within "
                                    f"train.max_seq_len={t.max_seq_len}" if prompts[i] else
                            "no answer token to train on (every assistant turn has loss weight 0)"
                            if t.trained[i] == 0 else
                            f"no answer token within train.max_seq_len={t.max_seq_len} (the answer starts at token "
                            f"{t.first_trained[i]})")
                    for i in np.flatnonzero(np.where(prompts, t.length >= t.max_seq_len, t.trained_within == 0))])


@functools.lru_cache(maxsize=8)
def longest_token(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer`` stands for (its vocabulary's and added tokens' longest)."""
    return max(len(tokenizer.convert_tokens_to_string([t])) for t in tokenizer.get_vocab())


UNSEEN = " \t\n\r\u3000\u00a0"  # a normaliser may fold runs of these into one token, whatever their length


def beyond_reach(rows: list[Conversation], tokenizer: Any, max_seq_len: int) -> Outcome:
    """Rows whose first answer starts later than ``max_seq_len`` tokens can reach, decided from the characters
    before it, without tokenizing them: a 100 MB prompt takes minutes and gigabytes to tokenize. The bound is
    generous — visible characters over twice the longest token — so only rows far beyond reach are found here;
    the rest are measured in tokens."""
    reach = 2 * longest_token(tokenizer) * max_seq_len
    findings = []
    for i, c in enumerate(rows):
        first = next((k for k, m in enumerate(c.messages) if m["role"] == "assistant"), None)
        if c.is_text or c.columns is not None or first is None:  # no answer: the structure check's to say
            continue
        before = "".join(m["content"] for m in c.messages[:first])
        if len(before) > reach and (visible := len(before) - sum(map(before.count, UNSEEN))) > reach:
            findings.append(Finding(i, f"no answer token within train.max_seq_len={max_seq_len} (the answer starts "
                                       f"after {visible:,} visible characters; one token covers at most "
                                       f"{longest_token(tokenizer)})"))
    return Outcome(findings)


TOO_SHORT = Check("too_short", "tokens", "almost no answer tokens", TooShortSettings, _find_short)
TOO_LONG = Check("too_long", "tokens", "longer than train.max_seq_len", TooLongSettings, _find_long)
NO_LOSS = Check("no_loss_within_max_seq_len", "tokens", "no answer token within train.max_seq_len",
                NoLossSettings, _find_no_loss)


def no_loss_before_tokens(tokenizer: Any, max_seq_len: int) -> Check:
    """``NO_LOSS`` deciding the rows ``beyond_reach`` finds, to run before the others are tokenized."""
    return dataclasses.replace(NO_LOSS, find=lambda data: beyond_reach(data.rows, tokenizer, max_seq_len))

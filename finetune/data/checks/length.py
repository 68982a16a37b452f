"""Lengths in the target model's own tokens, after its chat template: rows with almost nothing to learn,
rows that ``train.max_seq_len`` will cut, and rows whose answer starts after the cut (no loss at all)."""

from __future__ import annotations

from dataclasses import dataclass

from finetune.chat import IGNORE_INDEX
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


def _find_short(data: CheckInput) -> Outcome:
    minimum = data.settings.min_loss_tokens
    return Outcome([Finding(i, f"{t.num_trained_tokens} answer tokens (fewer than {minimum})")
                    for i, t in enumerate(data.tokens or []) if t.num_trained_tokens < minimum])


def _find_long(data: CheckInput) -> Outcome:
    limit = data.max_seq_len
    findings = []
    for i, t in enumerate(data.tokens or []):
        if len(t.input_ids) > limit:
            lost = sum(label != IGNORE_INDEX for label in t.labels[limit:])
            findings.append(Finding(i, f"{len(t.input_ids)} tokens, cut at train.max_seq_len={limit} "
                                       f"({lost} answer tokens lost)"))
    return Outcome(findings)


def _find_no_loss(data: CheckInput) -> Outcome:
    limit = data.max_seq_len
    findings = []
    for i, t in enumerate(data.tokens or []):
        if not any(label != IGNORE_INDEX for label in t.labels[:limit]):
            start = next((k for k, label in enumerate(t.labels) if label != IGNORE_INDEX), len(t.labels))
            findings.append(Finding(i, f"no answer token within train.max_seq_len={limit} (the answer starts at "
                                       f"token {start})"))
    return Outcome(findings)


TOO_SHORT = Check("too_short", "tokens", "almost no answer tokens", TooShortSettings, _find_short)
TOO_LONG = Check("too_long", "tokens", "longer than train.max_seq_len", TooLongSettings, _find_long)
NO_LOSS = Check("no_loss_within_max_seq_len", "tokens", "no answer token within train.max_seq_len",
                NoLossSettings, _find_no_loss)

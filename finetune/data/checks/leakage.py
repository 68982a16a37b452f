"""Held-out rows that the training split already contains — a repeated question (exactly, after
normalisation) or a near-duplicate row — measure memory, not skill. A user's fixed test set is never altered
silently: by default the run stops and shows the pair; ``move_to_train`` or ``drop`` are explicit choices."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from finetune.data.canonical import questions
from finetune.data.checks import Check, CheckInput, Finding, Outcome
from finetune.data.checks.duplicates import near_signatures
from finetune.data.minhash import near_duplicate_of, normalize
from finetune.fields import setting


@dataclass
class LeakageSettings:
    action: str = setting("error", choices=("error", "warn", "drop", "move_to_train", "off"))
    threshold: float = setting(0.9, low=0.5, high=1.0)  # near-duplicate similarity that counts as a leak
    near: bool = True  # near-duplicates too, not only repeated questions


def _find(data: CheckInput) -> Outcome:
    asked: dict[int, int] = {}  # hash of a normalised training question → its row
    for j, c in enumerate(data.train):
        for q in questions(c):
            asked.setdefault(hash(normalize(q)), j)
    findings = {}
    for i, c in enumerate(data.rows):
        for q in questions(c):
            j = asked.get(hash(normalize(q)))
            if j is not None and normalize(q) in map(normalize, questions(data.train[j])):
                findings[i] = Finding(i, f"repeats a training question ({data.train[j].location})")
                break
    if data.settings.near and data.rows and data.train:
        sig = near_signatures([*data.train, *data.rows], ngram=5)
        n = len(data.train)
        for i, (j, sim) in near_duplicate_of(sig, data.settings.threshold).items():
            if i >= n and j < n and i - n not in findings:
                findings[i - n] = Finding(i - n, f"a near-duplicate of training row {data.train[j].location} "
                                                 f"(similarity ≈ {sim:.2f})")
    return Outcome(list(findings.values()))


def _own_split(settings: LeakageSettings, checks: Any) -> LeakageSettings:
    """Our own random split is ours to change: a leaked row always moves into training, and near-duplicates count
    only when the near_duplicates check did not already drop them from the whole pool before splitting."""
    return dataclasses.replace(settings, action="move_to_train",
                               near=settings.near and checks.near_duplicates.action != "drop")


CHECK = Check("leakage", "splits", "held-out row found in training data", LeakageSettings, _find, own_split=_own_split)

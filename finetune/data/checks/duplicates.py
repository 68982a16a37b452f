"""Duplicates, removed before splitting so that no pair straddles train and test: exact after
normalisation (Unicode NFKC, case, whitespace), and near (``finetune.data.minhash``: the dialogue with
punctuation and spaces dropped, MinHash over character n-grams for candidates, then the pair's n-gram Jaccard
similarity at or above ``threshold``, or one edit of at most ``edit_chars`` characters apart)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from finetune.data.canonical import Conversation, all_text
from finetune.data.checks import Check, CheckInput, Finding, Outcome
from finetune.data.minhash import EDIT_CHARS, TURN, Signatures, near_duplicate_of, normalize, signatures
from finetune.fields import setting


@dataclass
class ExactSettings:
    action: str = setting("drop", choices=("drop", "warn", "error", "off"))


@dataclass
class NearSettings:
    action: str = setting("drop", choices=("drop", "warn", "error", "off"))
    threshold: float = setting(0.9, low=0.5, high=1.0)  # Jaccard similarity of character n-grams
    ngram: int = setting(5, low=2, high=16)  # n: the n-grams' characters
    # rows with every turn the same but one, which differs in one place (not in a number) by at most this many
    # characters and at most half of that turn, are near-duplicates whatever their similarity; 0: similarity alone
    edit_chars: int = setting(EDIT_CHARS, low=0, high=64)


def exact_key(c: Conversation) -> bytes:
    """A 128-bit digest of the normalised row: equal rows, equal keys; 49 bytes a row instead of the text."""
    tools = json.dumps(c.tools, sort_keys=True, ensure_ascii=False) if c.tools else ""
    return hashlib.blake2b((normalize(all_text(c)) + "\x00" + tools).encode(), digest_size=16).digest()


def dialogue(c: Conversation) -> str:
    """The text a near-duplicate shares: every turn but the system prompt (which many rows share), joined by
    ``TURN`` so that an edit can be placed in its turn."""
    if c.is_text:
        return c.text or ""
    return TURN.join(m["content"] for m in c.messages if m["role"] != "system")


class _Dialogues(Sequence[str]):
    """The rows' dialogue texts, made when a chunk asks for them."""

    def __init__(self, rows: list[Conversation]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):  # noqa: ANN001, ANN204 (int or slice, as Sequence)
        return [dialogue(c) for c in self.rows[index]] if isinstance(index, slice) else dialogue(self.rows[index])


def near_signatures(rows: list[Conversation], ngram: int) -> Signatures:
    return signatures(_Dialogues(rows), ngram=ngram)


def _find_exact(data: CheckInput) -> Outcome:
    first: dict[bytes, int] = {}
    findings = []
    for i, c in enumerate(data.rows):
        j = first.setdefault(exact_key(c), i)
        if j != i:
            findings.append(Finding(i, f"the same as {data.rows[j].location} after normalisation"))
    return Outcome(findings)


def _find_near(data: CheckInput) -> Outcome:
    s = data.settings
    sig = near_signatures(data.rows, s.ngram)
    found = near_duplicate_of(sig, s.threshold, s.edit_chars)
    return Outcome([Finding(i, f"a near-duplicate of {data.rows[j].location} ({_how(sim, s.threshold)})")
                    for i, (j, sim) in sorted(found.items())])


def _how(sim: float, threshold: float) -> str:
    return f"similarity ≈ {sim:.2f}" + ("" if sim >= threshold else ", one edit apart")


EXACT = Check("duplicates", "rows", "exact duplicate", ExactSettings, _find_exact)
NEAR = Check("near_duplicates", "rows", "near-duplicate", NearSettings, _find_near)

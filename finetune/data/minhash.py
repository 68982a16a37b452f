"""Near-duplicate detection: MinHash signatures of character n-grams, banded LSH for candidates, and an exact
comparison of the candidate pairs that the signatures cannot settle.

What is compared is each row's text after ``near_text``: Unicode NFKC (full-width letters and digits, half-width
katakana), case folded, and punctuation, spaces and control characters dropped, so ``？``/``?``, ``。``/``．``,
``、``/``，``, ``「」``/``『』`` and every kind of space make no difference — what Japanese normalisers such as
neologdn fold, and more. Character n-grams (not words) so that Japanese and Chinese, written without spaces, are
compared as well as English. Signatures are vectorised with numpy: one-permutation hashing (each n-gram's 64-bit
hash picks a bin and competes for that bin's minimum) with rotation densification for bins a short text leaves
empty, so the cost is one pass over the text rather than one per hash function.

A candidate pair is a near-duplicate when (1) the Jaccard similarity of its n-grams is at least the threshold:
for rows longer than ``EXACT_CHARS``, whose n-grams fill the 64 bins, the signatures' estimate (±0.04) when it
reaches the threshold and the exact similarity when it falls just short; for shorter rows, where the estimate is
noisiest, always the exact one; or (2) it is one edit apart: every turn the same but one, which differs in one
place, not in a number, by at most ``edit_chars`` characters and at most half of that turn (``ください``/
``下さい``, ``click``/``press``). A Jaccard threshold cannot see (2) in a short row: one word changed in 60
characters leaves a 5-gram Jaccard near 0.6, while a row with another product in its question and its answer,
changed in two places and a different row, can be as similar.
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NUM_BINS = 64
BANDS = 16  # 16 bands of 4 bins: pairs above ~0.5 Jaccard become candidates, the comparison decides
SHORT_BANDS = 32  # rows shorter than SHORT_CHARS are banded again, 32 bands of 2 bins: pairs above ~0.25
SHORT_CHARS = 128  # below this a one-word edit can leave the Jaccard near 0.5, where 16 bands of 4 miss pairs
EXACT_CHARS = 256  # rows up to this long are compared exactly; longer ones fill the 64 bins, and the estimate
# is within ±0.04 of the similarity
EDIT_CHARS = 12  # one edit changes at most this many characters (and at most half of its turn)
MARGIN = 0.15  # how far below what it must reach a pair's estimate may be and still be compared exactly
TURN = "\ue000"  # joins a row's turns in the text compared (a private-use character: normalisation keeps it)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.uint32(0xFFFFFFFF)


def normalize(text: str) -> str:
    """What 'the same text' means for duplicates: Unicode NFKC, case folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@functools.cache
def _dropped() -> np.ndarray:
    """Which code points ``near_text`` drops: punctuation (P*), separators (Z*), control and format characters
    (Cc, Cf), and the tildes and minus signs that are symbols (neologdn drops or folds them too)."""
    table = np.zeros(sys.maxunicode + 1, dtype=bool)
    # planes 0–3 and plane 14's tags: the other planes hold no such character (unassigned, or private use), and
    # asking unicodedata about all 1.1 M code points took 0.2–0.35 s of every validate run
    for c in (*range(0x40000), *range(0xE0000, 0xE1000)):
        category = unicodedata.category(chr(c))
        table[c] = category[0] in "PZ" or category in ("Cc", "Cf")
    table[[ord(c) for c in "~\u223c\u223e\u2212"]] = True
    return table


@functools.cache
def _drop_map() -> dict[int, None]:
    return dict.fromkeys(np.flatnonzero(_dropped()).tolist())


def near_text(text: str) -> str:
    """What near-duplicates compare: NFKC, case folded, and punctuation, spaces and control characters dropped."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_drop_map())


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(31))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    return h ^ (h >> np.uint64(29))


@dataclass
class Signatures:
    """Rows' MinHash signatures with what confirming a pair needs: each row's ``near_text`` length and the texts."""

    sig: np.ndarray  # (rows, NUM_BINS) uint32
    lengths: np.ndarray  # characters of each row's near_text
    texts: Sequence[str]  # the rows' texts, as given
    ngram: int

    def __len__(self) -> int:
        return len(self.sig)


def signatures(texts: Sequence[str], ngram: int = 5, chunk: int = 4096) -> Signatures:
    """One row of ``NUM_BINS`` uint32 minima per text, and the length of its ``near_text``: normalised here a chunk
    at a time (the normalised copies of a million rows never exist at once)."""
    sig = np.empty((len(texts), NUM_BINS), dtype=np.uint32)
    lengths = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), chunk):
        folded = [unicodedata.normalize("NFKC", t).casefold() for t in texts[start:start + chunk]]
        sig[start:start + chunk], lengths[start:start + chunk] = _chunk_signatures(folded, ngram)
    return Signatures(sig, lengths, texts, ngram)


def _chunk_signatures(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Signatures and near_text lengths of folded texts: what near_text drops is dropped here, vectorised."""
    raw = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    keep = ~_dropped()[codes]
    kept_before = np.concatenate(([0], np.cumsum(keep)))
    ends = np.cumsum(raw)
    lengths = kept_before[ends] - kept_before[ends - raw]
    codes = codes[keep]
    short = lengths < ngram
    if short.any():  # a text shorter than n is one n-gram, padded with zeros (not running into the next text)
        codes = np.insert(codes, np.repeat(np.cumsum(lengths)[short], ngram - lengths[short]), 0)
    sized = np.maximum(lengths, ngram)
    codes = np.concatenate((codes, np.zeros(ngram, dtype=np.uint32))).astype(np.uint64)
    n = len(codes) - ngram
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(ngram):
            h = (h * _MIX) ^ codes[j:j + n]
        h = _mix(h)
    starts = np.concatenate(([0], np.cumsum(sized)[:-1]))
    counts = sized - ngram + 1
    rows = np.repeat(np.arange(len(texts)), counts)
    positions = np.repeat(starts, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    shingles = h[positions]
    bins = (shingles >> np.uint64(58)).astype(np.int64)  # top 6 bits: one of 64 bins
    values = (shingles & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    sig = np.full(len(texts) * NUM_BINS, _EMPTY, dtype=np.uint32)
    np.minimum.at(sig, rows * NUM_BINS + bins, values)
    return _densify(sig.reshape(len(texts), NUM_BINS)), lengths


def _densify(sig: np.ndarray) -> np.ndarray:
    """An empty bin borrows the next non-empty bin's value (circularly), salted by the distance, so short
    texts are not similar merely because both leave the same bins empty."""
    empty = sig == _EMPTY
    if not empty.any():
        return sig
    out = sig.copy()
    for shift in range(1, NUM_BINS):
        todo = empty & (out == _EMPTY)
        if not todo.any():
            break
        rolled = np.roll(sig, -shift, axis=1)
        fill = todo & (rolled != _EMPTY)
        out[fill] = rolled[fill] ^ np.uint32(shift * 0x9E3779B1 & 0xFFFFFFFF)
    return out


def similarity(sig: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Estimated Jaccard similarity of rows ``a[k]`` and ``b[k]`` (in chunks: a million pairs of 64 bins
    would otherwise cost gigabytes of temporaries)."""
    return np.concatenate([(sig[a[i:i + chunk]] == sig[b[i:i + chunk]]).mean(axis=-1)
                           for i in range(0, len(a), chunk)]) if len(a) else np.zeros(0)


def candidate_pairs(sig: np.ndarray, bands: int = BANDS) -> np.ndarray:
    """(i, j) pairs with i < j that share at least one band; each equal-band group is linked to its first
    member, so a group of k rows costs k - 1 pairs, not k². A pair is one int64 code (i * n + j), so the
    bands' pairs cost 8 bytes each until they are made unique."""
    n = len(sig)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    rows_per_band = NUM_BINS // bands
    codes = []
    for band in range(bands):
        block = sig[:, band * rows_per_band:(band + 1) * rows_per_band].astype(np.uint64)
        key = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for col in range(rows_per_band):
                key = _mix(key * _MIX + block[:, col])
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        new_group = np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1]))
        group_first = order[np.maximum.accumulate(np.where(new_group, np.arange(n), 0))]
        linked = ~new_group
        first, other = group_first[linked], order[linked]
        codes.append(np.minimum(first, other) * n + np.maximum(first, other))
    unique = _unique(np.concatenate(codes))
    return np.stack([unique // n, unique % n], axis=1)


def _unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting: numpy 2's hash-based one takes a second for three million integers."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _shingles(text: str, n: int) -> set[str]:
    return {text[i:i + n] for i in range(max(len(text) - n + 1, 1))}


def _common_prefix(a: str, b: str) -> int:
    low, high = 0, min(len(a), len(b))  # a[:low] == b[:low]; binary search with C-speed slice comparisons
    while low < high:
        mid = (low + high + 1) // 2
        if a[low:mid] == b[low:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def one_edit(a: str, b: str, limit: int) -> bool:
    """Whether near_texts ``a`` and ``b`` have every turn the same but one, which differs in one place by at most
    ``limit`` characters and at most half of that turn, and not in a number. A row of one turn (a prompt, a text)
    never is: 'What is 20 + 28?' and 'What is 22 + 36?' are different questions, and only a turn that stays the
    same (the answer to a reworded question) says that the changed word did not matter. A changed number is a
    changed fact: '14 days' and '30 days' answering one question are a conflict (the ``conflicts`` check), not a
    rewording."""
    if abs(len(a) - len(b)) > limit or TURN not in a:
        return False
    start = _common_prefix(a, b)
    end = _common_prefix(a[start:][::-1], b[start:][::-1])
    left, right = a[start:len(a) - end], b[start:len(b) - end]
    changed = max(len(left), len(right))
    if changed > limit or TURN in left or TURN in right or any(map(str.isdigit, left + right)):
        return False
    begin = a.rfind(TURN, 0, start) + 1  # where the changed turn starts, in both
    return 2 * changed <= max(_turn_end(a, start), _turn_end(b, start)) - begin


def _turn_end(text: str, at: int) -> int:
    end = text.find(TURN, at)
    return len(text) if end < 0 else end


def edit_limit(lengths: np.ndarray, edit_chars: int) -> np.ndarray:
    """The most characters one edit may change in a row of ``lengths`` near_text characters."""
    return np.minimum(edit_chars, lengths // 2)


def _one_edit_floor(length: np.ndarray, edit: np.ndarray, ngram: int) -> np.ndarray:
    """About the lowest Jaccard similarity one edit of ``edit`` characters leaves a row of ``length``: it changes
    at most edit + n - 1 of the row's n-grams on each side."""
    return np.clip((length - edit - 2 * ngram + 2) / np.maximum(length + edit, 1), 0, 1)


def _candidates(s: Signatures) -> np.ndarray:
    """LSH candidate pairs: 16 bands of 4 bins for every row, and 32 bands of 2 for the short ones."""
    pairs = candidate_pairs(s.sig)
    short = np.flatnonzero(s.lengths < SHORT_CHARS)
    if len(short) > 1:
        more = short[candidate_pairs(s.sig[short], SHORT_BANDS)]
        codes = _unique(np.concatenate((pairs[:, 0] * len(s) + pairs[:, 1], more[:, 0] * len(s) + more[:, 1])))
        pairs = np.stack([codes // len(s), codes % len(s)], axis=1)
    return pairs


def near_duplicate_of(s: Signatures, threshold: float, edit_chars: int = EDIT_CHARS) -> dict[int, tuple[int, float]]:
    """For each row that nearly repeats an earlier row: (that earlier row, similarity). Clusters are transitive
    (union-find), and the earliest row of a cluster is the one kept.

    Only what the vectorised tests leave open is compared in Python: a long pair whose estimate reaches the
    threshold is settled by it; any other pair is compared exactly when its estimate is within ``MARGIN`` of the
    threshold, and tested for one edit when its lengths and its estimate allow one."""
    pairs = _candidates(s)
    if not len(pairs):
        return {}
    est = similarity(s.sig, pairs[:, 0], pairs[:, 1])
    la, lb = s.lengths[pairs[:, 0]], s.lengths[pairs[:, 1]]
    longer = np.maximum(la, lb)
    limit = edit_limit(longer, edit_chars)
    exact = longer <= EXACT_CHARS
    settled = ~exact & (est >= threshold)  # long rows: the estimate decides when it reaches the threshold
    compare = ~settled & (est >= threshold - MARGIN)
    maybe_edit = ~settled & (limit > 0) & (np.abs(la - lb) <= limit) & (
        est >= np.minimum(threshold, _one_edit_floor(longer, limit, s.ngram)) - MARGIN)
    accepted = list(zip(*(x[settled].tolist() for x in (pairs[:, 0], pairs[:, 1], est)), strict=True))
    k = compare | maybe_edit
    accepted += _confirm(s, pairs[k], est[k], exact[k], compare[k], maybe_edit[k], limit[k], threshold)
    return _clusters(len(s), sorted(accepted))


def _confirm(s: Signatures, pairs: np.ndarray, est: np.ndarray, exact: np.ndarray, compare: np.ndarray,
             maybe_edit: np.ndarray, limit: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """The pairs (i, j, similarity) that exact comparison confirms: n-gram Jaccard at least the threshold, or one
    edit apart."""
    texts = {i: near_text(s.texts[i]) for i in _unique(pairs.ravel()).tolist()}
    first, second = pairs[:, 0], pairs[:, 1]
    if maybe_edit.any():  # one edit leaves the first turn, or all the others, as it was
        rows = _unique(pairs[maybe_edit].ravel())
        head, tail, turns = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=np.int64), \
            np.zeros(len(rows), dtype=bool)
        for k, i in enumerate(rows.tolist()):
            opening, turn, rest = texts[i].partition(TURN)
            head[k], tail[k], turns[k] = hash(opening), hash(rest), bool(turn)
        a, b = np.searchsorted(rows, first), np.searchsorted(rows, second)
        a, b = np.minimum(a, len(rows) - 1), np.minimum(b, len(rows) - 1)  # (pairs not in maybe_edit: masked)
        maybe_edit = maybe_edit & turns[a] & turns[b] & ((head[a] == head[b]) | (tail[a] == tail[b]))
    cached: tuple[int, set[str]] = (-1, set())  # pairs come sorted by their first row: its n-grams, once

    def exact_similarity(i: int, j: int) -> float:
        nonlocal cached
        if texts[i] == texts[j]:
            return 1.0
        if cached[0] != i:
            cached = (i, _shingles(texts[i], s.ngram))
        x, y = cached[1], _shingles(texts[j], s.ngram)
        common = len(x & y)
        return common / (len(x) + len(y) - common)

    confirmed = []
    for i, j, e, is_exact, is_compared, may_edit, most in zip(
            first.tolist(), second.tolist(), est.tolist(), exact.tolist(), compare.tolist(), maybe_edit.tolist(),
            limit.tolist(), strict=True):
        sim = exact_similarity(i, j) if is_compared else None
        if sim is not None and sim >= threshold:
            confirmed.append((i, j, sim))
        elif may_edit and one_edit(texts[i], texts[j], most):
            confirmed.append((i, j, sim if sim is not None else exact_similarity(i, j) if is_exact else e))
    return confirmed


def _clusters(n: int, accepted: list[tuple[int, int, float]]) -> dict[int, tuple[int, float]]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[int, float] = {}  # each row's highest similarity to a row it was paired with
    for a, b, sim in accepted:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        best[a], best[b] = max(best.get(a, 0.0), sim), max(best.get(b, 0.0), sim)
    return {i: (root(i), best[i]) for i in sorted(best) if root(i) != i}

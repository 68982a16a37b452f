"""Near-duplicate detection: MinHash signatures of character n-grams, banded LSH for candidates, and the
signatures' agreement as the Jaccard estimate that confirms a pair.

Character n-grams (not words) so that Japanese and Chinese, written without spaces, are compared as well as
English. Everything is vectorised with numpy: one-permutation hashing (each n-gram's 64-bit hash picks a bin
and competes for that bin's minimum) with rotation densification for bins a short text leaves empty, so the
cost is one pass over the text rather than one per hash function.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

NUM_BINS = 64
BANDS = 16  # 16 bands of 4 bins: pairs above ~0.5 Jaccard become candidates, the estimate decides
_MIX = np.uint64(0x9E3779B97F4A7C15)
_EMPTY = np.uint32(0xFFFFFFFF)


def normalize(text: str) -> str:
    """What 'the same text' means for duplicates: Unicode NFKC, case folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(31))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    return h ^ (h >> np.uint64(29))


def signatures(texts: Sequence[str], ngram: int = 5, chunk: int = 4096) -> np.ndarray:
    """One row of ``NUM_BINS`` uint32 minima per text, normalised here a chunk at a time (the normalised
    copies of a million rows never exist at once)."""
    out = np.empty((len(texts), NUM_BINS), dtype=np.uint32)
    for start in range(0, len(texts), chunk):
        out[start:start + chunk] = _chunk_signatures([normalize(t) for t in texts[start:start + chunk]], ngram)
    return out


def _chunk_signatures(texts: Sequence[str], ngram: int) -> np.ndarray:
    lengths = np.fromiter((max(len(t), 1) for t in texts), dtype=np.int64, count=len(texts))
    joined = "".join(t or "\x00" for t in texts) + "\x00" * ngram
    codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = len(codes) - ngram
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(ngram):
            h = (h * _MIX) ^ codes[j:j + n]
        h = _mix(h)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    counts = np.maximum(lengths - ngram + 1, 1)  # a text shorter than n is one shingle
    rows = np.repeat(np.arange(len(texts)), counts)
    positions = np.repeat(starts, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    shingles = h[positions]
    bins = (shingles >> np.uint64(58)).astype(np.int64)  # top 6 bits: one of 64 bins
    values = (shingles & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    sig = np.full(len(texts) * NUM_BINS, _EMPTY, dtype=np.uint32)
    np.minimum.at(sig, rows * NUM_BINS + bins, values)
    return _densify(sig.reshape(len(texts), NUM_BINS))


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


def candidate_pairs(sig: np.ndarray) -> np.ndarray:
    """(i, j) pairs with i < j that share at least one band; each equal-band group is linked to its first
    member, so a group of k rows costs k - 1 pairs, not k². A pair is one int64 code (i * n + j), so the
    bands' pairs cost 8 bytes each until they are made unique."""
    n = len(sig)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    rows_per_band = NUM_BINS // BANDS
    codes = []
    for band in range(BANDS):
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
    unique = np.unique(np.concatenate(codes))
    return np.stack([unique // n, unique % n], axis=1)


def near_duplicate_of(sig: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """For each row that nearly repeats an earlier row: (that earlier row, estimated similarity). Clusters
    are transitive (union-find), and the earliest row of a cluster is the one kept."""
    pairs = candidate_pairs(sig)
    if not len(pairs):
        return {}
    sims = similarity(sig, pairs[:, 0], pairs[:, 1])
    keep = sims >= threshold
    parent = list(range(len(sig)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[int, tuple[int, float]] = {}
    for (a, b), s in zip(pairs[keep].tolist(), sims[keep].tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        if b not in best or s > best[b][1]:
            best[b] = (a, s)
    return {i: (root(i), best[i][1]) for i in best if root(i) != i}

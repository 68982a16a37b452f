"""Train / validation / test: a seeded random split of what the checks kept, or the user's fixed split
files; then source weights, which repeat or subsample each source's training rows (held-out rows are never
weighted, so every source is measured as it is)."""

from __future__ import annotations

import random
from collections import defaultdict

from finetune.data.canonical import DataError

SPLITS = ("train", "validation", "test")


def random_split(n: int, validation_fraction: float, test_fraction: float, seed: int, where: str
                 ) -> dict[str, list[int]]:
    """Row indices of each split, shuffled with ``seed``."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(n * validation_fraction)) if validation_fraction else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction else 0
    if n - n_val - n_test < 1:
        raise DataError(f"{where}: {n} conversations are too few to split {SPLITS}")
    return {"validation": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}


def weighted(sources: list[str], weights: dict[str, float], seed: int) -> list[int]:
    """Indices of the training rows (whose sources are ``sources``) with each source's rows ``int(w)`` times
    plus a seeded sample of the fraction; shuffled once, so repeats of a row are spread over the epoch."""
    if all(w == 1.0 for w in weights.values()):
        return list(range(len(sources)))
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        by_source[source].append(i)
    rng = random.Random(seed)
    out = []
    for source, rows in by_source.items():
        w = weights.get(source, 1.0)
        out += rows * int(w) + rng.sample(rows, round(len(rows) * (w - int(w))))
    rng.shuffle(out)
    return out

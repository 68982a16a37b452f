"""``Decoding``'s sampler over one row of logits, in NumPy: the chain of ``generate/hf.py`` (llama.cpp's order —
repeat penalty over the last ``repeat_last_n`` tokens of prompt and answer, top-k, top-p, temperature), for the
engines that give logits and leave the choice to us (``generate/llama_cpp.py``). One chain for both engines, so
that a model answers a prompt the same way whichever engine runs its forward passes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from finetune.generate import Decoding


def candidates(logits: np.ndarray, context: Sequence[int], decoding: Decoding) -> tuple[np.ndarray, np.ndarray]:
    """The tokens the next one is drawn from after ``context`` (prompt and answer so far), and their
    probabilities; greedy decoding: the one most likely token."""
    scores = np.array(logits, dtype=np.float32)  # a copy: the penalty changes it
    if decoding.repeat_penalty != 1:
        seen = np.unique(np.asarray(context[-decoding.repeat_last_n:], dtype=np.int64))
        hit = scores[seen]
        scores[seen] = np.where(hit < 0, hit * decoding.repeat_penalty, hit / decoding.repeat_penalty)
    if decoding.greedy:
        return np.array([int(np.argmax(scores))]), np.ones(1)
    tokens = np.arange(scores.size)
    if 0 < decoding.top_k < scores.size:  # every token at least as likely as the k-th (ties kept, as transformers)
        tokens = np.flatnonzero(scores >= np.partition(scores, -decoding.top_k)[-decoding.top_k])
    kept = scores[tokens].astype(np.float64)
    if decoding.top_p < 1:  # drop the least likely while what they leave still holds top_p of the mass
        order = np.argsort(kept, kind="stable")
        probs = np.exp(kept[order] - kept[order[-1]])
        dropped = np.cumsum(probs / probs.sum()) <= 1 - decoding.top_p
        dropped[-1] = False
        tokens, kept = tokens[order[~dropped]], kept[order[~dropped]]
    weights = np.exp((kept - kept.max()) / decoding.temperature)
    return tokens, weights / weights.sum()


def next_token(logits: np.ndarray, context: Sequence[int], decoding: Decoding, rng: np.random.Generator) -> int:
    """The next token after ``context``, drawn with ``rng`` (nothing drawn when greedy)."""
    tokens, probs = candidates(logits, context, decoding)
    if tokens.size == 1:
        return int(tokens[0])
    return int(tokens[min(np.searchsorted(np.cumsum(probs), rng.random(), side="right"), tokens.size - 1)])

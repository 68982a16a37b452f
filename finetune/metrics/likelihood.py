"""Perplexities, scored by the model in process (base and tuned alike).

Token-weighted: the summed negative log-likelihood of every target token over all batches, divided by the
number of target tokens — never a mean of per-batch means, and padding is never a target (the guide's
``loss × all tokens`` weighting counts padding). Batched with training's own collator (``training.Batcher``)
and summed over the positions training's loss counts, so evaluation scores exactly what training optimised.

- ``perplexity``: assistant tokens of the held-out split (the tokens that were trained).
- ``sequence_perplexity``: every token of each held-out conversation, prompt included — from the same forward
  pass as ``perplexity``, which costs nothing more.
- ``forgetting``: every token of a small general-text probe shipped with finetune
  (``bundled_data/probe/general_text.jsonl``): what the tuning cost outside its domain (guide §15).
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune.chat import IGNORE_INDEX, TokenizedConversation, tokenize_text
from finetune.metrics import Metric, MetricError, Scored
from finetune.paths import DATA_DIR

PROBE = DATA_DIR / "probe" / "general_text.jsonl"


class TokenScores:
    """One model's scores of token rows — at each position t, the loss of token t+1 and whether it was the most
    likely — each row computed once (``batches``) and kept: the perplexities and lm-eval's loglikelihoods of the
    same conversations share one forward pass."""

    def __init__(self, model: Any, batch_size: int) -> None:
        self.model, self.batch_size = model, batch_size
        self.rows: dict[tuple[int, ...], tuple[Any, Any]] = {}
        self.whole: list[tuple[int, ...]] = []  # rows whose beginnings are asked for too (whole conversations)

    def of(self, rows: Sequence[Sequence[int]], whole: bool = False) -> list[tuple[Any, Any]]:
        """(losses, greedy) of each row: float64 and bool arrays of length len(row) − 1. A row that begins a
        ``whole`` row scored before (a conversation's first exchange) is read from it: a causal model scores a
        position from what precedes it alone."""
        for key in dict.fromkeys(tuple(r) for r in rows):
            if key not in self.rows and (longer := next((w for w in self.whole if w[:len(key)] == key), None)):
                losses, greedy = self.rows[longer]
                self.rows[key] = (losses[:len(key) - 1], greedy[:len(key) - 1])
        missing = list(dict.fromkeys(key for r in rows if (key := tuple(r)) not in self.rows))
        self.rows.update(zip(missing, token_scores(self.model, missing, self.batch_size), strict=True))
        if whole:
            self.whole += [key for key in dict.fromkeys(map(tuple, rows)) if key not in self.whole]
        return [self.rows[tuple(r)] for r in rows]


@dataclass(frozen=True)
class LikelihoodInputs:
    """The held-out split tokenized once, as training sees it (``chat.tokenize``), for base and tuned alike; and
    each model's ``TokenScores``, kept while the model lives."""

    test: Sequence[TokenizedConversation]
    max_len: int
    batch_size: int
    scored: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False, compare=False)

    def scores(self, model: Any) -> TokenScores:
        if model not in self.scored:
            self.scored[model] = TokenScores(model, self.batch_size)
        return self.scored[model]

    def test_losses(self, model: Any) -> list[Any]:
        """Each test row's losses (cut at ``max_len``): ``perplexity`` sums the trained positions,
        ``sequence_perplexity`` all of them."""
        rows = [r.input_ids[:self.max_len] for r in self.test]
        return [losses for losses, _ in self.scores(model).of(rows, whole=True)]


CPU_BATCH_TOKENS = 512  # on a CPU, the padded tokens of one forward pass, unless a single row is longer


def batches(lengths: Sequence[int], batch_size: int, on_cpu: bool) -> list[list[int]]:
    """Row indices, shortest rows first, in forward passes of at most ``batch_size`` rows — and on a CPU of at most
    ``CPU_BATCH_TOKENS`` tokens once padded to the longest: there a row of a few hundred tokens fills the matmuls
    already, and padding is work thrown away (a sixth of the support_bot test split's forward in batches of 8)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < batch_size and not (
                on_cpu and (len(out[-1]) + 1) * lengths[i] > CPU_BATCH_TOKENS):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def token_scores(model: Any, rows: Sequence[Sequence[int]], batch_size: int) -> list[tuple[Any, Any]]:
    """For each row, in order: the loss of predicting token t+1 at each position t, and whether that token was the
    model's argmax there. Batched by length (``batches``) with training's collator; padding is never a target."""
    import numpy as np
    import torch

    from finetune.training import Batcher

    pad = getattr(model.config, "pad_token_id", None) or 0
    collate = Batcher(pad_id=pad, packing=False)
    scored: list[Any] = [None] * len(rows)
    for chosen in batches([len(r) for r in rows], batch_size, model.device.type == "cpu"):
        batch = collate([{"input_ids": list(rows[i]), "labels": list(rows[i])} for i in chosen])
        targets = batch["input_ids"][:, 1:].to(model.device)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(model.device),
                           attention_mask=batch["attention_mask"].to(model.device), use_cache=False).logits[:, :-1]
            losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                                                       reduction="none").view(len(chosen), -1).double().cpu().numpy()
            greedy = (logits.argmax(-1) == targets).cpu().numpy()
        for row, i in enumerate(chosen):
            n = len(rows[i]) - 1
            scored[i] = (np.array(losses[row, :n]), np.array(greedy[row, :n]))
    return scored


def nll(model: Any, rows: Sequence[TokenizedConversation], max_len: int, batch_size: int) -> tuple[float, int]:
    """(summed NLL over the labelled tokens, their number); rows cut at ``max_len`` tokens, batched by length."""
    scored = token_scores(model, [r.input_ids[:max_len] for r in rows], batch_size)
    return _summed([losses for losses, _ in scored], rows, max_len)


def _summed(losses: Sequence[Any], rows: Sequence[TokenizedConversation], max_len: int) -> tuple[float, int]:
    import numpy as np

    total, count = 0.0, 0
    for row_losses, row in zip(losses, rows, strict=True):
        trained = np.asarray([label != IGNORE_INDEX for label in row.labels[1:max_len]], dtype=bool)
        total += float(row_losses[trained].sum())
        count += int(trained.sum())
    return total, count


def _perplexity(name: str, rows: Sequence[TokenizedConversation], total: float, count: int) -> Scored:
    loss = total / count if count else None
    return Scored({name: math.exp(loss) if loss is not None else None},
                  details={"loss": loss, "tokens": count, "rows": len(rows)})


def perplexity(model: Any, tokenizer: Any, inputs: LikelihoodInputs, _settings: Any) -> Scored:
    scored = _perplexity("perplexity", inputs.test,
                         *_summed(inputs.test_losses(model), inputs.test, inputs.max_len))
    if not scored.details["tokens"]:  # every answer cut off: nothing that was trained is measured
        raise MetricError(f"evaluate: none of the {len(inputs.test)} test conversations scored has an answer token "
                          f"within train.max_seq_len={inputs.max_len}; raise it (or eval.max_samples)")
    return scored


def sequence_perplexity(model: Any, tokenizer: Any, inputs: LikelihoodInputs, _settings: Any) -> Scored:
    whole = [TokenizedConversation(r.input_ids, list(r.input_ids)) for r in inputs.test]
    return _perplexity("sequence_perplexity", whole, *_summed(inputs.test_losses(model), whole, inputs.max_len))


def probe_texts() -> list[str]:
    return [json.loads(line)["text"] for line in PROBE.read_text(encoding="utf-8").splitlines() if line.strip()]


def forgetting(model: Any, tokenizer: Any, inputs: LikelihoodInputs, _settings: Any) -> Scored:
    probe = [tokenize_text(tokenizer, t) for t in probe_texts()]
    scored = _perplexity("forgetting", probe, *nll(model, probe, inputs.max_len, inputs.batch_size))
    scored.details["probe"] = PROBE.name
    return scored


METRICS = (
    Metric("perplexity", "model", perplexity, False, "perplexity on the held-out assistant tokens"),
    Metric("sequence_perplexity", "model", sequence_perplexity, False, "perplexity on whole held-out conversations"),
    Metric("forgetting", "model", forgetting, False, "perplexity on a general-text probe (guide §15)"),
)

"""Perplexities, scored by the model in process (base and tuned alike).

Token-weighted: the summed negative log-likelihood of every target token over all batches, divided by the
number of target tokens — never a mean of per-batch means, and padding is never a target (the guide's
``loss × all tokens`` weighting counts padding). Batched with training's own collator and loss
(``training.Batcher``, ``training.token_loss_sum``), so evaluation scores exactly what training optimised.

- ``perplexity``: assistant tokens of the held-out split (the tokens that were trained).
- ``sequence_perplexity``: every token of each held-out conversation, prompt included.
- ``forgetting``: every token of a small general-text probe shipped with finetune
  (``bundled_data/probe/general_text.jsonl``): what the tuning cost outside its domain (guide §15).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune.chat import TokenizedConversation, tokenize_text
from finetune.metrics import Metric, MetricError, Scored
from finetune.paths import DATA_DIR

PROBE = DATA_DIR / "probe" / "general_text.jsonl"


@dataclass(frozen=True)
class LikelihoodInputs:
    """The held-out split tokenized once, as training sees it (``chat.tokenize``), for base and tuned alike."""

    test: Sequence[TokenizedConversation]
    max_len: int
    batch_size: int


def nll(model: Any, rows: Sequence[TokenizedConversation], max_len: int, batch_size: int) -> tuple[float, int]:
    """(summed NLL over the labelled tokens, their number); rows cut at ``max_len`` tokens, batched by length."""
    import torch

    from finetune.training import Batcher, token_loss_sum

    pad = getattr(model.config, "pad_token_id", None) or 0
    collate = Batcher(pad_id=pad, packing=False)
    ordered = sorted(rows, key=lambda r: len(r.input_ids))
    total, count = 0.0, 0
    for first in range(0, len(ordered), batch_size):
        batch = collate([{"input_ids": r.input_ids[:max_len], "labels": r.labels[:max_len]}
                         for r in ordered[first:first + batch_size]])
        with torch.no_grad():
            loss, n = token_loss_sum(model, {k: v.to(model.device) for k, v in batch.items()})
        total, count = total + float(loss), count + int(n)
    return total, count


def _perplexity(name: str, model: Any, rows: Sequence[TokenizedConversation], inputs: LikelihoodInputs) -> Scored:
    total, count = nll(model, rows, inputs.max_len, inputs.batch_size)
    loss = total / count if count else None
    return Scored({name: math.exp(loss) if loss is not None else None},
                  details={"loss": loss, "tokens": count, "rows": len(rows)})


def perplexity(model: Any, tokenizer: Any, inputs: LikelihoodInputs, _settings: Any) -> Scored:
    scored = _perplexity("perplexity", model, inputs.test, inputs)
    if not scored.details["tokens"]:  # every answer cut off: nothing that was trained is measured
        raise MetricError(f"evaluate: none of the {len(inputs.test)} test conversations scored has an answer token "
                          f"within train.max_seq_len={inputs.max_len}; raise it (or eval.max_samples)")
    return scored


def sequence_perplexity(model: Any, tokenizer: Any, inputs: LikelihoodInputs, _settings: Any) -> Scored:
    whole = [TokenizedConversation(r.input_ids, list(r.input_ids)) for r in inputs.test]
    return _perplexity("sequence_perplexity", model, whole, inputs)


def probe_texts() -> list[str]:
    return [json.loads(line)["text"] for line in PROBE.read_text(encoding="utf-8").splitlines() if line.strip()]


def forgetting(model: Any, tokenizer: Any, inputs: LikelihoodInputs, _settings: Any) -> Scored:
    scored = _perplexity("forgetting", model, [tokenize_text(tokenizer, t) for t in probe_texts()], inputs)
    scored.details["probe"] = PROBE.name
    return scored


METRICS = (
    Metric("perplexity", "model", perplexity, False, "perplexity on the held-out assistant tokens"),
    Metric("sequence_perplexity", "model", sequence_perplexity, False, "perplexity on whole held-out conversations"),
    Metric("forgetting", "model", forgetting, False, "perplexity on a general-text probe (guide §15)"),
)

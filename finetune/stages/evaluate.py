"""evaluate: compare the base and the merged model on the held-out test split.

Perplexity is measured on assistant tokens only (the tokens that were trained), with the same chat template
and labels as training; a few greedy generations from both models sit beside the reference answers.
Writes ``eval.json`` and ``eval.md``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from finetune.chat import (
    TokenizedConversation,
    first_exchange,
    generation_prompt_ids,
    tokenize,
)
from finetune.config import ModelConfig, RunConfig
from finetune.data.canonical import Conversation, read_split
from finetune.errors import UserError
from finetune.models import load_model, load_tokenizer, resolve_model_source
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


class EvalError(UserError, ValueError):
    """Nothing in the test split can be scored."""


def _assistant_nll(model: Any, test: list[TokenizedConversation], max_len: int) -> tuple[float, int]:
    """Summed negative log-likelihood over assistant tokens, and how many tokens that was (logits only where
    there is a target, as in training)."""
    import torch

    from finetune.training import token_loss_sum

    total, count = 0.0, 0
    for t in test:
        batch = {"input_ids": torch.tensor([t.input_ids[:max_len]], device=model.device),
                 "labels": torch.tensor([t.labels[:max_len]], device=model.device)}
        with torch.no_grad():
            loss, n = token_loss_sum(model, batch)
        total, count = total + float(loss), count + int(n)
    return total, count


def _generate(model: Any, tokenizer: Any, prompt: Conversation, max_new_tokens: int) -> str:
    import torch

    ids = torch.tensor([generation_prompt_ids(tokenizer, prompt)], device=model.device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def _score(name: str, source: str, cfg: ModelConfig, tokenizer: Any, test: list[TokenizedConversation],
           prompts: list[Conversation], run: RunConfig) -> dict[str, Any]:
    model = load_model(source, cfg).eval()
    nll, count = _assistant_nll(model, test, run.train.max_seq_len)
    if count == 0:
        raise EvalError(
            f"evaluate: none of the {len(test)} test conversations scored has an answer token within "
            f"train.max_seq_len={run.train.max_seq_len}; raise it (or eval.max_samples)"
        )
    answers = [_generate(model, tokenizer, p, run.eval.max_new_tokens) for p in prompts]
    loss = nll / count
    log.info("%s: assistant-token loss %.4f, perplexity %.2f over %d tokens", name, loss, math.exp(loss), count)
    return {"model": source, "loss": round(loss, 5), "perplexity": round(math.exp(loss), 3),
            "tokens": count, "answers": answers}


def _markdown(result: dict[str, Any]) -> str:
    base, merged = result["base"], result["merged"]
    lines = [
        f"# Evaluation on {result['test_conversations']} held-out conversations",
        "",
        "| model | assistant-token loss | perplexity |",
        "|---|---|---|",
        f"| base | {base['loss']:.4f} | {base['perplexity']:.2f} |",
        f"| fine-tuned (merged) | {merged['loss']:.4f} | {merged['perplexity']:.2f} |",
        "",
    ]
    for i, g in enumerate(result["generations"], start=1):
        lines += [f"## Prompt {i}", "", f"> {g['prompt']}", "", "| | answer |", "|---|---|"]
        for who in ("reference", "base", "merged"):
            lines.append(f"| {who} | {' '.join(g[who].split()).replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    test = read_split(ctx.input("validate", "test"))[: run.eval.max_samples]
    exchanges = [e for c in test if (e := first_exchange(c))][: run.eval.num_generations]  # none for plain text
    prompts = [prompt for prompt, _ in exchanges]
    merged_dir = str(ctx.input("merge", "model"))
    tokenizer = load_tokenizer(merged_dir, run.model)
    tokenized = [tokenize(tokenizer, c) for c in test]
    base = _score("base", resolve_model_source(run.model), run.model, tokenizer, tokenized, prompts, run)
    merged = _score("merged", merged_dir, run.model, tokenizer, tokenized, prompts, run)
    result = {
        "test_conversations": len(test),
        "base": {k: v for k, v in base.items() if k != "answers"},
        "merged": {k: v for k, v in merged.items() if k != "answers"},
        "perplexity_ratio": round(merged["perplexity"] / base["perplexity"], 4),
        "generations": [
            {"prompt": p.messages[-1]["content"], "reference": ref["content"], "base": b, "merged": m}
            for (p, ref), b, m in zip(exchanges, base["answers"], merged["answers"], strict=True)
        ],
    }
    atomic_write_json(ctx.out_dir / "eval.json", result)
    atomic_write_text(ctx.out_dir / "eval.md", _markdown(result))
    return {"eval": "eval.json", "table": "eval.md"}

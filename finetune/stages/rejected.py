"""rejected: preference pairs from conversations, for a preference objective on data without rejected answers
(``dataset.rejected_by``). Each training and validation conversation's last assistant message stays the chosen
answer; a model answers the conversation up to it, greedily, through the ``generate`` interface, and that answer is
the rejected one. With ``model`` (the model the run starts from) and ``model.source=run:<SFT run>``, DPO learns to
prefer the data's answers over the SFT model's own: SFT then DPO with no new data. A run without
``dataset.rejected_by`` has no such stage; ``train`` then reads validate's splits.

A pair whose two answers are the same (after whitespace) or whose rejected answer is empty teaches no preference:
it is dropped, and counted, as the ``pairs`` data check drops one. Writes ``train.jsonl`` and ``validation.jsonl``
(validate's split rows, with ``rejected``) and ``report.json`` (the model, its decoding, rows written and dropped).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from finetune.chat import last_exchange
from finetune.config import ModelConfig, RunConfig
from finetune.data.canonical import DataError, read_split, to_row
from finetune.export.modelfile import stop_strings
from finetune.generate import Decoding
from finetune.generate.hf import InProcessModel
from finetune.models import RUN_SCHEME, check_source, load_tokenizer, resolve_model_source, run_dir_of
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

CONFIG_KEYS = ("dataset.rejected_by", "dataset.rejected_max_new_tokens", "model", "seed")
SPLITS = ("train", "validation")
THE_RUNS_MODEL = "model"  # dataset.rejected_by: the model the run starts from


def left_out(run: RunConfig) -> str | None:
    return None if run.dataset.rejected_by else "dataset.rejected_by is not set"


def writer(run: RunConfig) -> ModelConfig:
    """The model that writes the rejected answers: the run's own (``model``), or another source."""
    by = run.dataset.rejected_by
    assert by is not None, "left out without dataset.rejected_by"
    return run.model if by == THE_RUNS_MODEL else dataclasses.replace(run.model, source=by, random_init=None,
                                                                      gguf_file=None, revision=None)


def check(run: RunConfig) -> None:
    """The writer's source, as ``model.source`` is checked: there, with weights (an earlier run: merged)."""
    check_source(dataclasses.replace(run, model=writer(run)))


def input_files(run: RunConfig) -> list[Path]:
    """An earlier run's merge manifest when that run's model writes the answers: retrained, it writes others."""
    by = run.dataset.rejected_by or ""
    return [run_dir_of(by) / "merge" / "manifest.json"] if by.startswith(RUN_SCHEME) else []


def training_split(ctx: StageContext, name: str) -> Path:
    """A split to train on: this stage's pairs when the run has it, else validate's rows."""
    return ctx.inputs["rejected"][name] if "rejected" in ctx.inputs else ctx.input("validate", name)


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    cfg = writer(run)
    source = resolve_model_source(cfg)
    tokenizer = load_tokenizer(source, cfg)
    decoding = Decoding(max_new_tokens=run.dataset.rejected_max_new_tokens, seed=run.seed,
                        stop=stop_strings(tokenizer))
    model = InProcessModel(source, cfg, tokenizer, label="rejected")
    splits: dict[str, dict[str, Any]] = {}
    for name in SPLITS:
        rows = read_split(ctx.input("validate", name))
        exchanges = [last_exchange(c) for c in rows]
        answers = model.generate([prompt for prompt, _ in exchanges], decoding) if rows else []
        pairs, dropped = [], {"same as the chosen": 0, "empty": 0}
        cut = 0
        for c, (prompt, chosen), answer in zip(rows, exchanges, answers, strict=True):
            if not answer.text.strip():
                dropped["empty"] += 1
            elif _same(answer.text, chosen["content"]):
                dropped["same as the chosen"] += 1
            else:
                cut += answer.finish_reason == "length"
                pairs.append(dataclasses.replace(c, messages=[*prompt.messages, chosen], rejected=answer.text))
        if rows and not pairs:
            raise DataError(f"dataset.rejected_by={run.dataset.rejected_by}: every answer it wrote to the {name} "
                            "split is the chosen one or empty; no pair is left to learn from")
        atomic_write_text(ctx.out_dir / f"{name}.jsonl",
                          (json.dumps(to_row(p), ensure_ascii=False) + "\n" for p in pairs))
        splits[name] = {"conversations": len(rows), "pairs": len(pairs), "dropped": dropped,
                        "cut_at_max_new_tokens": cut}
    model.release()
    atomic_write_json(ctx.out_dir / "report.json",
                      {"model": cfg.source, "decoding": decoding.describe(), "splits": splits})
    train = splits["train"]
    log.info("rejected: %d training pairs from %d conversations, the rejected answers by %s (dropped: %d the same as "
             "the chosen, %d empty)", train["pairs"], train["conversations"], cfg.source,
             train["dropped"]["same as the chosen"], train["dropped"]["empty"])
    return {"report": "report.json", **{name: f"{name}.jsonl" for name in SPLITS}}

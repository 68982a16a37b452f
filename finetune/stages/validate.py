"""validate: read and check the dataset, drop empty and duplicate conversations, split it, and measure it
with the model's own tokenizer and chat template (what training will actually see)."""

from __future__ import annotations

import json
import logging
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from finetune.chat import tokenize_conversation
from finetune.config import RunConfig
from finetune.dataformats import Conversation, DataError, is_empty, load_conversations
from finetune.graph import StageContext
from finetune.manifest import atomic_write_json, atomic_write_text
from finetune.models import load_tokenizer, resolve_model_source

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def _dedupe(conversations: list[Conversation]) -> tuple[list[Conversation], int, int]:
    seen: set[str] = set()
    kept, empty, duplicates = [], 0, 0
    for c in conversations:
        if is_empty(c.messages):
            empty += 1
            continue
        key = json.dumps(c.messages, ensure_ascii=False, sort_keys=True)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        kept.append(c)
    return kept, empty, duplicates


def _user_turns(c: Conversation) -> set[str]:
    return {" ".join(m["content"].split()) for m in c.messages if m["role"] == "user"}


def _split(run: RunConfig, conversations: list[Conversation]) -> dict[str, list[Conversation]]:
    order = list(range(len(conversations)))
    random.Random(run.seed).shuffle(order)
    n = len(order)
    n_val = max(1, round(n * run.dataset.validation_fraction)) if run.dataset.validation_fraction else 0
    n_test = max(1, round(n * run.dataset.test_fraction)) if run.dataset.test_fraction else 0
    if n - n_val - n_test < 1:
        raise DataError(f"{run.dataset.path}: {n} conversations are too few to split {SPLITS}")
    picked = [conversations[i] for i in order]
    return {"validation": picked[:n_val], "test": picked[n_val:n_val + n_test], "train": picked[n_val + n_test:]}


def _remove_leaks(splits: dict[str, list[Conversation]]) -> int:
    """Held-out conversations that repeat a training question verbatim measure memory, not skill: move them
    into the training split."""
    train_questions = set().union(*(_user_turns(c) for c in splits["train"]))
    moved = 0
    for name in ("validation", "test"):
        kept = []
        for c in splits[name]:
            if _user_turns(c) & train_questions:
                splits["train"].append(c)
                moved += 1
            else:
                kept.append(c)
        splits[name] = kept
    return moved


def _length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": ordered[0], "mean": round(statistics.fmean(ordered), 1), "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], "max": ordered[-1], "total": sum(ordered),
    }


def _token_lengths(tokenizer: Any, conversations: list[Conversation]) -> tuple[list[int], list[int]]:
    """Tokens per conversation, and how many of them carry loss, through the model's chat template."""
    tokens, trained = [], []
    for c in conversations:
        try:
            t = tokenize_conversation(tokenizer, c.messages)
        except ValueError as e:
            raise DataError(f"{c.location}: {e}") from e
        tokens.append(len(t.input_ids))
        trained.append(t.num_trained_tokens)
    return tokens, trained


def _write_jsonl(path: Path, conversations: list[Conversation]) -> None:
    atomic_write_text(path, "".join(
        json.dumps({"messages": c.messages}, ensure_ascii=False) + "\n" for c in conversations
    ))


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    d = run.dataset
    conversations, fmt = load_conversations(Path(d.path), d.format, d.system_prompt)
    kept, empty, duplicates = _dedupe(conversations)
    if d.validation_path and d.test_path:
        splits = {"train": kept}
        for name, path in (("validation", d.validation_path), ("test", d.test_path)):
            splits[name] = _dedupe(load_conversations(Path(path), d.format, d.system_prompt)[0])[0]
    else:
        splits = _split(run, kept)
    moved = _remove_leaks(splits)
    for name in ("train", "test"):
        if not splits[name]:
            raise DataError(f"{d.path}: the {name} split is empty")

    tokenizer = load_tokenizer(resolve_model_source(run.model), run.model)
    lengths = {name: _token_lengths(tokenizer, splits[name]) for name in SPLITS}
    too_long = sum(n > run.train.max_seq_len for n in lengths["train"][0])
    system_prompts = Counter(
        c.messages[0]["content"] for c in splits["train"] if c.messages[0]["role"] == "system"
    )
    report = {
        "dataset": str(Path(d.path).resolve()),
        "format": fmt,
        "records": len(conversations),
        "dropped_empty": empty,
        "dropped_duplicates": duplicates,
        "moved_to_train_as_leaks": moved,
        "splits": {name: len(splits[name]) for name in SPLITS},
        "multi_turn_train": sum(sum(m["role"] == "assistant" for m in c.messages) > 1 for c in splits["train"]),
        "tokens_per_conversation": {name: _length_stats(lengths[name][0]) for name in SPLITS},
        "loss_tokens_per_conversation": {name: _length_stats(lengths[name][1]) for name in SPLITS},
        "max_seq_len": run.train.max_seq_len,
        "train_conversations_truncated": too_long,
        "system_prompt": system_prompts.most_common(1)[0][0] if system_prompts else None,
        "distinct_system_prompts": len(system_prompts),
    }
    for name in SPLITS:
        _write_jsonl(ctx.out_dir / f"{name}.jsonl", splits[name])
    atomic_write_json(ctx.out_dir / "report.json", report)
    log.info("%d records (%s): %d empty and %d duplicates dropped; splits %s; %d train tokens, %d truncated",
             len(conversations), fmt, empty, duplicates, report["splits"], sum(lengths["train"][0]), too_long)
    if too_long:
        log.warning("%d training conversations exceed train.max_seq_len=%d and will be cut",
                    too_long, run.train.max_seq_len)
    return {**{name: f"{name}.jsonl" for name in SPLITS}, "report": "report.json"}

"""validate: read and check the dataset, drop empty and duplicate conversations, split it, and measure it
with the model's own tokenizer and chat template (what training will actually see)."""

from __future__ import annotations

import json
import logging
import random
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from finetune.chat import IGNORE_INDEX, TokenizedConversation, tokenize_conversation
from finetune.config import RunConfig
from finetune.dataformats import Conversation, DataError, is_empty, load_conversations
from finetune.models import load_tokenizer, resolve_model_source
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class Dropped:
    """What was dropped from one source file, and why."""

    empty: int = 0
    duplicates: int = 0


def _dedupe(conversations: list[Conversation]) -> tuple[list[Conversation], Dropped]:
    seen: set[str] = set()
    kept, dropped = [], Dropped()
    for c in conversations:
        if is_empty(c.messages):
            dropped.empty += 1
            continue
        key = json.dumps(c.messages, ensure_ascii=False, sort_keys=True)
        if key in seen:
            dropped.duplicates += 1
            continue
        seen.add(key)
        kept.append(c)
    return kept, dropped


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


def _leaks(splits: dict[str, list[Conversation]]) -> dict[str, list[Conversation]]:
    """Held-out conversations that repeat a training question verbatim: they measure memory, not skill."""
    train_questions = set().union(*(_user_turns(c) for c in splits["train"]))
    return {name: [c for c in splits[name] if _user_turns(c) & train_questions] for name in ("validation", "test")}


def _move_to_train(splits: dict[str, list[Conversation]], leaks: dict[str, list[Conversation]]) -> int:
    for name, leaked in leaks.items():
        moved = {id(c) for c in leaked}
        splits[name] = [c for c in splits[name] if id(c) not in moved]
        splits["train"] += leaked
    return sum(map(len, leaks.values()))


def _check_fixed_split_leaks(run: RunConfig, leaks: dict[str, list[Conversation]]) -> None:
    """The user chose these held-out files: changing them is their call (dataset.fixed_split_leaks)."""
    for name, leaked in leaks.items():
        if leaked and run.dataset.fixed_split_leaks == "fail":
            raise DataError(
                f"{leaked[0].location}: this {name} conversation repeats a training question verbatim "
                f"({len(leaked)} in dataset.{name}_path do); remove them, or set "
                "dataset.fixed_split_leaks=move_to_train to move them into the training split"
            )


def _length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": ordered[0], "mean": round(statistics.fmean(ordered), 1), "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], "max": ordered[-1], "total": sum(ordered),
    }


def _tokenized(tokenizer: Any, conversations: list[Conversation]) -> list[TokenizedConversation]:
    tokenized = []
    for c in conversations:
        try:
            tokenized.append(tokenize_conversation(tokenizer, c.messages))
        except ValueError as e:
            raise DataError(f"{c.location}: {e}") from e
    return tokenized


def _trained_within(t: TokenizedConversation, max_len: int) -> int:
    return sum(label != IGNORE_INDEX for label in t.labels[:max_len])


def _drop_untrainable(run: RunConfig, splits: dict[str, list[Conversation]],
                      tokens: dict[str, list[TokenizedConversation]]) -> dict[str, int]:
    """Conversations whose first answer starts after ``train.max_seq_len`` tokens carry no loss once cut:
    drop them (and say how many); refuse when the training or test split would be left with none."""
    max_len = run.train.max_seq_len
    dropped = {}
    for name in SPLITS:
        keep = [_trained_within(t, max_len) > 0 for t in tokens[name]]
        dropped[name] = keep.count(False)
        if splits[name] and not any(keep) and name in ("train", "test"):
            shortest = min(next(i for i, label in enumerate(t.labels) if label != IGNORE_INDEX) for t in tokens[name])
            raise DataError(
                f"train.max_seq_len={max_len}: no {name} conversation has an answer token within its first "
                f"{max_len} tokens (the shortest prompt before an answer is {shortest} tokens); raise it"
            )
        splits[name] = [c for c, k in zip(splits[name], keep, strict=True) if k]
        tokens[name] = [t for t, k in zip(tokens[name], keep, strict=True) if k]
    return dropped


def _write_jsonl(path: Path, conversations: list[Conversation]) -> None:
    atomic_write_text(path, "".join(
        json.dumps({"messages": c.messages}, ensure_ascii=False) + "\n" for c in conversations
    ))


@dataclass
class Validated:
    splits: dict[str, list[Conversation]]
    report: dict[str, Any]


def prepare(run: RunConfig) -> Validated:
    """Everything validate decides, without writing: read, check, deduplicate, split, measure. Also the
    stage's pre-run check, so bad data is refused before anything is written."""
    d = run.dataset
    conversations, fmt = load_conversations(Path(d.path), d.format, d.system_prompt)
    kept, dropped = _dedupe(conversations)
    if not kept:
        raise DataError(f"{d.path}: no usable conversation: all {len(conversations)} records are empty "
                        f"({dropped.empty}) or duplicates ({dropped.duplicates})")
    dropped_by_file = {"train" if d.validation_path else "dataset": dropped}
    if d.validation_path and d.test_path:
        splits = {"train": kept}
        for name, path in (("validation", d.validation_path), ("test", d.test_path)):
            splits[name], dropped_by_file[name] = _dedupe(load_conversations(Path(path), d.format, d.system_prompt)[0])
        leaks = _leaks(splits)
        _check_fixed_split_leaks(run, leaks)
    else:
        splits = _split(run, kept)
        leaks = _leaks(splits)
    moved = _move_to_train(splits, leaks)
    for name in ("train", "test"):
        if not splits[name]:
            raise DataError(f"{d.test_path if name == 'test' and d.test_path else d.path}: the {name} split is empty")

    tokenizer = load_tokenizer(resolve_model_source(run.model), run.model)
    tokens = {name: _tokenized(tokenizer, splits[name]) for name in SPLITS}
    untrainable = _drop_untrainable(run, splits, tokens)
    lengths = {name: [len(t.input_ids) for t in tokens[name]] for name in SPLITS}
    trained = {name: [t.num_trained_tokens for t in tokens[name]] for name in SPLITS}
    too_long = sum(n > run.train.max_seq_len for n in lengths["train"])
    system_prompts = Counter(
        c.messages[0]["content"] for c in splits["train"] if c.messages[0]["role"] == "system"
    )
    report = {
        "dataset": str(Path(d.path).resolve()),
        "format": fmt,
        "records": len(conversations),
        "dropped_empty": sum(x.empty for x in dropped_by_file.values()),
        "dropped_duplicates": sum(x.duplicates for x in dropped_by_file.values()),
        "dropped_by_file": {name: asdict(x) for name, x in dropped_by_file.items()},
        "moved_to_train_as_leaks": moved,
        "dropped_no_answer_within_max_seq_len": untrainable,
        "splits": {name: len(splits[name]) for name in SPLITS},
        "multi_turn_train": sum(sum(m["role"] == "assistant" for m in c.messages) > 1 for c in splits["train"]),
        "tokens_per_conversation": {name: _length_stats(lengths[name]) for name in SPLITS},
        "loss_tokens_per_conversation": {name: _length_stats(trained[name]) for name in SPLITS},
        "max_seq_len": run.train.max_seq_len,
        "train_conversations_truncated": too_long,
        "system_prompt": system_prompts.most_common(1)[0][0] if system_prompts else None,
        "distinct_system_prompts": len(system_prompts),
    }
    return Validated(splits=splits, report=report)


def check(run: RunConfig) -> None:
    prepare(run)


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    validated = prepare(run)
    report = validated.report
    for name in SPLITS:
        _write_jsonl(ctx.out_dir / f"{name}.jsonl", validated.splits[name])
    atomic_write_json(ctx.out_dir / "report.json", report)
    log.info("%d records (%s): %d empty and %d duplicates dropped; splits %s; %d train tokens, %d truncated",
             report["records"], report["format"], report["dropped_empty"], report["dropped_duplicates"],
             report["splits"], report["tokens_per_conversation"]["train"].get("total", 0),
             report["train_conversations_truncated"])
    if report["train_conversations_truncated"]:
        log.warning("%d training conversations exceed train.max_seq_len=%d and will be cut",
                    report["train_conversations_truncated"], run.train.max_seq_len)
    if any(report["dropped_no_answer_within_max_seq_len"].values()):
        log.warning("dropped conversations with no answer token within train.max_seq_len=%d: %s",
                    run.train.max_seq_len, report["dropped_no_answer_within_max_seq_len"])
    return {**{name: f"{name}.jsonl" for name in SPLITS}, "report": "report.json"}

"""validate: read every data source into canonical conversations, run the data checks (dataset.checks), split,
and measure the result with the model's own tokenizer and chat template — what training will actually see.
The ``synthesize`` stage's conversations, when the run has them, are one more source.

Writes the splits (``train.jsonl`` …, canonical rows), ``report.json`` and ``report.md``, ``findings.jsonl``
(every row a check found, with why), and, when
``dataset.write_formats`` asks, each split in a provider's format (``train.openai.jsonl`` …). Needs the
tokenizer, never the model's weights.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune.chat import template_takes
from finetune.config import DatasetConfig, RunConfig, SourceConfig
from finetune.data import formats
from finetune.data.canonical import Conversation, DataError, last_answer, row_kind, to_row
from finetune.data.checks import CHECKS, CheckInput, CheckReport, length, run_check, run_phase, run_split_checks
from finetune.data.load import Loaded, load_source
from finetune.data.readers import local_path
from finetune.data.report import markdown, summary_table
from finetune.data.splits import SPLITS, random_split, weighted
from finetune.data.tokens import TokenStats, token_stats
from finetune.models import load_tokenizer, resolve_model_source
from finetune.objectives import OBJECTIVES
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def sources(d: DatasetConfig, synthetic: Path | None = None) -> dict[str, SourceConfig]:
    """Every training source by name (its path): ``dataset.path`` with the dataset-level settings first, then
    ``dataset.sources``, then the ``synthesize`` stage's file."""
    found = {}
    if d.path is not None:
        found[d.path] = SourceConfig(path=d.path, format=d.format, columns=dict(d.columns), split=d.split)
    for s in d.sources:
        if s.path in found:
            raise DataError(f"dataset.sources: {s.path} is given twice")
        found[s.path] = s
    if synthetic is not None:
        found[str(synthetic)] = SourceConfig(path=str(synthetic), format="messages")
    return found


def _fixed(d: DatasetConfig, path: str) -> SourceConfig:
    """A fixed validation or test file, read with the dataset-level settings."""
    return SourceConfig(path=path, format=d.format, columns=dict(d.columns))


def _load(name: str, s: SourceConfig, d: DatasetConfig) -> Loaded:
    return load_source(s.path, s.format, columns=dict(s.columns), split=s.split, system_prompt=d.system_prompt,
                       skip_invalid_rows=d.skip_invalid_rows, name=name, python=d.python)


@dataclass
class Part:
    """Rows and their token counts, kept aligned through checks, splits and moves."""

    rows: list[Conversation]
    tokens: TokenStats

    def take(self, index: list[int]) -> Part:
        return Part([self.rows[i] for i in index], self.tokens.take(index))

    def only(self, rows: list[Conversation]) -> Part:
        keep = {id(c) for c in rows}
        return self.take([i for i, c in enumerate(self.rows) if id(c) in keep])

    def __add__(self, other: Part) -> Part:
        return Part(self.rows + other.rows, TokenStats.concat([self.tokens, other.tokens], self.tokens.max_seq_len))


def _checked(run: RunConfig, rows: list[Conversation], tokenizer: Any, reports: dict[str, CheckReport],
             where: str, records: int, seconds: dict[str, float]) -> Part:
    """The row checks, then token counts, then the token checks; refuses when nothing is left. Rows whose answer
    is out of ``train.max_seq_len``'s reach by their characters alone are decided first, when the check drops or
    refuses them: nothing else then reads, hashes or tokenizes them."""
    checks = run.dataset.checks
    if checks.no_loss_within_max_seq_len.action in ("drop", "error"):
        early = length.no_loss_before_tokens(tokenizer, run.train.max_seq_len)
        rows, _ = run_check(early, CheckInput(rows, checks.no_loss_within_max_seq_len), reports)
    kept = run_phase("rows", CheckInput(rows, None), checks, reports)
    started = time.monotonic()
    data = CheckInput(kept, None, tokens=token_stats(tokenizer, kept, run.train.max_seq_len))
    seconds["tokenize"] = round(seconds.get("tokenize", 0.0) + time.monotonic() - started, 3)
    kept = run_phase("tokens", data, checks, reports)
    if not kept:
        dropped = [r for r in reports.values() if r.count and r.action == "drop"]
        removed = ", ".join(f"{r.name} dropped {r.count}" for r in dropped)
        example = f" (e.g. {dropped[0].examples[0]['row']}: {dropped[0].examples[0]['detail']})" if dropped else ""
        raise DataError(f"{where}: no usable conversation is left of {records} records: {removed}{example}")
    assert data.tokens is not None
    return Part(kept, data.tokens)


def _split_checks(run: RunConfig, splits: dict[str, Part], fixed: bool, reports: dict[str, CheckReport]) -> int:
    """The held-out splits checked against training (leakage); returns how many rows moved into training."""
    held = splits["validation"] + splits["test"]
    kept, moved = run_split_checks(held.rows, splits["train"].rows, run.dataset.checks, reports, own_split=not fixed)
    for name in ("validation", "test"):
        splits[name] = splits[name].only(kept)
    if moved:
        splits["train"] = splits["train"] + held.only(moved)
    return len(moved)


def _length_stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    ordered = np.sort(values)
    return {
        "min": int(ordered[0]), "mean": round(float(ordered.mean()), 1), "p50": int(ordered[len(ordered) // 2]),
        "p95": int(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]), "max": int(ordered[-1]),
        "total": int(ordered.sum()),
    }


# Each kind of row (finetune.data.canonical.row_kind) as a refusal names it, the records that give one, and what
# a row of it lacks when it is a conversation
ROW_TEXT = {"conversation": "conversations", "pair": "preference pairs (chosen/rejected)",
            "labeled": "labeled answers (KTO's desirable or not)", "prompt": "prompts without answers"}
RECORDS = {"pair": "prompt/chosen/rejected, or OpenAI's input/preferred_output/non_preferred_output",
           "labeled": "prompt/completion/label, or messages/label", "prompt": "prompt with other columns"}
LACKS = {"pair": "rejected answer", "labeled": "label", "prompt": "prompt"}
KEEP_FOR_SFT = {"pair": ", or keep only the chosen answers", "labeled": ", or keep only the desirable answers",
                "prompt": ""}


def _fits_objective(run: RunConfig, rows: list[Conversation]) -> None:
    """Each row is of a kind the objective trains on (conversations, preference pairs, labeled answers, prompts):
    the first that is not is named before any check runs, rather than a trainer or a provider's format refusing it
    later (or its rejected answer or label being dropped); so is a prompt without the ``reference`` a reward
    compares with."""
    objective = OBJECTIVES[run.objective.name]
    _answers_unweighted(run, rows)
    if run.dataset.rejected_by is not None:  # the rejected stage makes the pairs
        misfit = next((c for c in rows if row_kind(c) != "conversation"), None)
        if misfit is not None:
            raise DataError(f"{misfit.location}: {ROW_TEXT[row_kind(misfit)]}; with dataset.rejected_by the data is "
                            "conversations, whose answers are the chosen ones — give conversations, or unset "
                            "dataset.rejected_by")
        return
    misfit = next((c for c in rows if row_kind(c) not in objective.data), None)
    if misfit is None:
        _has_references(run, rows)
        return
    kind, wanted = row_kind(misfit), " or ".join(ROW_TEXT[k] for k in objective.data)
    if kind == "conversation":
        raise DataError(f"{misfit.location}: no {' or '.join(LACKS[k] for k in objective.data)}; "
                        f"objective={objective.name} trains on {wanted} — give them on every row "
                        f"({'; '.join(RECORDS[k] for k in objective.data)}), or set objective=sft")
    takers = ", ".join(o.name for o in OBJECTIVES.values() if kind in o.data)
    instead = KEEP_FOR_SFT[kind] if "conversation" in objective.data else ""
    raise DataError(f"{misfit.location}: {ROW_TEXT[kind]}; objective={objective.name} trains on {wanted} — set "
                    f"objective to one of {takers}{instead}")


def _answers_unweighted(run: RunConfig, rows: list[Conversation]) -> None:
    """Loss weights are for an objective whose loop scales each token's loss (``Objective.loss_weights``: sft's):
    another trains (or, GRPO, compares with) a row's last answer whole through TRL's trainers, which take no per-token
    weights, so a weight other than 1 on that answer is refused; weights on the turns before it, its prompt, do not
    matter."""
    if OBJECTIVES[run.objective.name].loss_weights:
        return
    takers = " or ".join(f"objective={name}" for name, o in OBJECTIVES.items() if o.loss_weights)
    for c in rows:
        last = last_answer(c.messages)
        if last is not None and (weight := c.messages[last].get("weight", 1)) != 1:
            raise DataError(f"{c.location}: message {last} has loss weight {weight:g}; objective={run.objective.name} "
                            "trains the last answer whole (its TRL trainer takes no loss weights) — drop the weight "
                            f"of the last answer, or set {takers}")


def _has_references(run: RunConfig, rows: list[Conversation]) -> None:
    """A prompt-only row has a ``reference`` column when a reward compares answers with it (a conversation's
    reference is its last answer)."""
    from finetune.rewards import REWARDS

    comparing = next((f for f in run.reward.functions if f in REWARDS and REWARDS[f].compares), None)
    lacking = next((c for c in rows if c.columns is not None and c.columns.get("reference") is None), None)
    if comparing and lacking:
        raise DataError(f"{lacking.location}: no 'reference' column; reward {comparing} compares each answer with it "
                        "— give it on every prompt (dataset.columns={reference: <your column>} renames yours), or "
                        f"leave {comparing} out of reward.functions")


@dataclass
class Validated:
    splits: dict[str, list[Conversation]]
    report: dict[str, Any]
    findings: dict[str, list[tuple[str, str]]]  # check → every (row, detail) it found


def prepare(run: RunConfig, synthetic: Path | None = None) -> Validated:
    """Everything validate decides, without writing: read, check, split, measure. Also the stage's pre-run
    check, so bad data is refused before anything is written. ``synthetic``: the synthesize stage's file."""
    d = run.dataset
    started = time.monotonic()
    tokenizer = load_tokenizer(resolve_model_source(run.model), run.model)
    seconds = {"load_tokenizer": round(time.monotonic() - started, 3)}
    loaded = {name: _load(name, s, d) for name, s in sources(d, synthetic).items()}
    seconds["read"] = round(time.monotonic() - started - seconds["load_tokenizer"], 3)
    reports: dict[str, CheckReport] = {}
    pool = [c for result in loaded.values() for c in result.conversations]
    _fits_objective(run, pool)
    records = sum(result.records for result in loaded.values())
    where = next(iter(loaded)) if len(loaded) == 1 and not d.sources else \
        "dataset.sources" if d.sources else "dataset.path + dataset.synthetic"
    checked = _checked(run, pool, tokenizer, reports, where, records, seconds)
    fixed = d.validation_path is not None and d.test_path is not None
    if fixed:
        splits = {"train": checked}
        for name, path in (("validation", d.validation_path), ("test", d.test_path)):
            held = _load(str(path), _fixed(d, str(path)), d)
            loaded[str(path)] = held
            _fits_objective(run, held.conversations)
            splits[name] = _checked(run, held.conversations, tokenizer, reports, str(path), held.records, seconds)
    else:
        index = random_split(len(checked.rows), d.validation_fraction, d.test_fraction, run.seed, where)
        splits = {name: checked.take(index[name]) for name in SPLITS}
    moved = _split_checks(run, splits, fixed, reports)
    for name in ("train", "test"):
        if not splits[name].rows:
            raise DataError(f"{d.test_path if name == 'test' and fixed else where}: the {name} split is empty")
    weights = {name: s.weight for name, s in sources(d, synthetic).items()}
    splits["train"] = splits["train"].take(weighted([c.source for c in splits["train"].rows], weights, run.seed))
    run_phase("dataset", CheckInput(splits["train"].rows, None), d.checks, reports)
    report = _report(run, loaded, splits, reports, moved, tokenizer, where)
    seconds["total"] = round(time.monotonic() - started, 3)
    report["seconds"] = seconds  # each check's own time is in its entry under "checks"
    return Validated({name: part.rows for name, part in splits.items()}, report,
                     {name: r.rows for name, r in reports.items()})


def _report(run: RunConfig, loaded: dict[str, Loaded], splits: dict[str, Part], reports: dict[str, CheckReport],
            moved: int, tokenizer: Any, where: str) -> dict[str, Any]:
    train = splits["train"].rows
    system_prompts = Counter(c.messages[0]["content"] for c in train
                             if c.messages and c.messages[0]["role"] == "system")
    takes_tools, takes_calls = template_takes(tokenizer)
    d = run.dataset
    main = loaded[d.path] if d.path else next(iter(loaded.values()))
    named = d.path or (where if where in loaded else None)  # the one main source (a path), if there is one
    return {
        "dataset": str(Path(named).resolve()) if named and Path(named).exists() else named or "dataset.sources",
        "format": main.format,
        "sources": [{"name": name, "format": r.format, "records": r.records, "read": len(r.conversations),
                     "invalid_skipped": len(r.invalid), "invalid_examples": r.invalid[:5]}
                    for name, r in loaded.items()],
        "records": sum(r.records for r in loaded.values()),
        "checks": {name: reports[name].summary() for name in CHECKS if name in reports},  # the registry's order
        "moved_to_train_as_leaks": moved,
        "splits": {name: len(splits[name].rows) for name in SPLITS},
        "multi_turn_train": sum(sum(m["role"] == "assistant" for m in c.messages) > 1 for c in train),
        "plain_text_train": sum(c.is_text for c in train),
        "tools": {
            "train_rows_with_tools": sum(bool(c.tools) for c in train),
            "definitions": "tools= (the chat template renders them)" if takes_tools else
            "appended to the system message as <tools> text (the chat template ignores tools=)",
            "calls": "tool_calls (the chat template renders them)" if takes_calls else
            "<tool_call> text in the assistant turn (the chat template ignores tool_calls)",
        },
        "tokens_per_conversation": {name: _length_stats(splits[name].tokens.length) for name in SPLITS},
        "loss_tokens_per_conversation": {name: _length_stats(splits[name].tokens.trained) for name in SPLITS},
        "max_seq_len": run.train.max_seq_len,
        "system_prompt": system_prompts.most_common(1)[0][0] if system_prompts else None,
        "distinct_system_prompts": len(system_prompts),
    }


# What prepare reads (the stage's fingerprint); the objective decides whether preference pairs are taken, the rewards
# whether a prompt needs its reference
CONFIG_KEYS = ("model", "dataset", "seed", "train.max_seq_len", "objective.name", "reward.functions")


def input_files(run: RunConfig) -> list[Path]:
    """Local data files and folders (a Hub dataset is named by its id in the config instead)."""
    d = run.dataset
    names = (d.path, d.validation_path, d.test_path, *(s.path for s in d.sources))
    return [path for name in names if name and (path := local_path(name))]


def check(run: RunConfig) -> Validated | None:
    """The pre-run check (``Stage.prepare``): everything ``prepare`` refuses; the graph hands its result to
    ``run`` (a million rows are read, checked and tokenized once, not twice). Synthetic conversations exist only
    once ``synthesize`` has run, so then the other sources are only read now (bad records refused before the API
    is paid), and checked with the synthetic ones by the stage: nothing to hand over."""
    d = run.dataset
    if d.synthetic is None:
        return prepare(run)
    fixed = {str(path): _fixed(d, str(path)) for path in (d.validation_path, d.test_path) if path}
    for name, s in {**sources(d), **fixed}.items():
        _load(name, s, d)
    return None


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, (json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _expressible(rows: list[Conversation], output: str, skipped: list[dict[str, str]]) -> Iterator[dict[str, Any]]:
    for c in rows:
        try:
            yield formats.write(c, output)
        except formats.CannotExpress as e:
            skipped.append({"row": c.location, "why": str(e)})


def _write_formats(run: RunConfig, ctx: StageContext, splits: dict[str, list[Conversation]]) -> dict[str, Any]:
    """Each split in each provider format asked for; rows a format cannot express are counted and named."""
    written, artifacts = {}, {}
    for output in run.dataset.write_formats:
        for name in SPLITS:
            skipped: list[dict[str, str]] = []
            _write_jsonl(ctx.out_dir / f"{name}.{output}.jsonl", _expressible(splits[name], output, skipped))
            artifacts[f"{name}_{output}"] = f"{name}.{output}.jsonl"
            written[f"{name}.{output}.jsonl"] = {"rows": len(splits[name]) - len(skipped), "skipped": len(skipped),
                                                 "skipped_examples": skipped[:5]}
            if skipped:
                log.warning("%s.%s.jsonl: %d rows left out: %s (%s)", name, output, len(skipped),
                            skipped[0]["why"], skipped[0]["row"])
    return {"written": written, "artifacts": artifacts}


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    synthetic = ctx.inputs.get("synthesize", {}).get("data")
    validated = ctx.prepared or prepare(run, synthetic)
    report = validated.report
    for name in SPLITS:
        _write_jsonl(ctx.out_dir / f"{name}.jsonl", map(to_row, validated.splits[name]))
    converted = _write_formats(run, ctx, validated.splits)
    report["written_formats"] = converted["written"]
    atomic_write_json(ctx.out_dir / "report.json", report)
    _write_jsonl(ctx.out_dir / "findings.jsonl", ({"check": name, "row": row, "detail": detail}
                                                   for name, rows in validated.findings.items()
                                                   for row, detail in rows))
    atomic_write_text(ctx.out_dir / "report.md", markdown(report))
    for line in summary_table(report):
        log.info("%s", line)
    return {**{name: f"{name}.jsonl" for name in SPLITS}, "report": "report.json", "report_md": "report.md",
            "findings": "findings.jsonl",
            **converted["artifacts"]}

"""Data checks as a registry: ``CHECKS`` maps a name to a ``Check``; ``dataset.checks.<name>`` holds its
settings (always an ``action``, plus the check's own thresholds). A check finds rows (``Finding``: which row,
why); the engine applies the action: ``error`` stops the run naming the first row, ``warn`` keeps the rows and
reports them, ``drop`` removes them, a check's rewriting action (``redact`` for personal data, ``normalize`` for
whitespace) rewrites them, ``move_to_train`` moves held-out rows into the training split (leakage), ``off`` skips
the check.

Checks run in phases: ``rows`` on the conversations as read (before splitting, so a duplicate pair never
straddles train and test), ``tokens`` on the rows tokenized with the model's chat template, ``splits`` on
held-out rows against the training split, ``dataset`` on the training split as a whole (statistics that warn).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from finetune.data.canonical import Conversation, DataError
from finetune.data.tokens import TokenStats

log = logging.getLogger(__name__)

EXAMPLES = 5  # example rows per check in the report


@dataclass(frozen=True)
class Finding:
    row: int  # index into the rows the check was given
    detail: str


@dataclass
class CheckInput:
    rows: list[Conversation]
    settings: Any
    tokens: TokenStats | None = None  # phase "tokens": one entry per row
    train: list[Conversation] = field(default_factory=list)  # phase "splits": what held-out rows are compared to


@dataclass
class Outcome:
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # about the dataset as a whole (phase "dataset")


@dataclass(frozen=True)
class Check:
    name: str
    phase: str  # rows | tokens | splits | dataset
    what: str  # the problem in a few words, for the report: "empty answer"
    settings: type  # a dataclass with at least `action`
    find: Callable[[CheckInput], Outcome]
    rewrites: str | None = None  # the action that rewrites a flagged row rather than keeping or dropping it
    rewrite: Callable[[Conversation, Any], Conversation] | None = None  # how
    # Phase "splits": its settings when the split is our own random one, not the user's fixed files (its settings,
    # dataset.checks) -> settings; None: the same either way.
    own_split: Callable[[Any, Any], Any] | None = None


def _registry() -> dict[str, Check]:
    from finetune.data.checks import (
        conflicts,
        content,
        diversity,
        duplicates,
        leakage,
        length,
        pairs,
        pii,
        structure,
        volume,
        whitespace,
    )

    checks = (structure.CHECK, whitespace.CHECK, content.EMPTY_ANSWER, pairs.CHECK, content.PLACEHOLDERS, pii.CHECK,
              duplicates.EXACT, duplicates.NEAR, conflicts.CHECK, length.TOO_SHORT, length.TOO_LONG, length.NO_LOSS,
              leakage.CHECK, volume.CHECK, diversity.CHECK)
    return {c.name: c for c in checks}


CHECKS: dict[str, Check] = _registry()


@dataclass
class CheckReport:
    name: str
    action: str
    what: str
    count: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rows: list[tuple[str, str]] = field(default_factory=list)  # every finding: (row, detail); findings.jsonl

    @property
    def examples(self) -> list[dict[str, str]]:
        return [{"row": row, "detail": detail} for row, detail in self.rows[:EXAMPLES]]

    def summary(self) -> dict[str, Any]:
        """What report.json shows: the first ``EXAMPLES`` rows instead of all of them."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "rows"}
        return {**fields, "examples": self.examples}


def _refusal(check: Check, rows: list[Conversation], findings: list[Finding]) -> DataError:
    first = findings[0]
    return DataError(f"{rows[first.row].location}: {first.detail} ({check.name} check: {len(findings):,} of "
                     f"{len(rows):,} rows); fix the data, or set dataset.checks.{check.name}.action to one of "
                     f"{', '.join(a for a in _actions(check) if a != 'error')}")


def _actions(check: Check) -> tuple[str, ...]:
    meta = next(f for f in dataclasses.fields(check.settings) if f.name == "action").metadata
    return meta["choices"]


def run_check(check: Check, data: CheckInput, reports: dict[str, CheckReport]
              ) -> tuple[list[Conversation], list[Conversation]]:
    """Run one check and apply its action: returns (rows kept, rows removed by drop/move_to_train)."""
    action = data.settings.action
    if action == "off":
        return data.rows, []
    started = time.monotonic()
    outcome = check.find(data)
    findings = sorted(outcome.findings, key=lambda f: f.row)
    report = reports.setdefault(check.name, CheckReport(check.name, action, check.what))
    report.seconds = round(report.seconds + time.monotonic() - started, 3)
    report.count += len(findings)
    report.stats.update(outcome.stats)
    report.warnings += outcome.warnings
    report.count += len(outcome.warnings)
    for warning in outcome.warnings:
        log.warning("%s: %s", check.name, warning)
    report.rows += [(data.rows[f.row].location, f.detail) for f in findings]
    if not findings:
        return data.rows, []
    if action == "error":
        raise _refusal(check, data.rows, findings)
    if action == "warn":
        log.warning("%s: %d rows (%s: %s)", check.name, len(findings), data.rows[findings[0].row].location,
                    findings[0].detail)
        return data.rows, []
    flagged = {f.row for f in findings}
    if action == check.rewrites:
        assert check.rewrite is not None
        return [check.rewrite(c, data.settings) if i in flagged else c for i, c in enumerate(data.rows)], []
    return ([c for i, c in enumerate(data.rows) if i not in flagged],
            [c for i, c in enumerate(data.rows) if i in flagged])


def run_phase(phase: str, data: CheckInput, settings: Any, reports: dict[str, CheckReport]
              ) -> list[Conversation]:
    """Every check of ``phase`` in registry order, each on what the previous ones kept."""
    rows, tokens = data.rows, data.tokens
    for check in CHECKS.values():
        if check.phase != phase:
            continue
        step = dataclasses.replace(data, rows=rows, tokens=tokens, settings=getattr(settings, check.name))
        kept, _ = run_check(check, step, reports)
        if tokens is not None and len(kept) != len(rows):
            kept_ids = {id(c) for c in kept}
            tokens = tokens.take([i for i, c in enumerate(rows) if id(c) in kept_ids])
        rows = kept
    data.tokens = tokens
    return rows


def run_split_checks(held: list[Conversation], train: list[Conversation], settings: Any,
                     reports: dict[str, CheckReport], own_split: bool) -> tuple[list[Conversation], list[Conversation]]:
    """The ``splits`` phase: held-out rows against the training split, each check on what the previous ones kept.
    Returns (held-out rows kept, rows a ``move_to_train`` action takes into the training split)."""
    moved: list[Conversation] = []
    for check in CHECKS.values():
        if check.phase != "splits":
            continue
        step = getattr(settings, check.name)
        if own_split and check.own_split is not None and step.action != "off":
            step = check.own_split(step, settings)
        held, removed = run_check(check, CheckInput(held, step, train=train), reports)
        if step.action == "move_to_train":
            moved += removed
    return held, moved

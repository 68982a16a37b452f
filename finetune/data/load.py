"""A data source → canonical conversations: its container's records, renamed by ``columns``, read in one
format (given, or told from the first record), every bad record counted; the first one is reported as one
line with a count of the rest, or all are skipped and counted when ``skip_invalid_rows`` is set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from finetune.data import formats
from finetune.data.canonical import Conversation, DataError
from finetune.data.python_source import PythonSourceConfig
from finetune.data.readers import records


@dataclass
class Loaded:
    conversations: list[Conversation]
    format: str
    records: int
    invalid: list[str] = field(default_factory=list)  # one line per skipped record


def _renamed(record: Any, columns: dict[str, str]) -> Any:
    """``columns`` maps a format's key to the file's column: ``{instruction: question, output: answer}``."""
    if not columns or not isinstance(record, dict):
        return record
    missing = [f"{column!r} (dataset.columns.{key})" for key, column in columns.items() if column not in record]
    if missing:
        raise DataError(f"no column {', '.join(missing)}; its keys are {', '.join(sorted(map(str, record)))}")
    renamed = {k: v for k, v in record.items() if k not in columns.values()}
    return {**renamed, **{key: record[column] for key, column in columns.items()}}


def load_source(path: str, fmt: str = "auto", *, columns: dict[str, str] | None = None, split: str = "train",
                system_prompt: str | None = None, skip_invalid_rows: bool = False, name: str = "",
                python: PythonSourceConfig | None = None) -> Loaded:
    """Every record of source ``path`` as a canonical conversation located at its ``file:line``."""
    chosen = None if fmt == "auto" else fmt
    conversations, invalid, count = [], [], 0
    for location, record in records(path, split, python):
        count += 1
        try:
            if isinstance(record, DataError):
                raise record
            record = _renamed(record, columns or {})
            chosen = chosen or formats.detect(record)
            c = dataclasses.replace(formats.read(record, chosen), location=location, source=name)
        except DataError as e:
            invalid.append(str(e) if str(e).startswith(location) else f"{location}: {e}")
            continue
        if system_prompt and not c.is_text and (not c.messages or c.messages[0]["role"] != "system"):
            c.messages.insert(0, {"role": "system", "content": system_prompt})
        conversations.append(c)
    if not count:
        raise DataError(f"{path}: no records")
    if invalid and not skip_invalid_rows:
        more = f" (and {len(invalid) - 1} more bad records; dataset.skip_invalid_rows=true skips them)" \
            if len(invalid) > 1 else ""
        raise DataError(invalid[0] + more)
    if not conversations:
        raise DataError(f"{path}: all {count} records are invalid; the first: {invalid[0]}")
    return Loaded(conversations, chosen or fmt, count, invalid)

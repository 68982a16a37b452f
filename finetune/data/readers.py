"""File containers: a reader turns a path into ``(location, record)`` pairs, streaming where the container
allows (a JSONL file is read line by line, so one 100 MB line costs that line, not the file). ``READERS`` maps a
file suffix to its reader; a ``datasets.save_to_disk`` folder and a Hub dataset id go through ``datasets``.

A record that cannot be parsed is yielded as a ``DataError`` in its place, so the caller decides whether it
stops the run or is skipped and counted (``dataset.skip_invalid_rows``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from finetune.data import python_source
from finetune.data.canonical import DataError

Records = Iterator[tuple[str, Any]]
BOM = b"\xef\xbb\xbf"
SAVE_TO_DISK_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _utf8_error(path: Path, raw: bytes, e: UnicodeDecodeError, base_offset: int = 0, line: int | None = None
                ) -> DataError:
    if line is None:
        line = raw.count(b"\n", 0, e.start) + 1
    column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    return DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column}, byte offset "
                     f"{base_offset + e.start}); save the file as UTF-8")


def _decode(path: Path) -> str:
    """The whole file as text: UTF-8 with or without a byte-order mark; anything else names line and offset."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, raw, e) from None


def read_jsonl(path: Path) -> Records:
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start = offset
            offset += len(raw)
            if lineno == 1 and raw.startswith(BOM):
                raw, start = raw[len(BOM):], start + len(BOM)
            location = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield location, _utf8_error(path, raw, e, base_offset=start, line=lineno)
                continue
            if not line.strip():
                continue
            try:
                yield location, json.loads(line)
            except json.JSONDecodeError as e:
                yield location, DataError(f"{location}: invalid JSON: {e.msg} (column {e.colno})")


def read_json(path: Path) -> Records:
    text = _decode(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    for i, record in enumerate(data):
        yield f"{path}[{i}]", record


def read_csv(path: Path) -> Records:
    """A header row names the columns; every value is a string (an empty cell is an empty string)."""
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""))
    last = 1  # the line the previous record ended on; the header is line 1
    for row in reader:
        yield f"{path}:{last + 1}", row  # a quoted value may span lines: a record starts after the last one
        last = reader.line_num


def read_parquet(path: Path) -> Records:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read as Parquet ({str(e).splitlines()[0]})") from None
    i = 0
    for batch in table.iter_batches(batch_size=8192):
        for record in batch.to_pylist():
            yield f"{path}[{i}]", record
            i += 1


def _rows(dataset: Any, where: str) -> Records:
    for i, record in enumerate(dataset):
        yield f"{where}[{i}]", record


def read_saved(path: Path, split: str) -> Records:
    """A folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``: ``split`` picks one)."""
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"{path}: cannot load as a datasets.save_to_disk folder ({str(e).splitlines()[0]})") \
            from None
    if isinstance(data, DatasetDict):
        if split not in data:
            raise DataError(f"{path}: no split {split!r}; it has {', '.join(data)} (set the source's split)")
        data = data[split]
    return _rows(data, f"{path}:{split}")


def _check_hub_dataset(repo: str) -> None:
    """One request with a short timeout, so an unreachable Hub is one line, not a minute of retries."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().dataset_info(repo, timeout=10)
    except GatedRepoError:
        raise DataError(f"{repo}: the Hub dataset is gated; accept its terms on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise DataError(f"{repo}: no such dataset on the Hub (a private one needs HF_TOKEN)") from None
    except Exception as e:  # the transport's own errors: no network, DNS, proxy, TLS
        raise DataError(f"{repo}: cannot reach the Hugging Face Hub at {constants.ENDPOINT} "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); set HF_HUB_OFFLINE=1 to use "
                        "a copy in the local datasets cache, or give a local file") from None


def read_hub(repo: str, split: str) -> Records:
    """``datasets.load_dataset(repo, split=split)``. Online, the Hub is asked once first (short timeout);
    with HF_HUB_OFFLINE=1, the local datasets cache answers."""
    import datasets
    from datasets.utils.logging import disable_progress_bar
    from huggingface_hub import constants

    disable_progress_bar()
    offline = constants.HF_HUB_OFFLINE
    if not offline:
        _check_hub_dataset(repo)
    try:
        data = datasets.load_dataset(repo, split=split)
    except Exception as e:
        if offline:
            raise DataError(f"{repo}: a Hub dataset that is not in the local datasets cache, and HF_HUB_OFFLINE is "
                            "set; load it once while online, or give a local file") from None
        raise DataError(f"{repo}: cannot load the Hub dataset split {split!r} ({str(e).splitlines()[0]})") from None
    return _rows(data, f"{repo}:{split}")


READERS: dict[str, Callable[[Path], Records]] = {
    ".jsonl": read_jsonl, ".ndjson": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": read_parquet,
}
CONTAINERS = ("a .jsonl, .json, .csv or .parquet file, a datasets.save_to_disk folder, a Hub dataset id or "
              "python:<package or folder>")


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in SAVE_TO_DISK_MARKERS)


def is_hub_id(name: str) -> bool:
    return not Path(name).exists() and Path(name).suffix not in READERS and HUB_ID.fullmatch(name) is not None


def path_problem(name: str) -> str | None:
    """Why ``name`` cannot be read as a data source, or None; only looks at the file system."""
    if name.startswith(python_source.SCHEME):
        try:
            python_source.source_root(name)
        except DataError as e:
            return str(e).removeprefix(f"{name}: ")
        return None
    path = Path(name)
    if path.is_dir():
        return None if is_saved_dataset(path) else (
            f"{path.resolve()} is a folder, but not one written by datasets' save_to_disk; expected {CONTAINERS}")
    if path.is_file():
        if path.suffix.lower() not in READERS:
            return f"{path.resolve()}: cannot read {path.suffix or 'suffix-less'} files; expected {CONTAINERS}"
        return None
    if is_hub_id(name):
        return None
    return f"file not found: {path.resolve()}"


def local_path(name: str) -> Path | None:
    """The file or folder a source reads on this machine (None for a Hub dataset)."""
    if name.startswith(python_source.SCHEME):
        return python_source.source_root(name)
    return Path(name) if Path(name).exists() else None


def records(name: str, split: str = "train", python: python_source.PythonSourceConfig | None = None) -> Records:
    """The records of a data source: a file, a save_to_disk folder, a Hub dataset id, or ``python:`` source
    code."""
    if name.startswith(python_source.SCHEME):
        return python_source.read_python(name, python or python_source.PythonSourceConfig())
    path = Path(name)
    if is_saved_dataset(path):
        return read_saved(path, split)
    if not path.exists() and is_hub_id(name):
        return read_hub(name, split)
    return READERS[path.suffix.lower()](path)

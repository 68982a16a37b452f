"""Too little data to learn from: the guide's advice (§4, §15) is at least ~100 examples to teach a style, more
to teach knowledge. Warns once when the training split holds fewer rows than ``min_rows``, with the figure."""

from __future__ import annotations

from dataclasses import dataclass

from finetune.data.checks import Check, CheckInput, Outcome
from finetune.fields import setting


@dataclass
class VolumeSettings:
    action: str = setting("warn", choices=("warn", "off"))
    min_rows: int = setting(100, low=1)


def _find(data: CheckInput) -> Outcome:
    rows, least = len(data.rows), data.settings.min_rows
    warnings = [] if rows >= least else [
        f"the training split holds {rows} rows, fewer than {least}: about 100 examples teach a style, a "
        "knowledge domain needs more (dataset.checks.volume.min_rows sets the figure)"]
    return Outcome(stats={"train_rows": rows}, warnings=warnings)


CHECK = Check("volume", "dataset", "too little data", VolumeSettings, _find)

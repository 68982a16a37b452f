"""``setting(default, low=…, choices=…)``: a dataclass field that carries its allowed range or choices, which
``config.load_run_config`` checks and reports by key. Separate from ``config`` so that registries (data
checks) can declare their settings beside their code."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def _check(*, low: float | None = None, high: float | None = None, low_open: bool = False,
           choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {"low": low, "high": high, "low_open": low_open, "choices": choices}


def setting(default: Any, **check: Any) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=_check(**check))
    return field(default=default, metadata=_check(**check))

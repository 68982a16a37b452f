"""Training backends as a registry: ``backend.name`` picks how the model is loaded and wrapped for training;
the training loop (``finetune.training``), checkpoints and saving are the same for every local backend.

A backend entry says what it needs (``check``, run before any stage) and builds the model to train
(``load``: the base in the method's precision with its adapter attached, or every weight trainable).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune.backends import hf, unsloth


@dataclass(frozen=True)
class Backend:
    name: str
    check: Callable[[Any], None]  # RunConfig -> None; raises UserError with one line
    load: Callable[[Any], Any]  # RunConfig -> the model to train


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("hf", hf.check, hf.load),
    Backend("unsloth", unsloth.check, unsloth.load),
)}

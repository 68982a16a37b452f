"""OmegaConf resolvers that configs use: files shipped with finetune, wherever it is installed, and what a model
group says of its own model only."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from finetune.paths import DATA_DIR


def register() -> None:
    """``${bundled_data:support_bot/conversations.jsonl}`` → that file's absolute path in this install;
    ``${of_source:SOURCE,VALUE}`` → VALUE while the model's ``source`` is SOURCE, else null."""
    if not OmegaConf.has_resolver("bundled_data"):
        OmegaConf.register_new_resolver("bundled_data", lambda rel: str(DATA_DIR / rel))
    if not OmegaConf.has_resolver("of_source"):
        OmegaConf.register_new_resolver("of_source", _of_source)


def _of_source(source: str, value: Any, *, _parent_: Any) -> Any:
    """A model group's hub id and license describe its own model: with another ``model.source`` (a folder given on
    the command line) they would put the wrong base model and license into the card, so they fall away."""
    return value if _parent_.get("source") == source else None

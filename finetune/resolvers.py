"""OmegaConf resolvers that configs use to name files shipped with finetune, wherever it is installed."""

from __future__ import annotations

from omegaconf import OmegaConf

from finetune.paths import DATA_DIR


def register() -> None:
    """``${bundled_data:support_bot/conversations.jsonl}`` → that file's absolute path in this install."""
    if not OmegaConf.has_resolver("bundled_data"):
        OmegaConf.register_new_resolver("bundled_data", lambda rel: str(DATA_DIR / rel))

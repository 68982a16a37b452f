"""The hosted backends' side of the interface (``finetune.backends.base``): the provider checks the config, its API
trains (``train``: plan, submit, poll), and the base and tuned models are asked through its OpenAI-compatible chat
endpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from finetune.backends.base import Asked
from finetune.backends.hosted import Provider
from finetune.config import BackendConfig

# What makes a hosted job another job: its backend settings but BackendConfig.RUNTIME (submit, polling), the
# seed and run name it is created with, the adapter size (method.r); train.* is local training's
CONFIG_KEYS = ("method", *(f"backend.{f.name}" for f in dataclasses.fields(BackendConfig)
                           if f.name not in BackendConfig.RUNTIME), "objective", "seed", "run_name")


@dataclass(frozen=True)
class HostedBackend:
    provider: Provider

    def check(self, run: Any) -> None:
        self.provider.check(run)

    def config_keys(self, run: Any) -> tuple[str, ...]:
        return CONFIG_KEYS

    def train(self, run: Any, ctx: Any) -> dict[str, str]:
        from finetune.backends.hosted import train

        return train.run(self.provider, run, ctx)

    def generators(self, run: Any, ctx: Any) -> dict[str, Asked]:
        """``backend.base_model`` and the job's tuned model, as the provider's chat endpoint knows them."""
        from finetune.generate.openai_compat import OpenAICompatGenerator

        url, key_env = self.provider.chat_endpoint(run)
        tuned = json.loads(ctx.input("train", "metrics").read_text(encoding="utf-8"))["tuned_model"]
        ids = {"base": run.backend.base_model or "", "tuned": tuned}
        return {who: Asked(OpenAICompatGenerator(url, self.provider.chat_model(run, model), who, key_env), model,
                           f"{self.provider.title} at {url}", endpoint=url) for who, model in ids.items()}

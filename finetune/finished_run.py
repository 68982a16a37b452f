"""A finished run directory as ``chat`` and ``serve`` use it: its config, the merged model's tokenizer (the training
template), the system prompt and sampling the Modelfile serves with, and its GGUF files — read from the folder alone,
nothing recomputed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config import RunConfig
from finetune.errors import UserError
from finetune.generate import Decoding
from finetune.pipeline.manifest import Manifest


class RunNotUsable(UserError):
    """The run directory lacks what was asked of it (a stage that did not finish, a GGUF type not exported)."""


@dataclass
class FinishedRun:
    dir: Path
    run: RunConfig

    @classmethod
    def read(cls, arg: str) -> FinishedRun:
        from omegaconf import OmegaConf

        from finetune import resolvers
        from finetune.compare import run_directory
        from finetune.config import ConfigError, load_run_config

        folder = run_directory(arg)
        resolvers.register()
        try:
            run = load_run_config(OmegaConf.load(folder / ".hydra" / "config.yaml"))
        except ConfigError as e:
            raise RunNotUsable(f"{folder / '.hydra' / 'config.yaml'}: {e}") from None
        return cls(folder, run)

    def artifact(self, stage: str, name: str) -> Path:
        """A finished stage's artifact; refused, naming the stage, when that stage has not finished."""
        manifest = Manifest.read(self.dir / stage)
        if manifest is None or manifest.status != "complete" or name not in manifest.artifacts:
            raise RunNotUsable(f"{self.dir}: the {stage} stage has not finished (no {name}); run it first: "
                               f"python -m finetune --config-path {(self.dir / '.hydra').resolve()} "
                               "--config-name config")
        return self.dir / stage / manifest.artifacts[name]["path"]

    def has(self, stage: str) -> bool:
        manifest = Manifest.read(self.dir / stage)
        return manifest is not None and manifest.status == "complete"

    def stage_context(self, stage: str) -> Any:
        """The ``StageContext`` ``stage`` ran with (its upstream stages' artifacts): what a backend's
        ``generators`` reads to find the tuned model."""
        from finetune.pipeline.graph import StageContext
        from finetune.stages import STAGES

        needs = next(s.needs for s in STAGES if s.name == stage)
        inputs = {need: m.artifact_paths(self.dir / need) for need in needs
                  if (m := Manifest.read(self.dir / need)) is not None and m.status == "complete"}
        return StageContext(run_dir=self.dir, out_dir=self.dir / stage, inputs=inputs, resume=False)

    @property
    def hosted(self) -> bool:
        from finetune.backends import BACKENDS
        from finetune.backends.base import LOCAL_WEIGHTS

        return LOCAL_WEIGHTS not in BACKENDS[self.run.backend.name].capabilities

    def tokenizer(self) -> Any:
        """The merged model's tokenizer: its chat template is the one training rendered."""
        from finetune.models import load_tokenizer

        return load_tokenizer(str(self.artifact("merge", "model")), self.run.model)

    def system_prompt(self) -> str | None:
        """The system prompt the Modelfile serves with: ``export.system_prompt``, else the training data's; None
        where training had none (the chat template then writes its own default, as the Modelfile does)."""
        if self.run.export.system_prompt:
            return self.run.export.system_prompt
        report = self.artifact("validate", "report")
        return json.loads(report.read_text(encoding="utf-8")).get("system_prompt")

    def gguf(self, out_type: str | None) -> Path:
        """The exported GGUF of ``out_type``; by default the Modelfile's (the first of ``export.gguf_types``)."""
        types = list(dict.fromkeys(self.run.export.gguf_types))
        chosen = out_type or types[0]
        if chosen not in types:
            raise RunNotUsable(f"--gguf {chosen}: {self.dir} exported {', '.join(types)} (export.gguf_types)")
        path = self.artifact("export", f"gguf_{chosen}")
        if not path.is_file():
            raise RunNotUsable(f"{path}: missing (a parity gate that failed renames it *.rejected)")
        return path

    def decoding(self, tokenizer: Any, max_new_tokens: int, greedy: bool = False) -> Decoding:
        """The Modelfile's sampling and stop tokens (Ollama's), seeded with the run's seed; ``greedy``: argmax.
        Without a tokenizer (a hosted model) no stop strings: its server knows its own."""
        from finetune.export.modelfile import serving_decoding, stop_strings

        stop = stop_strings(tokenizer) if tokenizer is not None else ()
        return serving_decoding(self.run.export, max_new_tokens, self.run.seed, stop, greedy)

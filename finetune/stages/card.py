"""card: the model card (README.md) from what validate, train, evaluate and export wrote. Its own stage, so that
changing evaluation settings reruns evaluate and the card, never the GGUF conversion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.backends import BACKENDS
from finetune.backends.base import LOCAL_WEIGHTS
from finetune.config import RunConfig
from finetune.export.card import CardInputs, hosted_model_card, model_card
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import Manifest, atomic_write_text

CONFIG_KEYS = ("model", "method", "objective", "reward", "train", "export", "card", "seed", "run_name",
               "dataset.rejected_by", "dataset.rejected_max_new_tokens", "backend.name",
               "backend.base_url", "backend.chat_base_url", "backend.project", "backend.region")


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    train = Manifest.read(ctx.run_dir / "train")
    export = ctx.inputs.get("export", {})  # none with a hosted backend
    inputs = CardInputs(
        report=_json(ctx.input("validate", "report")),
        train=_json(ctx.input("train", "metrics")),
        plan=_json(ctx.input("train", "plan")),
        train_seconds=train.duration_s if train else None,
        evaluation=_json(ctx.input("evaluate", "eval")),
        eval_md=ctx.input("evaluate", "table").read_text(encoding="utf-8"),
        parity=_json(export["parity"]) if export else {},
        files={key: path.name for key, path in export.items()},
    )
    # Without local weights the model lives where evaluate asked it
    card = model_card(run, inputs) if LOCAL_WEIGHTS in BACKENDS[run.backend.name].capabilities else \
        hosted_model_card(run, inputs, inputs.evaluation["models"]["tuned"]["endpoint"])
    atomic_write_text(ctx.out_dir / "README.md", card)
    return {"model_card": "README.md"}

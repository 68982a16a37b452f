"""train: fine-tune on the validated training split with the chosen backend (``finetune.backends``) and method.

``backend.name`` decides where: a local backend (``hf``, ``unsloth``) loads the model, attaches the adapter that
``method.name`` asks for (``finetune.methods``) and trains it here (``finetune.backends.local_train``, in one
process or ``train.num_processes``); a hosted one plans, submits and watches a provider's job
(``finetune.backends.hosted``). The stage only asks the backend.
"""

from __future__ import annotations

from finetune.backends import BACKENDS
from finetune.config import RunConfig
from finetune.pipeline.graph import StageContext


def check(run: RunConfig) -> None:
    """Refuse, before any stage runs, what the backend cannot train here."""
    BACKENDS[run.backend.name].check(run)


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    return BACKENDS[run.backend.name].train(run, ctx)

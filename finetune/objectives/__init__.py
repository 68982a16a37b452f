"""Training objectives as a registry: ``objective.name`` picks what the model is trained to do.

``sft`` (the default) trains on conversations with our own loop (``finetune.training``); ``dpo``, ``orpo`` and
``simpo`` on preference pairs, ``kto`` on answers labeled desirable or not (or pairs, unpaired), and ``grpo`` on
prompts (or conversations' questions) with reward functions (``finetune.rewards``), through TRL's trainers, with our
data layer, methods, plan, progress bar, curves, checkpoints, resume and manifests. An entry says what its data is
and which settings it reads; its module ``finetune/objectives/<name>.py`` (``datasets`` and ``trainer``) is imported
only when training starts, so ``import finetune.config`` loads no TRL. A backend lists the objectives it trains
(``Backend.objectives``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The losses as TRL names them: DPO's (trl.DPOConfig.loss_type; sigmoid is the paper's and OpenAI's), KTO's
# (trl.KTOConfig.loss_type) and GRPO's (trl.GRPOConfig.loss_type; dapo is TRL's default)
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
KTO_LOSSES = ("kto", "apo_zero_unpaired")
GRPO_LOSSES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")


@dataclass(frozen=True)
class Objective:
    name: str
    description: str  # as messages name it
    data: tuple[str, ...]  # the kinds of row it trains on (finetune.data.canonical.row_kind)
    settings: tuple[str, ...] = ()  # the objective.* keys it reads besides name; setting another is refused
    losses: tuple[str, ...] = ()  # objective.loss_type values it takes (its trainer's default first)
    # scores its data with the model before training too (finetune.plan counts it): given objective's settings
    reference: Callable[[Any], bool] = lambda settings: False
    rollouts: bool = False  # generates objective.num_generations answers to each prompt and scores them (reward)
    # the fewest rows a micro-batch (train.batch_size) may hold, given objective's settings
    batch_rows: Callable[[Any], int] = lambda settings: 1
    # how its loss reads the vocabulary, for the plan's logits (finetune.plan.logit_bytes): "targets", our loop's
    # logits at trained positions only; "fused", TRL's chunked log-probability head (its DPO, KTO and GRPO
    # trainers); "full", the logits of every position (TRL's ORPO and CPO trainers)
    head: str = "targets"
    loss_weights: bool = False  # scales each token's loss by its message's weight (our loop; TRL's trainers do not)

    def implementation(self) -> Any:
        """Its ``datasets`` and ``trainer`` (``finetune.backends.local_train`` calls them)."""
        return importlib.import_module(f"finetune.objectives.{self.name}")


def as_dataset(rows: list[dict[str, Any]]) -> Any:
    """A split's rows as the trainers take them: a ``datasets.Dataset``, or None for an empty split."""
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else None


OBJECTIVES = {o.name: o for o in (
    Objective("sft", "supervised fine-tuning", data=("conversation",), loss_weights=True),
    Objective("dpo", "preference tuning (DPO)", data=("pair",), settings=("beta", "loss_type", "sft_weight"),
              losses=DPO_LOSSES, reference=lambda settings: True, head="fused"),
    Objective("orpo", "preference tuning (ORPO)", data=("pair",), settings=("beta",), head="full"),
    Objective("kto", "preference tuning (KTO)", data=("labeled", "pair"),
              settings=("beta", "loss_type", "desirable_weight", "undesirable_weight"), losses=KTO_LOSSES,
              reference=lambda settings: True,
              # its KL term scores each prompt with the answer of another row of the micro-batch (not apo's)
              batch_rows=lambda settings: 1 if settings.loss_type == "apo_zero_unpaired" else 2, head="fused"),
    Objective("simpo", "preference tuning (SimPO)", data=("pair",), settings=("beta", "simpo_gamma"), head="full"),
    Objective("grpo", "reinforcement learning with rewards (GRPO)", data=("conversation", "prompt"),
              settings=("beta", "loss_type", "num_generations", "max_completion_length", "epsilon",
                        "temperature"),
              losses=GRPO_LOSSES, reference=lambda settings: bool(settings.beta), rollouts=True, head="fused"),
)}

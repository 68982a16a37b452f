"""orpo: odds-ratio preference optimisation (Hong et al., 2024) through TRL's ``ORPOTrainer``: the supervised loss
on the chosen answer plus ``objective.beta`` (λ) times the log odds ratio of chosen over rejected. No reference
model: one copy of the model, and no reference forward pass."""

from __future__ import annotations

from typing import Any

from finetune.objectives.pairs import datasets, experimental_trl, reference_free_trainer

__all__ = ["datasets", "trainer"]


def trainer(run: Any, model: Any, tokenizer: Any, arguments: dict[str, Any], train_set: Any, eval_set: Any,
            callbacks: list[Any]) -> Any:
    experimental_trl()
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    settings = {"beta": run.objective.beta} if run.objective.beta is not None else {}
    args = ORPOConfig(**arguments, **settings, max_length=run.train.max_seq_len)
    return reference_free_trainer(ORPOTrainer, args, model, tokenizer, train_set, eval_set, callbacks)

"""simpo: simple preference optimisation (Meng et al., 2024) through TRL's ``CPOTrainer`` as its docs set it up
(``loss_type="simpo"``, ``cpo_alpha=0``): the length-normalised log-likelihood margin of chosen over rejected, scaled
by ``objective.beta``, against the target margin ``objective.simpo_gamma``. No reference model."""

from __future__ import annotations

from typing import Any

from finetune.objectives.pairs import datasets, experimental_trl, reference_free_trainer

__all__ = ["datasets", "trainer"]


def trainer(run: Any, model: Any, tokenizer: Any, arguments: dict[str, Any], train_set: Any, eval_set: Any,
            callbacks: list[Any]) -> Any:
    experimental_trl()
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    settings = {"beta": run.objective.beta} if run.objective.beta is not None else {}
    args = CPOConfig(**arguments, **settings, loss_type="simpo", cpo_alpha=0.0,
                     simpo_gamma=run.objective.simpo_gamma, max_length=run.train.max_seq_len)
    return reference_free_trainer(CPOTrainer, args, model, tokenizer, train_set, eval_set, callbacks)

"""dpo: direct preference optimisation (Rafailov et al., 2023) through TRL's ``DPOTrainer``, on pairs tokenized
by our chat layer (``finetune.objectives.pairs``).

The reference is the model before training: with an adapter, the same model with the adapter switched off
(TRL's way for a peft model); for ``method=full``, its log-probabilities computed once before the first step
(``precompute_ref_log_probs``). Never a second copy in memory.
"""

from __future__ import annotations

from typing import Any

from finetune.objectives import DPO_LOSSES
from finetune.objectives.pairs import datasets

__all__ = ["datasets", "trainer"]


def trainer(run: Any, model: Any, tokenizer: Any, arguments: dict[str, Any], train_set: Any, eval_set: Any,
            callbacks: list[Any]) -> Any:
    """TRL's DPOTrainer on our tokenized pairs, its settings from ``objective`` (TRL's defaults where unset)."""
    from trl import DPOConfig, DPOTrainer

    from finetune import methods

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset  # tokenized by ``pairs.pair``

    o = run.objective
    settings = {"beta": o.beta} if o.beta is not None else {}
    settings |= {"loss_type": [o.loss_type or DPO_LOSSES[0]]}  # TRL's default first
    if o.sft_weight:
        settings |= {"loss_type": [*settings["loss_type"], "sft"], "loss_weights": [1.0, o.sft_weight]}
    args = DPOConfig(**arguments, **settings, max_length=None,
                     precompute_ref_log_probs=not methods.METHODS[run.method.name].adapter)
    return PretokenizedDPOTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                                  processing_class=tokenizer, callbacks=callbacks)

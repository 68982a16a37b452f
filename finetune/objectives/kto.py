"""kto: Kahneman-Tversky optimisation (Ethayarajh et al., 2024) through TRL's ``KTOTrainer``, on answers labeled
desirable or not — unpaired data, or each preference pair as its two answers. An answer is made likelier or less
likely against a reference point: how far the policy has moved from the model before training, estimated on the
micro-batch's answers each scored after another row's prompt (its KL term; ``loss_type=apo_zero_unpaired`` has
none). The model before training is DPO's reference: the adapter switched off, or (``method=full``) its
log-probabilities computed once before the first step. Never a second copy in memory.

TRL reads the rows of a micro-batch in order (its KL term is built per micro-batch): they are shuffled once here,
with the run's seed, so that a micro-batch mixes labels and prompts rather than holding one pair's two answers or
only the chosen ones."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import Any

from finetune.data.canonical import Conversation
from finetune.objectives import as_dataset
from finetune.objectives.pairs import pair, prompt_and_answer

log = logging.getLogger(__name__)


def _answer(prompt: list[int], completion: list[int], desirable: bool) -> dict[str, Any]:
    return {"prompt_ids": prompt, "completion_ids": completion, "label": desirable}


def _answers(tokenizer: Any, row: Conversation, max_len: int) -> list[dict[str, Any]]:
    """A labeled row's answer, or a pair's two (the chosen desirable), as TRL's KTOTrainer takes them tokenized;
    each answer cut so that the prompt and it fit ``max_len``."""
    if row.rejected is not None:
        p = pair(tokenizer, row, max_len)
        return [_answer(p["prompt_ids"], p["chosen_ids"], True), _answer(p["prompt_ids"], p["rejected_ids"], False)]
    prompt, answer = prompt_and_answer(tokenizer, row)
    return [_answer(prompt, answer[:max(0, max_len - len(prompt))], bool(row.label))]


def _in_micro_batches(answers: list[dict[str, Any]], batch_size: int, seed: int, kl: bool) -> list[dict[str, Any]]:
    """The answers shuffled with ``seed``, each given the answer before it in its micro-batch for the KL term (TRL's
    rotation), with ``length`` and ``trained`` for the plan: its sequence and its KL sequence are in a step."""
    answers = list(answers)
    random.Random(seed).shuffle(answers)
    for start in range(0, len(answers), batch_size):
        batch = answers[start:start + batch_size]
        for i, answer in enumerate(batch):
            length = len(answer["prompt_ids"]) + len(answer["completion_ids"])
            if kl:
                answer["KL_completion_ids"] = batch[i - 1]["completion_ids"]
                length += len(answer["prompt_ids"]) + len(answer["KL_completion_ids"])
            answer |= {"length": length, "trained": len(answer["completion_ids"])}
    return answers


def _check_balance(answers: list[dict[str, Any]], objective: Any) -> None:
    """KTO's paper keeps desirable_weight × desirable answers / (undesirable_weight × undesirable ones) in [1, 4/3];
    outside it, one line says which weight would bring it back."""
    desirable = sum(a["label"] for a in answers)
    undesirable = len(answers) - desirable
    if not desirable or not undesirable:
        log.warning("objective=kto: all %d answers are %s; KTO learns from both kinds", len(answers),
                    "desirable" if desirable else "undesirable")
        return
    ratio = objective.desirable_weight * desirable / (objective.undesirable_weight * undesirable)
    if not 1 <= ratio <= 4 / 3:
        low = objective.undesirable_weight * undesirable / desirable
        log.warning("objective.desirable_weight=%s: %d desirable and %d undesirable answers; KTO's paper keeps "
                    "desirable_weight × desirable / (undesirable_weight × undesirable) in [1, 4/3] — e.g. "
                    "objective.desirable_weight in [%.2f, %.2f]", objective.desirable_weight, desirable,
                    undesirable, low, low * 4 / 3)


def datasets(run: Any, tokenizer: Any, train: Iterable[Conversation], validation: Iterable[Conversation]
             ) -> tuple[Any, Any]:
    """The training and validation answers as TRL's KTOTrainer takes them, tokenized by our chat layer and laid
    out in micro-batches (``_in_micro_batches``)."""
    from finetune.objectives import OBJECTIVES

    kl = OBJECTIVES["kto"].batch_rows(run.objective) > 1
    longest, size = run.train.max_seq_len, run.train.batch_size
    train_answers = [a for row in train for a in _answers(tokenizer, row, longest)]
    _check_balance(train_answers, run.objective)
    return (as_dataset(_in_micro_batches(train_answers, size, run.seed, kl)),
            as_dataset(_in_micro_batches([a for row in validation for a in _answers(tokenizer, row, longest)],
                                         size, run.seed, kl)))


def trainer(run: Any, model: Any, tokenizer: Any, arguments: dict[str, Any], train_set: Any, eval_set: Any,
            callbacks: list[Any]) -> Any:
    """TRL's KTOTrainer on our tokenized answers, its settings from ``objective`` (TRL's defaults where unset)."""
    from trl import KTOConfig, KTOTrainer

    from finetune import methods

    class PretokenizedKTOTrainer(KTOTrainer):
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset  # tokenized and laid out by ``datasets``

    o = run.objective
    settings = {"beta": o.beta} if o.beta is not None else {}
    settings |= {"loss_type": o.loss_type} if o.loss_type is not None else {}
    args = KTOConfig(**arguments, **settings, desirable_weight=o.desirable_weight,
                     undesirable_weight=o.undesirable_weight, max_length=None,
                     precompute_ref_log_probs=not methods.METHODS[run.method.name].adapter)
    return PretokenizedKTOTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                                  processing_class=tokenizer, callbacks=callbacks)

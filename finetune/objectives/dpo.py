"""dpo: direct preference optimisation (Rafailov et al., 2023) through TRL's ``DPOTrainer``, on pairs tokenized
by our chat layer: the prompt is the conversation before its last assistant turn, rendered by the model's template,
and each answer is that turn's trained tokens (its end-of-turn token included, as supervised training trains it) —
not TRL's own tokenization, which assumes a template renders a prompt as a prefix of the whole (Qwen 3's and
Phi-3.5's do not).

The reference is the model before training: with an adapter, the same model with the adapter switched off
(TRL's way for a peft model); for ``method=full``, its log-probabilities computed once before the first step
(``precompute_ref_log_probs``). Never a second copy in memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from finetune.chat import IGNORE_INDEX, tokenize
from finetune.data.canonical import Conversation, DataError


def _last_turn(labels: list[int]) -> tuple[int, int]:
    """Where the last run of trained tokens starts and ends: the conversation's last assistant turn."""
    end = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX) + 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start, end


def pair(tokenizer: Any, row: Conversation, max_len: int) -> dict[str, Any]:
    """A preference row as TRL's DPOTrainer takes it tokenized: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``
    (each answer cut so that the prompt and it fit ``max_len``), with ``length`` and ``trained`` for the plan: both
    sequences of the pair are in a step's batch."""
    chosen = tokenize(tokenizer, row)
    rejected_messages = [*row.messages[:-1], {"role": "assistant", "content": row.rejected}]
    rejected = tokenize(tokenizer, dataclasses.replace(row, messages=rejected_messages, rejected=None))
    (c_start, c_end), (r_start, r_end) = _last_turn(chosen.labels), _last_turn(rejected.labels)
    prompt = chosen.input_ids[:c_start]
    if rejected.input_ids[:r_start] != prompt:
        raise DataError(f"{row.location}: the chat template renders the prompt differently before the chosen and "
                        "the rejected answer; DPO compares the two after one prompt")
    room = max(0, max_len - len(prompt))
    chosen_ids, rejected_ids = chosen.input_ids[c_start:c_end][:room], rejected.input_ids[r_start:r_end][:room]
    return {"prompt_ids": prompt, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
            "length": 2 * (len(prompt) + max(len(chosen_ids), len(rejected_ids))),
            "trained": len(chosen_ids) + len(rejected_ids)}


def datasets(run: Any, tokenizer: Any, train: Iterable[Conversation], validation: Iterable[Conversation]
             ) -> tuple[Any, Any]:
    from datasets import Dataset

    def dataset(split: Iterable[Conversation]) -> Any:
        rows = [pair(tokenizer, row, run.train.max_seq_len) for row in split]
        return Dataset.from_list(rows) if rows else None

    return dataset(train), dataset(validation)


def trainer(run: Any, model: Any, tokenizer: Any, arguments: dict[str, Any], train_set: Any, eval_set: Any,
            callbacks: list[Any]) -> Any:
    """TRL's DPOTrainer on our tokenized pairs, its settings from ``objective`` (TRL's defaults where unset)."""
    from trl import DPOConfig, DPOTrainer

    from finetune import methods

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset  # tokenized by ``pair``

    settings = {"beta": run.objective.beta} if run.objective.beta is not None else {}
    args = DPOConfig(**arguments, **settings, loss_type=[run.objective.loss_type], max_length=None,
                     precompute_ref_log_probs=not methods.METHODS[run.method.name].adapter)
    return PretokenizedDPOTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                                  processing_class=tokenizer, callbacks=callbacks)

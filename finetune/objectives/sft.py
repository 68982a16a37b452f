"""sft: supervised fine-tuning on conversations with our own loop (``finetune.training``): labels from
``finetune.chat`` (assistant turns with their end-of-turn token, or every token with ``train.loss_on=all``), logits
only where there is a target, optional packing without attention across samples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from finetune.chat import IGNORE_INDEX, tokenize
from finetune.data.canonical import Conversation
from finetune.objectives import as_dataset


def tokenized(tokenizer: Any, split: Iterable[Conversation], loss_on: str, max_len: int) -> Any:
    """The split as ``input_ids``/``labels`` rows, cut at ``max_len`` tokens (validate has checked that every
    row keeps trained tokens within it), with each row's ``length`` and ``trained`` token counts for the plan. Where
    some assistant turn of the split has a loss weight other than 1, every row also has ``weights`` (one per token,
    ``finetune.chat``), which the loss scales by; with ``loss_on=all`` a turn of weight 0 is still left untrained."""
    rows, weighted = [], False
    for row in split:
        t = tokenize(tokenizer, row)
        labels = t.labels
        if loss_on == "all":
            labels = t.input_ids if t.weights is None else \
                [token if w else IGNORE_INDEX for token, w in zip(t.input_ids, t.weights, strict=True)]
        labels = labels[:max_len]
        weighted = weighted or t.weights is not None
        rows.append({"input_ids": t.input_ids[:max_len], "labels": labels, "length": len(labels),
                     "trained": sum(label != IGNORE_INDEX for label in labels),
                     "weights": None if t.weights is None else t.weights[:max_len]})
    for r in rows:  # a column that every row has, or none: the batches of every process alike
        if not weighted:
            del r["weights"]
        elif r["weights"] is None:
            r["weights"] = [1.0] * r["length"]
    return as_dataset(rows)


def datasets(run: Any, tokenizer: Any, train: Iterable[Conversation], validation: Iterable[Conversation]
             ) -> tuple[Any, Any]:
    """The training and validation splits as the trainer takes them (None for an empty split)."""
    t = run.train
    return (tokenized(tokenizer, train, t.loss_on, t.max_seq_len),
            tokenized(tokenizer, validation, t.loss_on, t.max_seq_len))


def trainer(run: Any, model: Any, tokenizer: Any, arguments: dict[str, Any], train_set: Any, eval_set: Any,
            callbacks: list[Any]) -> Any:
    """transformers' Trainer with our loss (``finetune.training.make_trainer``) and batching."""
    from transformers import TrainingArguments

    from finetune.training import Batcher, make_trainer

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return make_trainer(model=model, args=TrainingArguments(**arguments), train_dataset=train_set,
                        eval_dataset=eval_set, data_collator=Batcher(pad_id, run.train.packing),
                        processing_class=tokenizer, callbacks=callbacks)

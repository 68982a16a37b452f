"""Preference pairs as TRL's pair trainers take them, tokenized by our chat layer: the prompt is the conversation
before its last assistant turn, rendered by the model's template, and each answer is that turn's trained tokens
(its end-of-turn token included, as supervised training trains it) — not TRL's own tokenization, which assumes a
template renders a prompt as a prefix of the whole (Qwen 3's and Phi-3.5's do not)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from finetune.chat import IGNORE_INDEX, tokenize
from finetune.data.canonical import Conversation, DataError
from finetune.objectives import as_dataset


def _last_turn(labels: list[int]) -> tuple[int, int]:
    """Where the last run of trained tokens starts and ends: the conversation's last assistant turn."""
    end = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX) + 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start, end


def prompt_and_answer(tokenizer: Any, row: Conversation) -> tuple[list[int], list[int]]:
    """The tokens before the row's last assistant turn (its prompt, as the template renders it there) and that
    turn's trained tokens."""
    tokens = tokenize(tokenizer, row)
    start, end = _last_turn(tokens.labels)
    return tokens.input_ids[:start], tokens.input_ids[start:end]


def pair(tokenizer: Any, row: Conversation, max_len: int) -> dict[str, Any]:
    """A preference row as TRL's DPOTrainer takes it tokenized: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``
    (each answer cut so that the prompt and it fit ``max_len``), with ``length`` and ``trained`` for the plan: both
    sequences of the pair are in a step's batch."""
    prompt, chosen = prompt_and_answer(tokenizer, row)
    rejected_messages = [*row.messages[:-1], {"role": "assistant", "content": row.rejected}]
    rejected_prompt, rejected = prompt_and_answer(
        tokenizer, dataclasses.replace(row, messages=rejected_messages, rejected=None))
    if rejected_prompt != prompt:
        raise DataError(f"{row.location}: the chat template renders the prompt differently before the chosen and "
                        "the rejected answer; a preference objective compares the two after one prompt")
    room = max(0, max_len - len(prompt))
    chosen_ids, rejected_ids = chosen[:room], rejected[:room]
    return {"prompt_ids": prompt, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
            "length": 2 * (len(prompt) + max(len(chosen_ids), len(rejected_ids))),
            "trained": len(chosen_ids) + len(rejected_ids)}


def datasets(run: Any, tokenizer: Any, train: Iterable[Conversation], validation: Iterable[Conversation]
             ) -> tuple[Any, Any]:
    """The training and validation pairs as TRL's pair trainers take them, tokenized (``pair``)."""
    longest = run.train.max_seq_len
    return (as_dataset([pair(tokenizer, row, longest) for row in train]),
            as_dataset([pair(tokenizer, row, longest) for row in validation]))


def reference_free_trainer(trainer_class: type, args: Any, model: Any, tokenizer: Any, train_set: Any,
                           eval_set: Any, callbacks: list[Any]) -> Any:
    """One of TRL's pair trainers without a reference model (ORPO, CPO/SimPO), given our tokenized pairs in the
    row layout it builds for itself (``prompt_``, ``chosen_`` and ``rejected_`` ids, masks and labels)."""

    class PretokenizedTrainer(trainer_class):  # type: ignore[misc, valid-type]
        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            """Counts the step's real tokens, which the Trainer looks for under ``input_ids`` and these batches
            keep per side."""
            tokens = inputs["chosen_attention_mask"].sum() + inputs["rejected_attention_mask"].sum()
            self.state.num_input_tokens_seen += int(self.accelerator.gather(tokens.reshape(1)).sum())
            return super().training_step(model, inputs, *args, **kwargs)

        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
            prompt = feature["prompt_ids"]
            row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
            for side in ("chosen", "rejected"):
                ids = prompt + feature[f"{side}_ids"]
                row |= {f"{side}_input_ids": ids, f"{side}_attention_mask": [1] * len(ids),
                        f"{side}_labels": [IGNORE_INDEX] * len(prompt) + feature[f"{side}_ids"]}
            return row

    args.include_num_input_tokens_seen = "no"  # counted in training_step
    return PretokenizedTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                               processing_class=tokenizer, callbacks=callbacks)


def experimental_trl() -> None:
    """TRL warns on every import of ``trl.experimental`` (ORPO, CPO live there); the run says which objective it
    trains, so the warning is noise on the console."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

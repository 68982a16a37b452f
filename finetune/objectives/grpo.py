"""grpo: group relative policy optimisation (Shao et al., 2024) through TRL's ``GRPOTrainer``. For each prompt the
model being trained — the policy itself, its adapter on — writes ``objective.num_generations`` answers; the
``reward.functions`` score them (``finetune.rewards``), and each answer is made likelier or less likely by how it
scores against the others of its group. A KL term to the model before training weighs ``objective.beta`` (TRL's 0:
none, and no reference pass).

A prompt is a conversation of the data up to its last assistant turn, rendered by the model's chat template with
the generation prompt, as inference renders it; that turn's answer is the ``reference`` the rewards may compare
with (``exact_match``, ``rouge_l``). A prompt-only row is a prompt as it is, its columns (``reference`` among them)
passed to every reward function; a column a row lacks reaches them as None."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from finetune.chat import render, text_messages
from finetune.data.canonical import Conversation, DataError, last_answer
from finetune.objectives import as_dataset


def _row(tokenizer: Any, c: Conversation, max_completion: int) -> dict[str, Any]:
    messages = text_messages(c)  # TRL renders the prompt itself, without tools
    if c.columns is not None:
        prompt, columns = messages, c.columns
    else:
        last = last_answer(messages)
        if last is None:
            raise DataError(f"{c.location}: objective=grpo takes conversations with an assistant answer (the "
                            "reference) or prompts")
        prompt, columns = messages[:last], {"reference": messages[last]["content"]}
    prompt_tokens = len(tokenizer.encode(render(tokenizer, prompt, add_generation_prompt=True),
                                         add_special_tokens=False))
    return {"prompt": prompt, **columns, "length": prompt_tokens + max_completion, "trained": max_completion}


def _dataset(rows: list[dict[str, Any]]) -> Any:
    """``rows`` as one dataset: every column on every row (None where a row lacks it)."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    return as_dataset([{name: row.get(name) for name in names} for row in rows])


def datasets(run: Any, tokenizer: Any, train: Iterable[Conversation], validation: Iterable[Conversation]
             ) -> tuple[Any, Any]:
    """The prompts with their columns (a conversation's: its answer as ``reference``); ``length`` and ``trained``
    are an answer's most, for the plan."""
    longest = run.objective.max_completion_length
    return (_dataset([_row(tokenizer, c, longest) for c in train]),
            _dataset([_row(tokenizer, c, longest) for c in validation]))


def end_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end an answer: the model's end-of-turn ids and the tokenizer's EOS."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def trainer(run: Any, model: Any, tokenizer: Any, arguments: dict[str, Any], train_set: Any, eval_set: Any,
            callbacks: list[Any]) -> Any:
    from trl import GRPOConfig, GRPOTrainer

    from finetune import rewards

    o = run.objective
    settings = {"beta": o.beta} if o.beta is not None else {}
    settings |= {"loss_type": o.loss_type} if o.loss_type is not None else {}
    # an evaluation batch holds whole groups of answers too
    arguments = {**arguments, "per_device_eval_batch_size": o.num_generations * max(1, run.train.batch_size //
                                                                                     o.num_generations)}
    # no dropout (TRL's default keeps it): the answers are the policy's own, and it scores them as it wrote them
    args = GRPOConfig(**arguments, **settings, num_generations=o.num_generations,
                      max_completion_length=o.max_completion_length, epsilon=o.epsilon, temperature=o.temperature,
                      disable_dropout=True, reward_weights=list(run.reward.weights) or None)
    functions = rewards.functions(run.reward, run.eval, end_ids(model, tokenizer), o.max_completion_length, run.seed)

    class Trainer(GRPOTrainer):
        def train(self, *args: Any, **kwargs: Any) -> Any:
            with rewards.serving(functions):  # a GGUF judge, served by llama.cpp for as long as training runs
                return super().train(*args, **kwargs)

    return Trainer(model=model, reward_funcs=functions, args=args, train_dataset=train_set, eval_dataset=eval_set,
                   processing_class=tokenizer, callbacks=callbacks)

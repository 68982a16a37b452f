"""The training loop the local backends share: transformers' ``Trainer`` with our batches and our loss.

Why not TRL's ``SFTTrainer``: it computes logits over the whole 49k-token vocabulary at every position and
per-step entropy and accuracy over them, although most positions carry no loss. Here the labels are ours
(``finetune.chat``: assistant turns with their end-of-turn token, or every token with ``train.loss_on=all``),
and the model is asked for logits only at positions that have a target (``logits_to_keep``), which saves the
largest matmul of a small model and its softmax. The loss is the token mean over the whole optimizer step (all
micro-batches and processes), so gradient accumulation does not change what is optimised.

Loss weights (an assistant message's ``weight``: LLaMA-Factory v1's ``loss_weight``, OpenAI's ``weight``) make it
the weighted token mean over the step: sum(w·ℓ) / sum(w) over its trained tokens, each token weighing its message's
weight — LLaMA-Factory v1's SFT loss (``(-log_probs * loss_weights).sum() / loss_weights.sum()``), kept exact over
the step rather than per micro-batch. Weights are relative: a turn of weight 0.5 counts half as much per token as one
of weight 1 in the same step, and a step whose tokens all weigh 0.5 trains as if they weighed 1; weights of 0 and 1
give the plain token mean. Batches then carry ``weights``, one per label; without any, nothing changes.

Batches: padded to the longest row (``attention_mask``), or with ``train.packing`` concatenated into one row
whose ``position_ids`` restart at every sample. transformers turns restarting positions into a block-diagonal
mask (SDPA, eager) or varlen kernels (flash-attention 2), so packed samples never attend to each other; each
sample's first token is never a target, as unpacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune.chat import IGNORE_INDEX


@dataclass(frozen=True)
class Batcher:
    """Rows of ``input_ids``/``labels`` → one micro-batch of tensors."""

    pad_id: int
    packing: bool

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        weighted = "weights" in rows[0]
        if self.packing:
            ids = [t for r in rows for t in r["input_ids"]]
            labels = [t for r in rows for t in [IGNORE_INDEX, *r["labels"][1:]]]
            positions = [p for r in rows for p in range(len(r["input_ids"]))]
            batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                     "position_ids": torch.tensor([positions])}
            if weighted:
                batch["weights"] = torch.tensor([[w for r in rows for w in [0.0, *r["weights"][1:]]]])
            return batch
        width = max(len(r["input_ids"]) for r in rows)

        def padded(values: list, fill: Any) -> list:
            return values + [fill] * (width - len(values))

        batch = {"input_ids": torch.tensor([padded(r["input_ids"], self.pad_id) for r in rows]),
                 "labels": torch.tensor([padded(r["labels"], IGNORE_INDEX) for r in rows]),
                 "attention_mask": torch.tensor([padded([1] * len(r["input_ids"]), 0) for r in rows])}
        if weighted:
            batch["weights"] = torch.tensor([padded(list(r["weights"]), 0.0) for r in rows])
        return batch


def trained_weights(inputs: dict[str, Any]) -> Any:
    """The loss weight of each next-token target of a weighted batch (0 where there is no target)."""
    import torch

    targets = inputs["labels"][:, 1:]
    return torch.where(targets != IGNORE_INDEX, inputs["weights"][:, 1:].float(), 0.0)


def token_loss_sum(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """(sum of the next-token losses over every labelled position, number of those positions); for a batch with
    ``weights``, (sum of the losses times their weights, sum of those weights). Logits are computed only at positions
    where some row of the batch has a target."""
    import torch

    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    forward = {k: v for k, v in inputs.items() if k not in ("labels", "weights")}
    logits = model(**forward, logits_to_keep=keep, use_cache=False).logits
    if "weights" not in inputs:
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets[:, keep].flatten(),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, (targets != IGNORE_INDEX).sum()
    weights = trained_weights(inputs)
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets[:, keep].flatten(),
                                               ignore_index=IGNORE_INDEX, reduction="none")
    return (losses * weights[:, keep].flatten()).sum(), weights.sum()


def make_trainer(**kwargs: Any) -> Any:
    """A ``transformers.Trainer`` whose loss is :func:`token_loss_sum` over the optimizer step's labelled tokens."""
    import torch
    from transformers import Trainer

    class LabelledTokenTrainer(Trainer):
        loss_is_scaled_for_ga = True  # divided by the step's token count below, not by the micro-batch count

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.model_accepts_loss_kwargs = True  # so the Trainer counts the step's labelled tokens for us

        def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
            """The step's micro-batches and their labelled tokens (the Trainer's count) or, for weighted batches,
            the sum of those tokens' weights, over every process alike."""
            batches, count = super().get_batch_samples(epoch_iterator, num_batches, device)
            if count is None or not batches or "weights" not in batches[0]:
                return batches, count
            total = sum(trained_weights(batch).sum() for batch in batches).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                total = self.accelerator.gather(total).sum()
            return batches, total

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            total, count = token_loss_sum(model, inputs)
            if num_items_in_batch is None:  # a weighted count may be below 1; only none at all is replaced
                loss = total / torch.where(count > 0, count, torch.ones_like(count))
            else:  # the whole step's count, summed over processes, whose gradients DDP then averages
                loss = total / num_items_in_batch * self.accelerator.num_processes
            return (loss, {}) if return_outputs else loss  # eval asks for outputs; only the loss is used

    return LabelledTokenTrainer(**kwargs)


def progress_bar() -> Any:
    """One bar for the run: step, loss, learning rate, real tokens/s and the ETA; replaces the Trainer's bar and
    its printed metric dicts."""
    import time

    from transformers import TrainerCallback

    from finetune.progress import Bar

    class ProgressBar(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None
            self.start = (0.0, 0)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                self.bar = Bar(total=state.max_steps, initial=state.global_step, desc="train", unit="step")
                self.start = (time.perf_counter(), state.num_input_tokens_seen)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any):
            if self.bar is None or not logs:
                return
            seconds = time.perf_counter() - self.start[0]
            shown = {"loss": logs.get("loss"), "eval": logs.get("eval_loss"), "lr": logs.get("learning_rate"),
                     # GRPO: the rewards' mean and spread, the KL to the model before training, the answers' length
                     "reward": logs.get("reward"), "±": logs.get("reward_std"), "kl": logs.get("kl"),
                     "len": logs.get("completions/mean_length")}
            postfix = {k: f"{v:.3g}" for k, v in shown.items() if v is not None}
            if seconds > 0:
                postfix["tok/s"] = f"{(state.num_input_tokens_seen - self.start[1]) / seconds:.0f}"
            self.bar.set_postfix(postfix, refresh=False)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.bar is not None:
                self.bar.close()

    return ProgressBar()


def jsonl_log(path: Any, resume_step: int) -> Any:
    """Every logged train and eval figure, one JSON line each (``loss.jsonl``); lines after the checkpoint a
    resumed run starts from are dropped first, so no step appears twice."""
    import json

    from transformers import TrainerCallback

    if path.exists():
        kept = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= resume_step]
        path.write_text("".join(ln + "\n" for ln in kept))

    class JsonlLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any):
            if logs and state.is_world_process_zero:
                record = {"step": state.global_step, "epoch": state.epoch, "tokens_seen": state.num_input_tokens_seen,
                          **logs}
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")

    return JsonlLog()

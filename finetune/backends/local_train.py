"""The local backends' training, in this process: the validated splits tokenized with the model's chat template,
the model the backend loads, and the objective's trainer (``finetune.objectives``: our own loop for ``sft``, TRL's
trainers for preference pairs and rewards), with the same arguments, callbacks and checkpoints. Before the first step
the plan (``finetune.plan``) is printed and saved; afterwards the measured peak memory sits beside its estimate.
Checkpoints go to ``checkpoints/``; an interrupted run resumes from the last one and ends bit-identical to an
uninterrupted one (same seed, CPU). Every logged figure goes to ``loss.jsonl`` and TensorBoard, the curves to
``training_curves.png``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune import curves, distributed, methods, plan
from finetune.config import RunConfig
from finetune.data.canonical import read_split
from finetune.models import load_tokenizer, resolve_model_source, save_tokenizer, torch_dtype
from finetune.objectives import OBJECTIVES
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json
from finetune.stages.rejected import training_split
from finetune.sweep import trial
from finetune.training import jsonl_log, progress_bar

log = logging.getLogger(__name__)


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint: the Trainer writes trainer_state.json last, so a checkpoint cut off
    mid-save has none and is passed over."""
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
                   key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def _tokens_seen(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["num_input_tokens_seen"])


def _drop_incomplete_checkpoints(checkpoints: Path) -> None:
    """A checkpoint cut off mid-save (killed, disk full) must not stay under a final name."""
    for path in checkpoints.glob("checkpoint-*"):
        if not (path / "trainer_state.json").is_file():
            shutil.rmtree(path, ignore_errors=True)


def _arguments(run: RunConfig, checkpoints: Path, has_eval: bool) -> dict[str, Any]:
    """transformers' ``TrainingArguments`` for the run, as keywords: each objective's trainer takes its own kind."""
    import torch

    t = run.train
    dtype = torch_dtype(run.model.dtype)
    keep_best = has_eval and (t.keep_best or t.early_stopping_patience is not None)
    return dict(
        output_dir=str(checkpoints),
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr if t.lr is not None else methods.METHODS[run.method.name].lr,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5 reads a value below 1 as a ratio of the steps
        weight_decay=t.weight_decay,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps or t.save_steps,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        greater_is_better=False if keep_best else None,
        prediction_loss_only=True,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        seed=run.seed,
        data_seed=run.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        # packed rows have no padding and no attention mask: every token counts
        include_num_input_tokens_seen="all" if t.packing else "non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # also what makes accelerate see CPU workers as one DDP group
        **distributed.trainer_arguments(run),
    )


def tensorboard_writer(folder: Path) -> Any:
    """TensorBoard's writer, its thread waking every 2 s rather than 120: a Ctrl-C that lands inside the queue's
    notify loses the thread's next wake-up (CPython gh-92530's stale waiter), and closing the writer then waited out
    the whole flush interval."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder), flush_secs=2)


def _callbacks(run: RunConfig, ctx: StageContext, main: bool, resume_step: int, has_eval: bool
               ) -> tuple[list[Any], Any]:
    """Early stopping on every process; the bar, the loss log, TensorBoard (returned to be closed) and, in an
    Optuna search, the trial's pruning on the main one."""
    from transformers import EarlyStoppingCallback

    callbacks: list[Any] = []
    if run.train.early_stopping_patience is not None and has_eval:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=run.train.early_stopping_patience))
    if not main:
        return callbacks, None
    from transformers.integrations import TensorBoardCallback

    tensorboard = tensorboard_writer(ctx.out_dir / "tensorboard")
    callbacks += [TensorBoardCallback(tensorboard), jsonl_log(ctx.out_dir / "loss.jsonl", resume_step),
                  progress_bar()]
    # One process only: a pruned rank 0 would leave the other ranks waiting at their next collective.
    if has_eval and distributed.world_size(run) == 1 and (pruning := trial.pruning_callback(ctx.run_dir)):
        callbacks.append(pruning)  # last: the eval loss is logged before a pruned trial stops
    return callbacks, tensorboard


def _end_of_turn_ids(model: Any) -> tuple[Any, Any]:
    """The EOS ids of the model's config and generation config: its end of turn, where generation stops."""
    generation = getattr(model, "generation_config", None)
    return model.config.eos_token_id, getattr(generation, "eos_token_id", None)


def _keep_end_of_turn_ids(model: Any, ids: tuple[Any, Any]) -> None:
    """Put back the EOS ids training changed: transformers' Trainer (TRL's too) sets them to the tokenizer's EOS
    when it starts, which for an instruct model whose tokenizer's EOS is not its end of turn (a Llama 3 tokenizer's
    <|end_of_text|> under <|eot_id|>) would save a fully fine-tuned model that never stops at the end of its turn."""
    config_ids, generation_ids = ids
    if model.config.eos_token_id != config_ids:
        log.info("keeping the model's eos_token_id %s (the trainer set %s)", config_ids, model.config.eos_token_id)
        model.config.eos_token_id = config_ids
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.eos_token_id != generation_ids:
        generation.eos_token_id = generation_ids


def train_here(run: RunConfig, ctx: StageContext, load: Callable[[RunConfig], Any]) -> dict[str, str]:
    """Train the model ``load`` gives in this process (one of several workers, or alone); only the main process
    writes files."""
    from transformers import PrinterCallback, set_seed

    t = run.train
    set_seed(run.seed)  # the adapter's initial weights are drawn when it is attached, before the Trainer exists
    tokenizer = load_tokenizer(resolve_model_source(run.model), run.model)
    objective = OBJECTIVES[run.objective.name].implementation()
    train_set, eval_set = objective.datasets(run, tokenizer, read_split(training_split(ctx, "train")),
                                             read_split(training_split(ctx, "validation")))
    before_model = plan.process_bytes()
    model = load(run)
    plan.release_freed_memory()
    main = distributed.is_main_process()
    checkpoints = ctx.out_dir / "checkpoints"
    if main:
        _drop_incomplete_checkpoints(checkpoints)
    resume_from = last_checkpoint(checkpoints) if ctx.resume else None
    resume_step = int(resume_from.name.split("-")[1]) if resume_from else 0
    tokens_before = _tokens_seen(resume_from) if resume_from else 0  # read now: checkpoints rotate away
    callbacks, tensorboard = _callbacks(run, ctx, main, resume_step, eval_set is not None)
    end_of_turn = _end_of_turn_ids(model)
    trainer = objective.trainer(run, model, tokenizer, _arguments(run, checkpoints, eval_set is not None),
                                train_set, eval_set, callbacks)
    args = trainer.args
    trainer.remove_callback(PrinterCallback)
    if main:
        the_plan = plan.make(run, model, train_set, trainer.accelerator.num_processes, before_model)
        atomic_write_json(ctx.out_dir / "plan.json", the_plan)
        print(plan.text(the_plan))
    if resume_from:
        log.info("resuming from %s", resume_from)
    peak = plan.PeakMemory()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BaseException:
        if main:
            _drop_incomplete_checkpoints(checkpoints)
        raise
    finally:
        if tensorboard is not None:
            tensorboard.close()
    measured = peak.read()
    _keep_end_of_turn_ids(model, end_of_turn)
    out_name = "adapter" if methods.METHODS[run.method.name].adapter else "model"
    trainer.save_model(str(ctx.out_dir / out_name))  # the Trainer saves from the main process only
    # …with training_args.bin, a pickle that holds this run's paths: the folder would differ in every run directory,
    # and a pickle is no format to hand on. The settings are in .hydra/ and the manifests.
    (ctx.out_dir / out_name / "training_args.bin").unlink(missing_ok=True)
    artifacts = {out_name: out_name, "metrics": "metrics.json", "loss_log": "loss.jsonl",
                 "tensorboard": "tensorboard", "plan": "plan.json", "curves": "training_curves.png"}
    if not main:
        return artifacts
    save_tokenizer(tokenizer, resolve_model_source(run.model), run.model, ctx.out_dir / out_name)
    train_log, eval_log = curves.read_log(ctx.out_dir / "loss.jsonl")
    curves.plot(train_log, eval_log, ctx.out_dir / "training_curves.png")
    overfit = curves.overfitting(train_log, eval_log, t.overfit_ratio, t.overfit_rising_evals)
    state = trainer.state
    tokens = int(state.num_input_tokens_seen)
    # this process's share: a resumed run's clock starts at the checkpoint; evaluation is not training time
    runtime = result.metrics.get("train_runtime") or 0.0
    eval_s = sum(r.get("eval_runtime", 0.0) for r in eval_log if r["step"] > resume_step)
    tokens_now = tokens - tokens_before
    metrics = {
        "method": run.method.name,
        "objective": run.objective.name,
        "backend": run.backend.name,
        "processes": trainer.accelerator.num_processes,
        "lr": args.learning_rate,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "max_grad_norm": args.max_grad_norm,
        "base_model": resolve_model_source(run.model),
        "dtype": str(torch_dtype(run.model.dtype)).removeprefix("torch."),
        "global_step": state.global_step,
        "resumed_from_step": resume_step,
        "stopped_early": state.global_step < state.max_steps,
        "best_step": state.best_global_step if args.load_best_model_at_end else None,
        "best_eval_loss": state.best_metric if args.load_best_model_at_end else None,
        "train_loss": result.training_loss,
        "last_eval_loss": eval_log[-1]["eval_loss"] if eval_log else None,
        "train_runtime_s": round(runtime, 2),
        "eval_runtime_s": round(eval_s, 2),
        "input_tokens_seen": tokens,
        "tokens_per_s": round(tokens_now / (runtime - eval_s), 1) if runtime > eval_s else None,
        "trainable_parameters": the_plan["trainable_parameters"],
        "overfitting": overfit,
        "memory": plan.compare(the_plan, measured),
    }
    atomic_write_json(ctx.out_dir / "metrics.json", metrics)
    log.info("trained %d steps, %d tokens at %s tokens/s, final loss %.4f; peak memory %s",
             state.global_step, tokens, metrics["tokens_per_s"], result.training_loss,
             plan.memory_line(metrics["memory"]))
    if overfit["flag"]:
        log.warning("over-fitting: %s", "; ".join(overfit["reasons"]))
    return artifacts

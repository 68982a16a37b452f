"""train: fine-tune with transformers + peft + trl (backend ``hf``) on the validated training split.

The method (``full``, ``lora`` with optional rsLoRA, ``dora``, ``qlora`` — NF4 through bitsandbytes, on CPU
too) comes from the ``finetune.methods`` registry. Labels come from ``finetune.chat`` (assistant turns only,
end-of-turn included). Checkpoints go to ``checkpoints/``; an interrupted run resumes from the last one.
The loss is logged per step to ``loss.jsonl`` and to TensorBoard under ``tensorboard/``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from finetune import methods
from finetune.chat import tokenize
from finetune.config import RunConfig
from finetune.data.canonical import read_split
from finetune.errors import UserError
from finetune.models import load_config, load_model, load_tokenizer, resolve_model_source, torch_dtype
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json

log = logging.getLogger(__name__)


class TrainError(UserError, RuntimeError):
    """The requested training cannot run here; the message says why and what to use instead."""


def _tokenized(tokenizer: Any, split: Path) -> Any:
    from datasets import Dataset

    rows = []
    for row in read_split(split):
        t = tokenize(tokenizer, row)
        rows.append({"input_ids": t.input_ids, "labels": t.labels})
    return Dataset.from_list(rows) if rows else None


def _loss_logger(path: Path, resume_step: int) -> Any:
    from transformers import TrainerCallback

    if path.exists():  # drop lines logged after the checkpoint we resume from, so no step appears twice
        kept = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= resume_step]
        path.write_text("".join(ln + "\n" for ln in kept))

    class JsonlLossLogger(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any):
            if logs and state.is_world_process_zero:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

    return JsonlLossLogger()


def _last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint: the Trainer writes trainer_state.json last, so a checkpoint cut off
    mid-save has none and is passed over."""
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
                   key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def _drop_incomplete_checkpoints(checkpoints: Path) -> None:
    """A checkpoint cut off mid-save (killed, disk full) must not stay under a final name."""
    for path in checkpoints.glob("checkpoint-*"):
        if not (path / "trainer_state.json").is_file():
            shutil.rmtree(path, ignore_errors=True)


def _check_target_modules(run: RunConfig) -> None:
    """Every name in ``method.target_modules`` must match a layer of the model, as peft matches them (the
    full name or its last parts); the model is built on the meta device, so this costs no memory."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = load_config(run.model)
    targets = methods.target_modules(run.method.target_modules, config.model_type)
    if targets == "all-linear":
        return
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=run.model.trust_remote_code)
    names = [name for name, _ in model.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith(f".{target}") for name in names):
            linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                             if isinstance(module, torch.nn.Linear)})
            raise TrainError(
                f"method.target_modules: {target!r} matches no layer of {type(model).__name__}; "
                f"its linear layers are {', '.join(linear)}"
            )


def check(run: RunConfig) -> None:
    """Refuse, before any stage runs, a method this machine cannot train or layers the model lacks."""
    method = methods.METHODS[run.method.name]
    methods.check_available(method, run.train.optimizer)
    if method.adapter:
        _check_target_modules(run)


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback
    from trl import SFTConfig, SFTTrainer

    source = resolve_model_source(run.model)
    tokenizer = load_tokenizer(source, run.model)
    dtype = torch_dtype(run.model.dtype)
    method = methods.METHODS[run.method.name]
    model = methods.prepare(method, load_model(source, run.model, **methods.load_kwargs(method, dtype)),
                            run.train.gradient_checkpointing)
    train_set = _tokenized(tokenizer, ctx.input("validate", "train"))
    eval_set = _tokenized(tokenizer, ctx.input("validate", "validation"))
    t = run.train
    checkpoints = ctx.out_dir / "checkpoints"
    _drop_incomplete_checkpoints(checkpoints)
    resume_from = _last_checkpoint(checkpoints) if ctx.resume else None
    resume_step = int(resume_from.name.split("-")[1]) if resume_from else 0
    args = SFTConfig(
        output_dir=str(checkpoints),
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr if t.lr is not None else method.lr,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_length=t.max_seq_len,
        gradient_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if eval_set is not None else "no",
        eval_steps=t.eval_steps or t.save_steps,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        seed=run.seed,
        data_seed=run.seed,
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )
    peft_config = methods.peft_config(method, run.method, model.config.model_type)
    tensorboard = SummaryWriter(log_dir=str(ctx.out_dir / "tensorboard"))
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[TensorBoardCallback(tensorboard), _loss_logger(ctx.out_dir / "loss.jsonl", resume_step)],
    )
    methods.adapter_in_compute_dtype(method, trainer.model, dtype)
    if resume_from:
        log.info("resuming from %s", resume_from)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BaseException:
        _drop_incomplete_checkpoints(checkpoints)
        raise
    finally:
        tensorboard.close()

    out_name = "adapter" if method.adapter else "model"
    trainer.save_model(str(ctx.out_dir / out_name))
    tokenizer.save_pretrained(str(ctx.out_dir / out_name))
    state = trainer.state
    tokens = int(state.num_input_tokens_seen)
    metrics = {
        "method": run.method.name,
        "lr": args.learning_rate,
        "optimizer": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
        "max_grad_norm": args.max_grad_norm,
        "base_model": source,
        "dtype": str(dtype).removeprefix("torch."),
        "global_step": state.global_step,
        "resumed_from_step": resume_step,
        "train_loss": result.training_loss,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
        "input_tokens_seen": tokens,
        "tokens_per_s": round(tokens / result.metrics["train_runtime"], 1) if result.metrics.get("train_runtime")
        else None,
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }
    atomic_write_json(ctx.out_dir / "metrics.json", metrics)
    log.info("trained %d steps, %d tokens at %s tokens/s, final loss %.4f",
             state.global_step, tokens, metrics["tokens_per_s"], result.training_loss)
    return {out_name: out_name, "metrics": "metrics.json", "loss_log": "loss.jsonl", "tensorboard": "tensorboard"}

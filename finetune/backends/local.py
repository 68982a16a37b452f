"""The local backends (``hf``, ``unsloth``): they differ in how the model loads and what each needs here; the
checks, the config keys, the training (``local_train``, in this process or in workers an engine of
``finetune.launch`` starts) and the models asked in process are shared."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune import distributed, launch, methods, rewards
from finetune.backends.base import Asked
from finetune.config import TrainConfig
from finetune.errors import UserError
from finetune.models import load_config, load_tokenizer, resolve_model_source
from finetune.objectives import OBJECTIVES

# Where the workers run, not what they train: a rerun on another engine or restart budget resumes the same training
PLACEMENT = ("engine", "max_restarts", "ray_address")
# How a step's rows are split among the workers: only the whole, train.rows_per_step, is what they train, so a rerun
# on another node count with the same global batch resumes too (where the strategy's checkpoints allow: config_keys)
SPLIT = ("grad_accum", "num_processes", "nnodes")
# What local training reads: a change to one of them trains again
CONFIG_KEYS = ("model", "method", "backend.name", "objective", "reward",
               *(f"train.{f.name}" for f in dataclasses.fields(TrainConfig) if f.name not in PLACEMENT + SPLIT),
               "train.rows_per_step", "seed")


class TrainError(UserError, RuntimeError):
    """The requested training cannot run here; the message says why and what to use instead."""


def _check_target_modules(run: Any) -> None:
    """Every name in ``method.target_modules`` must match a layer of the model (of its language model, for a
    vision-language model: ``methods.target_modules``), as peft matches them (the full name or its last parts);
    the model is built on the meta device, so this costs no memory."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = load_config(run.model)
    targets = methods.target_names(run.method.target_modules, config)
    if targets == "all-linear":
        return
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=run.model.trust_remote_code)
    names = [name for name, _ in model.named_modules()]
    if methods.vision_language(config):
        names = [name for name in names if methods.LANGUAGE_MODEL in name]
    for target in targets:
        if not any(name == target or name.endswith(f".{target}") for name in names):
            linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                             if isinstance(module, torch.nn.Linear)})
            raise TrainError(
                f"method.target_modules: {target!r} matches no layer of {type(model).__name__}; "
                f"its linear layers are {', '.join(linear)}"
            )


@dataclass(frozen=True)
class LocalBackend:
    load: Callable[[Any], Any]  # RunConfig -> the model to train, adapter attached
    needs: Callable[[Any], None]  # RunConfig -> None: refuses what this backend itself lacks here

    def check(self, run: Any) -> None:
        """Refuse, before any stage runs, what this machine cannot train, layers the model lacks, or a reward
        function that cannot be called."""
        self.needs(run)
        distributed.check(run)
        if launch.needed(run):
            launch.engine(run).check(run)
        if OBJECTIVES[run.objective.name].rollouts:
            rewards.check(run.reward, run.eval)
        method = methods.METHODS[run.method.name]
        methods.check_available(method, run.train.optimizer)
        if method.adapter:
            _check_target_modules(run)

    def config_keys(self, run: Any) -> tuple[str, ...]:
        """``CONFIG_KEYS``; with a strategy that shards the optimizer state across the workers (FSDP, DeepSpeed),
        whose checkpoints load only on as many workers, also their count."""
        if distributed.STRATEGIES[run.train.distributed].sharded:
            return (*CONFIG_KEYS, "train.num_processes", "train.nnodes")
        return CONFIG_KEYS

    def train(self, run: Any, ctx: Any) -> dict[str, str]:
        """In this process, or in the workers of ``train.engine``, which each come back here."""
        if launch.needed(run) and not distributed.in_worker():
            return launch.engine(run).launch(run, ctx)
        from finetune.backends.local_train import train_here

        return train_here(run, ctx, self.load)

    def generators(self, run: Any, ctx: Any) -> dict[str, Asked]:
        """The base model and the merged tuned one in this process, each loaded when first asked, with the tuned
        model's tokenizer (its chat template is the one training used)."""
        from finetune.generate.hf import InProcessModel

        merged = str(ctx.input("merge", "model"))
        tokenizer = load_tokenizer(merged, run.model)
        sources = {"base": resolve_model_source(run.model), "tuned": merged}
        return {who: Asked(InProcessModel(source, run.model, tokenizer, who, run.eval.batch_size), source,
                           "transformers") for who, source in sources.items()}

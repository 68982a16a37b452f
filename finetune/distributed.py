"""Training in several processes: ``train.num_processes=N`` workers on each of ``train.nnodes`` nodes, started by
the engine ``train.engine`` chooses (``finetune.launch``), each running the same train stage; the Trainer (through
accelerate) makes it data-parallel.

``train.distributed``: ``ddp`` (CPU with gloo, CUDA with nccl), ``fsdp`` (parameters, gradients and optimizer
state sharded across GPUs) or ``deepspeed`` (ZeRO stage 2, ``conf/deepspeed/zero2.json``); the last two need CUDA.
The global batch is ``batch_size × grad_accum × num_processes × nnodes``, and the loss is the token mean over all
of it (``finetune.training``), so N processes optimise what one process with N× the accumulation would. Only global
rank 0 writes the plan, logs, curves, metrics and the saved model; checkpoints come from the Trainer's main process.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

from finetune.errors import UserError
from finetune.paths import CONF_DIR


@dataclass(frozen=True)
class Strategy:
    """One ``train.distributed`` choice: what it needs here, and what ``TrainingArguments`` take for it."""

    cuda_only: bool  # shards the model across CUDA GPUs
    package: str | None = None  # an optional dependency it runs on
    arguments: dict[str, Any] = field(default_factory=dict)
    sharded: tuple[str, ...] = ()  # the plan's memory parts split across the processes (each holds 1/N)


STRATEGIES: dict[str, Strategy] = {
    "ddp": Strategy(cuda_only=False),
    "fsdp": Strategy(cuda_only=True, arguments={"fsdp": "full_shard auto_wrap",
                                                "fsdp_config": {"use_orig_params": True}},
                     sharded=("weights", "gradients", "optimizer")),
    "deepspeed": Strategy(cuda_only=True, package="deepspeed",  # ZeRO stage 2: gradients and optimizer state
                          arguments={"deepspeed": str(CONF_DIR / "deepspeed" / "zero2.json")},
                          sharded=("gradients", "optimizer")),
}


class DistributedError(UserError, RuntimeError):
    """Several processes cannot train here, or a worker failed."""


def check(run: Any) -> None:
    import importlib.util

    import torch

    from finetune.launch import ENGINES

    t = run.train
    if world_size(run) == 1 or not ENGINES[t.engine].devices_here:  # a Ray cluster's GPUs are not this machine's
        return
    strategy = STRATEGIES[t.distributed]
    if strategy.cuda_only and not torch.cuda.is_available():
        raise DistributedError(f"train.distributed={t.distributed} shards the model across CUDA GPUs and none is "
                               "visible here; use train.distributed=ddp (CPU processes with gloo)")
    if torch.cuda.is_available() and torch.cuda.device_count() < t.num_processes:
        raise DistributedError(f"train.num_processes={t.num_processes}: this machine has "
                               f"{torch.cuda.device_count()} CUDA GPU(s); one process per GPU")
    if strategy.package and importlib.util.find_spec(strategy.package) is None:
        raise DistributedError(f"train.distributed={t.distributed}: {strategy.package} is not installed; pip install "
                               f"{strategy.package}")


def in_worker() -> bool:
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size(run: Any) -> int:
    """The workers of the run: ``train.num_processes`` on each of ``train.nnodes`` nodes."""
    return run.train.num_processes * run.train.nnodes


def trainer_arguments(run: Any) -> dict[str, Any]:
    """What ``TrainingArguments`` needs for the chosen strategy (nothing for one process)."""
    import torch

    t = run.train
    if world_size(run) == 1:
        return {}
    return {"ddp_backend": "nccl" if torch.cuda.is_available() else "gloo", "ddp_find_unused_parameters": False,
            **copy.deepcopy(STRATEGIES[t.distributed].arguments)}

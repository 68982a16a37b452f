"""Training in several processes: ``train.num_processes=N`` starts N workers through ``torch.distributed.run``,
each running the same train stage; the Trainer (through accelerate) makes it data-parallel.

``train.distributed``: ``ddp`` (CPU with gloo, CUDA with nccl), ``fsdp`` (parameters, gradients and optimizer
state sharded across GPUs) or ``deepspeed`` (ZeRO stage 2, ``conf/deepspeed/zero2.json``); the last two need CUDA.
The global batch is ``batch_size × grad_accum × num_processes``, and the loss is the token mean over all of it
(``finetune.training``), so N processes optimise what one process with N× the accumulation would. Only rank 0
writes the plan, logs, curves, metrics and the saved model; checkpoints come from the Trainer's main process.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from finetune.errors import UserError
from finetune.paths import CONF_DIR

LAUNCH_FILE = ".launch.json"


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

    t = run.train
    if t.num_processes == 1:
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


def trainer_arguments(run: Any) -> dict[str, Any]:
    """What ``TrainingArguments`` needs for the chosen strategy (nothing for one process)."""
    import torch

    t = run.train
    if t.num_processes == 1:
        return {}
    return {"ddp_backend": "nccl" if torch.cuda.is_available() else "gloo", "ddp_find_unused_parameters": False,
            **copy.deepcopy(STRATEGIES[t.distributed].arguments)}


def launch(run: Any, ctx: Any) -> dict[str, str]:
    """Run the train stage in ``train.num_processes`` workers and return rank 0's artifacts."""
    n = run.train.num_processes
    spec = ctx.out_dir / LAUNCH_FILE
    spec.write_text(json.dumps({
        "run": dataclasses.asdict(run),
        "context": {"run_dir": str(ctx.run_dir), "out_dir": str(ctx.out_dir), "resume": ctx.resume,
                    "inputs": {stage: {k: str(v) for k, v in a.items()} for stage, a in ctx.inputs.items()}},
    }), encoding="utf-8")
    # CPU workers share the cores instead of each taking all of them
    threads = max(1, (os.cpu_count() or 1) // n)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "finetune.worker", str(spec)]
    try:
        code = subprocess.run(command, env=env).returncode
    finally:
        spec.unlink(missing_ok=True)
    if code:
        raise DistributedError(f"train: a worker of {n} processes failed (exit {code}); its error is printed above")
    artifacts = ctx.out_dir / "artifacts.json"
    try:
        return json.loads(artifacts.read_text())
    finally:
        artifacts.unlink()

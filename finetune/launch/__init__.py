"""Engines that start the training workers, chosen by ``train.engine``: ``torchrun`` (``torch.distributed.run`` on
this node, and on ``train.nnodes`` nodes with c10d rendezvous) or ``ray`` (a Ray Train ``TorchTrainer`` on a Ray
cluster). Each module has ``check(run)`` (refuse what cannot start here, before any stage runs) and ``launch(run,
ctx) -> artifacts`` (run the train stage in its workers; rank 0's artifacts come back). Every worker runs
``finetune.worker``'s ``train_in_worker``: the same train stage, checkpoints, resume and files as one process.

Light on purpose: ``finetune.config`` takes the choices from ``ENGINES``; an engine's module is imported when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Engine:
    module: str  # holds check(run) and launch(run, ctx)
    devices_here: bool = True  # the workers use this machine's GPUs (torchrun), not a cluster's (ray)
    # train.nnodes > 1: every node runs the same command, and the others join node 0's training (the module's
    # node_rank and join); ray places its workers on the cluster's nodes itself
    nodes_join: bool = True
    one_in_process: bool = True  # one worker on one node trains in the command's own process (ray: on the cluster)


ENGINES: dict[str, Engine] = {
    "torchrun": Engine("finetune.launch.torchrun"),
    "ray": Engine("finetune.launch.ray_train", devices_here=False, nodes_join=False, one_in_process=False),
}


def engine(run: Any) -> Any:
    """The chosen engine's module."""
    return importlib.import_module(ENGINES[run.train.engine].module)


def needed(run: Any) -> bool:
    """Whether the train stage runs in workers an engine starts, rather than in this process."""
    t = run.train
    return t.num_processes > 1 or t.nnodes > 1 or not ENGINES[t.engine].one_in_process


def joins(run: Any) -> bool:
    """Whether this process is a node other than the first of a several-node run, which only joins the training
    (``engine(run).join(run)``) while the first node runs the stage graph."""
    if run.train.nnodes == 1 or not ENGINES[run.train.engine].nodes_join:
        return False
    return engine(run).node_rank(run) > 0

"""``train.engine=torchrun``: ``torch.distributed.run`` starts ``train.num_processes`` workers on this node, and with
``train.nnodes`` > 1 one agent per node meets the others through c10d rendezvous on the first node.

Several nodes run the same command (``srun``, SkyPilot's ``run``, or by hand with ``NODE_RANK``): node 0 runs the
stage graph and, at the train stage, its agent hosts the rendezvous; every other node only joins the training
(``join``), its workers taking the run and its inputs from node 0's over the rendezvous store. The run folder must be
on a file system every node sees (checkpoints are read back by every worker on resume). Only global rank 0 writes.

Which node this is and where node 0 listens come from the environment: ``NODE_RANK`` and ``MASTER_ADDR`` /
``MASTER_PORT`` where set, else SkyPilot's (``SKYPILOT_NODE_RANK``, ``SKYPILOT_NODE_IPS``), else Slurm's
(``SLURM_NODEID``, ``SLURM_JOB_NODELIST``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from finetune.distributed import DistributedError
from finetune.launch import nodes
from finetune.launch import spec as worker_spec
from finetune.pipeline.manifest import atomic_write_json

SPEC_FILE = ".launch.json"
DEFAULT_PORT = 29400
NODE_WAIT_S = 3600  # how long the other nodes wait for node 0 to reach its train stage (validation comes first)


def check(run: Any) -> None:
    if run.train.nnodes > 1:
        node_rank(run)
        rendezvous_endpoint()


def node_rank(run: Any) -> int:
    """This node's place among ``train.nnodes``: 0 runs the stage graph."""
    for name in ("NODE_RANK", "SKYPILOT_NODE_RANK", "SLURM_NODEID"):
        if (value := os.environ.get(name)) is not None:
            if not value.isdigit() or int(value) >= run.train.nnodes:
                raise DistributedError(f"train.nnodes={run.train.nnodes}: {name}={value!r}; expected a node rank "
                                       f"from 0 to {run.train.nnodes - 1}")
            return int(value)
    raise DistributedError(f"train.nnodes={run.train.nnodes}: which node this is is unknown; set NODE_RANK (0 on the "
                           "node that runs the pipeline, 1… on the others), or run under Slurm or SkyPilot")


def rendezvous_endpoint() -> str:
    """``host:port`` of node 0, where the agents meet."""
    port = os.environ.get("MASTER_PORT", str(DEFAULT_PORT))
    if host := os.environ.get("MASTER_ADDR"):
        return f"{host}:{port}"
    if ips := os.environ.get("SKYPILOT_NODE_IPS", "").split():
        return f"{ips[0]}:{port}"
    if nodes := os.environ.get("SLURM_JOB_NODELIST"):
        return f"{first_slurm_host(nodes)}:{port}"
    raise DistributedError("train.nnodes > 1: where node 0 listens is unknown; set MASTER_ADDR (node 0's address) "
                           "and optionally MASTER_PORT, or run under Slurm or SkyPilot")


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[03-05,9],cpu1`` → ``gpu03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\],-]+))?", nodelist)
    if not match:
        raise DistributedError(f"SLURM_JOB_NODELIST={nodelist!r}: expected a Slurm node list (host[01-04],other)")
    return match.group(1) + (match.group(2) or "")


def _agent(run: Any, node: int, worker: list[str]) -> list[str]:
    """The ``torch.distributed.run`` command of this node's agent."""
    t = run.train
    if t.nnodes == 1:
        where = ["--standalone"]
    else:
        # node 0 hosts the rendezvous store; the others wait for it as long as node 0's earlier stages may take
        where = [f"--nnodes={t.nnodes}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={rendezvous_endpoint()}", "--rdzv-id=finetune",
                 f"--rdzv-conf=join_timeout={NODE_WAIT_S},read_timeout={NODE_WAIT_S},is_host={int(node == 0)}"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={t.num_processes}",
            f"--max-restarts={t.max_restarts}", "-m", "finetune.worker", *worker]


def _environment(run: Any, node: int, failure_file: Path) -> dict[str, str]:
    # CPU workers share the cores instead of each taking all of them
    threads = max(1, (os.cpu_count() or 1) // run.train.num_processes)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
           "FINETUNE_FAILURE_FILE": str(failure_file)}
    if run.train.nnodes > 1:  # for finetune.launch.nodes in the workers
        env |= {"FINETUNE_RDZV_ENDPOINT": rendezvous_endpoint(), "FINETUNE_NODE_RANK": str(node)}
    return env


def _run_agent(run: Any, node: int, worker: list[str]) -> None:
    """This node's agent, to its end; a failure is one line: a worker's refusal or the node that stopped, else the
    worker that failed."""
    with tempfile.TemporaryDirectory(prefix="finetune-node-") as scratch:
        failure_file = Path(scratch) / "failure"
        code = subprocess.run(_agent(run, node, worker), env=_environment(run, node, failure_file)).returncode
        if not code:
            return
        if line := nodes.failure_line(failure_file):
            raise DistributedError(line)
    t = run.train
    where = f" on node {node} of {t.nnodes}" if t.nnodes > 1 else ""
    raise DistributedError(f"train: a worker of {t.num_processes} processes{where} failed (exit {code}); its error "
                           "is printed above")


def launch(run: Any, ctx: Any) -> dict[str, str]:
    """Run the train stage in this node's workers (node 0's, with several nodes) and return rank 0's artifacts, which
    it wrote to the run folder wherever it ran."""
    node = node_rank(run) if run.train.nnodes > 1 else 0
    spec = ctx.out_dir / SPEC_FILE
    atomic_write_json(spec, worker_spec.to_json(run, ctx))
    try:
        _run_agent(run, node, [str(spec)])
    finally:
        spec.unlink(missing_ok=True)
    return worker_spec.take_back(ctx.out_dir)


def join(run: Any) -> None:
    """On a node other than 0: start this node's workers, which train the run node 0 started (refused if this node's
    command composed other settings), and return when they finish."""
    _run_agent(run, node_rank(run), ["--join", json.dumps(dataclasses.asdict(run))])

"""What the workers of a several-node torchrun run tell each other through the rendezvous store on node 0: the run
(node 0's workers hold it; the other nodes' take it, and refuse it if their own command says otherwise), and that
each node is alive, so that a worker whose peer vanished (a node killed, or lost from the network) names that node
instead of a socket error. And what a worker tells its driver: a one-line refusal, in a file.

Everything goes through the c10d rendezvous store that node 0's agent hosts (``--rdzv-conf is_host=1``), whatever
global ranks the rendezvous hands out: its address comes in ``FINETUNE_RDZV_ENDPOINT``, this node's rank in
``FINETUNE_NODE_RANK``; the driver's file is ``FINETUNE_FAILURE_FILE``.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

SPEC_KEY = "finetune/spec"
REFUSED_KEY = "finetune/refused"
BEAT_S = 1.0  # how often each node says it is alive
SILENT_BEATS = 4  # a node whose counter did not move for this many beats is gone


def several_nodes() -> bool:
    return "FINETUNE_RDZV_ENDPOINT" in os.environ


def this_node() -> int:
    return int(os.environ["FINETUNE_NODE_RANK"])


def _store(timeout_s: float) -> Any:
    import torch.distributed as dist

    host, port = os.environ["FINETUNE_RDZV_ENDPOINT"].rsplit(":", 1)
    return dist.TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=timeout_s))


def share(spec: dict[str, Any]) -> None:
    """Node 0's first worker hands the run to the other nodes' workers."""
    _store(60).set(SPEC_KEY, json.dumps(spec))


def receive(own_run: dict[str, Any]) -> dict[str, Any]:
    """The run node 0 trains; refused when this node's command composed other settings (one line, the first key that
    differs), since the nodes would train different things."""
    from finetune.config import flatten
    from finetune.distributed import DistributedError

    store = _store(600)
    spec = json.loads(store.get(SPEC_KEY))
    refusal = None
    theirs, ours = flatten(spec["run"]), flatten(own_run)
    if key := next((k for k in sorted(theirs.keys() | ours.keys()) if theirs.get(k) != ours.get(k)), None):
        refusal = (f"node {this_node()}: {key}={ours.get(key)!r} here, but node 0 trains with {key}="
                   f"{theirs.get(key)!r}; start every node with the same command")
    elif not Path(spec["context"]["out_dir"]).is_dir():
        refusal = (f"node {this_node()}: node 0's run folder {spec['context']['run_dir']} is not on this node; the "
                   "nodes need the run folder on a file system they all share")
    if refusal:
        store.set(REFUSED_KEY, refusal)  # the other nodes' workers, waiting for this one, stop with the same line
        raise DistributedError(refusal)
    return spec


class Heartbeat:
    """Counts up ``finetune/alive/<node>`` in the store every ``BEAT_S`` while this node's workers live, and watches
    for a node's refusal."""

    def __init__(self) -> None:
        self._key = f"finetune/alive/{this_node()}"
        self._store = _store(60)
        self._stop = threading.Event()
        self._store.add(self._key, 1)
        threading.Thread(target=self._beat, daemon=True, name="finetune-heartbeat").start()

    def _beat(self) -> None:
        """Beat; and when a node refused the run, stop this worker with its line, rather than wait for it in a
        collective until the process group's timeout."""
        while not self._stop.wait(BEAT_S):
            try:
                self._store.add(self._key, 1)
                refused = self._store.check([REFUSED_KEY])
            except Exception:  # node 0's store is gone: the worker's own failure says so
                return
            if refused:
                record_failure(self._store.get(REFUSED_KEY).decode())
                os._exit(2)

    def stop(self) -> None:
        self._stop.set()


def record_failure(line: str) -> None:
    """Hand the driver this worker's one-line refusal, which it prints in place of the agent's tracebacks."""
    if (where := os.environ.get("FINETUNE_FAILURE_FILE")) and not Path(where).exists():
        Path(where).write_text(line, encoding="utf-8")


def record_lost_node(nnodes: int, checkpoints: Path) -> None:
    """After this worker failed: which node, if any, stopped beating, as the driver's one line."""
    from finetune.backends.local_train import last_checkpoint

    try:
        store = _store(5)
        before = {n: store.add(f"finetune/alive/{n}", 0) for n in range(nnodes)}
        time.sleep(BEAT_S * SILENT_BEATS)
        lost = [n for n in range(nnodes) if n != this_node() and store.add(f"finetune/alive/{n}", 0) == before[n]]
    except Exception:  # the store itself is gone: node 0, which hosts it, stopped
        lost = [0] if this_node() != 0 else []
    if lost:
        resume = f"from {found.name}" if (found := last_checkpoint(checkpoints)) else "from its last checkpoint"
        record_failure(f"train: node {', '.join(map(str, lost))} of {nnodes} stopped during training (killed, or "
                       "lost from the network); the same command on every node, or on another node count with the "
                       f"same global batch, resumes {resume}")


def failure_line(file: Path) -> str | None:
    """What a worker recorded for the driver, if anything."""
    if not file.is_file():
        return None
    return file.read_text(encoding="utf-8").strip() or None

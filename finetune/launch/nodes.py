"""What the workers of a several-node torchrun run tell each other through the rendezvous store on node 0: the run
(node 0's workers hold it; the other nodes' take it, and refuse it if their own command says otherwise), and that
each node is alive, so that a worker whose peer vanished (a node killed, or lost from the network) names that node
instead of a socket error.

Everything goes through the c10d rendezvous store that node 0's agent hosts (``--rdzv-conf is_host=1``), whatever
global ranks the rendezvous hands out: its address comes in ``FINETUNE_RDZV_ENDPOINT``, this node's rank in
``FINETUNE_NODE_RANK``, and the file the driver reads a lost node's line from in ``FINETUNE_LOST_NODE_FILE``.
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
    from finetune.distributed import DistributedError

    spec = json.loads(_store(600).get(SPEC_KEY))
    if difference := _first_difference(spec["run"], own_run):
        key, theirs, ours = difference
        raise DistributedError(f"node {this_node()}: {key}={ours!r} here, but node 0 trains with {key}={theirs!r}; "
                               "start every node with the same command")
    if not Path(spec["context"]["out_dir"]).is_dir():
        raise DistributedError(f"node {this_node()}: node 0's run folder {spec['context']['run_dir']} is not on this "
                               "node; the nodes need the run folder on a file system they all share")
    return spec


def _first_difference(theirs: Any, ours: Any, key: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for name in sorted(theirs.keys() | ours.keys()):
            if found := _first_difference(theirs.get(name), ours.get(name), f"{key}.{name}".lstrip(".")):
                return found
        return None
    return None if theirs == ours else (key, theirs, ours)


class Heartbeat:
    """Counts up ``finetune/alive/<node>`` in the store every ``BEAT_S`` while this node's workers live."""

    def __init__(self) -> None:
        self._key = f"finetune/alive/{this_node()}"
        self._store = _store(60)
        self._stop = threading.Event()
        self._store.add(self._key, 1)
        threading.Thread(target=self._beat, daemon=True, name="finetune-heartbeat").start()

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_S):
            try:
                self._store.add(self._key, 1)
            except Exception:  # node 0's store is gone: the worker's own failure says so
                return

    def stop(self) -> None:
        self._stop.set()


def record_lost_node(nnodes: int) -> None:
    """After this worker failed: which node, if any, stopped beating; its line goes to the driver's file."""
    where = os.environ.get("FINETUNE_LOST_NODE_FILE")
    if not where:
        return
    try:
        store = _store(5)
        before = {n: store.add(f"finetune/alive/{n}", 0) for n in range(nnodes)}
        time.sleep(BEAT_S * SILENT_BEATS)
        lost = [n for n in range(nnodes) if n != this_node() and store.add(f"finetune/alive/{n}", 0) == before[n]]
    except Exception:  # the store itself is gone: node 0, which hosts it, stopped
        lost = [0] if this_node() != 0 else []
    if lost:
        Path(where).write_text(", ".join(map(str, lost)), encoding="utf-8")


def lost_node_message(file: Path, nnodes: int, last_checkpoint: str | None) -> str | None:
    """The driver's one line for a node that stopped, from what its workers recorded."""
    if not file.is_file() or not (lost := file.read_text(encoding="utf-8").strip()):
        return None
    resume = f"from {last_checkpoint}" if last_checkpoint else "from its last checkpoint"
    return (f"train: node {lost} of {nnodes} stopped during training (killed, or lost from the network); the same "
            f"command on every node, or on another node count with the same global batch, resumes {resume}")

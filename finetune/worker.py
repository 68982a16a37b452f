"""One training worker, as an engine (``finetune.launch``) starts it: ``python -m finetune.worker SPEC`` under
``torch.distributed.run``, or ``train_in_worker`` inside a Ray Train worker. Its own module, because it imports the
backends, which import ``finetune.distributed``: the launchers stay below them."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from finetune.backends import BACKENDS
from finetune.distributed import is_main_process
from finetune.errors import UserError
from finetune.launch import spec as worker_spec
from finetune.pipeline.rundir import RunLog


def train_in_worker(spec: dict[str, Any], restarted: bool = False) -> None:
    """Train as one worker of the run ``spec`` holds; a restarted worker group resumes from its last checkpoint.
    Rank 0 hands the stage's artifacts back to the launcher."""
    run, ctx = worker_spec.from_json(spec, resume=restarted)
    artifacts = BACKENDS[run.backend.name].train(run, ctx)  # in a worker: trains here
    if is_main_process():
        worker_spec.hand_back(ctx, artifacts)


def work(argv: list[str]) -> None:
    """Train as the worker ``argv`` says: ``SPEC`` (a file the driver wrote) or ``--join RUN`` (a node other than 0,
    given the run its own command composed). A refusal, or a node found gone, becomes the driver's one line."""
    import os

    from finetune.launch import nodes

    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    first_here = os.environ.get("LOCAL_RANK") == "0"
    heartbeat = None
    try:
        if argv[0] == "--join":
            spec = nodes.receive(json.loads(argv[1]))
        else:
            spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
            if nodes.several_nodes() and first_here:
                nodes.share(spec)
        heartbeat = nodes.Heartbeat() if nodes.several_nodes() and first_here else None
        train_in_worker(spec, restarted)
    except BaseException as e:
        if isinstance(e, UserError):
            nodes.record_failure(str(e))
        elif heartbeat:
            heartbeat.stop()
            nodes.record_lost_node(spec["run"]["train"]["nnodes"], Path(spec["context"]["out_dir"]) / "checkpoints")
        raise
    if heartbeat:
        heartbeat.stop()


def quiet_unless_main() -> None:
    """Rank 0 logs as the run does; the other workers keep quiet, so the console shows one run."""
    if is_main_process():
        RunLog()
    else:
        logging.disable(logging.WARNING)
        warnings.simplefilter("ignore")


if __name__ == "__main__":
    quiet_unless_main()
    work(sys.argv[1:])

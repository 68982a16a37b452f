"""One of ``train.num_processes`` workers, as ``torch.distributed.run`` starts it (``finetune.distributed.launch``):
``python -m finetune.worker SPEC`` trains the run and context SPEC holds with the run's backend. Its own module,
because it imports the backends, which import ``finetune.distributed``: the launcher stays below them."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from finetune.backends import BACKENDS
from finetune.config import load_run_config
from finetune.distributed import is_main_process
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json
from finetune.pipeline.rundir import RunLog


def work(spec_path: Path) -> None:
    """Train as one worker; rank 0 leaves the stage's artifacts beside the spec for the launcher."""
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    run = load_run_config(OmegaConf.create(spec["run"]))
    c = spec["context"]
    ctx = StageContext(run_dir=Path(c["run_dir"]), out_dir=Path(c["out_dir"]), resume=c["resume"],
                       inputs={s: {k: Path(v) for k, v in a.items()} for s, a in c["inputs"].items()})
    artifacts = BACKENDS[run.backend.name].train(run, ctx)  # in a worker: trains here
    if is_main_process():
        atomic_write_json(ctx.out_dir / "artifacts.json", artifacts)


if __name__ == "__main__":
    if is_main_process():
        RunLog()
    else:
        logging.disable(logging.WARNING)
    work(Path(sys.argv[1]))

"""One of ``train.num_processes`` workers, as ``torch.distributed.run`` starts it (``finetune.distributed.launch``):
``python -m finetune.worker SPEC`` trains the run and context SPEC holds. Its own module, because it imports the
train stage, which imports ``finetune.distributed``: the launcher stays free of the stages."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from finetune.config import load_run_config
from finetune.distributed import is_main_process
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json
from finetune.pipeline.rundir import RunLog
from finetune.stages.train import train_here


def work(spec_path: Path) -> None:
    """Train as one worker; rank 0 leaves the stage's artifacts beside the spec for the launcher."""
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    run = load_run_config(OmegaConf.create(spec["run"]))
    c = spec["context"]
    ctx = StageContext(run_dir=Path(c["run_dir"]), out_dir=Path(c["out_dir"]), resume=c["resume"],
                       inputs={s: {k: Path(v) for k, v in a.items()} for s, a in c["inputs"].items()})
    artifacts = train_here(run, ctx)
    if is_main_process():
        atomic_write_json(ctx.out_dir / "artifacts.json", artifacts)


if __name__ == "__main__":
    if is_main_process():
        RunLog()
    else:
        logging.disable(logging.WARNING)
    work(Path(sys.argv[1]))

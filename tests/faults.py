"""``arm(WHERE)``, called in a CLI process before the CLI runs (``start_cli(..., before=(arm, (WHERE,)))``): the
real CLI, killed with SIGKILL at a chosen point.

WHERE is ``<stage>:start`` (the graph has marked the stage running, the stage has done nothing),
``<stage>:end`` (the stage has written everything, the graph has not yet marked it complete), or
``train:checkpoint`` (right after the first checkpoint is saved, mid-training). The process kills itself, so
the point is exact, unlike a timer racing a fast stage.
"""

from __future__ import annotations

import dataclasses
import os
import signal


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(where: str) -> None:
    """Make this process kill itself at ``where`` once the CLI runs."""
    stage_name, point = where.split(":")

    from finetune import stages

    if point == "checkpoint":
        from transformers import Trainer

        save = Trainer._save_checkpoint

        def save_then_die(self, *a, **kw):
            save(self, *a, **kw)
            _die()

        Trainer._save_checkpoint = save_then_die
    else:
        def wrap(stage):
            def run(run, ctx):
                if point == "start":
                    _die()
                artifacts = stage.run(run, ctx)
                _die()
                return artifacts
            return dataclasses.replace(stage, run=run)

        stages.STAGES = tuple(wrap(s) if s.name == stage_name else s for s in stages.STAGES)

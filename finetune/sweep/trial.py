"""The job's side of an Optuna trial: each eval loss is reported to the study as training goes, and the trial
stops when the pruner says it will not beat the trials before it. The search (``optuna_search.py``) names the
trial in the job's environment; the study is the SQLite file in the sweep folder, one level above the job."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.pipeline.graph import StopHere

TRIAL_ENV = "FINETUNE_OPTUNA_TRIAL"  # the trial's number, set by the search for the jobs it launches
STUDY_FILE = "optuna.db"
STUDY_NAME = "finetune"
PRUNER_ATTR = "pruner"  # the study's user attribute with the pruner's settings, set by the search
NO_PRUNING = "none"


@dataclass(frozen=True)
class Pruner:
    """A ``hydra.sweeper.pruner.name``: how a job builds it from the settings the study holds (a pruner object
    is not stored there), and which settings it cannot do without."""

    build: Callable[[dict[str, Any]], Any]
    needs: dict[str, str] = field(default_factory=dict)  # setting → what it is, for the search's refusal
    prunes: bool = True


def _median(settings: dict[str, Any]) -> Any:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=settings["n_startup_trials"],
                                       n_warmup_steps=settings["n_warmup_steps"])


def _threshold(settings: dict[str, Any]) -> Any:
    import optuna

    return optuna.pruners.ThresholdPruner(upper=settings["upper"])


def _nop(settings: dict[str, Any]) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


PRUNERS: dict[str, Pruner] = {
    "median": Pruner(_median),
    "threshold": Pruner(_threshold, needs={"upper": "an upper eval loss"}),
    NO_PRUNING: Pruner(_nop, prunes=False),
}


class TrialPruned(StopHere):
    """The pruner stopped this trial: its eval loss is behind the other trials' at the same step."""


def storage_url(study_file: Path) -> str:
    return f"sqlite:///{study_file.resolve()}"


def pruning_callback(run_dir: Path) -> Any | None:
    """A Trainer callback that reports eval loss to this job's trial and stops a pruned one; None outside a
    search (or for a job rerun on its own, whose sweep folder has no study, or whose trial is over)."""
    number = os.environ.get(TRIAL_ENV)
    study_file = run_dir.parent / STUDY_FILE
    if number is None or not study_file.is_file():
        return None
    import optuna
    from transformers import TrainerCallback

    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(study_file))
    settings = study.user_attrs.get(PRUNER_ATTR, {"name": NO_PRUNING})
    study.pruner = PRUNERS[settings["name"]].build(settings)
    running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
               if t.number == int(number)]
    if not running:
        return None
    trial = optuna.trial.Trial(study, running[0]._trial_id)

    class ReportEvalLoss(TrainerCallback):
        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kw: Any) -> None:
            if not metrics or "eval_loss" not in metrics:
                return
            trial.report(metrics["eval_loss"], state.global_step)
            if trial.should_prune():
                raise TrialPruned(f"trial {number} pruned at step {state.global_step}: eval loss "
                                  f"{metrics['eval_loss']:.4f} is behind the trials before it; the search goes on")

    return ReportEvalLoss()

"""``hparams_search=optuna``: an Optuna study (TPE) behind Hydra's sweeper interface, asking for trials and telling
their results (ask/tell), so that any Hydra launcher runs the jobs — in this process, or on Slurm via submitit.

Why not hydra-optuna-sweeper: its last release pins Optuna < 3 and keeps its study in memory, so an interrupted
search starts over (hydra #3328). Here the study is ``optuna.db`` (SQLite) in the sweep folder: running the same
command with the same ``hydra.sweep.dir`` continues it. Finished trials are kept; a trial that was running when
the search stopped is launched again with its own number and values, into its own job folder, where the stage
graph resumes it (training from its last checkpoint). The search space is the ``params`` of
``conf/hparams_search/optuna.yaml`` in Hydra's sweep syntax (``choice(4, 8)``, ``tag(log, interval(1e-5, 1e-3))``,
``range(4, 32, step=4)``); a sweep given on the command line adds to or replaces them.

Pruning: each job reports its eval loss to its trial as training goes (``trial.py``) and stops when the pruner
says so; it needs the study's single objective to be ``eval_loss``, whose units the reports are in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from finetune.errors import UserError
from finetune.sweep.summary import TRAIN_METRICS, metric_values
from finetune.sweep.trial import NO_PRUNING, PRUNER_ATTR, PRUNERS, STUDY_FILE, STUDY_NAME, TRIAL_ENV, storage_url

log = logging.getLogger(__name__)

DIRECTIONS = ("auto", "minimize", "maximize")


class SearchError(UserError, ValueError):
    """The search's settings cannot be used; the message names the key."""


@dataclass
class PrunerConf:
    name: str = "median"  # median (behind the median of earlier trials at the same step), threshold, none
    n_startup_trials: int = 2  # median: trials that finish before any is pruned
    n_warmup_steps: int = 0  # median: training steps before a trial can be pruned
    upper: float | None = None  # threshold: pruned as soon as its eval loss is above this


@dataclass
class OptunaSearchConf:
    _target_: str = "hydra_plugins.finetune_sweeper.OptunaSearch"
    n_trials: int = 8  # trials in the study, counting those of earlier runs of the same search
    n_jobs: int = 1  # trials launched together (a parallel launcher runs them at the same time)
    seed: int = 0  # the sampler's seed, offset by the trials already in the study
    objectives: list[str] | None = None  # null: [sweep.metric]; two or more: multi-objective (eval_loss, tokens_per_s)
    directions: list[str] | None = None  # one per objective (minimize, maximize, auto); null: auto
    params: dict[str, str] = field(default_factory=dict)  # config key → sweep: choice(4, 8), interval(…), range(…)
    pruner: PrunerConf = field(default_factory=PrunerConf)


def register_config() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="finetune_optuna", node=OptunaSearchConf,
                                 provider="finetune")


def direction_of(metric: str, given: str) -> str:
    if given != "auto":
        return given
    if metric in TRAIN_METRICS:
        return TRAIN_METRICS[metric]
    from finetune.metrics import METRICS

    if metric in METRICS:
        return "maximize" if METRICS[metric].higher_is_better else "minimize"
    raise SearchError(f"hydra.sweeper.directions: say minimize or maximize for {metric!r}")


def distribution(override: Override) -> Any:
    """Hydra's sweep syntax → an Optuna distribution: a choice is categorical, a range stepped integers (or
    floats), an interval continuous (``tag(log, …)``: log-uniform; ``tag(int, …)``: integers)."""
    import optuna.distributions as d

    sweep, key = override.value(), override.get_key_element()
    if isinstance(sweep, ChoiceSweep):
        return d.CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, RangeSweep):
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return d.IntDistribution(sweep.start, sweep.stop - 1, step=sweep.step)
        return d.FloatDistribution(sweep.start, sweep.stop, step=sweep.step)
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if "int" in sweep.tags:
            return d.IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
        return d.FloatDistribution(sweep.start, sweep.end, log=log_scale)
    raise SearchError(f"{key}: {override.input_line!r} is not a search range; use choice(…), range(…) or interval(…)")


def _check_pruner(conf: dict[str, Any]) -> bool:
    """Refuse an unknown pruner or one without a setting it needs; returns whether the pruner prunes at all."""
    if conf["name"] not in PRUNERS:
        *others, last = PRUNERS
        raise SearchError(f"hydra.sweeper.pruner.name={conf['name']!r}: expected {', '.join(others)} or {last}")
    pruner = PRUNERS[conf["name"]]
    for key, what in pruner.needs.items():
        if conf[key] is None:
            raise SearchError(f"hydra.sweeper.pruner.{key}: the {conf['name']} pruner needs {what}")
    return pruner.prunes


class OptunaSearch(Sweeper):
    def __init__(self, n_trials: int, n_jobs: int, seed: int, objectives: list[str] | None,
                 directions: list[str] | None, params: dict[str, str], pruner: Any) -> None:
        self.n_trials, self.n_jobs, self.seed = n_trials, n_jobs, seed
        self.objectives, self.directions = objectives, directions
        self.params, self.pruner = dict(params or {}), pruner
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def _space(self, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The search space, and the overrides every trial gets."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        declared = parser.parse_overrides([f"{key}={value}" for key, value in self.params.items()])
        given = parser.parse_overrides(arguments)
        space = {o.get_key_element(): distribution(o) for o in [*declared, *given] if o.is_sweep_override()}
        fixed = [o.input_line for o in given if not o.is_sweep_override() and o.get_key_element() not in space]
        if not space:
            raise SearchError("hydra.sweeper.params: nothing to search; declare ranges (method.r: choice(4, 8))")
        return space, fixed

    def sweep(self, arguments: list[str]) -> Any:
        import optuna
        from optuna.trial import TrialState

        assert self.config is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        space, fixed = self._space(arguments)
        objectives = list(self.objectives or [str(self.config.sweep.metric)])
        given = list(self.directions or [str(self.config.sweep.direction)] * len(objectives))
        if len(given) != len(objectives) or any(d not in DIRECTIONS for d in given):
            raise SearchError(f"hydra.sweeper.directions={given}: expected one of {', '.join(DIRECTIONS)} for each "
                              f"objective {objectives}")
        directions = [direction_of(m, d) for m, d in zip(objectives, given, strict=True)]
        pruner = OmegaConf.to_container(self.pruner) if isinstance(self.pruner, DictConfig) else dict(self.pruner)
        prunes = _check_pruner(pruner)
        pruning = prunes and objectives == ["eval_loss"]
        if prunes and not pruning:
            log.warning("pruning is off: it compares eval losses during training, and the objectives are %s",
                        ", ".join(objectives))
        done_states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        storage = storage_url(sweep_dir / STUDY_FILE)
        seen = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials) if (
            sweep_dir / STUDY_FILE).is_file() else 0
        try:
            study = optuna.create_study(
                study_name=STUDY_NAME, storage=storage, load_if_exists=True, directions=directions,
                sampler=optuna.samplers.TPESampler(seed=self.seed + seen))
        except ValueError as e:  # the study in this folder optimises something else
            raise SearchError(f"hydra.sweep.dir: {sweep_dir / STUDY_FILE} holds another study ({e}); choose "
                              "another sweep folder") from None
        study.set_user_attr(PRUNER_ATTR, pruner if pruning else {"name": NO_PRUNING})  # the jobs prune with it
        unfinished = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        if seen:
            log.info("search resumed from %s: %d trials done, %d to finish again", sweep_dir / STUDY_FILE,
                     len(study.get_trials(states=done_states)), len(unfinished))
        returns = []
        while (left := self.n_trials - len(study.get_trials(deepcopy=False, states=done_states))) > 0:
            # an unfinished trial goes alone: its job number is its own, not the next free one
            batch = [unfinished.pop(0)] if unfinished else [study.ask(space) for _ in range(min(self.n_jobs, left))]
            returns.append(self._launch(study, batch, fixed, objectives, pruning))
        return returns

    def _launch(self, study: Any, batch: list[Any], fixed: list[str], objectives: list[str], pruning: bool) -> Any:
        from optuna.trial import TrialState

        jobs = [[*fixed, *(f"{key}={value}" for key, value in trial.params.items()),
                 *([f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}"] if pruning else [])] for trial in batch]
        self.validate_batch_is_legal(jobs)
        results = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
        for trial, result in zip(batch, results, strict=True):
            try:
                outcome = result.return_value
            except Exception as e:  # the job died outside our CLI's reach (a launcher error, a killed worker)
                outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            values = None
            if outcome["status"] == "complete":
                found, _ = metric_values(Path(outcome["run_dir"]))
                values = [found.get(m) for m in objectives]
                if any(not isinstance(v, int | float) for v in values):
                    outcome = {**outcome, "status": "failed", "error": f"no {', '.join(objectives)} in its results"}
                    values = None
            if values is not None:
                study.tell(trial.number, values)
            else:
                study.tell(trial.number, state=TrialState.PRUNED if outcome["status"] == "pruned" else TrialState.FAIL)
            log.info("trial %d %s: %s%s", trial.number, outcome["status"],
                     ", ".join(f"{k}={v}" for k, v in trial.params.items()),
                     f" → {', '.join(f'{m} {v:.4g}' for m, v in zip(objectives, values, strict=True))}" if values else
                     f" ({outcome['error']})" if outcome.get("error") else "")
        return results

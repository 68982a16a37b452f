"""``python -m finetune [overrides]`` (and ``python -m finetune compare A B``): compose the config with Hydra,
validate it, run the stage graph; in a multirun, record each job's outcome so that the sweep goes on. What the
command line says about itself (``--help``, a mistyped word) is in ``usage.py``.

Reading order for newcomers: this file → ``config.py`` (the schema) → ``pipeline/graph.py`` (order, skipping,
resuming) → ``stages/__init__.py`` (the stages) → any one stage module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from finetune import resolvers
from finetune.config import ConfigError, RunConfig, load_run_config, unknown_key_message
from finetune.errors import UserError
from finetune.paths import CONF_DIR, RECIPES_DIR
from finetune.pipeline.manifest import atomic_write_json
from finetune.pipeline.rundir import RunLog, locked, remove_created, save_run_config
from finetune.redact import redact_text, redact_yaml
from finetune.sweep import summary
from finetune.sweep.optuna_search import register_config
from finetune.sweep.summary import OUTCOME_NAME
from finetune.usage import HELP_OVERRIDE, register_help, unknown_word, unknown_word_message

# finetune owns the run directory (finetune/pipeline/rundir.py): Hydra writes nothing into it, and a callback notes
# which folders existed before Hydra creates it; --help says what finetune is. Passed as overrides so that they
# also hold when the primary config is a saved .hydra/config.yaml (a rerun), which has no hydra section.
HYDRA_SETTINGS = (
    "hydra.output_subdir=null",
    "hydra/job_logging=none",
    HELP_OVERRIDE,
    "++hydra.callbacks.finetune_run_dir._target_=finetune.pipeline.rundir.NoteExistingFolders",
    "++hydra.callbacks.finetune_sweep_summary._target_=finetune.sweep.summary.WriteSweepSummary",
)

log = logging.getLogger("finetune")


def register_recipes() -> None:
    """Make ``recipes/*.yaml`` the config group ``recipe`` (``+recipe=NAME``) wherever finetune is installed,
    without a search path that depends on the working directory; and the schema the base of the composed
    config, so every key of ``config.py`` can be set from the command line (``dataset.test_path=…``)
    whether or not the chosen option's YAML names it; and the ``--help`` page, which lists the recipes."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    recipes = sorted(RECIPES_DIR.glob("*.yaml"))
    for path in recipes:
        store.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")
    register_help(recipes)
    register_config()  # hydra/sweeper=finetune_optuna (hparams_search=optuna)


@contextlib.contextmanager
def _mode_from_command_line(args: list[str]) -> Iterator[None]:
    """Hydra composes a run's whole config twice: first only to read ``hydra.mode``, which a config file may set
    (to MULTIRUN), then for the run — ~0.5 s each on a CPU, on every command. No file of ours sets it
    (tests/test_cli.py checks), so when the command line names no config of the user's own (``--config-path``,
    ``--config-name``, ``--config-dir``) and does not set ``hydra.mode`` itself, the mode is the command line's
    (``-m`` or not), as Hydra then decides it too, and the first composition is left out."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import get_args_parser

    parsed, _ = get_args_parser().parse_known_args(args)
    if parsed.config_path or parsed.config_name or parsed.config_dir or any(
            o.lstrip("+~").split("=")[0] == "hydra.mode" for o in parsed.overrides):
        yield
        return
    get_mode = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: None  # what it returns when no config sets the mode
    try:
        yield
    finally:
        Hydra.get_mode = get_mode


def _close_progress_bars() -> None:
    """A library's progress bar left open by an error is redrawn at exit, after our message; close it first
    so that the error is the last line."""
    if tqdm := sys.modules.get("tqdm"):
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.close()


def _fail(error: Exception | str, code: int = 2) -> NoReturn:
    _close_progress_bars()
    print(f"error: {error}", file=sys.stderr)
    sys.exit(code)


def _hydra_error_line(error: Exception) -> str:
    """Hydra's composition errors (unknown group option, unknown key, bad override syntax) in one line."""
    if isinstance(error, MissingConfigException) and error.options is not None:
        first = str(error).splitlines()[0].removeprefix("In 'config': ")
        return f"{first}; available: {', '.join(error.options)}"
    cause = error.__cause__
    unknown = re.match(r"Could not override '([^']+)'", str(error))
    if unknown and isinstance(cause, ConfigAttributeError | ConfigKeyError):
        return unknown_key_message(unknown[1])
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    lines = [line.strip().rstrip(".") for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines)


def _summary(run_dir: Path, manifests: dict) -> str:
    lines = [f"run directory: {run_dir}"]
    for name, manifest in manifests.items():
        lines.append(f"  {name}/  ({manifest.duration_s} s)")
        for artifact in manifest.artifacts.values():
            path = run_dir / name / artifact["path"]
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else (
                path.stat().st_size)
            lines.append(f"    {artifact['path']:<28} {size / 1e6:9.2f} MB")
    return "\n".join(lines)


class JobFailed(Exception):  # noqa: N818 — an outcome, reported in one line
    """The run cannot go on: one line for the user, and the exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.message, self.code = message, code


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def run(cfg: DictConfig) -> dict[str, Any]:
    """One run. In a multirun (a job of a sweep) a failure is this job's outcome, not the sweep's end: it is
    printed, written to ``outcome.json`` in the job's folder and returned to the sweeper; only Ctrl-C stops
    the sweep."""
    resolvers.register()  # also in a launcher's worker process, which never ran main()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    logs = RunLog()
    started = time.monotonic()
    error = None
    try:
        status = _run(cfg, run_dir, logs, in_sweep)
    except JobFailed as e:
        if not in_sweep or e.code == 130:
            _fail(e.message, e.code)
        status, error = "failed", e.message
        print(f"error: {e.message}", file=sys.stderr)
    except Exception as e:  # a bug: this job's traceback goes to its log, and the next job runs
        if not in_sweep:
            raise
        log.exception("job failed")
        status, error = "failed", redact_text(f"{type(e).__name__}: {e}")
    finally:
        logs.close()
    outcome = {"job": run_dir.name, "run_dir": str(run_dir), "status": status, "error": error,
               "overrides": [redact_yaml(o) for o in hydra_cfg.overrides.task],  # key=value: as saved
               "seconds": round(time.monotonic() - started, 2)}
    if in_sweep and status != "joined":  # a node that joined node 0's training leaves node 0's outcome
        atomic_write_json(run_dir / OUTCOME_NAME, outcome)
    return outcome


def _run(cfg: DictConfig, run_dir: Path, logs: RunLog, in_sweep: bool) -> str:
    """Check everything that can be checked, then (and only then) write: saved config, log, stages. Returns
    how the run ended: complete, stopped (a stage needs the user's go-ahead) or pruned (an Optuna trial)."""
    try:
        spec = load_run_config(cfg)
    except ConfigError as e:
        _refused(run_dir, in_sweep)
        raise JobFailed(str(e)) from None
    from finetune import launch

    try:
        if launch.joins(spec):  # a node other than the first of a several-node run: it trains, node 0 writes
            launch.engine(spec).join(spec)
            return "joined"
    except UserError as e:
        raise JobFailed(str(e)) from None
    # The stages pull in torch and friends: imported only now, so --cfg, --help and bad configs stay fast.
    from finetune.pipeline.graph import StopHere, check_graph, run_graph, stages_for
    from finetune.report import write_run_report
    from finetune.stages import STAGES
    from finetune.sweep.trial import TrialPruned

    stages, left_out = stages_for(spec, STAGES)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locked(run_dir))
            plan = check_graph(spec, run_dir, stages)
        except UserError as e:
            _refused(run_dir, in_sweep)
            raise JobFailed(str(e)) from None
        except KeyboardInterrupt:
            _refused(run_dir, in_sweep)
            raise JobFailed("interrupted before the first stage; nothing was written", code=130) from None
        save_run_config(run_dir, cfg, HydraConfig.instance().cfg)
        logs.to_file(run_dir)
        for why in dict.fromkeys(left_out.values()):
            log.info("stages left out: %s (%s)", ", ".join(n for n, w in left_out.items() if w == why), why)
        _warn_if_rerun_of_other_versions(HydraConfig.get())
        try:
            manifests = run_graph(spec, run_dir, stages, plan)
        except StopHere as e:
            print(e)
            return "pruned" if isinstance(e, TrialPruned) else "stopped"
        except UserError as e:
            raise JobFailed(str(e)) from None
        except KeyboardInterrupt:
            raise JobFailed("interrupted; run the same command again to resume", code=130) from None
        finally:
            try:
                write_run_report(run_dir)
            except Exception as e:  # the report explains a run; it must never hide the run's own outcome
                log.warning("report.html not written: %s: %s", type(e).__name__, e)
    print(_summary(run_dir, manifests))
    return "complete"


def _warn_if_rerun_of_other_versions(hydra_cfg: DictConfig) -> None:
    """A rerun from a run's saved config (``--config-path RUN/.hydra``) says which library versions differ from
    those RUN's stages were made with: the same config may not give the same numbers under other versions."""
    from finetune.pipeline.graph import warn_if_versions_changed
    from finetune.pipeline.manifest import Manifest

    main = next((s.path for s in hydra_cfg.runtime.config_sources if s.provider == "main"), "")
    folder = Path(str(main).removeprefix("file://"))
    if folder.name != ".hydra":
        return
    recorded = (Manifest.read(p.parent) for p in sorted(folder.parent.glob("*/manifest.json")))
    if manifest := next((m for m in recorded if m and m.environment), None):
        warn_if_versions_changed(manifest, where=f"{folder.parent} (the run this reruns)")


def _refused(run_dir: Path, in_sweep: bool) -> None:
    """A refused single run leaves the disk as it was; a refused job of a sweep keeps its folder, where
    ``outcome.json`` says why, so that the sweep's summary shows it as a failed row."""
    if not in_sweep:
        remove_created(run_dir)


def main() -> None:
    # Hydra then raises its composition errors instead of printing them over several lines; they are
    # reported below in one line. Errors that are bugs keep their traceback.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    resolvers.register()
    register_recipes()
    args = sys.argv[1:]
    if args[:1] == ["compare"]:
        from finetune.compare import main as compare

        sys.exit(compare(args[1:]))
    if args[:1] == ["chat"]:
        from finetune.chat_command import main as chat

        sys.exit(chat(args[1:]))
    if args[:1] == ["serve"]:
        from finetune.serve_command import main as serve

        sys.exit(serve(args[1:]))
    if args[:1] == ["plan"]:
        from finetune.plan_command import main as plan

        sys.exit(plan(args[1:]))
    if args[:1] == ["launch"]:
        from finetune.launch_command import main as launch

        sys.exit(launch(args[1:]))
    if word := unknown_word(args):
        _fail(unknown_word_message(word))
    given = {arg.split("=")[0].lstrip("+~") for arg in args}
    ours = [s for s in HYDRA_SETTINGS if s.split("=")[0].lstrip("+") not in given]
    # Beside the user's overrides: argparse takes the overrides as one run of positional arguments.
    at = next((i for i, arg in enumerate(args) if "=" in arg and not arg.startswith("-")), len(args))
    sys.argv[1:] = [*args[:at], *ours, *args[at:]]
    try:
        with _mode_from_command_line(sys.argv[1:]):
            run()
    except (HydraException, OmegaConfBaseException) as e:
        _fail(_hydra_error_line(e))
    if summary.failed_jobs:
        sys.exit(1)


if __name__ == "__main__":
    main()

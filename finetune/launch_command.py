"""``python -m finetune launch [+recipe=NAME] [key=value ...] launch.accelerators=H100:8 [launch.nodes=2 ...]
[--dry-run]``: the run on rented GPUs, as a SkyPilot task (``finetune/launch/skypilot.py``).

The run's config is composed and checked here as ``python -m finetune`` would, with ``train.nnodes`` and
``train.num_processes`` from ``launch.nodes`` and the count in ``launch.accelerators``; the task and the composed
config are written to ``outputs/<run_name>/launch_<timestamp>/``, checked by SkyPilot's parser, and printed with
the training cost the plan (``finetune/plan_command.py``) estimates at ``conf/gpu_prices.yaml``'s price.
``--dry-run`` stops there; otherwise ``sky launch`` runs it and the run folder comes back to
``outputs/<run_name>/<timestamp>/``. A refused setting writes nothing.
"""

from __future__ import annotations

import datetime
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from finetune.errors import UserError
from finetune.launch import skypilot
from finetune.launch.skypilot import LaunchError, LaunchSettings

SET_BY_LAUNCH = {"train.nnodes": "launch.nodes", "train.num_processes": "launch.accelerators' count"}


def split(args: list[str]) -> tuple[list[str], dict[str, Any], bool]:
    """The run's overrides, the ``launch.*`` values (typed as YAML types them) and whether this is a dry run."""
    overrides: list[str] = []
    values: dict[str, Any] = {}
    dry_run = False
    for arg in args:
        key = arg.split("=")[0].lstrip("+~")
        if arg == "--dry-run":
            dry_run = True
        elif arg.startswith("launch."):
            name, eq, value = arg.removeprefix("launch.").partition("=")
            if not eq:
                raise LaunchError(f"launch.{name}: expected launch.{name}=VALUE")
            try:
                values[name] = yaml.safe_load(value)
            except yaml.YAMLError:
                values[name] = value
        elif arg.startswith("-"):
            raise LaunchError(f"{arg}: unknown option; launch takes --dry-run, launch.KEY=VALUE and a run's overrides")
        elif key in SET_BY_LAUNCH:
            raise LaunchError(f"{key}: set by {SET_BY_LAUNCH[key]}; leave it out of the launch command")
        elif key.startswith("hydra."):
            raise LaunchError(f"{key}: the run folder is in the outputs bucket (launch.bucket); leave it out")
        else:
            overrides.append(arg)
    return overrides, values, dry_run


def composed(overrides: list[str], s: LaunchSettings) -> tuple[Any, Any]:
    """The composed config (unresolved) and the checked ``RunConfig``, for ``s``'s nodes and GPUs."""
    from hydra import compose, initialize_config_dir

    from finetune.config import load_run_config
    from finetune.paths import CONF_DIR

    multinode = [f"train.nnodes={s.nodes}", f"train.num_processes={s.gpus_per_node}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, *multinode])
    return cfg, load_run_config(cfg)


def check(run: Any, s: LaunchSettings) -> None:
    """Refuse a run the task cannot train: a hosted backend, or an engine that cannot span nodes, or a finetune
    that is no source checkout (the workdir SkyPilot syncs)."""
    from finetune.backends import BACKENDS
    from finetune.backends.base import LOCAL_WEIGHTS
    from finetune.launch import ENGINES

    if LOCAL_WEIGHTS not in BACKENDS[run.backend.name].capabilities:
        local = ", ".join(name for name, b in BACKENDS.items() if LOCAL_WEIGHTS in b.capabilities)
        raise LaunchError(f"backend.name={run.backend.name}: a hosted backend trains at its provider; launch rents "
                          f"GPUs for a backend that trains on them ({local})")
    if s.nodes > 1 and not ENGINES[run.train.engine].nodes_join:
        raise LaunchError(f"train.engine={run.train.engine}: launch.nodes={s.nodes} starts the same command on each "
                          "node, which this engine cannot join into one training; expected train.engine=torchrun")
    if not (skypilot.PROJECT_DIR / "pyproject.toml").is_file():
        raise LaunchError(f"launch syncs finetune's source checkout to the cluster and installs it there; this "
                          f"finetune is installed at {skypilot.PACKAGE_DIR}: run launch from a clone")


def _same_gpu(row: str, gpu: str) -> bool:
    """A ``conf/gpu_prices.yaml`` row for SkyPilot's name: ``A100-80GB`` is "A100 80GB", ``H100`` "H100 80GB"."""
    return row.replace(" ", "-").lower() == gpu.lower()


def cost_line(run: Any, s: LaunchSettings) -> str:
    """The training's hours and price on the asked GPUs, from the plan; or why there is no estimate."""
    from finetune.pipeline.rundir import RunLog
    from finetune.plan_command import PlanError, make

    logs = RunLog()
    try:
        the_plan = make(run)
    except PlanError as e:
        return f"cost: not estimated: {e}"
    finally:
        logs.close()
    rows = the_plan["gpus"]
    row = next((g for g in rows if _same_gpu(g["gpu"], s.gpu)), None) or next(
        (g for g in rows if g["gpu"].split()[0].lower() == s.gpu.lower()), None)
    if row is None:
        return (f"cost: {s.gpu} is not in conf/gpu_prices.yaml (add its bf16 rate and price to estimate it); "
                f"the plan's tokens: {the_plan['tokens_to_train']:,}")
    minutes = row["hours"] * 60
    took = f"{minutes:.1f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"
    line = (f"cost: training ≈ {took} on {s.nodes} × {s.accelerators} ({row['count']} × "
            f"{row['gpu']}), ≈ ${row['usd']:.2f} at conf/gpu_prices.yaml's on-demand price"
            f"{' (spot costs less)' if s.use_spot else ''}; the cluster also bills while it installs, evaluates "
            "and exports")
    if not row["fits"]:
        need = the_plan["memory_estimate_bytes"]["total"] / 1e9
        line += f"; note: the plan's {need:.1f} GB per GPU does not fit the {row['memory_gb']} GB of a {row['gpu']}"
    return line


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as YAML blocks, as a task is written by hand."""


_Dumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v,
                                                             style="|" if "\n" in v else None))


def write(folder: Path, the_task: dict[str, Any], config: str) -> Path:
    from finetune.pipeline.manifest import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", config)
    task_file = folder / "task.yaml"
    atomic_write_text(task_file, yaml.dump(the_task, Dumper=_Dumper, sort_keys=False, allow_unicode=True))
    return task_file


def _summary(parsed: dict[str, Any]) -> str:
    (gpu, count), = parsed["accelerators"].items()
    where = " ".join(str(v) for v in (parsed["cloud"], parsed["region"]) if v) or "the cloud SkyPilot picks"
    buckets = ", ".join(f"{m['name'] or m['source']} ({m['mode']} at {p})" for p, m in parsed["storage_mounts"].items())
    return (f"checked by SkyPilot {parsed['version']}'s parser: {parsed['num_nodes']} × {gpu}:{count} on {where}"
            f"{', spot' if parsed['use_spot'] else ''}; outputs bucket {buckets}; "
            f"the run's config and {len(parsed['file_mounts']) - 1} local inputs mounted")


def main(args: list[str]) -> int:
    """Compose and check the run, write the task, check it with SkyPilot, print it and its cost; then, without
    ``--dry-run``, launch it and bring the run folder back."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from finetune.cli import _hydra_error_line
    from finetune.config import ConfigError

    folder = None
    try:
        overrides, values, dry_run = split(args)
        s = skypilot.settings(values)
        cfg, run = composed(overrides, s)
        check(run, s)
        s = skypilot.named(s, run.run_name)
        sky = skypilot.sky_command()
        if sky is None and not dry_run:
            raise LaunchError(f"launch: SkyPilot's `sky` is not on PATH; {skypilot.INSTALL_HINT}")
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        folder = Path("outputs") / run.run_name / f"launch_{stamp}"
        run_dir = f"{skypilot.OUTPUTS}/{run.run_name}/{stamp}"
        cost = cost_line(run, s)  # reads the data as the run will: a refusal there is one here, before writing
        inputs = skypilot.local_inputs(run)
        the_task = skypilot.task(s, run.run_name, run_dir, (folder / "config.yaml").resolve(), inputs)
        task_file = write(folder, the_task, skypilot.shipped_config(cfg, inputs))
        checked = _summary(skypilot.validate(task_file, sky)) if sky else (
            f"not checked: SkyPilot is not installed here; {skypilot.INSTALL_HINT}")
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {_hydra_error_line(e)}", file=sys.stderr)
        return 2
    except (ConfigError, UserError) as e:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(task_file.read_text(encoding="utf-8"))
    print(f"task: {task_file} (the run's config: {folder / 'config.yaml'})")
    print(checked)
    print(cost)
    if dry_run:
        print(f"dry run: nothing launched; without --dry-run this runs `sky launch -c {s.cluster} {task_file}`")
        return 0
    assert sky is not None
    return skypilot.launch(task_file, s, run_dir, Path("outputs") / run.run_name / stamp, sky)

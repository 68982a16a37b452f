"""``train.engine=ray``: a Ray Train ``TorchTrainer`` runs the train stage in ``world_size(run)`` workers on a Ray
cluster: the one at ``train.ray_address`` (or ``RAY_ADDRESS``), else one started on this machine for the stage and
shut down after it. Ray's torch backend starts the process group (gloo on CPU, nccl on GPUs) and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…, so the Trainer's accelerate joins that group rather than starting
its own. A failed worker group starts again ``train.max_restarts`` times and resumes from our last checkpoint.

Every worker reads and writes the run folder (the validated splits, ``checkpoints/``; rank 0 leaves the stage's
artifacts there for the driver), so on several machines it must be on storage they all mount at the same path.
Ray's own run folder goes inside the stage's too, and is removed after the stage.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from finetune.distributed import DistributedError, world_size
from finetune.launch import spec as worker_spec

STORAGE = ".ray"  # Ray Train's run folder (RunConfig.storage_path), inside the stage's


def check(run: Any) -> None:
    if importlib.util.find_spec("ray") is None:  # not ray.train: finding it imports ray (2 s)
        raise DistributedError("train.engine=ray: Ray Train is not installed; pip install 'finetune[ray]'")


def _work(config: dict[str, Any]) -> None:
    """One Ray Train worker: the train stage as a torchrun worker runs it. Ray starts a failed group's workers
    afresh, so a worker knows it is in a restarted group, which resumes from the last checkpoint, by the mark its
    rank left in Ray's run folder in an earlier attempt."""
    import ray.train

    from finetune.distributed import is_main_process
    from finetune.worker import quiet_unless_main, train_in_worker

    quiet_unless_main()
    mark = Path(config["storage"]) / f"started-{ray.train.get_context().get_world_rank()}"
    restarted = mark.exists()
    if restarted and is_main_process():
        logging.getLogger(__name__).warning("train: a worker failed; the workers started again")
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()
    train_in_worker(config["spec"], restarted)


def _connect(run: Any) -> None:
    """Join the cluster the run names, else start one here, which ``ray.shutdown`` stops again. The job's Ray
    logging config keeps Ray's own lines below errors out of every process, and this one prints only the train
    workers' output (``_print_train_workers_only``); in this one, our console and log file stay as they were."""
    import ray

    address = run.train.ray_address or os.environ.get("RAY_ADDRESS")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    options = {"include_dashboard": False, "logging_config": ray.LoggingConfig(encoding="TEXT", log_level="ERROR")}
    try:
        if address:
            ray.init(address=address, **options)
        else:  # logical CPUs: as many workers as asked for train here, however many cores (as with torchrun)
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, world_size(run)), **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"train.ray_address={address}" if address else "train.engine=ray"
        raise DistributedError(f"{where}: cannot start or reach a Ray cluster ({str(e).splitlines()[0]})") from e
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    _print_train_workers_only()


class _TrainWorkerOutput:
    """What this driver prints of the cluster's output, in place of Ray's handler: our train workers' lines, without
    Ray's prefixes, and none of Ray's own processes' (its controller's and watchers' C++ errors and thread tracebacks,
    which are about Ray's bookkeeping: a failure that matters reaches ``fit`` as an error). A progress bar's redraw
    (a line that starts with a carriage return) is written without a newline, so the bar stays on one line."""

    def __init__(self) -> None:
        self.bar: Any = None  # the stream whose last line is a bar still being redrawn

    def __call__(self, data: dict[str, Any]) -> None:
        if not str(data.get("actor_name") or "").startswith("RayTrainWorker"):
            return
        sink = sys.stderr if data.get("is_err") else sys.stdout
        for line in data.get("lines", ()):
            if line.startswith("\r"):
                sink.write(line)
                self.bar = sink
                continue
            if self.bar is not None:
                self.bar.write("\n")
                self.bar.flush()
                self.bar = None
                if not line:  # the bar's own closing newline
                    continue
            sink.write(line + "\n")
        sink.flush()


def _print_train_workers_only() -> None:
    """Swap Ray's printer of the workers' output for ``_TrainWorkerOutput`` (Ray's handler registry is internal:
    where it is not as expected, Ray's printer stays)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    if any(name == "ray_print_logs" for name, _ in getattr(dispatcher, "handlers", ())):
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", _TrainWorkerOutput())


def launch(run: Any, ctx: Any) -> dict[str, str]:
    """Run the train stage in Ray Train workers and return global rank 0's artifacts, which it wrote to the run
    folder wherever it ran."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # a print in a worker stays a print, not a log line
    storage = ctx.out_dir / STORAGE
    shutil.rmtree(storage, ignore_errors=True)
    _connect(run)
    try:
        trainer = TorchTrainer(
            _work,
            train_loop_config={"spec": worker_spec.to_json(run, ctx), "storage": str(storage / "train")},
            scaling_config=ScalingConfig(num_workers=world_size(run),
                                         use_gpu=ray.cluster_resources().get("GPU", 0) > 0),
            run_config=RunConfig(name="train", storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=run.train.max_restarts),
                                 logging_config=ray.LoggingConfig(log_level="ERROR")),
        )
        try:
            trainer.fit()
        except ray.train.TrainingFailedError as e:
            raise DistributedError(_failure_line(run, e)) from e
    finally:
        ray.shutdown()  # stops the cluster started here; from another one, only disconnects
        shutil.rmtree(storage, ignore_errors=True)
    return worker_spec.take_back(ctx.out_dir)


def _failure_line(run: Any, error: Exception) -> str:
    """One line naming what failed. A worker that died or stopped answering (Ray's own error) goes before the errors
    it caused in the others (a peer gone from the process group); a worker's traceback is printed above by Ray."""
    failures = getattr(error, "worker_failures", None) or {}
    restarts = run.train.max_restarts
    after = f" after {restarts} restart(s)" if restarts else ""
    rank = min(failures, key=lambda r: (not type(failures[r]).__module__.startswith("ray."), r), default=None)
    if rank is None:
        return f"train: the Ray Train run failed{after}: {_first_line(error)}"
    failure = failures[rank]
    where = f"train: Ray Train worker {rank} of {world_size(run)}"
    if type(failure).__module__.startswith("ray."):
        return f"{where} died or stopped answering{after} (killed, out of memory, or its node lost); see Ray's logs"
    return f"{where} failed{after}: {type(failure).__name__}: {_first_line(failure)}"


def _first_line(error: Exception) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), "no message").strip()

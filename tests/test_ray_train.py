"""``train.engine=ray``: two Ray Train CPU workers on a Ray cluster on this machine train like one process with the
same global batch, through a worker killed mid-run, which Ray restarts from our last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TINY, conversation, run_cli, start_cli

STEPS = 32


def train_log(run_dir: Path) -> list[dict]:
    log = (run_dir / "train" / "loss.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, log) if "loss" in r]


@pytest.fixture(scope="module")
def common(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """The folder and settings every run shares: one conversation 48 times (as in tests/test_distributed.py, every
    step's batch is the same whichever rows a sampler deals to it), a checkpoint every 4 steps, no evaluation."""
    folder = tmp_path_factory.mktemp("ray")
    data = folder / "chats.jsonl"
    data.write_text((json.dumps(conversation(0)) + "\n") * 48, encoding="utf-8")
    return folder, (*TINY, f"dataset.path={data}", f"dataset.validation_path={data}", f"dataset.test_path={data}",
                    *(f"dataset.checks.{check}.action=warn" for check in ("duplicates", "near_duplicates", "leakage")),
                    "method.dropout=0", f"train.max_steps={STEPS}", "train.batch_size=1", "train.lr=2e-2",
                    "train.warmup_ratio=0", "train.save_steps=4", "train.eval_steps=1000", "stages=[validate,train]")


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """One Ray cluster for the module's runs (``train.ray_address``), as a user starts one with ``ray start``: each
    run then skips starting its own, and Ray's helper actors outlive the first run. Its log, and its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("ray-head") / "ray-start.log"
    with log.open("w") as out:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
                                 "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", "--block"],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})  # stop at once
    try:
        yield log, f"127.0.0.1:{port}"
    finally:
        head.terminate()  # with --block, it stops the processes it started
        head.wait(60)


@pytest.fixture(scope="module")
def cluster(head, one_process) -> str:
    """The cluster's address once it is up (it starts while the one-process run trains)."""
    log, address = head
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return address


@pytest.fixture(scope="module")
def one_process(common) -> list[float]:
    """The reference curve: one process, the global batch of two workers with half the accumulation."""
    folder, args = common
    run_cli(*args, "train.grad_accum=4", "hydra.run.dir=one", cwd=folder)
    losses = [r["loss"] for r in train_log(folder / "one")]
    assert len(losses) == STEPS and losses[0] - losses[-1] > 0.1
    return losses


def assert_same_curve(run_dir: Path, reference: list[float]) -> None:
    losses = [r["loss"] for r in train_log(run_dir)]
    assert len(losses) == STEPS
    assert max(abs(a - b) for a, b in zip(reference, losses, strict=True)) < 1e-3, (reference, losses)
    assert (run_dir / "train" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (run_dir / "train" / ".ray").exists() and not (run_dir / "train" / "artifacts.json").exists()


@pytest.mark.slow
def test_two_ray_workers_follow_the_one_process_curve_through_a_killed_worker(common, cluster, one_process):
    """One run shows both: two workers train like one process, and a worker killed after the first checkpoint is
    started again by Ray and resumes from it (a resumed run goes on bit-identical), so the whole curve is the
    reference's."""
    import psutil

    folder, args = common
    run_dir = folder / "killed"
    run = start_cli(*args, "train.grad_accum=2", "train.num_processes=2", "train.engine=ray", "train.max_restarts=1",
                    f"train.ray_address={cluster}", f"hydra.run.dir={run_dir}", cwd=folder)
    try:
        # once the first checkpoint is complete (4 steps logged, 28 to go), kill one worker as a crash would
        deadline = time.monotonic() + 300
        while not (run_dir / "train" / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file():
            assert run.poll() is None and time.monotonic() < deadline, run.communicate(timeout=1)
            time.sleep(0.05)
        workers = [p for p in psutil.process_iter(["cmdline"])
                   if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")]
        assert len(workers) == 2, workers
        workers[-1].kill()
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
    assert run.returncode == 0, (stdout, stderr)
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 4, metrics  # the restarted workers went on from our checkpoint
    assert "the workers started again" in stdout
    assert_same_curve(run_dir, one_process)
    assert metrics["processes"] == 2
    assert "RayTrainWorker pid=" not in stdout + stderr  # no per-worker prefixes

"""Two CPU workers train like one process with the same global batch, whoever starts them: torchrun on one node,
torchrun as two nodes (through a node killed mid-run), Ray Train on a local Ray cluster (through a worker killed
mid-run). Every run trains one conversation 48 times: whichever rows a sampler deals to a step, every step's batch is
the same, so the curves must agree to float precision (kept as duplicates, and as its own held-out split; no dropout,
whose masks each process draws from its own random stream)."""

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

import psutil
import pytest

from .conftest import TINY, conversation, run_cli, start_cli

STEPS = 16  # 12 of them after a worker or node is killed at the first checkpoint (every 4 steps)


def train_log(run_dir: Path) -> list[dict]:
    log = (run_dir / "train" / "loss.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, log) if "loss" in r]


def settings(data: Path, steps: int, save_steps: int) -> tuple[str, ...]:
    """Every run starts in ``data``'s folder, which the paths are relative to, as a user's are: the workers, wherever
    an engine starts them, read them as the command did."""
    data = Path(data.name)
    return (*TINY, f"dataset.path={data}", f"dataset.validation_path={data}", f"dataset.test_path={data}",
            *(f"dataset.checks.{check}.action=warn" for check in ("duplicates", "near_duplicates", "leakage")),
            "method.dropout=0", f"train.max_steps={steps}", "train.batch_size=1", "train.lr=2e-2",
            "train.warmup_ratio=0", f"train.save_steps={save_steps}", "train.eval_steps=1000",
            "stages=[validate,train]")


@pytest.fixture(scope="module")
def common(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """The folder and settings the runs below share: a checkpoint every 4 steps, no evaluation."""
    folder = tmp_path_factory.mktemp("workers")
    data = folder / "chats.jsonl"
    data.write_text((json.dumps(conversation(0)) + "\n") * 48, encoding="utf-8")
    return folder, settings(data, STEPS, save_steps=4)


@pytest.fixture(scope="module")
def one_process(common) -> list[dict]:
    """The reference: one process, the global batch of two workers with half the accumulation each."""
    folder, args = common
    run_cli(*args, "train.grad_accum=4", "hydra.run.dir=one", cwd=folder)
    log = train_log(folder / "one")
    assert len(log) == STEPS and log[0]["loss"] - log[-1]["loss"] > 0.1  # the curve falls
    return log


def assert_same_curve(run_dir: Path, reference: list[dict]) -> None:
    """Step by step (a loss not averaged over the workers would be 2× off, a gradient not averaged would take other
    steps), with the stage's files in place and the launcher's own gone."""
    log = train_log(run_dir)
    assert [r["step"] for r in log] == list(range(1, len(reference) + 1))
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(reference, log, strict=True)) < 1e-3, (reference, log)
    # the two workers split each step's rows (same epoch progress), rather than each taking a step of its own
    assert log[-1]["epoch"] == pytest.approx(reference[-1]["epoch"])
    assert json.loads((run_dir / "train" / "metrics.json").read_text())["processes"] == 2
    assert (run_dir / "train" / "adapter" / "adapter_model.safetensors").is_file()
    assert not [p.name for p in (run_dir / "train").glob("*") if p.name in (".launch.json", "artifacts.json", ".ray")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_node(run) -> None:
    """SIGKILL a node: its command, its torchrun agent and its workers (a worker runs in a session of its own)."""
    node = psutil.Process(run.pid)
    for process in [node, *node.children(recursive=True)]:
        process.kill()
    run.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A Ray cluster on this machine, as a user starts one with ``ray start`` (``train.ray_address``): its log and
    its address. Asked for before the reference run, it starts while that run trains."""
    port = free_port()
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


@pytest.mark.slow
def test_two_ray_workers_follow_the_one_process_curve_through_a_killed_worker(common, ray_head, one_process):
    """`train.engine=ray`: a worker killed after the first checkpoint is started again by Ray and resumes from it (a
    resumed run goes on bit-identical), so the whole curve is the reference's."""
    folder, args = common
    log, address = ray_head
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    run_dir = folder / "ray"
    run = start_cli(*args, "train.grad_accum=2", "train.num_processes=2", "train.engine=ray", "train.max_restarts=1",
                    f"train.ray_address={address}", f"hydra.run.dir={run_dir}", cwd=folder)
    try:
        # once the first checkpoint is complete (4 steps logged, 12 to go), kill one worker as a crash would
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
    assert "RayTrainWorker pid=" not in stdout + stderr  # no per-worker prefixes
    assert "PreemptionWatcher" not in stdout + stderr  # nor the C++ errors of Ray's own actors (the bar: below)
    assert_same_curve(run_dir, one_process)


@pytest.mark.slow
def test_two_nodes_on_one_host_train_like_one_process_and_resume_after_a_node_is_killed(common, one_process):
    """Two torchrun agents (`train.nnodes=2`, c10d rendezvous, gloo, one worker each) in one shared run folder, as
    two nodes on a shared file system. Node 1 started with other settings is refused; then node 1 is killed
    mid-training and node 0 fails with one line naming it; the run resumes from the last checkpoint on the one node
    left (the same global batch: 1 × 4 rows instead of 2 × 2), and the whole curve is the one-process run's."""
    folder, args = common
    two = (*args, "train.grad_accum=2", "train.nnodes=2", "hydra.run.dir=nodes")

    def nodes(*second_node: str) -> tuple:
        where = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        second = start_cli(*two, *second_node, cwd=folder, env={**where, "NODE_RANK": "1"})  # it may come first
        return start_cli(*two, cwd=folder, env={**where, "NODE_RANK": "0"}), second

    # a node started with other settings is refused, and node 0, waiting for it, stops with the same line
    first, second = nodes("train.lr=1e-3")
    said = [run.communicate(timeout=120)[1].strip().splitlines()[-1] for run in (first, second)]
    assert (first.returncode, second.returncode) == (2, 2)
    assert said == ["error: node 1: train.lr=0.001 here, but node 0 trains with train.lr=0.02; start every node "
                    "with the same command"] * 2

    first, second = nodes()
    loss_log = folder / "nodes" / "train" / "loss.jsonl"
    deadline = time.monotonic() + 300
    while not (loss_log.is_file() and loss_log.read_text().count('"loss"') >= 6):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    kill_node(second)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 2, stderr
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("error: train: node 1 of 2 stopped during training"), stderr
    assert "resumes from checkpoint-" in error
    assert json.loads((folder / "nodes" / "train" / "manifest.json").read_text())["status"] == "failed"

    resumed = run_cli(*args, "train.grad_accum=4", "hydra.run.dir=nodes", cwd=folder)
    assert "train (resuming)" in resumed.stderr + resumed.stdout
    metrics = json.loads((folder / "nodes" / "train" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 4 and metrics["global_step"] == STEPS
    log = train_log(folder / "nodes")
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one_process, log, strict=True)) < 1e-3, (one_process, log)


@pytest.mark.slow
def test_two_processes_with_loss_weights_follow_the_one_process_curve(tmp_path):
    """`train.num_processes=2` with per-turn loss weights: a step's sum of weights is the one over both processes, as
    its token count is (the unweighted path across processes: the Ray and two-node runs above)."""
    turns = iter([0.5, 3.0])
    row = {"messages": [{**m, "weight": next(turns)} if m["role"] == "assistant" else m
                        for m in conversation(0)["messages"]]}
    data = tmp_path / "weighted.jsonl"
    data.write_text((json.dumps(row) + "\n") * 48, encoding="utf-8")
    args = settings(data, 10, save_steps=100)
    run_cli(*args, "train.grad_accum=4", "hydra.run.dir=one", cwd=tmp_path)
    reference = train_log(tmp_path / "one")
    assert len(reference) == 10 and reference[0]["loss"] - reference[-1]["loss"] > 0.1
    proc = run_cli(*args, "train.grad_accum=2", "train.num_processes=2", "hydra.run.dir=two", cwd=tmp_path)
    assert_same_curve(tmp_path / "two", reference)
    assert proc.stdout.count("plan: ") == 1  # one process prints; the other stays quiet


def test_the_ray_driver_prints_the_train_workers_lines_with_their_bar_on_one_line(capsys):
    """What Ray forwards from the cluster, as its log monitor hands it over: a line per write, a bar's redraws each
    a line that starts with a carriage return (seen through a terminal, `script`, on 2026-12-06; the runs above read
    their output with universal newlines, where a carriage return is a newline)."""
    from finetune.launch.ray_train import _TrainWorkerOutput

    out = _TrainWorkerOutput()
    out({"actor_name": "TrainController", "is_err": True, "lines": ["core_worker.cc:2330: Actor 'PreemptionWatcher'"]})
    out({"actor_name": "RayTrainWorker", "is_err": False, "lines": ["plan: 3.3M parameters"]})
    out({"actor_name": "RayTrainWorker", "is_err": True, "lines": ["\rtrain:   0%", "\rtrain:  50%"]})
    out({"pid": "raylet", "is_err": True, "lines": ["A worker died or was killed"]})
    out({"actor_name": "RayTrainWorker", "is_err": True, "lines": ["\rtrain: 100%", ""]})
    out({"actor_name": "RayTrainWorker", "is_err": True, "lines": ["\rtrain:  50%"]})  # a bar cut short by a line
    out({"actor_name": "RayTrainWorker", "is_err": False, "lines": ["a worker failed; the workers started again"]})
    captured = capsys.readouterr()
    assert captured.out == "plan: 3.3M parameters\na worker failed; the workers started again\n"
    assert captured.err == "\rtrain:   0%\rtrain:  50%\rtrain: 100%\n\rtrain:  50%\n"

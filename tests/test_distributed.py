"""Two CPU processes (DDP over gloo), on one node or as two nodes, train like one process with the same global
batch."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import psutil
import pytest

from .conftest import TINY, conversation, run_cli, start_cli


def train_log(run_dir: Path) -> list[dict]:
    log = (run_dir / "train" / "loss.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, log) if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "loss-weights"])
def test_two_processes_follow_the_one_process_loss_curve(tmp_path, weighted):
    data = tmp_path / "chats.jsonl"
    # one conversation 48 times: whichever rows a sampler deals to a step, every step's batch is the same, so the
    # two curves must agree to float precision (kept as duplicates, and as its own held-out split; no dropout,
    # whose masks each process draws from its own random stream); with loss weights, the step's sum of weights is
    # the one over both processes, as the token count is
    row = conversation(0)
    if weighted:
        turns = iter([0.5, 3.0])
        row = {"messages": [{**m, "weight": next(turns)} if m["role"] == "assistant" else m for m in row["messages"]]}
    data.write_text((json.dumps(row) + "\n") * 48, encoding="utf-8")
    common = (*TINY, f"dataset.path={data}", f"dataset.validation_path={data}", f"dataset.test_path={data}",
              *(f"dataset.checks.{check}.action=warn" for check in ("duplicates", "near_duplicates", "leakage")),
              "method.dropout=0", "train.max_steps=10", "train.batch_size=1", "train.lr=2e-2",
              "train.warmup_ratio=0", "train.save_steps=100", "stages=[validate,train]")
    run_cli(*common, "train.grad_accum=4", "hydra.run.dir=one", cwd=tmp_path)
    proc = run_cli(*common, "train.grad_accum=2", "train.num_processes=2", "hydra.run.dir=two", cwd=tmp_path)
    log_one, log_two = train_log(tmp_path / "one"), train_log(tmp_path / "two")
    one, two = [r["loss"] for r in log_one], [r["loss"] for r in log_two]
    assert len(one) == len(two) == 10
    # the two workers split each step's rows (same epoch progress), rather than each taking a step of its own
    assert log_two[-1]["epoch"] == pytest.approx(log_one[-1]["epoch"])
    assert json.loads((tmp_path / "two" / "train" / "metrics.json").read_text())["processes"] == 2
    assert (tmp_path / "two" / "train" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "two" / "train" / ".launch.json").exists()
    # the curve falls, and the two agree step by step (a loss not averaged over the workers would be 2× off, a
    # gradient not averaged would take other steps)
    assert one[0] - one[-1] > 0.1
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-3, (one, two)
    assert proc.stdout.count("plan: ") == 1  # one process prints; the other stays quiet


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


@pytest.mark.slow
def test_two_nodes_on_one_host_train_like_one_process_and_resume_after_a_node_is_killed(tmp_path):
    """Two torchrun agents (`train.nnodes=2`, c10d rendezvous, gloo, one worker each) in one shared run folder, as
    two nodes on a shared file system: node 1 is killed mid-training and node 0 fails with one line naming it; the
    run resumes from the last checkpoint on the one node left (the same global batch: 1 × 4 rows instead of 2 × 2),
    and the whole curve is the one-process run's."""
    data = tmp_path / "chats.jsonl"
    data.write_text((json.dumps(conversation(0)) + "\n") * 48, encoding="utf-8")  # as above: every step's batch alike
    common = (*TINY, f"dataset.path={data}", f"dataset.validation_path={data}", f"dataset.test_path={data}",
              *(f"dataset.checks.{check}.action=warn" for check in ("duplicates", "near_duplicates", "leakage")),
              "method.dropout=0", "train.max_steps=16", "train.batch_size=1", "train.lr=2e-2",
              "train.warmup_ratio=0", "train.save_steps=4", "stages=[validate,train]")
    run_cli(*common, "train.grad_accum=4", "hydra.run.dir=one", cwd=tmp_path)
    two = (*common, "train.grad_accum=2", "train.nnodes=2", "hydra.run.dir=two")
    where = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    second = start_cli(*two, cwd=tmp_path, env={**where, "NODE_RANK": "1"})  # it may come first: it waits for node 0
    first = start_cli(*two, cwd=tmp_path, env={**where, "NODE_RANK": "0"})
    loss_log = tmp_path / "two" / "train" / "loss.jsonl"
    deadline = time.monotonic() + 300
    while not (loss_log.is_file() and loss_log.read_text().count('"loss"') >= 6):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.2)
    kill_node(second)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 2, stderr
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("error: train: node 1 of 2 stopped during training"), stderr
    assert "resumes from checkpoint-" in error
    assert json.loads((tmp_path / "two" / "train" / "manifest.json").read_text())["status"] == "failed"

    resumed = run_cli(*common, "train.grad_accum=4", "hydra.run.dir=two", cwd=tmp_path)
    assert "train (resuming)" in resumed.stderr + resumed.stdout
    one, two_then_one = train_log(tmp_path / "one"), train_log(tmp_path / "two")
    assert [r["step"] for r in two_then_one] == list(range(1, 17))
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two_then_one, strict=True)) < 1e-3, (one, two_then_one)
    metrics = json.loads((tmp_path / "two" / "train" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 4 and metrics["global_step"] == 16
    assert not (tmp_path / "two" / "train" / "artifacts.json").exists()

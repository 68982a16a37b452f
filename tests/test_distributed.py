"""Two CPU processes (DDP over gloo) train like one process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import TINY, conversation, run_cli


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

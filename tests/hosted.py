"""What the hosted backends' tests share: a run's files as text (for canary keys), a run interrupted with Ctrl-C
as soon as its job is submitted, rows our data checks accept but a provider's format rules refuse, and the
support_bot recipe run through a backend."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from .conftest import run_cli, start_cli


def files_text(run_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())


def interrupt_once_submitted(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, str]:
    """``python -m finetune ARGS`` (run directory ``cwd/run``), Ctrl-C once ``train/job.json`` exists; returns
    (the job id, stdout + stderr) after checking the run exited 130."""
    proc = start_cli(*args, cwd=cwd, env=env)
    job_file = cwd / "run" / "train" / "job.json"
    deadline = time.monotonic() + 120
    while not job_file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    return json.loads(job_file.read_text())["id"], out + err


def ends_with_a_question(i: int) -> dict:
    """Allowed by the dataset's structure check, refused by Gemini and Bedrock: the last turn must be the model's."""
    return {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"A{i}."},
                         {"role": "user", "content": "And then?"}]}


def calls_a_tool(i: int) -> dict:
    """A tool call and its result: formats without tools cannot express it."""
    call = {"type": "function", "function": {"name": "lookup", "arguments": {"order": i}}}
    return {"messages": [{"role": "user", "content": f"Where is order {i}?"},
                         {"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "content": "shipped"}, {"role": "assistant", "content": "It shipped."}]}


def run_support_bot(backend: list[str], cwd: Path, env: dict[str, str], judge: bool = True) -> Path:
    """The issue's command: the real recipe (SmolLM2's tokenizer, the Japanese support data, its judge) with only
    the backend changed, on one sample (the judge grading it, not comparing: test_evaluate and test_smollm2 ask
    for the pairwise verdict; ``judge=False`` leaves it out, for a backend whose answers it would grade as it does
    another's); checks that it ran validate → train → evaluate → card with the recipe's metrics and returns the run
    directory."""
    run_dir = cwd / "run"
    run_cli("+recipe=support_bot", *backend, "backend.submit=true", "backend.poll_interval_s=0.05",
            "eval.max_samples=1", "eval.max_new_tokens=24", "eval.judge.max_samples=1", "eval.judge.pairwise=false",
            *([] if judge else ["eval.judge.gguf=null"]), f"hydra.run.dir={run_dir}", cwd=cwd, env=env)
    done = {p.parent.name for p in run_dir.glob("*/manifest.json") if json.loads(p.read_text())["status"] == "complete"}
    assert done == {"validate", "train", "evaluate", "card"}
    metrics = json.loads((run_dir / "evaluate" / "eval.json").read_text())["metrics"]
    assert "bleu" in metrics and ("judge: overall" in metrics) == judge
    assert any("never asks for credentials" in row for row in metrics)  # the recipe's style rule
    return run_dir

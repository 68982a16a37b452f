"""Faults a real run meets: SIGKILL inside each stage, a full disk, a second run into the same directory, Ctrl-C,
and secrets in the environment. Each is survived: the next run completes with the artifacts an uninterrupted
run makes (same sha256, CPU, same seed), nothing partial sits under a final name, and no secret is written."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from finetune.pipeline.manifest import sha256_path

from .conftest import STAGES, TINY, run_cli, run_cli_in_process, start_cli
from .faults import arm

pytestmark = pytest.mark.slow

RUN = [*TINY, "train.max_steps=4", "train.save_steps=2"]
ARTIFACTS = ("validate/train.jsonl", "validate/validation.jsonl", "validate/test.jsonl",
             "train/adapter/adapter_model.safetensors", "merge/model/model.safetensors", "export/model-f16.gguf")


def args(dataset: Path, run_dir: Path, *more: str) -> list[str]:
    return [*RUN, f"dataset.path={dataset}", f"hydra.run.dir={run_dir}", *more]


def hashes(run_dir: Path, stages: tuple[str, ...] = STAGES) -> dict[str, str]:
    return {name: sha256_path(run_dir / name) for name in ARTIFACTS if name.split("/")[0] in stages}


def through(stage: str) -> tuple[str, ...]:
    """The stages a faulted run is given: those up to the one the fault is in. What runs after it reads that
    stage's artifacts, which are checked to be the uninterrupted run's, byte for byte; test_reproducible shows
    that the same inputs make the same downstream artifacts."""
    return STAGES[: STAGES.index(stage) + 1]


def only(stages: tuple[str, ...]) -> str:
    return f"stages=[{','.join(stages)}]"


def status(run_dir: Path, stage: str) -> str:
    return json.loads((run_dir / stage / "manifest.json").read_text())["status"]


def completed_upstream(reference: Path, run_dir: Path, stage: str) -> tuple[str, ...]:
    """``run_dir`` as an earlier run of the same command left it when it got as far as ``stage``: the reference
    run's folders of the stages before it (complete, with the same inputs). Returns their names."""
    upstream = through(stage)[:-1]
    for name in upstream:
        shutil.copytree(reference / name, run_dir / name)
    return upstream


@pytest.fixture
def dataset(tiny_run) -> Path:
    """The reference run's own data: a faulted run must end with the reference's artifacts."""
    return tiny_run.dataset


@pytest.fixture
def reference(tiny_run) -> Path:
    """The session's uninterrupted tiny run, made with umask 002 (so file modes show whether the umask was
    followed)."""
    return tiny_run.dir


def test_outputs_get_the_permissions_the_umask_gives(reference):
    modes = {str(p.relative_to(reference)): oct(p.stat().st_mode & 0o777) for p in reference.rglob("*")}
    wrong = {path: mode for path, mode in modes.items()
             if mode != oct(0o775 if (reference / path).is_dir() else 0o664)}
    assert not wrong


@pytest.mark.parametrize("where", ["validate:end", "train:checkpoint", "train:end", "merge:end", "evaluate:end",
                                   "export:end"])
def test_sigkill_inside_a_stage_then_the_same_command_completes_with_identical_artifacts(
        where, dataset, reference, tmp_path):
    run_dir = tmp_path / "run"
    stage = where.split(":")[0]
    done_before, stages = completed_upstream(reference, run_dir, stage), through(stage)
    killed = start_cli(*args(dataset, run_dir, only(stages)), cwd=tmp_path, before=(arm, (where,)))
    _, stderr = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, stderr[-3000:]
    assert status(run_dir, stage) == "running"

    proc = run_cli(*args(dataset, run_dir, only(stages)), cwd=tmp_path)
    assert (proc.stdout + proc.stderr).count("complete with the same inputs, skipped") == len(done_before)
    assert all(status(run_dir, s) == "complete" for s in stages)
    assert hashes(run_dir, stages) == hashes(reference, stages)


@pytest.mark.parametrize(("stage", "limit_mb", "final"), [
    ("train", 1, "train/checkpoints/checkpoint-2"),  # the checkpoint's tokenizer.json is 3.5 MB
    ("merge", 8, "merge/model"),  # model.safetensors is 16 MB
    ("export", 4, "export/model-f16.gguf"),  # the GGUF is 8 MB
])
def test_a_full_disk_fails_clearly_leaves_no_partial_file_and_the_next_run_completes(
        stage, limit_mb, final, dataset, reference, tmp_path):
    run_dir = tmp_path / "run"
    completed_upstream(reference, run_dir, stage)
    stages = through(stage)
    proc = run_cli(*args(dataset, run_dir, only(stages)), cwd=tmp_path, check=False, file_size_mb=limit_mb)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: stage {stage}: cannot write to {run_dir / stage} (File too large); free space or raise the "
        "limit, then run the same command again"
    )
    assert status(run_dir, stage) == "failed"
    assert not (run_dir / final).exists()  # nothing partial under a final name

    run_cli(*args(dataset, run_dir, only(stages)), cwd=tmp_path)
    assert all(status(run_dir, s) == "complete" for s in stages)
    assert hashes(run_dir, stages) == hashes(reference, stages)


def _wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_second_run_into_the_same_directory_is_refused_and_ctrl_c_stops_the_first_resumably(dataset, tmp_path):
    run_dir = tmp_path / "run"
    # 240 steps of the tiny model (~6 s of training alone): the second run is refused in this process, within a
    # second of the first checkpoint (step 40), while the first still has 200 steps to go; the resumed run trains
    # only those.
    long = args(dataset, run_dir, "stages=[validate,train]", "train.max_steps=240", "train.save_steps=40",
                "train.grad_accum=1")
    import finetune.stages  # noqa: F401 - what the refusal imports, imported before the clock starts

    first = start_cli(*long, cwd=tmp_path)
    checkpoint = run_dir / "train" / "checkpoints" / "checkpoint-40" / "trainer_state.json"
    _wait_for(checkpoint.is_file, "the checkpoint at step 40")

    second = run_cli_in_process(*long, cwd=tmp_path, check=False)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"error: hydra.run.dir: {run_dir} is in use by another finetune run; wait for it to finish or choose "
        "another directory"
    )

    assert first.poll() is None, "the first run ended before its interrupt: give it more steps"
    first.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, stderr = first.communicate(timeout=30)  # fails with every thread's stack (it hung closing TensorBoard: below)
    assert time.monotonic() - t0 < 10
    assert first.returncode == 130
    assert stderr.strip().splitlines()[-1] == "error: interrupted; run the same command again to resume"
    assert status(run_dir, "train") == "interrupted"

    resumed = run_cli(*long, cwd=tmp_path)
    assert "resuming from" in resumed.stdout
    assert json.loads((run_dir / "train" / "metrics.json").read_text())["global_step"] == 240


def test_tensorboard_closes_within_seconds_after_a_ctrl_c_lost_its_writers_wake_up(tmp_path):
    """A KeyboardInterrupt raised inside Condition.notify, between waking the writer thread and dropping its waiter,
    leaves that waiter first in the queue (CPython gh-92530); the next notify, close()'s, releases it and the thread
    sleeps on. Seen in CI as a run that outlived its Ctrl-C by 30 s in `tensorboard.close()`; here that state is made
    by hand."""
    import threading

    from finetune.backends.local_train import tensorboard_writer

    writer = tensorboard_writer(tmp_path / "tensorboard")
    writer.add_scalar("loss", 1.0, 0)
    time.sleep(0.5)  # the writer thread has written it and waits for the next item or its flush time
    queue = writer.file_writer.event_writer._async_writer._byte_queue
    stale = threading.Lock()
    stale.acquire()  # a woken waiter: the thread acquired it when it woke
    with queue.mutex:
        queue.not_empty._waiters.appendleft(stale)
    t0 = time.monotonic()
    writer.close()
    assert time.monotonic() - t0 < 5  # TensorBoard's default flush interval waited 120 s
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_secrets_never_reach_the_run_directory(dataset, tmp_path):
    canaries = {"HF_TOKEN": "hf_canary_1111", "OPENAI_API_KEY": "sk-canary-2222", "MY_SERVICE_API_KEY": "canary3333",
                "GITHUB_TOKEN": "ghp_canary4444", "DB_PASSWORD": "canary5555"}
    run_dir = tmp_path / "run"
    cli_secret = "canary-cli-6666"
    run_cli(*args(dataset, run_dir), f"+hydra.job.env_set.WANDB_API_KEY={cli_secret}", cwd=tmp_path,
            env=canaries)
    assert all(status(run_dir, s) == "complete" for s in STAGES)
    assert (run_dir / ".hydra" / "hydra.yaml").read_text().count("WANDB_API_KEY") >= 1
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (*canaries.values(), cli_secret):
                assert secret.encode() not in data, f"{secret} in {path}"

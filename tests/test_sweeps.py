"""Sweeps through the CLI on the tiny model: the summary a multirun ends with (best job, failed rows, plot), a
rerun that skips finished jobs, the Optuna search (resumed after Ctrl-C, pruning), and submitit's local launcher
running jobs in parallel processes."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest

from .conftest import TINY, run_cli, start_cli

QUICK = [*TINY, "stages=[validate,train]"]


def summary(sweep: Path) -> dict:
    return json.loads((sweep / "summary.json").read_text())


def rows_by_job(sweep: Path) -> dict[str, dict]:
    return {row["job"]: row for row in summary(sweep)["rows"]}


def manifests(job: Path) -> dict[str, dict]:
    return {m.parent.name: json.loads(m.read_text()) for m in sorted(job.glob("*/manifest.json"))}


def study(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="finetune", storage=f"sqlite:///{sweep / 'optuna.db'}")


@pytest.fixture(scope="module")
def grid(tmp_path_factory, dataset) -> tuple[Path, subprocess.CompletedProcess, list[str]]:
    """A 2×2 grid over rank and learning rate, through evaluate, ranked by the tuned model's perplexity."""
    work = tmp_path_factory.mktemp("grid")
    sweep = work / "sweep"
    args = ["-m", *TINY, f"dataset.path={dataset}", "stages=[validate,train,merge,evaluate]", "train.max_steps=4",
            "train.save_steps=2", "eval.metrics=[perplexity,rouge]", "sweep.metric=perplexity", "method.r=4,8",
            "train.lr=1e-4,5e-4", f"hydra.sweep.dir={sweep}"]
    return sweep, run_cli(*args, cwd=work), args


def test_grid_summary_marks_the_best_job_by_the_configured_metric(grid):
    sweep, proc, _ = grid
    result = summary(sweep)
    assert result["metric"] == "perplexity" and result["direction"] == "minimize"  # from the metric's registry
    assert result["swept"] == ["method.r", "train.lr"]
    rows = result["rows"]
    assert {(row["method.r"], row["train.lr"]) for row in rows} == {(4, 1e-4), (4, 5e-4), (8, 1e-4), (8, 5e-4)}
    for row in rows:  # each row's numbers are that job's own
        evaluation = json.loads((sweep / row["job"] / "evaluate" / "eval.json").read_text())
        train = json.loads((sweep / row["job"] / "train" / "metrics.json").read_text())
        assert row["status"] == "complete"
        assert row["perplexity"] == evaluation["metrics"]["perplexity"]["tuned"]
        assert row["eval_loss"] == train["last_eval_loss"] and row["tokens_per_s"] == train["tokens_per_s"]
        assert row["time_s"] > 0
    best = min(rows, key=lambda row: row["perplexity"])
    assert result["best_job"] == best["job"] and [row["best"] for row in rows].count(True) == 1
    with (sweep / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [row["job"] for row in table] == [row["job"] for row in rows]
    assert [row["best"] for row in table].count("True") == 1
    assert {"method.r", "train.lr", "perplexity", "rougeL", "eval_loss", "train_loss", "tokens_per_s", "time_s",
            "status"} <= set(table[0])
    markdown = (sweep / "summary.md").read_text()
    best_number = best["job"].split("_", 1)[0]
    assert f"| **{best_number}** ★ | complete |" in markdown and "Best by perplexity (minimize)" in markdown
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweep / "report.html").is_file()
    assert "sweep summary:" in proc.stdout


def test_rerunning_a_finished_sweep_skips_its_jobs(grid):
    sweep, _, args = grid
    before = {job.name: manifests(job) for job in sweep.iterdir() if (job / "outcome.json").is_file()}
    best, written = summary(sweep)["best_job"], (sweep / "summary.json").stat().st_mtime_ns
    proc = run_cli(*args, cwd=sweep.parent)
    assert proc.stdout.count("complete with the same inputs, skipped") == 4 * 4  # 4 jobs × 4 stages
    after = {job.name: manifests(job) for job in sweep.iterdir() if (job / "outcome.json").is_file()}
    assert after == before and len(after) == 4  # nothing ran again: every manifest is as it was
    assert (sweep / "summary.json").stat().st_mtime_ns > written and summary(sweep)["best_job"] == best


def test_a_failed_job_is_a_failed_row_and_the_sweep_goes_on(dataset, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *QUICK, f"dataset.path={dataset}", "train.max_steps=2", "method.r=0,4",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=False)
    assert proc.returncode == 1  # the sweep finished, and says that a job failed
    assert "error: method.r=0: must be in [1, 1024]" in proc.stderr
    rows = summary(sweep)["rows"]
    assert [(row["method.r"], row["status"]) for row in rows] == [(0, "failed"), (4, "complete")]
    assert rows[0]["error"] == "method.r=0: must be in [1, 1024]" and rows[0]["eval_loss"] is None
    assert summary(sweep)["best_job"] == rows[1]["job"]
    failed = sweep / rows[0]["job"]
    assert sorted(p.name for p in failed.iterdir()) == ["outcome.json"]  # refused: nothing else was written
    assert "method.r=0: must be in [1, 1024]" in (sweep / "summary.md").read_text()


SEARCH = [*QUICK, "train.eval_steps=2", "hparams_search=optuna", "method.r=choice(4,8,16)",
          "train.lr=tag(log,interval(1e-5,1e-3))"]


def test_optuna_search_interrupted_in_its_second_trial_resumes_there(dataset, tmp_path):
    sweep = tmp_path / "sweep"
    # 60 steps a trial, an eval and a checkpoint every 10 (no pruning to feed): the Ctrl-C lands in the second
    # trial within a poll of its first checkpoint, 50 steps before its end
    search = [arg if arg != "train.eval_steps=2" else "train.eval_steps=10" for arg in SEARCH]
    args = ["-m", *search, f"dataset.path={dataset}", "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner.name=none",
            "train.max_steps=60", "train.save_steps=10", "train.grad_accum=1", f"hydra.sweep.dir={sweep}"]
    proc = start_cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + 300
    # a complete checkpoint (trainer_state.json is written last): one cut off mid-save is dropped on Ctrl-C
    saved = "1_*/train/checkpoints/checkpoint-10/trainer_state.json"
    while not list(sweep.glob(saved)) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    states = [t.state.name for t in study(sweep).trials]
    assert states == ["COMPLETE", "RUNNING"]
    [second] = sweep.glob("1_*")
    first = {job.name: manifests(job) for job in sweep.glob("0_*")}

    resumed = run_cli(*args, cwd=tmp_path)
    trials = study(sweep).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 and [t.number for t in trials] == [0, 1, 2]
    assert {job.name: manifests(job) for job in sweep.glob("0_*")} == first  # not run again
    assert (second / "finetune.log").read_text().count("── stage train (resuming)") == 1  # the same folder, resumed
    assert json.loads((second / "train" / "metrics.json").read_text())["resumed_from_step"] >= 10
    assert "search resumed" in resumed.stdout + resumed.stderr
    rows = summary(sweep)["rows"]
    assert [row["job"].split("_", 1)[0] for row in rows] == ["0", "1", "2"]
    for row, trial in zip(rows, trials, strict=True):  # the study's values are the summary's
        assert row["eval_loss"] == pytest.approx(trial.value)
        assert (row["method.r"], row["train.lr"]) == (trial.params["method.r"], pytest.approx(trial.params["train.lr"]))
        assert trial.params["method.r"] in (4, 8, 16) and 1e-5 <= trial.params["train.lr"] <= 1e-3
    assert summary(sweep)["best_job"] == rows[min(range(3), key=lambda i: trials[i].value)]["job"]


def test_pruned_trials_stop_training_at_an_eval(dataset, tmp_path):
    sweep = tmp_path / "sweep"
    # Every eval loss of the untrained tiny model is ~10.8: a threshold of 5 prunes each trial at its first eval.
    run_cli("-m", *SEARCH, f"dataset.path={dataset}", "hydra.sweeper.n_trials=2", "train.max_steps=6",
            "train.save_steps=2", "hydra.sweeper.pruner.name=threshold", "hydra.sweeper.pruner.upper=5",
            f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    trials = study(sweep).trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [2] for t in trials)
    rows = summary(sweep)["rows"]
    assert len(rows) == 2
    for row in rows:
        job = sweep / row["job"]
        assert row["status"] == "pruned" and row["eval_loss"] > 5
        assert json.loads((job / "train" / "manifest.json").read_text())["status"] == "stopped"
        assert not (job / "train" / "metrics.json").exists()  # training stopped at step 2 of 6


def _log_span(job: Path) -> tuple[datetime, datetime]:
    stamps = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
              for line in (job / "finetune.log").read_text().splitlines() if line.startswith("[20")]
    return stamps[0], stamps[-1]


def test_submitit_local_launcher_runs_jobs_in_parallel_processes(dataset, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    run_cli("-m", "hydra/launcher=submitit_local", "+resources=local_cpu", *QUICK, f"dataset.path={dataset}",
            "train.max_steps=4", "method.r=4,8", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    rows = summary(sweep)["rows"]
    assert [(row["method.r"], row["status"]) for row in rows] == [(4, "complete"), (8, "complete")]
    workers = sorted((sweep / ".submitit").glob("*/*_0_log.out"))
    assert len(workers) == 2 and all("Job completed successfully" in w.read_text() for w in workers)
    (start_a, end_a), (start_b, end_b) = (_log_span(sweep / row["job"]) for row in rows)
    assert start_b < end_a and start_a < end_b  # the two jobs ran at the same time


@pytest.mark.parametrize(("resources", "asked"), [("slurm_1gpu", ("nodes: 1", "gpus_per_node: 1")),
                                                  ("slurm_2nodes", ("nodes: 2", "tasks_per_node: 1"))])
def test_slurm_launcher_takes_the_resources_group(resources, asked, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = run_cli("hydra/launcher=submitit_slurm", f"+resources={resources}", "--cfg", "hydra", cwd=tmp_path)
    launcher = proc.stdout.split("launcher:", 1)[1]
    assert "SlurmLauncher" in launcher and "max_num_timeout: 3" in launcher
    assert all(f"\n    {line}\n" in launcher for line in asked), launcher


def test_multi_objective_search_keeps_both_values_and_does_not_prune(dataset, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *SEARCH, f"dataset.path={dataset}", "hydra.sweeper.n_trials=2", "train.max_steps=2",
                   "hydra.sweeper.objectives=[eval_loss,tokens_per_s]", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    searched = study(sweep)
    assert [d.name for d in searched.directions] == ["MINIMIZE", "MAXIMIZE"] and len(searched.trials) == 2
    for row, trial in zip(summary(sweep)["rows"], searched.trials, strict=True):
        assert trial.values == [pytest.approx(row["eval_loss"]), pytest.approx(row["tokens_per_s"])]
    assert "pruning is off" in proc.stdout + proc.stderr
    assert not any(t.intermediate_values for t in searched.trials)


@pytest.mark.quick
def test_a_pruner_is_refused_when_unknown_or_missing_what_it_needs():
    from finetune.sweep.optuna_search import SearchError, _check_pruner
    from finetune.sweep.trial import PRUNERS

    settings = {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0, "upper": None}
    assert _check_pruner(settings) and not _check_pruner({**settings, "name": "none"})
    with pytest.raises(SearchError, match=r"pruner.name='hyperband': expected median, threshold or none$"):
        _check_pruner({**settings, "name": "hyperband"})
    with pytest.raises(SearchError, match="pruner.upper: the threshold pruner needs an upper eval loss"):
        _check_pruner({**settings, "name": "threshold"})
    assert {type(p.build({**settings, "upper": 5.0})).__name__ for p in PRUNERS.values()} == {
        "MedianPruner", "ThresholdPruner", "NopPruner"}

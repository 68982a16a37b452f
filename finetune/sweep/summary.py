"""What a sweep found, written into the sweep folder when a multirun ends: ``summary.csv``, ``summary.md`` and
``summary.json`` (one row per job: the overrides that vary, the metrics, time and status, the best job marked),
``summary.png`` (the metric against the swept values) and ``report.html``.

Everything is read back from the job folders (each job's ``outcome.json``, manifests and metrics files), so the
summary is the same whichever launcher ran the jobs, in this process or on a cluster, and rerunning the sweep
into the same folder rewrites it with every job, old and new.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from finetune.curves import read_log, save_png
from finetune.pipeline.manifest import MANIFEST_NAME, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

OUTCOME_NAME = "outcome.json"  # a job's status, error and overrides, written by the CLI at the job's end
# Metrics of train/metrics.json, and which way is better; evaluate's metrics say so themselves
TRAIN_METRICS = {"eval_loss": "minimize", "train_loss": "minimize", "tokens_per_s": "maximize"}

failed_jobs = 0  # jobs that failed in the multirun that just ended: the CLI then exits 1


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _job_number(folder: Path) -> float:
    head = folder.name.split("_", 1)[0]
    return int(head) if head.isdigit() else math.inf


def job_folders(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders in job order (a launcher's own folders, like .submitit, start with a dot)."""
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and (
        (p / OUTCOME_NAME).is_file() or (p / ".hydra").is_dir())), key=lambda p: (_job_number(p), p.name))


def metric_values(job_dir: Path) -> tuple[dict[str, float | None], dict[str, str]]:
    """A job's metrics by name (eval_loss is the best checkpoint's when one was kept, else the last; for a trial
    stopped by the pruner, the last one in its loss log), and which direction is better for each."""
    train = _read_json(job_dir / "train" / "metrics.json") or {}
    best = train.get("best_eval_loss")
    if best is None and not train:
        _, evals = read_log(job_dir / "train" / "loss.jsonl")
        best = evals[-1]["eval_loss"] if evals else None
    values = {"eval_loss": best if best is not None else train.get("last_eval_loss"),
              "train_loss": train.get("train_loss"), "tokens_per_s": train.get("tokens_per_s")}
    directions = dict(TRAIN_METRICS)
    evaluation = _read_json(job_dir / "evaluate" / "eval.json") or {}
    for name, metric in evaluation.get("metrics", {}).items():
        values[name] = metric.get("tuned")
        directions[name] = "maximize" if metric.get("higher_is_better") else "minimize"
    return values, directions


def _status(job_dir: Path) -> tuple[str, str | None]:
    """From ``outcome.json``; a job killed before writing it is judged by its stages' manifests."""
    if outcome := _read_json(job_dir / OUTCOME_NAME):
        return outcome["status"], outcome.get("error")
    manifests = [_read_json(m) for m in sorted(job_dir.glob(f"*/{MANIFEST_NAME}"))]
    failed = [m for m in manifests if m["status"] == "failed"]
    if failed:
        return "failed", failed[0].get("error")
    if any(m["status"] in ("running", "interrupted") for m in manifests):
        return "interrupted", None
    return ("complete" if manifests else "not started"), None


def _overrides(job_dir: Path) -> dict[str, str]:
    outcome = _read_json(job_dir / OUTCOME_NAME)
    saved = job_dir / ".hydra" / "overrides.yaml"
    given = outcome["overrides"] if outcome else (OmegaConf.to_container(OmegaConf.load(saved)) if saved.is_file()
                                                  else [])
    pairs = (item.lstrip("+~").split("=", 1) for item in given if "=" in item)
    return {key: _typed(value) for key, value in pairs if not key.startswith("hydra.")}


def _typed(text: str) -> int | float | str:
    """An override's value as a number when it is one (rank 8, lr 1e-4), so that tables format and plots place
    it as a number."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _seconds(job_dir: Path) -> float | None:
    """Time spent in the job's stages, from their manifests: a rerun that skips them does not count as work."""
    durations = [m.get("duration_s") for m in map(_read_json, job_dir.glob(f"*/{MANIFEST_NAME}"))]
    return round(sum(d for d in durations if d), 1) if any(durations) else None


def collect(sweep_dir: Path, metric: str, direction: str) -> dict[str, Any]:
    """The summary as data: the rows, the overrides that vary across jobs (their columns) and those that do not,
    the metric, its direction, and the best job."""
    jobs = job_folders(sweep_dir)
    overrides = {job: _overrides(job) for job in jobs}
    keys = list(dict.fromkeys(key for given in overrides.values() for key in given))
    swept = [key for key in keys if len({given.get(key) for given in overrides.values()}) > 1]
    fixed = {key: value for key, value in next(iter(overrides.values()), {}).items() if key not in swept}
    rows, directions = [], dict(TRAIN_METRICS)
    for job in jobs:
        values, known = metric_values(job)
        directions.update(known)
        status, error = _status(job)
        rows.append({"job": job.name, "status": status, **{key: overrides[job].get(key) for key in swept},
                     **values, "time_s": _seconds(job), "error": error})
    if direction == "auto":
        direction = directions.get(metric, "minimize")
    scored = [row for row in rows if row["status"] == "complete" and isinstance(row.get(metric), int | float)]
    pick = min if direction == "minimize" else max
    best = pick(scored, key=lambda row: row[metric])["job"] if scored else None
    for row in rows:
        row["best"] = row["job"] == best
    not_metrics = ("job", "status", "best", "time_s", "error", *swept)
    metrics = [name for name in dict.fromkeys([metric, *TRAIN_METRICS, *(k for row in rows for k in row)])
               if name not in not_metrics]
    columns = ["job", "status", *swept, *metrics, "time_s", "error"]
    return {"metric": metric, "direction": direction, "best_job": best, "swept": swept, "fixed": fixed,
            "columns": columns, "rows": rows}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def to_csv(summary: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*summary["columns"], "best"])
    for row in summary["rows"]:
        writer.writerow([*("" if row.get(c) is None else row[c] for c in summary["columns"]), row["best"]])
    return out.getvalue()


def to_markdown(summary: dict[str, Any], sweep_dir: Path) -> str:
    rows, metric, best = summary["rows"], summary["metric"], summary["best_job"]
    counts = {status: sum(row["status"] == status for row in rows) for status in dict.fromkeys(
        row["status"] for row in rows)}
    lines = [f"# Sweep {sweep_dir.name}", "",
             f"{len(rows)} jobs: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + ".",
             f"Best by {metric} ({summary['direction']}): " + (
                 f"**{best}** ({metric} = {_cell(next(r for r in rows if r['best'])[metric])})" if best else
                 "none (no complete job has this metric)") + "."]
    if summary["fixed"]:
        lines.append("Same in every job: " + ", ".join(f"`{k}={v}`" for k, v in summary["fixed"].items()) + ".")
    columns = [c for c in summary["columns"] if c != "error" or any(row["error"] for row in rows)]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row.get(c)).replace("|", "\\|") for c in columns]
        cells[0] = cells[0].split("_", 1)[0] if summary["swept"] else cells[0]  # the number; the rest is columns
        if row["best"]:
            cells[0] = f"**{cells[0]}** ★"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def plot(summary: dict[str, Any], path: Path) -> None:
    """The metric against the first numeric swept value (train.lr when swept, on a log scale when its values span
    10× or more), one line per value of the next swept key (method.r); the best job starred."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    metric, swept = summary["metric"], summary["swept"]
    done = [row for row in summary["rows"] if row["status"] == "complete" and row.get(metric) is not None]
    numeric = [key for key in swept if all(_number(row.get(key)) is not None for row in done)]
    x_key = "train.lr" if "train.lr" in numeric else (numeric[0] if numeric else None)
    group_key = next((key for key in swept if key != x_key), None)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if x_key is None:  # nothing numeric swept: one bar per job
        ax.bar(range(len(done)), [row[metric] for row in done])
        ax.set_xticks(range(len(done)), [row["job"] for row in done], rotation=30, ha="right", fontsize=7)
    else:
        groups = dict.fromkeys(row.get(group_key) for row in done) if group_key else {None: None}
        for group in groups:
            points = sorted((_number(row[x_key]), row[metric]) for row in done if row.get(group_key) == group)
            ax.plot(*zip(*points, strict=True), "o-", label=f"{group_key}={group}" if group_key else metric)
        xs = [_number(row[x_key]) for row in done]
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(x_key)
        for row in done:
            if row["best"]:
                ax.plot(_number(row[x_key]), row[metric], "*", ms=18, color="gold", mec="black", label="best")
        ax.legend(fontsize=8)
    ax.set_ylabel(f"{metric} ({summary['direction']})")
    if isinstance(ax.yaxis.get_major_formatter(), ScalarFormatter):
        ax.yaxis.get_major_formatter().set_useOffset(False)  # 10.792, not +1.079e1 and 0.002
    ax.set_title(f"{len(done)} complete of {len(summary['rows'])} jobs")
    ax.grid(alpha=0.3)
    save_png(fig, path)


def write_summary(sweep_dir: Path, metric: str, direction: str) -> dict[str, Any]:
    """Write summary.csv, .md, .json, .png and report.html into the sweep folder; returns the summary."""
    from finetune.report import write_sweep_report

    summary = collect(sweep_dir, metric, direction)
    atomic_write_text(sweep_dir / "summary.csv", to_csv(summary))
    atomic_write_text(sweep_dir / "summary.md", to_markdown(summary, sweep_dir))
    atomic_write_json(sweep_dir / "summary.json", summary)
    plot(summary, sweep_dir / "summary.png")
    write_sweep_report(sweep_dir)
    return summary


class WriteSweepSummary(Callback):
    """Hydra callback: the summary at the end of every multirun (grid or search, any launcher)."""

    def on_multirun_end(self, config: DictConfig, **_: Any) -> None:
        global failed_jobs
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        metric = OmegaConf.select(config, "sweep.metric", default="eval_loss")
        direction = OmegaConf.select(config, "sweep.direction", default="auto")
        summary = write_summary(sweep_dir, metric, direction)
        failed_jobs = sum(row["status"] == "failed" for row in summary["rows"])
        print(to_markdown(summary, sweep_dir).split("\n\n", 1)[1])  # the counts, the best job and the table
        print(f"sweep summary: {sweep_dir / 'summary.md'} (also .csv, .json, .png, report.html)")

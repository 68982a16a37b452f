"""What the loss log says about a run: ``training_curves.png`` and the over-fitting flag.

The flag follows the usual rule of thumb: the last eval loss more than ``ratio`` times the train loss around
the same step, or the eval loss rising at ``rising`` evaluations in a row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train records with ``loss``, eval records with ``eval_loss``) from ``loss.jsonl``."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    return [r for r in records if "loss" in r], [r for r in records if "eval_loss" in r]


def _train_loss_near(train: list[dict[str, Any]], step: int, window: int = 5) -> float | None:
    """The mean train loss of the last ``window`` logged steps up to ``step`` (one step's loss is noisy)."""
    before = [r["loss"] for r in train if r["step"] <= step][-window:]
    return sum(before) / len(before) if before else None


def overfitting(train: list[dict[str, Any]], evals: list[dict[str, Any]], ratio: float, rising: int
                ) -> dict[str, Any]:
    """The flag and the figures it was decided on."""
    result: dict[str, Any] = {"flag": False, "assessed": bool(evals), "reasons": [], "ratio_limit": ratio,
                              "rising_limit": rising}
    if not evals:  # no validation split, or training ended before the first evaluation
        return result
    last = evals[-1]
    near = _train_loss_near(train, last["step"])
    if near:
        result["eval_train_ratio"] = round(last["eval_loss"] / near, 4)
        if result["eval_train_ratio"] > ratio:
            result["reasons"].append(f"eval loss {last['eval_loss']:.4f} is {result['eval_train_ratio']:.2f}× the "
                                     f"train loss {near:.4f} (limit {ratio})")
    losses = [r["eval_loss"] for r in evals]
    streak = 0
    for previous, current in zip(losses, losses[1:], strict=False):
        streak = streak + 1 if current > previous else 0
    result["eval_rising_streak"] = streak
    if streak >= rising:
        result["reasons"].append(f"eval loss rose at {streak} evaluations in a row (limit {rising})")
    result["flag"] = bool(result["reasons"])
    return result


def plot(train: list[dict[str, Any]], evals: list[dict[str, Any]], path: Path) -> None:
    """Train and eval loss against the step, and the learning rate below, as a PNG; with rewards (GRPO), their
    mean and spread, the KL and the answers' length in a panel of their own."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rewarded = [r for r in train if "reward" in r]
    rows = (3, 2, 1) if rewarded else (3, 1)
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 2 * len(rows) + 1), sharex=True, height_ratios=rows)
    loss_ax, lr_ax = axes[0], axes[-1]
    if rewarded:
        _plot_rewards(axes[1], rewarded)
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if evals:
        loss_ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    lr_ax.plot([r["step"] for r in train if "learning_rate" in r],
               [r["learning_rate"] for r in train if "learning_rate" in r], color="tab:green")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step")
    lr_ax.grid(alpha=0.3)
    save_png(fig, path)


def _plot_rewards(ax: Any, records: list[dict[str, Any]]) -> None:
    steps = [r["step"] for r in records]
    mean = [r["reward"] for r in records]
    spread = [r.get("reward_std", 0.0) for r in records]
    ax.plot(steps, mean, color="tab:purple", label="reward (mean ± spread)")
    ax.fill_between(steps, [m - s for m, s in zip(mean, spread, strict=True)],
                    [m + s for m, s in zip(mean, spread, strict=True)], color="tab:purple", alpha=0.2)
    if any("kl" in r for r in records):
        ax.plot([r["step"] for r in records if "kl" in r], [r["kl"] for r in records if "kl" in r], color="tab:red",
                label="KL")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    lengths = [(r["step"], r["completions/mean_length"]) for r in records if "completions/mean_length" in r]
    if lengths:
        length_ax = ax.twinx()
        length_ax.plot(*zip(*lengths, strict=True), color="tab:gray", ls="--", label="answer length")
        length_ax.set_ylabel("tokens")
        length_ax.legend(loc="upper right")
    ax.legend(loc="upper left")


def save_png(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as a PNG under a temp name and rename it, so no half-written plot stays; close it."""
    from matplotlib import pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)

"""The validate report for people: ``report.md`` and the summary table printed at the end of the stage,
both from ``report.json``'s data."""

from __future__ import annotations

from typing import Any


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "/")


def check_rows(report: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """(check, action, rows found, first example) for every check that ran."""
    rows = []
    for name, r in report["checks"].items():
        example = r["examples"][0] if r["examples"] else None
        first = f"{example['row']}: {example['detail']}" if example else (r["warnings"][0] if r["warnings"] else "")
        rows.append((name, r["action"], r["count"], first))
    return rows


def summary_table(report: dict[str, Any]) -> list[str]:
    """A few aligned lines for the console."""
    lines = [f"{report['records']} records from {len(report['sources'])} source(s) "
             f"({', '.join(s['format'] for s in report['sources'])}) checked in {report['seconds']['total']:.1f} s; "
             "splits " + ", ".join(f"{k} {v}" for k, v in report["splits"].items())]
    width = max(len(name) for name, *_ in check_rows(report)) if report["checks"] else 0
    for name, action, count, first in check_rows(report):
        lines.append(f"  {name:<{width}}  {action:<13} {count:>7}  {first[:90]}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    train_tokens = report["tokens_per_conversation"]["train"]
    lines = [
        "# Data report", "",
        f"{report['records']} records; splits: "
        + ", ".join(f"{k} {v}" for k, v in report["splits"].items())
        + f"; {train_tokens.get('total', 0)} training tokens (max_seq_len {report['max_seq_len']}).", "",
        "## Sources", "", "| source | format | records | read | invalid skipped |", "|---|---|---|---|---|",
    ]
    lines += [f"| {_cell(s['name'])} | {s['format']} | {s['records']} | {s['read']} | {s['invalid_skipped']} |"
              for s in report["sources"]]
    lines += ["", "## Checks", "", "| check | action | rows | seconds | first example |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {action} | {count} | {report['checks'][name]['seconds']:.2f} | {_cell(first)} |"
              for name, action, count, first in check_rows(report)]
    for name, r in report["checks"].items():
        if r["stats"] or len(r["examples"]) > 1 or r["warnings"]:
            lines += ["", f"### {name}", ""]
            lines += [f"- {_cell(w)}" for w in r["warnings"]]
            lines += [f"- `{e['row']}`: {_cell(e['detail'])}" for e in r["examples"]]
            lines += [f"- {k}: {v}" for k, v in r["stats"].items()]
    lines += ["", f"Time: {', '.join(f'{k} {v:.1f} s' for k, v in report['seconds'].items())}."]
    lines += ["", "## Tokens (the model's tokenizer and chat template)", "",
              "| split | rows | min | p50 | p95 | max | answer tokens (mean) |", "|---|---|---|---|---|---|---|"]
    for split, n in report["splits"].items():
        t, loss = report["tokens_per_conversation"][split], report["loss_tokens_per_conversation"][split]
        lines.append(f"| {split} | {n} | {t.get('min', '')} | {t.get('p50', '')} | {t.get('p95', '')} | "
                     f"{t.get('max', '')} | {loss.get('mean', '')} |")
    tools = report["tools"]
    if tools["train_rows_with_tools"]:
        lines += ["", "## Tools", "", f"{tools['train_rows_with_tools']} training rows define tools.",
                  f"- definitions: {tools['definitions']}", f"- calls: {tools['calls']}"]
    return "\n".join(lines) + "\n"

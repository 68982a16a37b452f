"""``report.html``: one self-contained page that explains a run directory (or a sweep folder) from what is on disk.

It reads only the run's own files, so it works on any run, however it ended: a stage that is absent, failed or left
out is named as such, never guessed. The page loads nothing from outside (inline CSS, images as ``data:`` URIs, no
script), and every string from the run is HTML-escaped: model answers and data are untrusted text. The training
curves are ``train/training_curves.png`` embedded as it is, not redrawn.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from finetune.config import STAGE_NAMES
from finetune.pipeline.manifest import MANIFEST_NAME, atomic_write_text

REPORT_NAME = "report.html"
MAX_SAMPLES = 20  # samples.jsonl holds every test prompt; the page shows the first few
ABSENT = ("left out", "not requested", "not run")
LEFT_OUT = re.compile(r"stages left out: (?P<stages>[\w, -]+) \((?P<why>.*)\)$", re.MULTILINE)  # cli.py's log line
MODEL_KEYS_NOT = {"metric", "higher_is_better", "delta", "ratio"}  # the keys of an eval.json metric that are no model

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; } th, td { border: 1px solid #ddd; padding: .25rem .5rem; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: .6rem; overflow-x: auto; white-space: pre-wrap; word-break: break-word; }
.missing { color: #8a6d00; background: #fff8e0; padding: .3rem .6rem; border-left: 3px solid #e0b000; }
.complete, .passed, .better { color: #17702c; } .failed, .worse { color: #b00020; font-weight: bold; }
.running, .stopped, .pruned, .interrupted, .absent { color: #8a6d00; }
tr.best { background: #e6f6e9; font-weight: bold; } tr.failed { background: #fdecee; }
.answers { display: grid; grid-template-columns: repeat(auto-fit, minmax(14rem, 1fr)); gap: .5rem; }
.answers > div { border: 1px solid #ddd; padding: .4rem; } .answers h4 { margin: 0 0 .3rem; }
details { margin: .4rem 0; } summary { cursor: pointer; } img { max-width: 100%; }
.sample { border: 1px solid #ccc; padding: .5rem; margin: .6rem 0; } .muted { color: #777; }
"""


class Html(str):
    """Markup this module built itself (escaped pieces only): ``table`` inserts it as it is."""


def esc(value: Any) -> str:
    """Any value as escaped text (strings from a run, model answers included, are never markup)."""
    return html.escape(value if isinstance(value, str) else str(value))


def fmt(value: Any) -> str:
    """A figure as people read it: floats to 6 significant digits, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def cell(value: Any, cls: str = "") -> str:
    """A <td>; numbers right-aligned and carrying their exact value in ``data-value``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num {cls}" data-value="{esc(repr(value))}">{esc(fmt(value))}</td>'
    return f'<td class="{cls}">{esc(fmt(value))}</td>' if cls else f"<td>{esc(fmt(value))}</td>"


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], row_attrs: Iterable[str] | None = None) -> str:
    """A plain table; cells that are already HTML are passed as ``Html``, everything else is escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    attrs = list(row_attrs) if row_attrs is not None else None
    body = "".join(
        f"<tr{attrs[i] if attrs else ''}>" + "".join(v if isinstance(v, Html) else cell(v) for v in row) + "</tr>"
        for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def td(inner_html: str, cls: str = "") -> Html:
    return Html(f'<td class="{cls}">{inner_html}</td>' if cls else f"<td>{inner_html}</td>")


def missing(what: str) -> str:
    return f'<p class="missing">{esc(what)}</p>'


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def details(summary: str, inner_html: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{inner_html}</details>"


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is absent or unreadable (a stage killed mid-write leaves nothing better)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The file's records, skipping lines that do not parse (a truncated last line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict)]


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def image(path: Path, alt: str) -> str:
    """The PNG as a data: URI, so the page needs no file beside it."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def section(anchor: str, title: str, inner_html: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>\n{inner_html}\n</section>\n'


# ---------------------------------------------------------------- run report


def load_config(run_dir: Path) -> dict[str, Any]:
    """The saved config as a dict ({} when absent): only for the run name and the stage order."""
    import yaml

    text = read_text(run_dir / ".hydra" / "config.yaml")
    try:
        config = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def stage_names(run_dir: Path) -> list[str]:
    """Every pipeline stage in order, then any other folder with a manifest."""
    others = sorted(p.parent.name for p in run_dir.glob(f"*/{MANIFEST_NAME}") if p.parent.name not in STAGE_NAMES)
    return [*STAGE_NAMES, *others]


def read_manifests(run_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Stage name -> its manifest, for the stages that wrote one."""
    manifests = {name: read_json(run_dir / name / MANIFEST_NAME) for name in names}
    return {name: m for name, m in manifests.items() if isinstance(m, dict)}


def left_out(run_dir: Path) -> dict[str, str]:
    """Stage -> why the run left it out, from the log's ``stages left out: a, b (why)`` lines (the last run's)."""
    why = {}
    for match in LEFT_OUT.finditer(read_text(run_dir / "finetune.log") or ""):
        why.update(dict.fromkeys((s.strip() for s in match["stages"].split(",")), match["why"]))
    return why


def absent_why(name: str, config: dict[str, Any], skipped: dict[str, str]) -> tuple[str, str]:
    """(status, explanation) of a stage with no manifest."""
    if name in skipped:
        return "left out", skipped[name]
    if config and name not in (config.get("stages") or []):
        return "not requested", f"stages={config.get('stages')}"
    return "not run", "no manifest: the run stopped before it"


def stage_rows(names: list[str], manifests: dict[str, dict[str, Any]], config: dict[str, Any],
               skipped: dict[str, str]) -> list[tuple[str, str, Any, str]]:
    """(stage, status, duration, error or why it is absent) for every stage."""
    rows = []
    for name in names:
        m = manifests.get(name)
        if m is None:
            status, why = absent_why(name, config, skipped)
            rows.append((name, status, None, why))
        else:
            rows.append((name, str(m.get("status")), m.get("duration_s"), m.get("error") or ""))
    return rows


def run_status(rows: list[tuple[str, str, Any, str]]) -> str:
    """failed if a stage failed, incomplete if one is still running or did not run, complete otherwise."""
    statuses = {status for _, status, _, _ in rows}
    if "failed" in statuses:
        return "failed"
    return "incomplete" if statuses & {"running", "not run"} or "complete" not in statuses else "complete"


def header_section(run_dir: Path, config: dict[str, Any], rows: list[tuple[str, str, Any, str]]) -> str:
    """Name, folder and every stage's status, the error of a failed one included."""
    status = run_status(rows)
    intro = (f"<h1>Run {esc(config.get('run_name') or run_dir.name)}</h1>"
             f'<p>Run directory: <code>{esc(run_dir.resolve())}</code> · status: <span class="{status}">'
             f"{esc(status)}</span></p>")
    if not config:
        intro += missing("no .hydra/config.yaml: the run was refused before it started, or this is no run directory")
    table_rows = [[name, td(esc(s), "absent" if s in ABSENT else s), duration, note]
                  for name, s, duration, note in rows]
    return intro + section("stages", "Stages", table(["stage", "status", "duration (s)", "error / why absent"],
                                                     table_rows))


def config_section(run_dir: Path) -> str:
    """The saved config verbatim (secrets were redacted when it was written) and the command-line overrides."""
    parts = []
    for name, what in (("config.yaml", "resolved config"), ("overrides.yaml", "command-line overrides")):
        text = read_text(run_dir / ".hydra" / name)
        parts.append(details(f"{what} (.hydra/{name})", pre(text), open_=name == "overrides.yaml")
                     if text is not None else missing(f".hydra/{name} is missing"))
    return section("config", "Config", "".join(parts))


def split_table(tokens: dict[str, Any], splits: dict[str, Any]) -> str:
    stats = ("min", "mean", "p50", "p95", "max", "total")
    rows = [[split, splits.get(split), *(s.get(k) for k in stats)] for split, s in tokens.items()
            if isinstance(s, dict)]
    return table(["split", "rows", *stats], rows)


def checks_table(checks: dict[str, Any]) -> str:
    """One row per check: what it looks for, its action, how many rows it found, its first examples."""
    rows = []
    for name, check in checks.items():
        examples = check.get("examples") or []
        shown = details(f"{len(examples)} examples", pre("\n".join(fmt(e) for e in examples[:10]))) if examples else ""
        warnings = "; ".join(str(w) for w in check.get("warnings") or [])
        count = check.get("count")
        rows.append([name, check.get("what"), check.get("action"), td(esc(fmt(count)), "worse" if count else ""),
                     td(shown + esc(warnings))])
    return table(["check", "looks for", "action", "rows found", "examples / warnings"], rows)


def data_section(run_dir: Path) -> str:
    """Records, splits, tokens per conversation and what every check found (validate/report.json), report.md too."""
    report = read_json(run_dir / "validate" / "report.json")
    markdown = read_text(run_dir / "validate" / "report.md")
    if report is None and markdown is None:
        return section("data", "Data", missing("no validate/report.json or report.md: the validate stage did not run"))
    parts = []
    if isinstance(report, dict):
        checks = report.get("checks") or {}
        dropped = sum(c.get("count") or 0 for c in checks.values() if c.get("action") == "drop")
        found = sum(c.get("count") or 0 for c in checks.values())
        splits = report.get("splits") or {}
        parts.append(table(["figure", "value"], [
            ["dataset", report.get("dataset")], ["format", report.get("format")], ["records", report.get("records")],
            ["splits", ", ".join(f"{k} {v}" for k, v in splits.items())],
            ["findings (rows, all checks)", found], ["dropped by checks", dropped],
            ["held-out rows moved to train (leaks)", report.get("moved_to_train_as_leaks")],
            ["max_seq_len", report.get("max_seq_len")]]))
        if report.get("tokens_per_conversation"):
            parts.append("<h3>Tokens per conversation</h3>" + split_table(report["tokens_per_conversation"], splits))
        if report.get("loss_tokens_per_conversation"):
            parts.append("<h3>Answer (loss) tokens per conversation</h3>"
                         + split_table(report["loss_tokens_per_conversation"], splits))
        if checks:
            parts.append("<h3>Checks</h3>" + checks_table(checks))
    else:
        parts.append(missing("validate/report.json is missing or unreadable; report.md below"))
    if markdown is not None:
        parts.append(details("validate/report.md", pre(markdown), open_=not isinstance(report, dict)))
    return section("data", "Data", "".join(parts))


TRAIN_FIGURES = (("global_step", "steps"), ("train_loss", "train loss"), ("last_eval_loss", "last eval loss"),
                 ("best_eval_loss", "best eval loss"), ("best_step", "best step"), ("tokens_per_s", "tokens / s"),
                 ("lr", "learning rate"), ("method", "method"), ("backend", "backend"),
                 ("trainable_parameters", "trainable parameters"), ("stopped_early", "stopped early"),
                 ("job_id", "hosted job id"), ("tuned_model", "tuned model"))


def training_section(run_dir: Path) -> str:
    """Key figures from train/metrics.json, the over-fitting flag and the curves PNG."""
    metrics = read_json(run_dir / "train" / "metrics.json")
    curves = run_dir / "train" / "training_curves.png"
    parts = []
    if isinstance(metrics, dict):
        rows = [[label, metrics[key]] for key, label in TRAIN_FIGURES if key in metrics]
        over = metrics.get("overfitting")
        if isinstance(over, dict):
            flag = "yes: " + "; ".join(over.get("reasons") or []) if over.get("flag") else "no"
            rows.append(["over-fitting", flag if over.get("assessed", True) else "not assessed (no evaluation)"])
        parts.append(table(["figure", "value"], rows))
        parts.append(details("train/metrics.json", pre(json.dumps(metrics, indent=2, ensure_ascii=False))))
    else:
        parts.append(missing("no train/metrics.json: training did not run or did not finish"))
    if curves.is_file():
        parts.append(image(curves, "training curves: train and eval loss, learning rate"))
    else:
        parts.append(missing("no train/training_curves.png (a hosted job that reports no loss has none)"))
    return section("training", "Training", "".join(parts))


def model_names(evaluation: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """The compared models: eval.json's ``models`` in order, else every other key of the metric entries."""
    if isinstance(evaluation.get("models"), dict) and evaluation["models"]:
        return list(evaluation["models"])
    return list(dict.fromkeys(k for m in metrics.values() for k in m if k not in MODEL_KEYS_NOT))


def delta_cell(entry: dict[str, Any]) -> Html:
    """The difference, coloured by whether it went the metric's good way."""
    delta = entry.get("delta")
    if not isinstance(delta, (int, float)) or not delta:
        return Html(cell(delta))
    good = (delta > 0) == bool(entry.get("higher_is_better"))
    return Html(cell(delta, "better" if good else "worse"))


def metrics_table(evaluation: dict[str, Any]) -> str:
    metrics = {k: m for k, m in (evaluation.get("metrics") or {}).items() if isinstance(m, dict)}
    models = model_names(evaluation, metrics)
    rows = [[name, "higher" if m.get("higher_is_better") else "lower", *(m.get(x) for x in models),
             delta_cell(m), m.get("ratio")] for name, m in metrics.items()]
    return table(["metric", "better", *models, "delta", "ratio"], rows)


def message_html(message: dict[str, Any]) -> str:
    return f"<div><b>{esc(message.get('role', '?'))}:</b> {esc(fmt(message.get('content')))}</div>"


def sample_html(sample: dict[str, Any]) -> str:
    """One held-out prompt: the conversation, the reference and every model's answer side by side."""
    prompt = sample.get("prompt")
    prompt_html = "".join(message_html(m) for m in prompt if isinstance(m, dict)) if isinstance(prompt, list) \
        else pre(fmt(prompt))
    answers = sample.get("answers") or {}
    finish = sample.get("finish_reason") or {}
    scores = sample.get("scores") or {}
    columns = [f'<div><h4>reference</h4><pre>{esc(fmt(sample.get("reference")))}</pre></div>']
    for model, answer in answers.items():
        score = scores.get(model) if isinstance(scores, dict) else None
        extra = ", ".join(f"{k} {fmt(v)}" for k, v in score.items()) if isinstance(score, dict) else ""
        ended = finish.get(model) if isinstance(finish, dict) else None
        columns.append(f'<div class="answer" data-model="{esc(model)}"><h4>{esc(model)}</h4><pre>{esc(fmt(answer))}'
                       f'</pre><p class="muted">finish: {esc(fmt(ended))}<br>{esc(extra)}</p></div>')
    return (f'<div class="sample"><p class="muted">{esc(sample.get("location", ""))}</p>'
            f'{details("prompt", prompt_html, open_=True)}<div class="answers">{"".join(columns)}</div></div>')


def evaluation_section(run_dir: Path) -> str:
    """Every metric for every model with the difference (evaluate/eval.json), and sample answers side by side."""
    evaluation = read_json(run_dir / "evaluate" / "eval.json")
    samples = read_jsonl(run_dir / "evaluate" / "samples.jsonl")
    parts = []
    if isinstance(evaluation, dict):
        figures = f"{fmt(evaluation.get('test_conversations'))} test conversations, {fmt(evaluation.get('prompts'))}"
        parts.append(f"<p>{esc(figures)} prompts; decoding: {esc(evaluation.get('decoding_text') or '–')}</p>")
        parts.append(metrics_table(evaluation))
    else:
        parts.append(missing("no evaluate/eval.json: the evaluate stage did not run or did not finish"))
    if samples:
        shown = samples[:MAX_SAMPLES]
        parts.append(f"<h3>Sample answers ({len(shown)} of {len(samples)})</h3>"
                     + "".join(sample_html(s) for s in shown))
    elif isinstance(evaluation, dict):
        parts.append(missing("no evaluate/samples.jsonl"))
    return section("evaluation", "Evaluation", "".join(parts))


def parity_table(files: dict[str, Any]) -> str:
    rows = []
    for name, f in files.items():
        passed = f.get("passed")
        verdict = "passed" if passed else ("failed" if passed is False else "measured")
        rows.append([name, f.get("type"), f.get("top1_agreement"), f.get("greedy_identical"), f.get("perplexity"),
                     f.get("perplexity_hf"), td(esc(verdict), verdict), "; ".join(map(str, f.get("failures") or []))])
    return table(["file", "type", "top-1 agreement", "greedy identical", "perplexity", "perplexity (HF)", "gate",
                  "failures"], rows)


def templates_html(templates: dict[str, Any], failures: list[Any]) -> str:
    """How many rendered prompts matched the chat template, the stop token checks, and any failure."""
    prompts = [p for p in templates.get("prompts") or [] if isinstance(p, dict)]
    same = sum(1 for p in prompts if p.get("identical"))
    stop = templates.get("stop") if isinstance(templates.get("stop"), dict) else {}
    items = [f"prompts token-identical to the chat template: {same} / {len(prompts)}",
             *(f"{k}: {fmt(v)}" for k, v in stop.items())]
    if templates.get("tools"):
        items.append(f"tools: {templates['tools']}")
    items += [f"failure: {fmt(f)}" for f in failures]
    return "<h3>Templates</h3><ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def export_section(run_dir: Path, manifests: dict[str, dict[str, Any]]) -> str:
    """The parity gate's figures per GGUF file and the template checks (export/parity.json)."""
    parity = read_json(run_dir / "export" / "parity.json")
    if not isinstance(parity, dict):
        why = ("the export stage failed before the parity gate" if manifests.get("export", {}).get("status") ==
               "failed" else "no export stage (left out: a hosted backend has no local weights, or not run)")
        return section("export", "Export", missing(f"no export/parity.json: {why}"))
    parts = [f"<p>{esc(fmt(parity.get('samples')))} held-out conversations, {esc(fmt(parity.get('positions')))} "
             f"positions</p>", parity_table(parity.get("files") or {})]
    if isinstance(parity.get("templates"), dict):
        parts.append(templates_html(parity["templates"], parity.get("template_failures") or []))
    return section("export", "Export", "".join(parts))


def timings_section(names: list[str], manifests: dict[str, dict[str, Any]]) -> str:
    """Every stage's duration and the total: where the time went."""
    durations = {n: manifests[n].get("duration_s") for n in names if n in manifests}
    numbers = [d for d in durations.values() if isinstance(d, (int, float))]
    rows = [[name, d] for name, d in durations.items()] + [[Html("<th>total</th>"), sum(numbers)]]
    body = table(["stage", "seconds"], rows) if durations else missing("no stage manifests")
    return section("timings", "Timings", body)


def render_run_report(run_dir: Path) -> str:
    config = load_config(run_dir)
    names = stage_names(run_dir)
    manifests = read_manifests(run_dir, names)
    rows = stage_rows(names, manifests, config, left_out(run_dir))
    body = (header_section(run_dir, config, rows) + config_section(run_dir) + data_section(run_dir)
            + training_section(run_dir) + evaluation_section(run_dir) + export_section(run_dir, manifests)
            + timings_section(names, manifests))
    return page(f"finetune run {config.get('run_name') or run_dir.name}", body)


def write_run_report(run_dir: Path) -> Path:
    """Write ``<run_dir>/report.html`` from the run's files, whatever state the run is in; returns its path."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT_NAME
    atomic_write_text(path, render_run_report(run_dir))
    return path


# ---------------------------------------------------------------- sweep report


def job_cell(sweep_dir: Path, job: Any) -> Html:
    """The job's name, linking to its own report when it has one."""
    name = fmt(job)
    if job is not None and (sweep_dir / name / REPORT_NAME).is_file():
        return td(f'<a href="{esc(quote(name))}/{REPORT_NAME}">{esc(name)}</a>')
    return td(esc(name))


def sweep_table(sweep_dir: Path, summary: dict[str, Any]) -> str:
    """Every job, one row: the best highlighted, failed ones marked with their error."""
    rows_in = [r for r in summary.get("rows") or [] if isinstance(r, dict)]
    columns = [str(c) for c in summary.get("columns") or (list(rows_in[0]) if rows_in else [])]
    if "error" not in columns and any(r.get("error") for r in rows_in):
        columns.append("error")
    rows, attrs = [], []
    for r in rows_in:
        best = bool(r.get("best")) or (r.get("job") is not None and r.get("job") == summary.get("best_job"))
        status = str(r.get("status"))
        rows.append([job_cell(sweep_dir, r.get("job")) if c == "job" else
                     td(esc(status), status) if c == "status" else
                     td(esc(fmt(r.get(c))), "failed") if c == "error" and r.get(c) else r.get(c) for c in columns])
        attrs.append(f' class="{"best" if best else ""} {status}" data-job="{esc(fmt(r.get("job")))}"')
    return table(columns, rows, attrs)


def render_sweep_report(sweep_dir: Path) -> str:
    summary = read_json(sweep_dir / "summary.json")
    title = f"Sweep {sweep_dir.name}"
    intro = f"<h1>{esc(title)}</h1><p>Sweep folder: <code>{esc(sweep_dir.resolve())}</code></p>"
    if not isinstance(summary, dict):
        return page(title, intro + missing("no summary.json (or it is unreadable): the sweep has not been summed up"))
    rows = [r for r in summary.get("rows") or [] if isinstance(r, dict)]
    counts = {}
    for r in rows:
        counts[str(r.get("status"))] = counts.get(str(r.get("status")), 0) + 1
    facts = (f"{len(rows)} jobs ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
             f"{summary.get('direction', '?')} {summary.get('metric', '?')}; best: {fmt(summary.get('best_job'))}")
    fixed = summary.get("fixed")
    if isinstance(fixed, dict) and fixed:
        facts += "; same in every job: " + ", ".join(f"{k}={fmt(v)}" for k, v in fixed.items())
    plot = sweep_dir / "summary.png"
    body = (intro + f"<p>{esc(facts)}</p>" + section("summary", "Jobs", sweep_table(sweep_dir, summary))
            + section("plot", "Plot", image(plot, "sweep summary plot") if plot.is_file()
                      else missing("no summary.png")))
    return page(title, body)


def write_sweep_report(sweep_dir: Path) -> Path:
    """Write ``<sweep_dir>/report.html`` from ``summary.json`` and ``summary.png``; returns its path."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / REPORT_NAME
    atomic_write_text(path, render_sweep_report(sweep_dir))
    return path

"""evaluate: the base and the tuned (merged) model on the held-out test split, metric by metric, in one table
with the difference — plus any GGUF or OpenAI-compatible model named in ``eval.compare``, an LLM judge and
lm-evaluation-harness tasks.

The prompts are the held-out conversations up to their first assistant turn; every model answers the same
prompts with the same decoding — by default the exported Modelfile's (``eval.decoding=modelfile``), so the
table shows what Ollama users get. Writes ``eval.json`` (every figure), ``samples.jsonl`` (every prompt,
reference, answer and per-sample score) and ``eval.md`` (the table first, then samples side by side).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune.backends import BACKENDS, lacks
from finetune.backends.base import LOGPROBS, Asked
from finetune.chat import first_exchange, tokenize
from finetune.config import RunConfig
from finetune.data.canonical import Conversation, read_split
from finetune.errors import UserError
from finetune.export.modelfile import serving_decoding, stop_strings
from finetune.generate import Answer, Decoding, Generator
from finetune.metrics import METRICS, Metric, Sample, Scored
from finetune.metrics.likelihood import LikelihoodInputs
from finetune.models import package_file
from finetune.objectives import OBJECTIVES
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# objective=grpo's held-out answers are scored with its rewards too (the reward row)
CONFIG_KEYS = ("model", "eval", "train.max_seq_len", "seed", "export.temperature", "export.top_p", "export.top_k",
               "export.repeat_penalty", "export.repeat_last_n", "export.num_ctx", "backend.name", "backend.base_model",
               "backend.base_url", "backend.api_key_env", "backend.chat_base_url", "backend.project", "backend.region",
               "objective.name", "objective.max_completion_length", "reward")
IN_PROCESS = ("base", "tuned")


class EvalError(UserError, ValueError):
    """An evaluation setting names something that does not exist."""


def check(run: RunConfig) -> None:
    """Refuse, before training, answers by llama.cpp from a model it cannot load, a judge GGUF that is not in its
    package and lm-eval task names that lm-eval does not know."""
    if run.eval.engine == "llama_cpp" and LOGPROBS in BACKENDS[run.backend.name].capabilities and (
            why := _not_gguf(run)):
        raise EvalError(f"eval.engine=llama_cpp: {run.model.source} cannot be written as GGUF ({why}); set "
                        "eval.engine=transformers")
    if (run.eval.judge.gguf or "").startswith("package:"):
        package_file(run.eval.judge.gguf, key="eval.judge.gguf")  # type: ignore[arg-type]
    if not run.eval.lm_eval.tasks:
        return
    from finetune.metrics.harness import known_tasks

    known = known_tasks()
    for i, name in enumerate(run.eval.lm_eval.tasks):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            raise EvalError(f"eval.lm_eval.tasks[{i}]={name!r}: not an lm-eval task"
                            + (f"; did you mean {close[0]}?" if close else ""))


def decoding_for(run: RunConfig, tokenizer: Any = None, stop: tuple[str, ...] | None = None) -> Decoding:
    """The decoding every model answers with; its stop strings are those of the tokenizer's template family
    unless given (a hosted model's server knows its own)."""
    if stop is None:
        stop = stop_strings(tokenizer)
    return serving_decoding(run.export, run.eval.max_new_tokens, run.seed, stop, greedy=run.eval.decoding == "greedy")


class Results:
    """Every figure by row and model, details by metric and model, per-sample scores by model."""

    def __init__(self, samples: int) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.details: dict[str, dict[str, Any]] = {}
        self.per_sample: dict[str, list[dict[str, Any]]] = {}
        self.samples = samples

    def add(self, metric: str, higher_is_better: bool, who: str, scored: Scored) -> None:
        for row, value in scored.values.items():
            self.rows.setdefault(row, {"metric": metric, "higher_is_better": higher_is_better})[who] = value
        if scored.details:
            self.details.setdefault(metric, {})[who] = scored.details
        for i, values in enumerate(scored.per_sample or []):
            self.per_sample.setdefault(who, [{} for _ in range(self.samples)])[i].update(values)


def _score_in_process(asked: Any, run: RunConfig, inputs: LikelihoodInputs, samples: Sequence[Sample],
                      decoding: Decoding, model_metrics: Sequence[Metric], results: Results, tasks: Sequence[str],
                      task_folder: Path | None, gguf: Path | None) -> tuple[list[Answer], dict[str, Any] | None]:
    """One model loaded once (``InProcessModel``): its likelihood metrics and lm-eval tasks, then its answers — from
    ``gguf``, a GGUF of it, once the model in process is freed, or else from the model in process."""
    ev, who = run.eval, asked.label
    model, tokenizer = asked.model, asked.tokenizer
    for metric in model_metrics:
        scored = metric.compute(model, tokenizer, inputs, ev)
        results.add(metric.name, metric.higher_is_better, who, scored)
        log.info("%s: %s", who, ", ".join(f"{k} {v:.4g}" for k, v in scored.values.items() if v is not None))
    harness = None
    if tasks or task_folder is not None:
        from finetune.metrics.harness import run_tasks

        harness = run_tasks(model, tokenizer, tasks, task_folder, ev.lm_eval, who, inputs.scores(model))
    prompts = [s.prompt for s in samples]
    answers = asked.generate(prompts, decoding) if samples and gguf is None else []
    del model
    asked.release()
    if samples and gguf is not None:
        from finetune.generate.llama_cpp import LlamaCppModel

        gguf_model = LlamaCppModel(gguf, tokenizer, who)
        try:
            answers = gguf_model.generate(prompts, decoding)
        finally:
            gguf_model.close()
    return answers, harness


def answer_engine(run: RunConfig, tokenizer: Any) -> str:
    """Who runs the forward passes of the base and tuned answers (``eval.engine``): ``auto`` is llama.cpp on a
    CPU, from f16 GGUFs written for the evaluation — several times faster there than transformers' ``generate``,
    which is faster on a GPU — or transformers where the model or its tokenizer cannot be written as GGUF."""
    if run.eval.engine != "auto":
        return run.eval.engine
    import torch

    return "transformers" if torch.cuda.is_available() or _not_gguf(run, tokenizer) else "llama_cpp"


def _not_gguf(run: RunConfig, tokenizer: Any = None) -> str | None:
    """Why the GGUF writer cannot write the run's model (and ``tokenizer``, when given), or None."""
    from finetune.export.gguf_writer import check_convertible, check_tokenizer
    from finetune.models import load_config

    try:
        check_convertible(load_config(run.model).to_dict())
        if tokenizer is not None:
            check_tokenizer(tokenizer, run.model.source)
    except (ValueError, NotImplementedError) as e:
        return str(e)
    return None


def _answer_ggufs(run: RunConfig, asked: dict[str, Asked], folder: Path) -> dict[str, Path]:
    """Each in-process model (base, tuned) as an f16 GGUF in ``folder``, for llama.cpp to answer with."""
    from finetune.export.gguf_writer import write_gguf
    from finetune.models import local_folder

    ggufs = {}
    for who, a in asked.items():
        ggufs[who] = folder / f"{who}-f16.gguf"
        write_gguf(local_folder(a.source, run.model.revision), ggufs[who], "f16", name=who, log=log.debug)
    return ggufs


def _other_generators(run: RunConfig) -> list[Generator]:
    from finetune.generate.llama_cpp import LlamaCppChat
    from finetune.generate.openai_compat import OpenAICompatGenerator

    return [LlamaCppChat(Path(c.gguf), c.name, run.export.num_ctx) if c.gguf else
            OpenAICompatGenerator(c.base_url or "", c.model or "", c.name, c.api_key_env, c.sampler_extras)
            for c in run.eval.compare]


def _judge(run: RunConfig, samples: Sequence[Sample], answers: dict[str, list[Answer]]
           ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    from finetune.metrics.judge import Judge, endpoint, judge_all

    cfg = run.eval.judge
    if not (cfg.base_url or cfg.gguf) or not samples:
        return None
    n = cfg.max_samples or len(samples)
    shown = {who: a[:n] for who, a in answers.items()}
    with endpoint(cfg) as url:
        return judge_all(Judge(cfg, url, run.seed, local=not cfg.base_url), samples[:n], shown, cfg.pairwise)


def lost_end_of_turn(answers: dict[str, list[Answer]]) -> str | None:
    """A warning when far fewer of the tuned model's answers stop on their own than the base's (a quarter of the
    answers or more, and under half): a model that no longer ends its turn runs on in every chat, whatever else its
    figures say."""
    if not answers.get("base") or not answers.get("tuned"):
        return None
    stops = {who: sum(a.finish_reason == "stop" for a in answers[who]) for who in ("base", "tuned")}
    n = len(answers["tuned"])
    if stops["tuned"] >= n / 2 or stops["base"] - stops["tuned"] < n / 4:
        return None
    return (f"the tuned model's answers stop on their own in {stops['tuned']} of {n} prompts, the base's in "
            f"{stops['base']}: it has lost much of its end of turn (with DPO, objective.sft_weight keeps it)")


def _add_judge(results: Results, summary: dict[str, Any]) -> None:
    for who, s in summary["models"].items():
        values = {f"judge: {c}": v for c, v in s["means"].items()}
        results.add("judge", True, who, Scored({"judge: overall": s["overall"], **values}))
    if pairwise := summary.get("pairwise"):
        results.rows["judge: tuned wins (pairwise)"] = {"metric": "judge", "higher_is_better": True,
                                                        "tuned": pairwise["tuned_win_rate"]}


def _add_harness(results: Results, who: str, harness: dict[str, Any]) -> None:
    for task, metrics in harness["tasks"].items():
        for name, value in metrics.items():
            results.add("lm_eval", harness["higher_is_better"][task][name], who,
                        Scored({f"lm-eval {task} {name}": value}))


def _with_deltas(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for row in rows.values():
        base, tuned = row.get("base"), row.get("tuned")
        if isinstance(base, int | float) and isinstance(tuned, int | float):
            row["delta"] = tuned - base
            if base > 0:
                row["ratio"] = tuned / base
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}" if abs(value) < 1e6 else f"{value:.3e}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "(empty)"


def _markdown(result: dict[str, Any], samples: list[dict[str, Any]], show: int) -> str:
    whos = list(result["models"])
    lines = [
        f"# Evaluation on {result['test_conversations']} held-out conversations ({result['prompts']} prompts answered)",
        "",
        *(f"**Warning:** {w}.\n" for w in result.get("warnings", ())),
        f"Answers: {result['decoding_text']}"
        + "".join(sorted({f"; base and tuned answered by {m['answers_by']}" for m in result["models"].values()
                          if "answers_by" in m})) + ".",
        "",
        "| metric | " + " | ".join(whos) + " | Δ tuned − base |",
        "|---|" + "---|" * (len(whos) + 1),
    ]
    for name, row in result["metrics"].items():
        arrow = "↑" if row["higher_is_better"] else "↓"
        delta = _fmt(row.get("delta")) if "delta" in row else ""
        if "ratio" in row:
            delta += f" (×{row['ratio']:.3f})"
        lines.append(f"| {name} {arrow} | " + " | ".join(_fmt(row.get(w)) for w in whos) + f" | {delta} |")
    lines.append("")
    if judge := result.get("judge"):
        lines += [f"Judge: `{judge['model']}` at {judge['endpoint']}, criteria {', '.join(judge['criteria'])} "
                  f"(1–{judge['scale']}). Scored / unscored answers: "
                  + ", ".join(f"{w} {s['scored']}/{s['unscored']}" for w, s in judge["models"].items()) + "."]
        if p := judge.get("pairwise"):
            lines += [f"Pairwise (order drawn per sample): tuned better {p['tuned']}, base better {p['base']}, "
                      f"tie {p['tie']}, unscored {p['unscored']}; the answer shown first won {p['first_position_won']}"
                      f" of {p['scored']}."]
        lines.append("")
    for who, harness in result.get("lm_eval", {}).items():
        for task, why in harness["skipped"].items():
            lines.append(f"lm-eval `{task}` skipped for {who}: {why}")
    if result.get("lm_eval"):
        lines.append("")
    if left_out := result.get("left_out"):
        lines += [f"Left out: {', '.join(left_out)} ({'; '.join(dict.fromkeys(left_out.values()))}).", ""]
    for i, s in enumerate(samples[:show], start=1):
        lines += [f"## Sample {i} ({s['location']})", "", f"> {_cell(s['prompt'][-1]['content'])}", "",
                  "| | answer |", "|---|---|", f"| reference | {_cell(s['reference'])} |"]
        lines += [f"| {who} | {_cell(text)} |" for who, text in s["answers"].items()]
        lines.append("")
    return "\n".join(lines)


def _in_process(run: RunConfig, ctx: StageContext, test: list[Any], samples: list[Sample], chosen: list[Metric],
                results: Results, answers: dict[str, list[Answer]], asked: dict[str, Asked],
                left_out: dict[str, str]) -> tuple[Decoding, dict[str, Any], str]:
    """Base and tuned model in this process, one after the other: likelihood metrics, lm-eval, answers. Returns
    the decoding, the lm-eval results and what generated the answers; a likelihood metric with no answer to score
    (the test split holds only prompts, GRPO's) goes into ``left_out``."""
    ev = run.eval
    tokenizer = asked["tuned"].generator.tokenizer
    decoding = decoding_for(run, tokenizer)
    task_folder = None
    if ev.lm_eval.local_task and samples:
        from finetune.metrics.harness import write_local_task

        task_folder = ctx.out_dir / "lm_eval_task"
        write_local_task(samples, tokenizer, task_folder)
    harness: dict[str, Any] = {}
    tasks = list(ev.lm_eval.tasks)
    answered = [c for c in test if c.columns is None]
    inputs = LikelihoodInputs([tokenize(tokenizer, c) for c in answered], run.train.max_seq_len, ev.batch_size)
    model_metrics = [m for m in chosen if m.needs == "model"]
    if model_metrics and not answered:
        left_out.update({m.name: "the test split holds prompts without answers" for m in model_metrics})
        log.info("evaluate: %s left out (the test split holds prompts without answers)",
                 ", ".join(m.name for m in model_metrics))
        model_metrics = []
    engine = answer_engine(run, tokenizer)
    with tempfile.TemporaryDirectory(dir=ctx.out_dir, prefix=".answer-ggufs-") as folder:
        ggufs = _answer_ggufs(run, asked, Path(folder)) if samples and engine == "llama_cpp" else {}
        for who, model in asked.items():
            answers[who], ran = _score_in_process(model.generator, run, inputs, samples, decoding, model_metrics,
                                                  results, tasks, task_folder, ggufs.get(who))
            if ran is not None:
                harness[who] = ran
                _add_harness(results, who, ran)
                tasks = [t for t in tasks if t not in ran["skipped"]]  # a dataset that did not load for base won't now
    return decoding, harness, "llama.cpp (an f16 GGUF of it)" if engine == "llama_cpp" else "transformers"


def _remote(run: RunConfig, samples: list[Sample], chosen: list[Metric], answers: dict[str, list[Answer]],
            asked: dict[str, Asked]) -> tuple[Decoding, dict[str, str]]:
    """Base and tuned model asked where they are served, whose server knows their stop tokens; the metrics that
    need the model's token scores are left out. Returns the decoding and what was left out."""
    decoding = decoding_for(run, stop=())
    for who, model in asked.items():
        answers[who] = model.generator.generate([s.prompt for s in samples], decoding)
    left_out = {}
    if why := lacks(LOGPROBS)(run):
        left_out = {m.name: why for m in chosen if m.needs == "model"}
        if run.eval.lm_eval.tasks or run.eval.lm_eval.local_task:
            left_out["lm_eval"] = why
        log.info("evaluate: %s left out (%s)", ", ".join(left_out), why)
    return decoding, left_out


def held_out_samples(test: Sequence[Conversation]) -> list[Sample]:
    """The test split's questions (each conversation up to its first assistant turn) with that turn as reference;
    none for plain-text rows."""
    return [Sample(prompt, reference["content"]) for c in test if (e := first_exchange(c))
            for prompt, reference in [e]]


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    ev = run.eval
    test = read_split(ctx.input("validate", "test"))[: ev.max_samples]
    samples = held_out_samples(test)
    chosen = [METRICS[name] for name in ev.metrics]
    results = Results(len(samples))
    answers: dict[str, list[Answer]] = {}
    harness: dict[str, Any] = {}
    left_out: dict[str, str] = {}
    backend = BACKENDS[run.backend.name]
    asked = backend.generators(run, ctx)
    answered_by = None
    if LOGPROBS in backend.capabilities:
        decoding, harness, answered_by = _in_process(run, ctx, test, samples, chosen, results, answers, asked,
                                                     left_out)
    else:
        decoding, left_out = _remote(run, samples, chosen, answers, asked)
    models = {who: {"source": a.source, "via": a.via, **({"endpoint": a.endpoint} if a.endpoint else {}),
                    **({"answers_by": answered_by} if answered_by else {})} for who, a in asked.items()}
    if samples:
        for generator in _other_generators(run):
            answers[generator.label] = generator.generate([s.prompt for s in samples], decoding)
    for metric in (m for m in chosen if m.needs == "answers" and samples):
        for who, given in answers.items():
            results.add(metric.name, metric.higher_is_better, who, metric.compute(samples, given, ev))
    if OBJECTIVES[run.objective.name].rollouts and samples and LOGPROBS in backend.capabilities:  # what it maximised
        from finetune.rewards import held_out

        tokenizer = asked["tuned"].generator.tokenizer
        for who, given in answers.items():
            results.add("reward", True, who, held_out(run, samples, given, tokenizer))
    judged = _judge(run, samples, answers)
    if judged is not None:
        _add_judge(results, judged[0])

    models.update({c.name: {"source": c.gguf or f"{c.base_url} {c.model}",
                            "via": "llama.cpp" if c.gguf else "OpenAI-compatible API"} for c in ev.compare})
    result: dict[str, Any] = {
        "test_conversations": len(test), "prompts": len(samples), "models": models,
        "decoding": decoding.as_dict(), "decoding_text": decoding.describe(),
        "metrics": _with_deltas(results.rows), "details": results.details,
    }
    if judged is not None:
        result["judge"] = {**judged[0], "model": ev.judge.model,
                           "endpoint": ev.judge.base_url or f"llama.cpp serving {Path(ev.judge.gguf or '').name}"
                           + (f" as {ev.judge.serve_as}" if ev.judge.serve_as else "")}
    if harness:
        result["lm_eval"] = harness
    if left_out:
        result["left_out"] = left_out
    if warning := lost_end_of_turn(answers):
        log.warning("evaluate: %s", warning)
        result["warnings"] = [warning]
    per_sample = [
        {"location": s.prompt.location, "prompt": s.prompt.messages, "reference": s.reference,
         "answers": {who: a[i].text for who, a in answers.items()},
         "finish_reason": {who: a[i].finish_reason for who, a in answers.items()},
         **({"reasoning": {who: a[i].reasoning for who, a in answers.items()}}
            if any(a[i].reasoning for a in answers.values()) else {}),
         "scores": {who: results.per_sample.get(who, [{}] * len(samples))[i] for who in answers},
         **(judged[1][i] if judged is not None and i < len(judged[1]) else {})}
        for i, s in enumerate(samples)
    ]
    atomic_write_json(ctx.out_dir / "eval.json", result)
    atomic_write_text(ctx.out_dir / "samples.jsonl",
                      (json.dumps(p, ensure_ascii=False) + "\n" for p in per_sample))
    atomic_write_text(ctx.out_dir / "eval.md", _markdown(result, per_sample, ev.show_samples))
    artifacts = {"eval": "eval.json", "samples": "samples.jsonl", "table": "eval.md"}
    task_folder = ctx.out_dir / "lm_eval_task"
    return {**artifacts, "lm_eval_task": task_folder.name} if task_folder.is_dir() else artifacts

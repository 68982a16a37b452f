"""lm-evaluation-harness on the in-process model (base and tuned).

- A local task built from the held-out split in lm-eval's YAML task format over a local JSON file: the prompt
  rendered with the chat template (generation prompt included) is the context, the reference answer with its
  end-of-turn token the continuation; ``loglikelihood`` output, reported as ``acc`` (the whole answer is the
  model's greedy continuation), ``byte_perplexity`` and ``bits_per_byte`` (weighted by the answers' UTF-8
  bytes, so they compare across tokenizers). Runs offline.
- Standard task names (``hellaswag``, ``arc_challenge``, ``mmlu``, ``gsm8k``…) pass through to lm-eval; one whose
  dataset cannot be loaded (offline, no cache) is skipped with one line saying so.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.chat import for_template, render
from finetune.fields import setting
from finetune.metrics import Sample
from finetune.metrics.likelihood import TokenScores

log = logging.getLogger(__name__)

LOCAL_TASK = "finetune_heldout"


@dataclass
class LmEvalConfig:
    tasks: list[str] = setting([])  # standard lm-eval task names, run when their datasets can be loaded
    local_task: bool = True  # the held-out split as an lm-eval task
    limit: int | None = setting(None, low=1)  # documents per task
    batch_size: int = setting(4, low=1)  # generation tasks' batch (gsm8k …); loglikelihoods: eval.batch_size


def write_local_task(samples: Sequence[Sample], tokenizer: Any, folder: Path) -> None:
    """``folder/finetune_heldout.yaml`` and its documents, in lm-eval's task format."""
    docs = []
    for s in samples:
        messages, tools = for_template(tokenizer, s.prompt)
        prompt = render(tokenizer, messages, tools, add_generation_prompt=True)
        whole = render(tokenizer, [*messages, {"role": "assistant", "content": s.reference}], tools)
        if whole.startswith(prompt):
            docs.append({"prompt": prompt, "answer": whole[len(prompt):]})
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "heldout.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    (folder / "finetune_heldout_results.py").write_text(_PROCESS_RESULTS, encoding="utf-8")
    (folder / f"{LOCAL_TASK}.yaml").write_text(_TASK_YAML.format(task=LOCAL_TASK, data=json.dumps(str(data))),
                                               encoding="utf-8")


# lm-eval's own loglikelihood metrics are `acc` and a per-answer `perplexity` (exp of minus the mean *summed*
# log-likelihood: astronomically large for answers of a hundred tokens). Byte-weighted perplexity and bits per
# byte, with lm-eval's own weighted aggregations, compare across tokenizers and answer lengths.
_PROCESS_RESULTS = """def process_results(doc, results):
    loglikelihood, is_greedy = results[0]
    size = len(doc["answer"].encode("utf-8"))
    return {"acc": int(is_greedy), "byte_perplexity": (loglikelihood, size), "bits_per_byte": (loglikelihood, size)}
"""
_TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
process_results: !function finetune_heldout_results.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """lm-eval draws five progress bars per task, logs every step and runs ``git`` (whose complaint outside a
    repository goes straight to file descriptor 2); our log says what ran and what was skipped. What they
    write goes to finetune.log (``library_output``); lm-eval's step-by-step logging nowhere."""
    from finetune.pipeline.rundir import library_output

    names = ("lm_eval", "lm-eval", "datasets", "evaluate")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with library_output():
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


@functools.cache
def standard_tasks() -> Any:
    """lm-eval's own tasks (a ``TaskManager`` indexing its ~15,000 task files: ~10–20 s on a CPU), once per process:
    every model asked uses the same index."""
    from lm_eval.tasks import TaskManager

    with _quiet_libraries():
        return TaskManager()


def task_names_file() -> Path:
    """Where the names of lm-eval's own tasks are kept: in the cache, one list per lm-eval install."""
    import lm_eval
    import lm_eval.tasks

    from finetune.paths import cache_dir

    tasks_dir = Path(lm_eval.tasks.__file__).parent
    install = f"{lm_eval.__version__}\0{tasks_dir}\0{tasks_dir.stat().st_mtime_ns}"
    return cache_dir() / "lm_eval" / f"task-names-{hashlib.sha256(install.encode()).hexdigest()[:16]}.json"


@functools.cache
def known_tasks() -> frozenset[str]:
    """The names of lm-eval's own tasks, groups and tags, for the check before training: made from the index once
    per lm-eval install and kept (``task_names_file``), so that a typo is refused in a second, not 10–20 s."""
    from finetune.pipeline.manifest import atomic_write_json

    listed = task_names_file()
    try:
        return frozenset(json.loads(listed.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        names = standard_tasks().all_tasks
        with contextlib.suppress(OSError):  # a read-only cache: the index again next time
            atomic_write_json(listed, names)
        return frozenset(names)


@functools.cache
def hub_unreachable() -> str | None:
    """Why lm-eval's own tasks cannot fetch their datasets now, or None. The Hugging Face Hub is asked once, with a
    short timeout: unreachable, each task would spend ~23 s in huggingface_hub's retries before being skipped. With
    HF_HUB_OFFLINE=1 nothing is asked: the local datasets cache answers."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=10).close()
    except urllib.error.HTTPError:
        return None  # an answer, whatever its status: the Hub is there
    except OSError as e:  # no network, DNS, proxy, TLS, timeout
        return (f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({getattr(e, 'reason', None) or e}); "
                "set HF_HUB_OFFLINE=1 to use the datasets in the local cache")
    return None


def _load_task(manager: Any, spec: str) -> dict[str, Any]:
    """A task as lm-eval's ``simple_evaluate`` prepares it (zero-shot unless its YAML says otherwise), for its
    ``evaluate``: ``simple_evaluate`` also records the environment (``pip list`` and friends in subprocesses,
    ~0.8 s a call on a CPU) and the git commit, which its results carry and ours do not."""
    loaded = manager.load([spec])
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=1234)  # simple_evaluate's default fewshot_random_seed
    return loaded


def scored_lm(model: Any, tokenizer: Any, batch_size: int, scores: TokenScores) -> Any:
    """lm-eval's ``HFLM`` (its tokenization, its requests, its truncation) whose loglikelihoods are read from
    ``scores``: a held-out conversation the perplexities already scored is not run through the model again, and
    any other row is scored by the same batched forward pass."""
    from lm_eval.models.huggingface import HFLM

    class ScoredHFLM(HFLM):
        def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                                  override_bs: int | None = None) -> list[tuple[float, bool]]:
            # the window HFLM scores: context and continuation, cut from the left to max_length + 1 tokens
            rows = [(context + continuation)[-(self.max_length + 1):] for _, context, continuation in requests]
            results = []
            for (key, _, continuation), (losses, greedy) in zip(requests, scores.of(rows), strict=True):
                n = len(continuation)
                result = (-float(losses[-n:].sum()), bool(greedy[-n:].all()))
                results.append(result)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, result)
            return results

    return ScoredHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def run_tasks(model: Any, tokenizer: Any, tasks: Sequence[str], local_folder: Path | None, cfg: LmEvalConfig,
              label: str, scores: TokenScores) -> dict[str, Any]:
    """``tasks`` → {task: {metric: value}}, ``higher_is_better`` → {task: {metric: bool}}, ``skipped`` →
    {task: why}."""
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    results: dict[str, Any] = {"tasks": {}, "higher_is_better": {}, "skipped": {}}
    if tasks and (why := hub_unreachable()):
        results["skipped"] = dict.fromkeys(tasks, why)
        tasks = []
    # The held-out task is loaded from its file; lm-eval's own tasks are indexed only when one is asked for.
    specs = {t: t for t in tasks}
    if local_folder:
        specs[LOCAL_TASK] = str(local_folder / f"{LOCAL_TASK}.yaml")
    with _quiet_libraries():
        lm = scored_lm(model, tokenizer, cfg.batch_size, scores)
        manager = standard_tasks() if tasks else TaskManager(include_defaults=False)
        for name, spec in specs.items():
            try:
                out = evaluate(lm=lm, task_dict=_load_task(manager, spec), limit=cfg.limit, log_samples=False,
                               bootstrap_iters=0, verbosity="ERROR")
            except Exception as e:  # a dataset that cannot be fetched offline, mostly; said, then the next task
                results["skipped"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                continue
            for task, metrics in (out or {}).get("results", {}).items():
                directions = out.get("higher_is_better", {}).get(task, {})  # not lm-eval's sample_len, *_stderr
                results["tasks"][task] = {k.split(",")[0]: v for k, v in metrics.items()
                                          if k.split(",")[0] in directions}
                results["higher_is_better"][task] = directions
    for name, why in results["skipped"].items():
        log.warning("%s: lm-eval task %s skipped (%s)", label, name, why)
    for task, metrics in results["tasks"].items():
        log.info("%s: lm-eval %s: %s", label, task, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return results

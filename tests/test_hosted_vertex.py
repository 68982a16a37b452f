"""backend=vertex against a local server in Google Cloud's wire formats (tests/vertex_server.py), driven by the
real google-auth (Application Default Credentials from a service account key), google-cloud-storage and
google-genai clients; evaluate asks the base and tuned models through an OpenAI-compatible chat endpoint answered
by llama.cpp running the real SmolLM2 GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import SYSTEM, TINY, conversation, run_cli, run_dirs
from .hosted import calls_a_tool, ends_with_a_question, files_text, interrupt_once_submitted, run_support_bot
from .openai_ft_server import OpenAIFineTuningServer
from .vertex_server import TOKEN, VertexServer

KEY = "ya29.canary-chat-token-5e2d"  # the chat endpoint's token: must never reach a file
MODEL = "gemini-2.5-flash"
PROJECT, REGION, BUCKET = "ft-test", "us-central1", "ft-test-data"


@pytest.fixture(scope="module")
def private_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def chat(llama_url):
    server = OpenAIFineTuningServer(llama_url, "smollm2")
    yield server
    server.close()


@pytest.fixture
def vertex(chat):
    server = VertexServer(buckets={BUCKET}, serves=chat.models)
    yield server
    server.close()


@pytest.fixture
def env(vertex, private_key, tmp_path) -> dict[str, str]:
    """Application Default Credentials: a service account key whose token endpoint is the local server."""
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "k1", "private_key": private_key,
        "client_email": f"tuner@{PROJECT}.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": f"{vertex.url}/token"}))
    return {"GOOGLE_APPLICATION_CREDENTIALS": str(key_file), "STORAGE_EMULATOR_HOST": vertex.url,
            "VERTEX_ACCESS_TOKEN": KEY}


def args(vertex: VertexServer, chat: OpenAIFineTuningServer, data: Path, tmp_path: Path, *more: str) -> list[str]:
    return [*TINY, f"dataset.path={data}", "backend=vertex", f"backend.base_url={vertex.url}",
            f"backend.project={PROJECT}", f"backend.region={REGION}", f"backend.bucket=gs://{BUCKET}/tuning",
            f"backend.chat_base_url={chat.url}", "backend.poll_interval_s=0.05", "eval.max_samples=2",
            f"hydra.run.dir={tmp_path / 'run'}", *more]


def create_path() -> str:
    return f"/v1beta1/projects/{PROJECT}/locations/{REGION}/tuningJobs"


def test_without_submit_it_writes_the_plan_and_the_files_and_sends_nothing(vertex, chat, env, dataset, tmp_path):
    proc = run_cli(*args(vertex, chat, dataset, tmp_path), cwd=tmp_path, env=env)
    assert "nothing was submitted" in proc.stdout and "backend.submit=true" in proc.stdout
    train = tmp_path / "run" / "train"
    plan = json.loads((train / "plan.json").read_text())
    rows = [json.loads(line) for line in (train / "train.gemini.jsonl").read_text().splitlines()]
    assert plan["files"]["train"]["examples"] == len(rows)
    assert rows[0]["systemInstruction"]["parts"][0]["text"] == SYSTEM
    assert [t["role"] for t in rows[0]["contents"]][:2] == ["user", "model"]
    assert plan["billed_tokens"] == plan["files"]["train"]["tokens"] * 3
    assert plan["estimated_usd"] == pytest.approx(plan["billed_tokens"] / 1e6 * 5.00, abs=1e-4)
    assert plan["hyperparameters"] == {"epoch_count": "auto", "learning_rate_multiplier": "auto", "adapter_size": 16}
    assert "approximation" in plan["token_count"]
    assert json.loads((train / "manifest.json").read_text())["status"] == "stopped"
    assert vertex.log == [] and vertex.grants == []
    assert not (tmp_path / "run" / "evaluate").exists()


def test_a_job_succeeds_and_the_tuned_model_is_evaluated_through_the_chat_endpoint(vertex, chat, env, dataset,
                                                                                     tmp_path):
    proc = run_cli(*args(vertex, chat, dataset, tmp_path, "backend.submit=true", "backend.epochs=2",
                         "method.r=4"), cwd=tmp_path, env=env)
    run_dir, train = tmp_path / "run", tmp_path / "run" / "train"
    assert "stages left out: merge, export, publish (backend=vertex has no local weights)" in proc.stdout + proc.stderr
    (number, job), = vertex.jobs.items()
    spec = job["supervisedTuningSpec"]
    assert job["baseModel"] == MODEL and job["tunedModelDisplayName"] == "tiny"
    assert spec["hyperParameters"] == {"epochCount": 2, "adapterSize": "ADAPTER_SIZE_FOUR",
                                       "learningRateMultiplier": 1.0}  # the server's default multiplier
    for split, key in (("train", "trainingDatasetUri"), ("validation", "validationDatasetUri")):
        uri = spec[key]
        assert uri.startswith(f"gs://{BUCKET}/tuning/tiny/") and uri.endswith(f"/{split}.gemini.jsonl")
        assert vertex.objects[uri] == (train / f"{split}.gemini.jsonl").read_bytes()

    metrics = json.loads((train / "metrics.json").read_text())
    endpoint = job["tunedModel"]["endpoint"]
    assert metrics["job_id"] == number and metrics["state"] == "JOB_STATE_SUCCEEDED"
    assert metrics["tuned_model"] == endpoint
    stats = job["tuningDataStats"]["supervisedTuningDataStats"]
    assert metrics["trained_tokens"] == int(stats["totalBillableTokenCount"]) * 2
    assert [(c["epoch"], c["step"]) for c in metrics["checkpoints"]] == [(1, int(stats["tuningStepCount"]) // 2),
                                                                       (2, int(stats["tuningStepCount"]))]
    assert metrics["checkpoints"][-1]["model"] == endpoint
    assert (train / "loss.jsonl").read_text() == ""  # Vertex gives no per-step loss through the tuning API

    result = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    assert result["models"]["tuned"]["source"] == endpoint and result["models"]["base"]["source"] == MODEL
    samples = [json.loads(line) for line in (run_dir / "evaluate" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["answers"]["tuned"] for s in samples)  # real llama.cpp answers
    asked = [path for method, path, status in chat.log if path.endswith("/chat/completions") and status == 200]
    assert len(asked) == 2 * len(samples)
    card = (run_dir / "card" / "README.md").read_text()
    assert number in card and endpoint in card and "Vertex AI" in card

    assert vertex.grants and set(vertex.grants) == {"urn:ietf:params:oauth:grant-type:jwt-bearer"}
    assert vertex.keys == {f"Bearer {TOKEN}"} and chat.keys == {f"Bearer {KEY}"}
    assert KEY not in files_text(run_dir)
    text = files_text(run_dir)
    assert KEY not in text and TOKEN not in text and "PRIVATE KEY" not in text


def test_an_interrupted_run_attaches_to_the_same_job(vertex, chat, env, dataset, tmp_path):
    job_id, said = interrupt_once_submitted([*args(vertex, chat, dataset, tmp_path, "backend.submit=true"),
                                             "backend.poll_interval_s=1"], tmp_path, env)
    name = f"projects/{PROJECT}/locations/{REGION}/tuningJobs/{job_id}"
    assert f"job {job_id} keeps running" in said and f"{name}:cancel" in said
    assert vertex.jobs[job_id]["state"] != "JOB_STATE_SUCCEEDED"

    proc2 = run_cli(*args(vertex, chat, dataset, tmp_path, "backend.submit=true", "stages=[validate,train]"),
                    cwd=tmp_path, env=env)
    assert f"attaching to job {job_id}" in proc2.stdout + proc2.stderr
    assert list(vertex.jobs) == [job_id] and vertex.jobs[job_id]["state"] == "JOB_STATE_SUCCEEDED"
    assert json.loads((tmp_path / "run" / "train" / "metrics.json").read_text())["job_id"] == job_id
    creates = [path for method, path, status, _ in vertex.log if method == "POST" and path == create_path()]
    assert len(creates) == 1


def test_a_failed_job_reports_the_providers_reason_and_is_set_aside(vertex, chat, env, dataset, tmp_path):
    vertex.fail_with = (3, "Dataset validation failed: contents[1] must have role 'model' in example 7.")
    proc = run_cli(*args(vertex, chat, dataset, tmp_path, "backend.submit=true"), cwd=tmp_path, check=False,
                   env=env)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    (job_id,) = vertex.jobs
    assert line.startswith("error:") and job_id in line and "JOB_STATE_FAILED" in line
    assert "3: Dataset validation failed" in line and "example 7" in line
    assert (tmp_path / "run" / "train" / f"job-{job_id}.failed.json").exists()
    assert not (tmp_path / "run" / "train" / "job.json").exists()



@pytest.mark.parametrize(("row", "reason"), [(ends_with_a_question, "the last turn is not the model's"),
                                              (calls_a_tool, "the Gemini format has no tool")])
def test_a_file_gemini_would_reject_is_refused_before_any_upload(vertex, chat, env, tmp_path, row, reason):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(row(i) if i % 2 else conversation(i)) + "\n" for i in range(40)))
    proc = run_cli(*args(vertex, chat, data, tmp_path, "backend.submit=true"), cwd=tmp_path, check=False, env=env)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "validate/train.jsonl:" in line and reason in line and "more" in line and "would reject" in line
    assert vertex.log == [] and vertex.objects == {}


def test_rate_limits_and_server_errors_are_retried_with_backoff(vertex, chat, env, dataset, tmp_path):
    upload = f"/upload/storage/v1/b/{BUCKET}/o"
    vertex.faults = {create_path(): [429, 500], upload: [503]}
    run_cli(*args(vertex, chat, dataset, tmp_path, "backend.submit=true", "stages=[validate,train]"), cwd=tmp_path,
            env=env)
    creates = [(status, t) for method, path, status, t in vertex.log if method == "POST" and path == create_path()]
    assert [status for status, _ in creates] == [429, 500, 200] and len(vertex.jobs) == 1
    waits = [b - a for (_, a), (_, b) in zip(creates, creates[1:], strict=False)]
    assert waits[0] >= 0.9 and waits[1] >= 1.9  # exponential: 1 s, then 2 s (plus jitter)
    uploads = [status for method, path, status, _ in vertex.log if path == upload]
    assert uploads[:2] == [503, 200] and uploads.count(200) == 2  # train and validation


def test_a_missing_setting_stops_the_run_before_it_starts(dataset, tmp_path):
    proc = run_cli(*TINY, f"dataset.path={dataset}", "backend=vertex", f"backend.bucket=gs://{BUCKET}", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: backend.project: not set")
    assert run_dirs(tmp_path) == []


@pytest.mark.quick
@pytest.mark.parametrize(("setting", "value", "key"), [("bucket", "s3://data/tuning", "backend.bucket"),
                                                       ("batch_size", 8, "backend.batch_size"),
                                                       ("method", "full", "method")])
def test_settings_gemini_tuning_cannot_take_are_refused(setting, value, key):
    from finetune.backends.hosted.vertex import VERTEX, VertexConfigError
    from finetune.config import RunConfig

    run = RunConfig()
    run.backend.project, run.backend.region, run.backend.bucket = PROJECT, REGION, f"gs://{BUCKET}"
    run.backend.base_model = MODEL
    VERTEX.check(run)
    if setting == "method":
        run.method.name = value
    else:
        setattr(run.backend, setting, value)
    with pytest.raises(VertexConfigError, match=f"^{key}: "):
        VERTEX.check(run)


@pytest.mark.quick
def test_gemini_rules_adapter_sizes_and_the_chat_endpoint():
    from finetune.backends.hosted.vertex import VERTEX, adapter_size
    from finetune.config import RunConfig

    run = RunConfig()
    turns = [{"role": role, "parts": [{"text": text}]} for role, text in (("user", "a"), ("user", "b"), ("model", " "))]
    assert VERTEX.problems({"contents": turns}, run) == [
        "turns 0 and 1 are both user (Gemini needs user and model turns alternating)", "turn 2 (model) has no text"]
    assert [adapter_size(r) for r in (1, 2, 3, 6, 12, 16, 64)] == [1, 2, 4, 8, 16, 16, 16]
    run.backend.project, run.backend.region, run.backend.api_key_env = PROJECT, REGION, "VERTEX_ACCESS_TOKEN"
    assert VERTEX.chat_endpoint(run) == (f"https://{REGION}-aiplatform.googleapis.com/v1/projects/{PROJECT}/"
                                         f"locations/{REGION}/endpoints/openapi", "VERTEX_ACCESS_TOKEN")


@pytest.mark.slow
def test_the_support_bot_recipe_runs_through_vertex_to_its_card(vertex, chat, env, tmp_path):
    run_dir = run_support_bot(["backend=vertex", f"backend.base_url={vertex.url}", f"backend.project={PROJECT}",
                               f"backend.region={REGION}", f"backend.bucket=gs://{BUCKET}/tuning",
                               f"backend.chat_base_url={chat.url}"], tmp_path, env,
                              judge=False)  # the judge grades answers as they came: test_hosted_openai's has it
    assert KEY not in files_text(run_dir)

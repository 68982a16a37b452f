"""backend=bedrock against moto's server (S3 and Bedrock's model customisation API in their real wire formats),
driven by the real boto3; Bedrock's calls pass through tests/bedrock_proxy.py, which walks a job through its life
and injects throttling (moto 5.2.5 can do neither). evaluate asks the base and tuned models through an
OpenAI-compatible chat endpoint answered by llama.cpp running the real SmolLM2 GGUF."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from .bedrock_proxy import LOSSES, BedrockProxy
from .conftest import SYSTEM, TINY, conversation, run_cli, run_dirs
from .hosted import calls_a_tool, ends_with_a_question, files_text, interrupt_once_submitted, run_support_bot
from .openai_ft_server import OpenAIFineTuningServer

MODEL, REGION, BUCKET = "amazon.nova-micro-v1:0", "us-east-1", "ft-test-data"
ROLE = "arn:aws:iam::123456789012:role/BedrockFineTuning"
SECRET = "canary-aws-secret-7d41b2"  # the AWS secret key: must never reach a file
KEY = "canary-bedrock-api-key-93e0"  # the chat endpoint's key (AWS_BEARER_TOKEN_BEDROCK): likewise
CREATE = "/model-customization-jobs"


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def env(moto_url, tmp_path) -> dict[str, str]:
    """AWS credentials from the environment (boto3's chain), S3 at moto, no profile or instance role to find."""
    return {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLECANARY", "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL_S3": moto_url, "AWS_BEARER_TOKEN_BEDROCK": KEY, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}


@pytest.fixture
def aws(moto_url):
    """boto3 clients of moto itself, to set up and inspect what the backend did; moto starts empty each test."""
    import boto3
    from botocore.config import Config

    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"))
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    sigv4 = Config(signature_version="v4")  # not the Bedrock API key of a test's environment
    clients = {name: session.client(name, endpoint_url=moto_url, config=sigv4) for name in ("s3", "bedrock")}
    clients["s3"].create_bucket(Bucket=BUCKET)
    return clients


@pytest.fixture
def chat(llama_url):
    server = OpenAIFineTuningServer(llama_url, "smollm2")
    server.models.add(MODEL)  # the base model; the proxy adds each tuned model as its job completes
    yield server
    server.close()


@pytest.fixture
def proxy(moto_url, aws, chat):
    server = BedrockProxy(moto_url, serves=chat.models, s3=aws["s3"])
    yield server
    server.close()


def args(proxy: BedrockProxy, chat: OpenAIFineTuningServer, data: Path, tmp_path: Path, *more: str) -> list[str]:
    return [*TINY, f"dataset.path={data}", "backend=bedrock", f"backend.base_url={proxy.url}",
            f"backend.bucket=s3://{BUCKET}/tuning", f"backend.role_arn={ROLE}", f"backend.chat_base_url={chat.url}",
            "backend.poll_interval_s=0.05", "eval.max_samples=2", f"hydra.run.dir={tmp_path / 'run'}", *more]


def jobs(aws) -> list[dict]:
    return aws["bedrock"].list_model_customization_jobs()["modelCustomizationJobSummaries"]


def objects(aws) -> list[str]:
    return [o["Key"] for o in aws["s3"].list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_without_submit_it_writes_the_plan_and_the_files_and_sends_nothing(proxy, chat, aws, env, dataset, tmp_path):
    proc = run_cli(*args(proxy, chat, dataset, tmp_path), cwd=tmp_path, env=env)
    assert "nothing was submitted" in proc.stdout and "backend.submit=true" in proc.stdout
    train = tmp_path / "run" / "train"
    plan = json.loads((train / "plan.json").read_text())
    rows = [json.loads(line) for line in (train / "train.bedrock_conversation.jsonl").read_text().splitlines()]
    assert plan["files"]["train"]["examples"] == len(rows)
    assert rows[0]["schemaVersion"] == "bedrock-conversation-2024" and rows[0]["system"] == [{"text": SYSTEM}]
    assert [m["role"] for m in rows[0]["messages"]][:2] == ["user", "assistant"]
    assert plan["billed_tokens"] == plan["files"]["train"]["tokens"] * 2
    assert plan["estimated_usd"] == pytest.approx(plan["billed_tokens"] / 1e6 * 1.00, abs=1e-4)
    assert plan["hyperparameters"] == {"epochCount": "default", "learningRate": "default"}
    assert "approximation" in plan["token_count"] and plan["notices"] == []
    assert json.loads((train / "manifest.json").read_text())["status"] == "stopped"
    assert proxy.log == [] and jobs(aws) == [] and objects(aws) == []
    assert not (tmp_path / "run" / "evaluate").exists()


def test_a_job_succeeds_and_the_tuned_model_is_evaluated_through_the_chat_endpoint(proxy, chat, aws, env, dataset,
                                                                                     tmp_path):
    proc = run_cli(*args(proxy, chat, dataset, tmp_path, "backend.submit=true", "backend.epochs=2",
                         "backend.lr_multiplier=2"), cwd=tmp_path, env=env)
    run_dir, train = tmp_path / "run", tmp_path / "run" / "train"
    assert "stages left out: merge, export, publish (backend=bedrock has no local weights)" in proc.stdout + proc.stderr
    (summary,) = jobs(aws)
    name = summary["jobName"]
    job = aws["bedrock"].get_model_customization_job(jobIdentifier=name)
    assert job["baseModelArn"].endswith(f"foundation-model/{MODEL}:128k") and job["roleArn"] == ROLE
    assert job["hyperParameters"] == {"epochCount": "2", "learningRate": "2e-05"}  # 2 × Nova's 1e-05
    assert job["clientRequestToken"] == name and job["customizationType"] == "FINE_TUNING"
    uris = {"train": job["trainingDataConfig"]["s3Uri"],
            "validation": job["validationDataConfig"]["validators"][0]["s3Uri"]}
    for split, uri in uris.items():
        assert uri == f"s3://{BUCKET}/tuning/{name}/{split}.bedrock_conversation.jsonl"
        body = aws["s3"].get_object(Bucket=BUCKET, Key=uri.split(f"{BUCKET}/", 1)[1])["Body"].read()
        assert body == (train / f"{split}.bedrock_conversation.jsonl").read_bytes()
    assert job["outputDataConfig"]["s3Uri"] == f"s3://{BUCKET}/tuning/{name}/output"

    metrics = json.loads((train / "metrics.json").read_text())
    tuned = metrics["tuned_model"]
    assert metrics["job_id"] == name and metrics["state"] == "Completed" and metrics["checkpoints"] == []
    assert tuned.startswith("arn:aws:bedrock:us-east-1:123456789012:custom-model/amazon.nova-micro-v1:0:128k/")
    assert metrics["final_train_loss"] == LOSSES[-1] and metrics["steps"] == len(LOSSES) - 1
    assert [json.loads(line)["loss"] for line in (train / "loss.jsonl").read_text().splitlines()] == LOSSES
    assert (train / "training_curves.png").exists()

    result = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    assert result["models"]["tuned"]["source"] == tuned and result["models"]["base"]["source"] == MODEL
    samples = [json.loads(line) for line in (run_dir / "evaluate" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["answers"]["tuned"] for s in samples)  # real llama.cpp answers
    asked = [path for method, path, status in chat.log if path.endswith("/chat/completions") and status == 200]
    assert len(asked) == 2 * len(samples)
    card = (run_dir / "card" / "README.md").read_text()
    assert name in card and tuned in card and "Amazon Bedrock" in card
    assert chat.keys == {f"Bearer {KEY}"}
    text = files_text(run_dir)
    assert SECRET not in text and KEY not in text


def test_an_interrupted_run_attaches_to_the_same_job(proxy, chat, aws, env, dataset, tmp_path):
    job_id, said = interrupt_once_submitted([*args(proxy, chat, dataset, tmp_path, "backend.submit=true"),
                                             "backend.poll_interval_s=1"], tmp_path, env)
    assert f"job {job_id} keeps running" in said
    assert f"aws bedrock stop-model-customization-job --job-identifier {job_id} --region {REGION}" in said
    assert proxy.jobs[job_id]["reads"] < proxy.reads

    proc2 = run_cli(*args(proxy, chat, dataset, tmp_path, "backend.submit=true", "stages=[validate,train]"),
                    cwd=tmp_path, env=env)
    assert f"attaching to job {job_id}" in proc2.stdout + proc2.stderr
    assert [j["jobName"] for j in jobs(aws)] == [job_id]
    assert json.loads((tmp_path / "run" / "train" / "metrics.json").read_text())["job_id"] == job_id
    assert [path for method, path, _, _ in proxy.log if method == "POST" and path == CREATE] == [CREATE]


def test_a_lost_job_file_attaches_to_the_job_of_the_same_name_and_a_stopped_one_is_not_reused(proxy, aws, env,
                                                                                               tmp_path, monkeypatch):
    """The job name is a digest of the files and the settings: a create retried after a crash that lost job.json
    finds the job it started; a job that was stopped (or failed) is followed by ``<name>-2``."""
    from finetune.backends.hosted.bedrock import BEDROCK
    from finetune.config import RunConfig

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = RunConfig()
    run.run_name = "support bot/v2"
    run.backend.base_model, run.backend.region, run.backend.bucket = MODEL, REGION, f"s3://{BUCKET}"
    run.backend.role_arn, run.backend.base_url = ROLE, proxy.url
    BEDROCK.check(run)
    files = {"train": tmp_path / "train.bedrock_conversation.jsonl"}
    files["train"].write_text(json.dumps({"messages": []}) + "\n")
    session = BEDROCK.connect(run)

    name = session.submit(files, run)
    assert name.startswith("support-bot-v2-") and len(name) == len("support-bot-v2-") + 12
    assert session.submit(files, run) == name and len(jobs(aws)) == 1
    assert session.job(name).state == "running"

    aws["bedrock"].stop_model_customization_job(jobIdentifier=name)
    assert session.job(name).state == "cancelled"
    assert session.submit(files, run) == f"{name}-2" and len(jobs(aws)) == 2
    files["train"].write_text(json.dumps({"messages": [1]}) + "\n")
    assert session.submit(files, run) not in (name, f"{name}-2")


def test_a_failed_job_reports_the_providers_reason_and_is_set_aside(proxy, chat, aws, env, dataset, tmp_path):
    proxy.fail_with = "Data validation failed: line 7: messages must alternate between user and assistant."
    proc = run_cli(*args(proxy, chat, dataset, tmp_path, "backend.submit=true"), cwd=tmp_path, check=False, env=env)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    (job_id,) = proxy.jobs
    assert line.startswith("error:") and job_id in line and "failed (Failed)" in line
    assert proxy.fail_with in line and "the next run submits a new job" in line
    assert (tmp_path / "run" / "train" / f"job-{job_id}.failed.json").exists()
    assert not (tmp_path / "run" / "train" / "job.json").exists()



@pytest.mark.parametrize(("row", "reason"), [
    (ends_with_a_question, "the last message is not the assistant's"),
    (calls_a_tool, "the Bedrock conversation format has no tool definitions, tool calls or tool results")])
def test_a_file_bedrock_would_reject_is_refused_before_any_upload(proxy, chat, aws, env, tmp_path, row, reason):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(row(i) if i % 2 else conversation(i)) + "\n" for i in range(40)))
    proc = run_cli(*args(proxy, chat, data, tmp_path, "backend.submit=true"), cwd=tmp_path, check=False, env=env)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "validate/train.jsonl:" in line and reason in line and "more" in line and "would reject" in line
    assert proxy.log == [] and objects(aws) == [] and jobs(aws) == []


def test_throttling_and_server_errors_are_retried_with_backoff(proxy, chat, aws, env, dataset, tmp_path):
    proxy.faults = {CREATE: [429, 500]}
    run_cli(*args(proxy, chat, dataset, tmp_path, "backend.submit=true", "stages=[validate,train]"), cwd=tmp_path,
            env=env)
    creates = [(status, attempt.split("; ")[-2:]) for method, path, status, attempt in proxy.log
               if method == "POST" and path == CREATE]  # retries also carry ttl=<time>; attempt=…; max=…
    assert creates == [(429, ["attempt=1", "max=8"]), (500, ["attempt=2", "max=8"]), (200, ["attempt=3", "max=8"])]
    assert len(jobs(aws)) == 1  # and moto answers a create with 200 where Bedrock answers 201


def test_a_missing_setting_stops_the_run_before_it_starts(dataset, tmp_path):
    proc = run_cli(*TINY, f"dataset.path={dataset}", "backend=bedrock", f"backend.bucket=s3://{BUCKET}",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: backend.role_arn: not set")
    assert run_dirs(tmp_path) == []


def _run(model: str = MODEL, **backend) -> object:
    from finetune.config import RunConfig

    run = RunConfig()
    run.backend.base_model, run.backend.region, run.backend.bucket, run.backend.role_arn = \
        model, REGION, f"s3://{BUCKET}/tuning", ROLE
    for key, value in backend.items():
        setattr(run.backend, key, value)
    return run


@pytest.mark.quick
@pytest.mark.parametrize(("model", "setting", "value", "key"), [
    (MODEL, "region", None, "backend.region"),
    (MODEL, "bucket", "gs://data/tuning", "backend.bucket"),
    (MODEL, "role_arn", "BedrockFineTuning", "backend.role_arn"),
    (MODEL, "base_model", "amazon.nova-premier-v1:0", "backend.base_model"),
    (MODEL, "base_model", "anthropic.claude-3-5-sonnet-20240620-v1:0", "backend.base_model"),
    (MODEL, "batch_size", 8, "backend.batch_size"),
    (MODEL, "epochs", 6, "backend.epochs"),
    (MODEL, "lr_multiplier", 20.0, "backend.lr_multiplier"),
    ("anthropic.claude-3-haiku-20240307-v1:0", "batch_size", 2, "backend.batch_size"),
    ("anthropic.claude-3-haiku-20240307-v1:0", "lr_multiplier", 3.0, "backend.lr_multiplier"),
])
def test_settings_bedrock_cannot_take_are_refused_naming_the_key(model, setting, value, key):
    from finetune.backends.hosted.bedrock import BEDROCK, BedrockConfigError

    run = _run(model)
    BEDROCK.check(run)
    setattr(run.backend, setting, value)
    with pytest.raises(BedrockConfigError, match=f"^{key}: "):
        BEDROCK.check(run)


@pytest.mark.quick
def test_submitting_needs_aws_credentials(tmp_path, monkeypatch):
    from finetune.backends.hosted.bedrock import BEDROCK, BedrockConfigError

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(BedrockConfigError, match="^backend.submit=true: no AWS credentials"):
        BEDROCK.check(_run(submit=True))


@pytest.mark.quick
def test_the_format_the_hyperparameters_and_the_notices_follow_the_model_family():
    from finetune.backends.hosted.bedrock import BEDROCK

    nova = _run(epochs=3, lr_multiplier=0.5)
    BEDROCK.check(nova)
    assert BEDROCK.data_format(nova) == "bedrock_conversation"
    assert BEDROCK.hyperparameters(nova) == {"epochCount": "3", "learningRate": "5e-06"}
    assert BEDROCK.notices(nova)[0].startswith(f"evaluate asks the tuned model at https://bedrock-runtime.{REGION}.")
    assert BEDROCK.chat_endpoint(nova) == (f"https://bedrock-runtime.{REGION}.amazonaws.com/openai/v1",
                                           "OPENAI_API_KEY")  # the dataclass default; bedrock.yaml sets its own

    haiku = _run("anthropic.claude-3-haiku-20240307-v1:0", batch_size=16, lr_multiplier=0.5, chat_base_url="http://x")
    BEDROCK.check(haiku)
    assert BEDROCK.data_format(haiku) == "bedrock"
    assert BEDROCK.hyperparameters(haiku) == {"epochCount": "default", "batchSize": "16",
                                              "learningRateMultiplier": "0.5"}
    eol, region = BEDROCK.notices(haiku)
    assert "end of life" in eol and "2026-09" in eol
    assert region == f"AWS lists anthropic.claude-3-haiku-20240307-v1:0 for fine-tuning in us-west-2; backend.region " \
                     f"is {REGION}"


@pytest.mark.quick
def test_bedrocks_rules_for_a_record():
    from finetune.backends.hosted.bedrock import BEDROCK

    def turn(role: str, text: str) -> dict:
        return {"role": role, "content": [{"text": text}]}

    record = {"schemaVersion": "bedrock-conversation-2024", "system": [{"text": " "}],
              "messages": [turn("assistant", "a"), turn("user", "b"), turn("user", " ")]}
    assert BEDROCK.problems(record, _run()) == [
        "the first message is not the user's (Bedrock needs it to be)",
        "the last message is not the assistant's (Bedrock trains on it)",
        "messages 1 and 2 are both user (Bedrock needs user and assistant alternating)",
        "message 2 (user) has no text", "the system prompt is empty"]
    claude = {"system": "Be brief.", "messages": [{"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "Hello."}]}
    assert BEDROCK.problems(claude, _run()) == []
    assert BEDROCK.tokens(_run()).count(claude) == BEDROCK.tokens(_run()).count(
        {"system": [{"text": "Be brief."}], "messages": [turn("user", "Hi"), turn("assistant", "Hello.")]})


@pytest.mark.slow
def test_the_support_bot_recipe_runs_through_bedrock_to_its_card(proxy, chat, aws, env, tmp_path):
    run_dir = run_support_bot(["backend=bedrock", f"backend.base_url={proxy.url}", f"backend.bucket=s3://{BUCKET}/tuning",
                               f"backend.role_arn={ROLE}", f"backend.chat_base_url={chat.url}"], tmp_path, env,
                              judge=False)  # the judge grades answers as they came: test_hosted_openai's has it
    assert SECRET not in files_text(run_dir) and KEY not in files_text(run_dir)

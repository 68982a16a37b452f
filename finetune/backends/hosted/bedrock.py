"""backend=bedrock: model customisation on Amazon Bedrock through boto3: the split files uploaded to
``backend.bucket`` (``s3://bucket/prefix``), ``create_model_customization_job`` with ``customizationType
=FINE_TUNING``, polled with ``get_model_customization_job``; the tuned model is asked through an OpenAI-compatible
chat endpoint.

Bedrock's data format and hyperparameters differ by model family, so both follow ``backend.base_model``: Amazon Nova
(and Meta Llama 3) take the conversation schema ``bedrock-conversation-2024`` with an absolute ``learningRate``;
Claude 3 Haiku — end of life for customisation in most regions since 2026-09 — takes ``{"system", "messages"}``
with a ``learningRateMultiplier``. Credentials come from boto3's usual chain (environment, profile, SSO, instance
role), never from the config. ``backend.base_url`` overrides the Bedrock endpoint only; S3 follows boto3's own
``AWS_ENDPOINT_URL_S3``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.backends.hosted import CANCELLED, FAILED, RUNNING, SUCCEEDED, HostedError, Job, TokenCount
from finetune.backends.hosted.openai_ft import tiktoken_encoding
from finetune.errors import UserError

log = logging.getLogger(__name__)

STATES = {"InProgress": RUNNING, "Stopping": RUNNING, "Completed": SUCCEEDED, "Failed": FAILED,
          "Stopped": CANCELLED}
DEFAULT = "default"  # a hyperparameter left to Bedrock
ROLE_ARN = re.compile(r"arn:aws(-[^:]+)?:iam::\d{12}:role/.+")
CONTEXT_VARIANT = re.compile(r":\d+k$")  # amazon.nova-micro-v1:0:128k: the id Bedrock customises
MAX_ATTEMPTS = 8  # botocore's standard retry mode: the first request and up to 7 retries


@dataclass(frozen=True)
class Family:
    """How Bedrock fine-tunes one family of models (AWS's "custom model hyperparameters" tables)."""

    title: str
    data_format: str  # finetune.data.formats.WRITABLE key
    max_epochs: int
    learning_rate: float | None  # Bedrock's default learningRate, × backend.lr_multiplier; None: takes the multiplier
    rate_range: tuple[float, float]  # what Bedrock accepts for learningRate (or learningRateMultiplier)
    batch_range: tuple[int, int] | None  # None: Bedrock fixes the batch size


FAMILIES = {
    "amazon.nova-": Family("Amazon Nova", "bedrock_conversation", 5, 1e-5, (1e-6, 1e-4), None),
    "meta.llama3": Family("Meta Llama 3", "bedrock_conversation", 10, 1e-4, (5e-6, 0.1), None),
    "anthropic.claude-3-haiku-": Family("Claude 3 Haiku", "bedrock", 10, None, (0.1, 2.0), (4, 256)),
}
# The text models AWS lists for fine-tuning: the on-demand id (what evaluate asks as the base model), the context
# variant that is customised, and the one region that customises it.
CUSTOMISABLE = {
    "amazon.nova-micro-v1:0": ("128k", "us-east-1"),
    "amazon.nova-lite-v1:0": ("300k", "us-east-1"),
    "amazon.nova-pro-v1:0": ("300k", "us-east-1"),
    "anthropic.claude-3-haiku-20240307-v1:0": ("200k", "us-west-2"),
    "meta.llama3-1-8b-instruct-v1:0": ("128k", "us-west-2"),
    "meta.llama3-1-70b-instruct-v1:0": ("128k", "us-west-2"),
    "meta.llama3-2-1b-instruct-v1:0": ("128k", "us-west-2"),
    "meta.llama3-2-3b-instruct-v1:0": ("128k", "us-west-2"),
    "meta.llama3-3-70b-instruct-v1:0": ("128k", "us-west-2"),
}


class BedrockConfigError(UserError, ValueError):
    """The bedrock backend's settings are incomplete or not what Bedrock customisation takes."""


def family(model: str) -> Family | None:
    return next((f for prefix, f in FAMILIES.items() if model.startswith(prefix)), None)


def on_demand_id(model: str) -> str:
    """The id without a context variant (amazon.nova-micro-v1:0:128k → amazon.nova-micro-v1:0)."""
    return CONTEXT_VARIANT.sub("", model)


def customised_id(model: str) -> str | None:
    """The id the job is created on: ``model`` itself when it names a context variant, else the listed one."""
    if CONTEXT_VARIANT.search(model):
        return model
    return f"{model}:{CUSTOMISABLE[model][0]}" if model in CUSTOMISABLE else None


def _s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix)."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def _text(content: Any) -> str:
    """A message's or system prompt's text in either of Bedrock's formats (a string, or a list of text blocks)."""
    return content if isinstance(content, str) else "".join(block.get("text", "") for block in content)


def _count_text(encoding: Any) -> Any:
    """Tokens of the system prompt and of every message's text; whatever framing Bedrock adds is not known."""

    def count(record: dict[str, Any]) -> int:
        texts = [_text(record.get("system") or ""), *(_text(m["content"]) for m in record["messages"])]
        return sum(len(encoding.encode(t)) for t in texts)

    return count


def _refuse_ranges(cfg: Any, fam: Family) -> None:
    if cfg.epochs and cfg.epochs > fam.max_epochs:
        raise BedrockConfigError(f"backend.epochs: {cfg.epochs}; Bedrock trains {fam.title} for 1 to "
                                 f"{fam.max_epochs} epochs")
    if cfg.batch_size:
        if fam.batch_range is None:
            raise BedrockConfigError(f"backend.batch_size: Bedrock fixes the batch size for {fam.title}; leave it "
                                     "null")
        low, high = fam.batch_range
        if not low <= cfg.batch_size <= high:
            raise BedrockConfigError(f"backend.batch_size: {cfg.batch_size}; Bedrock takes {low} to {high} for "
                                     f"{fam.title}")
    if cfg.lr_multiplier:
        low, high = fam.rate_range
        rate = cfg.lr_multiplier * (fam.learning_rate or 1.0)
        if not low <= rate <= high:
            what = (f"× {fam.title}'s learning rate {fam.learning_rate:g} is {rate:g}" if fam.learning_rate
                    else f"as {fam.title}'s learningRateMultiplier")
            raise BedrockConfigError(f"backend.lr_multiplier: {cfg.lr_multiplier:g} {what}, outside the {low:g} to "
                                     f"{high:g} Bedrock takes")


def _refuse_without_credentials(region: str) -> None:
    """Submitting needs boto3 and AWS credentials from its chain; say so before any stage runs."""
    try:
        import boto3
    except ImportError:
        raise BedrockConfigError("backend.submit=true: backend=bedrock needs boto3 (pip install 'finetune[bedrock]')"
                                 ) from None
    if boto3.Session(region_name=region).get_credentials() is None:
        raise BedrockConfigError("backend.submit=true: no AWS credentials; boto3 reads AWS_ACCESS_KEY_ID and "
                                 "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws (aws configure, aws sso login) or the "
                                 "instance's role")


class BedrockProvider:
    name = "bedrock"
    title = "Amazon Bedrock model customisation"

    def data_format(self, run: Any) -> str:
        """Bedrock's formats differ by model family: Nova and Llama take the Converse schema, Claude its own."""
        fam = family(run.backend.base_model)
        assert fam is not None, "check(run) refuses models of no known family"
        return fam.data_format

    def check(self, run: Any) -> None:
        cfg = run.backend
        for key in ("region", "bucket", "role_arn", "base_model"):
            if not getattr(cfg, key):
                raise BedrockConfigError(f"backend.{key}: not set; backend=bedrock needs the AWS region (us-east-1), "
                                         "an s3://bucket/prefix for the data and the job's output, the IAM role "
                                         "the job runs as and the model to tune (amazon.nova-micro-v1:0)")
        if not cfg.bucket.startswith("s3://") or not _s3(cfg.bucket)[0]:
            raise BedrockConfigError(f"backend.bucket: {cfg.bucket!r} is not an S3 location (s3://bucket/prefix)")
        if not ROLE_ARN.fullmatch(cfg.role_arn):
            raise BedrockConfigError(f"backend.role_arn: {cfg.role_arn!r} is not an IAM role ARN "
                                     "(arn:aws:iam::123456789012:role/…)")
        fam = family(cfg.base_model)
        if fam is None or customised_id(cfg.base_model) is None:
            raise BedrockConfigError(f"backend.base_model: {cfg.base_model!r} is not a text model Bedrock fine-tunes "
                                     f"that this backend knows ({', '.join(CUSTOMISABLE)}; or a context variant "
                                     "such as amazon.nova-micro-v1:0:128k)")
        _refuse_ranges(cfg, fam)
        if cfg.submit:
            _refuse_without_credentials(cfg.region)

    def problems(self, record: dict[str, Any], run: Any) -> list[str]:
        roles = [m["role"] for m in record["messages"]]
        found = [f"message {i} has role {r!r} (Bedrock has user and assistant)" for i, r in enumerate(roles)
                 if r not in ("user", "assistant")]
        if roles[:1] != ["user"]:
            found.append("the first message is not the user's (Bedrock needs it to be)")
        if roles[-1:] != ["assistant"]:
            found.append("the last message is not the assistant's (Bedrock trains on it)")
        found += [f"messages {i} and {i + 1} are both {roles[i]} (Bedrock needs user and assistant alternating)"
                  for i in range(len(roles) - 1) if roles[i] == roles[i + 1]]
        found += [f"message {i} ({m['role']}) has no text" for i, m in enumerate(record["messages"])
                  if not _text(m["content"]).strip()]
        if "system" in record and not _text(record["system"]).strip():
            found.append("the system prompt is empty")
        return found

    def tokens(self, run: Any) -> TokenCount:
        return TokenCount(_count_text(tiktoken_encoding("o200k_base")),
                          "tiktoken's o200k_base over the text (an approximation: Bedrock's tokenizers are not "
                          "available offline, and AWS bills the tokens its own tokenizer counts)")

    def hyperparameters(self, run: Any) -> dict[str, Any]:
        """Bedrock's names, as the strings it takes; ``backend.lr_multiplier`` scales the family's default
        learningRate (Nova 1e-5, Llama 1e-4) or is Claude's learningRateMultiplier itself."""
        cfg, fam = run.backend, family(run.backend.base_model)
        assert fam is not None  # check refused other models
        hp = {"epochCount": str(cfg.epochs) if cfg.epochs else DEFAULT}
        if fam.batch_range:
            hp["batchSize"] = str(cfg.batch_size) if cfg.batch_size else DEFAULT
        if fam.learning_rate is None:
            hp["learningRateMultiplier"] = f"{cfg.lr_multiplier:g}" if cfg.lr_multiplier else DEFAULT
        else:
            hp["learningRate"] = f"{fam.learning_rate * cfg.lr_multiplier:g}" if cfg.lr_multiplier else DEFAULT
        return hp

    def notices(self, run: Any) -> Sequence[str]:
        cfg = run.backend
        found = []
        if cfg.base_model.startswith("anthropic.claude-3-haiku-"):
            found.append("Claude 3 Haiku reached end of life for customisation on Amazon Bedrock in most regions in "
                         "2026-09; Bedrock fine-tunes Amazon Nova (amazon.nova-micro-v1:0, nova-lite, nova-pro) "
                         "and Meta Llama 3 instead")
        region = CUSTOMISABLE.get(on_demand_id(cfg.base_model), (None, cfg.region))[1]
        if region != cfg.region:
            found.append(f"AWS lists {cfg.base_model} for fine-tuning in {region}; backend.region is {cfg.region}")
        if not cfg.chat_base_url:
            found.append(f"evaluate asks the tuned model at {self.chat_endpoint(run)[0]}: Bedrock serves a custom "
                         "model only once it is deployed (on-demand deployment or Provisioned Throughput), under the "
                         "deployment's ARN — see docs/hosted-backends.md (backend=bedrock) or set "
                         "backend.chat_base_url")
        return found

    def connect(self, run: Any) -> BedrockSession:
        return BedrockSession(run.backend)

    def chat_endpoint(self, run: Any) -> tuple[str, str]:
        cfg = run.backend
        return cfg.chat_base_url or f"https://bedrock-runtime.{cfg.region}.amazonaws.com/openai/v1", cfg.api_key_env

    def chat_model(self, run: Any, model_id: str) -> str:
        """A base model is served on demand under its id without the context variant (amazon.nova-micro-v1:0); a
        tuned model is asked by the custom model ARN the job returned."""
        return on_demand_id(model_id)


def job_name(run: Any, files: dict[str, Path]) -> str:
    """``<run name>-<12 hex>``, the hex a digest of the files and of everything the job is created with: the same
    run always asks for the same job (name and idempotency token), so a retried create never starts a second."""
    cfg = run.backend
    what = {"base_model": customised_id(cfg.base_model), "role_arn": cfg.role_arn, "bucket": cfg.bucket,
            "region": cfg.region, "hyperparameters": BEDROCK.hyperparameters(run),
            "files": {split: hashlib.sha256(path.read_bytes()).hexdigest() for split, path in sorted(files.items())}}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", run.run_name)[:40].strip("-") or "finetune"
    return f"{slug}-{digest}"


class BedrockSession:
    """boto3 clients in botocore's standard retry mode: throttling (429 ThrottlingException …) and 5xx answers are
    retried with exponential backoff and full jitter, up to ``MAX_ATTEMPTS`` attempts a call.

    Bedrock is signed with the IAM credentials (SigV4) that the S3 upload needs anyway: botocore would otherwise
    switch to the Bedrock API key whenever AWS_BEARER_TOKEN_BEDROCK — evaluate's key — is in the environment."""

    def __init__(self, cfg: Any) -> None:
        import boto3
        from botocore.config import Config

        self.cfg = cfg
        config = Config(retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"}, connect_timeout=10,
                        read_timeout=120)
        session = boto3.Session(region_name=cfg.region)
        self.bedrock = session.client("bedrock", endpoint_url=cfg.base_url,
                                      config=config.merge(Config(signature_version="v4")))
        self.s3 = session.client("s3", config=config)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(*args, **kwargs)
        except ClientError as e:
            error = e.response.get("Error", {})
            raise HostedError(f"AWS refused {what}: {error.get('Code')}: {error.get('Message')}") from None
        except NoCredentialsError:
            raise HostedError(f"no AWS credentials for {what}; set AWS_PROFILE or AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or run `aws sso login`") from None
        except BotoCoreError as e:
            raise HostedError(f"cannot reach AWS for {what} ({e})") from None

    def _get(self, job_id: str) -> dict[str, Any] | None:
        """The job as Bedrock describes it; None if there is none of that name."""
        from botocore.exceptions import ClientError

        try:
            return self.bedrock.get_model_customization_job(jobIdentifier=job_id)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return None
            raise

    def _uri(self, *parts: str) -> str:
        bucket, prefix = _s3(self.cfg.bucket)
        return f"s3://{bucket}/" + "/".join(part for part in (prefix, *parts) if part)

    def _upload(self, path: Path, folder: str) -> str:
        uri = self._uri(folder, path.name)
        bucket, key = _s3(uri)
        self._call(f"the upload of {path.name} to {uri}", self.s3.put_object, Bucket=bucket, Key=key,
                   Body=path.read_bytes(), ContentType="application/jsonl")
        return uri

    def _create(self, name: str, folder: str, files: dict[str, Path], run: Any) -> None:
        uris = {split: self._upload(path, folder) for split, path in files.items()}
        validation = {"validationDataConfig": {"validators": [{"s3Uri": uris["validation"]}]}} \
            if "validation" in uris else {}
        self._call(f"the customisation job {name}", self.bedrock.create_model_customization_job,
                   jobName=name, customModelName=name, clientRequestToken=name, roleArn=self.cfg.role_arn,
                   baseModelIdentifier=customised_id(self.cfg.base_model), customizationType="FINE_TUNING",
                   trainingDataConfig={"s3Uri": uris["train"]}, outputDataConfig={"s3Uri": self._uri(name, "output")},
                   hyperParameters={k: v for k, v in BEDROCK.hyperparameters(run).items() if v != DEFAULT},
                   **validation)

    def submit(self, files: dict[str, Path], run: Any) -> str:
        """The job named for these files and settings: attached to if it exists and has not failed; else created
        (after a failed one as ``<name>-2``, ``-3`` …). The files go to ``bucket/prefix/<name>/``."""
        base = job_name(run, files)
        for name in (base, *(f"{base}-{n}" for n in range(2, 10))):
            existing = self._call(f"job {name}", self._get, name)
            if existing is None:
                self._create(name, base, files, run)
                return name
            if STATES.get(existing["status"], RUNNING) not in (FAILED, CANCELLED):
                log.info("Amazon Bedrock already has job %s for these files and settings (%s): attaching to it",
                         name, existing["status"])
                return name
        raise HostedError(f"Amazon Bedrock jobs {base} to {name} all failed or were stopped; change the data or the "
                          "settings before trying again")

    def job(self, job_id: str) -> Job:
        j = self._call(f"job {job_id}", self._get, job_id)
        if j is None:
            raise HostedError(f"Amazon Bedrock has no customisation job {job_id} in {self.cfg.region}")
        status = j["status"]
        state = STATES.get(status, RUNNING)
        losses = self._losses(j) if state == SUCCEEDED else []
        final = (j.get("trainingMetrics") or {}).get("trainingLoss")
        return Job(id=job_id, state=state, provider_state=status,
                   tuned_model=j.get("outputModelArn") if state == SUCCEEDED else None,
                   step=losses[-1]["step"] if losses else None,
                   train_loss=final if final is not None else (losses[-1]["train_loss"] if losses else None),
                   error=j.get("failureMessage") if state == FAILED else None, losses=losses)

    def _losses(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """The per-step training loss Bedrock writes to the job's output folder, ``…/training_artifacts/
        step_wise_training_metrics.csv`` (step_number, epoch_number, training_loss, perplexity)."""
        bucket, prefix = _s3(job["outputDataConfig"]["s3Uri"])
        listed = self._call(f"the output of job {job['jobName']}", self.s3.list_objects_v2, Bucket=bucket,
                            Prefix=prefix)
        keys = [o["Key"] for o in listed.get("Contents", [])
                if o["Key"].endswith("training_artifacts/step_wise_training_metrics.csv")]
        if not keys:
            return []
        body = self._call(f"s3://{bucket}/{keys[0]}", self.s3.get_object, Bucket=bucket, Key=keys[0])["Body"]
        rows = csv.DictReader(io.StringIO(body.read().decode("utf-8")))
        return [{"step": int(r["step_number"]), "train_loss": float(r["training_loss"])} for r in rows]

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """None: Bedrock keeps only the finished custom model (``tuned_model``), no intermediate checkpoints."""
        return []

    def cancel_hint(self, job_id: str) -> str:
        endpoint = f" --endpoint-url {self.cfg.base_url}" if self.cfg.base_url else ""
        return (f"aws bedrock stop-model-customization-job --job-identifier {job_id} --region {self.cfg.region}"
                + endpoint)


BEDROCK = BedrockProvider()

"""backend=vertex: Gemini supervised tuning on Vertex AI, through the official SDKs: the split files uploaded to
``backend.bucket`` with google-cloud-storage, the job started with google-genai's ``tunings.tune`` and polled
with ``tunings.get``; the tuned model is asked through Vertex AI's OpenAI-compatible chat endpoint.

Credentials are Application Default Credentials (``gcloud auth application-default login``, a service account
key in ``GOOGLE_APPLICATION_CREDENTIALS``, or the metadata server on Google Cloud), refreshed as they expire, so a
job that runs for hours is still watched. ``backend.base_url`` overrides the Vertex AI API only; Cloud Storage
follows its client's own ``STORAGE_EMULATOR_HOST``. A tuning job reports its state, its data statistics
(billable tokens, steps) and, once done, the tuned model's endpoint and checkpoints, but no per-step loss (that
lives in Vertex AI Experiments, ``job.experiment``), so ``loss.jsonl`` stays empty.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune.backends.hosted import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, HostedError, Job, TokenCount
from finetune.backends.hosted.openai_ft import tiktoken_encoding
from finetune.errors import UserError
from finetune.methods import METHODS

STATES = {"JOB_STATE_QUEUED": QUEUED, "JOB_STATE_PENDING": QUEUED, "JOB_STATE_RUNNING": RUNNING,
          "JOB_STATE_UPDATING": RUNNING, "JOB_STATE_PAUSED": RUNNING, "JOB_STATE_CANCELLING": RUNNING,
          "JOB_STATE_SUCCEEDED": SUCCEEDED, "JOB_STATE_FAILED": FAILED, "JOB_STATE_EXPIRED": FAILED,
          "JOB_STATE_PARTIALLY_SUCCEEDED": FAILED, "JOB_STATE_CANCELLED": CANCELLED}
ADAPTER_SIZES = {1: "ADAPTER_SIZE_ONE", 2: "ADAPTER_SIZE_TWO", 4: "ADAPTER_SIZE_FOUR", 8: "ADAPTER_SIZE_EIGHT",
                 16: "ADAPTER_SIZE_SIXTEEN"}
SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class VertexConfigError(UserError, ValueError):
    """The vertex backend's settings are incomplete or not what Gemini tuning takes."""


def _bucket(uri: str) -> tuple[str, str]:
    """``gs://bucket/prefix`` as (bucket, prefix)."""
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    return bucket, prefix.strip("/")


def _host(region: str) -> str:
    return "aiplatform.googleapis.com" if region == "global" else f"{region}-aiplatform.googleapis.com"


def adapter_size(r: int) -> int:
    """The Gemini adapter size nearest to LoRA rank ``r`` on a log scale (1, 2, 4, 8 or 16)."""
    return min(ADAPTER_SIZES, key=lambda size: abs(math.log2(size) - math.log2(r)))


def _count_text(encoding: Any) -> Any:
    """Tokens of the system instruction and every turn's text; Gemini adds no framing that is billed."""

    def count(record: dict[str, Any]) -> int:
        turns = [record.get("systemInstruction") or {"parts": []}, *record["contents"]]
        return sum(len(encoding.encode(part.get("text", ""))) for turn in turns for part in turn["parts"])

    return count


def _credentials() -> Any:
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return google.auth.default(scopes=[SCOPE])[0]
    except DefaultCredentialsError as e:
        raise VertexConfigError(f"backend=vertex: no Google credentials ({str(e).splitlines()[0]}); run `gcloud auth "
                                "application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service "
                                "account key file") from None


class VertexProvider:
    name = "vertex"
    title = "Vertex AI Gemini tuning"

    def data_format(self, run: Any) -> str:
        return "gemini"

    def check(self, run: Any) -> None:
        cfg = run.backend
        for key in ("project", "region", "bucket", "base_model"):
            if not getattr(cfg, key):
                raise VertexConfigError(f"backend.{key}: not set; backend=vertex needs the Google Cloud project, its "
                                        "region (us-central1), a gs://bucket/prefix for the data and the Gemini "
                                        "model to tune (gemini-2.5-flash)")
        if not cfg.bucket.startswith("gs://") or not _bucket(cfg.bucket)[0]:
            raise VertexConfigError(f"backend.bucket: {cfg.bucket!r} is not a Cloud Storage location "
                                    "(gs://bucket/prefix)")
        if cfg.batch_size:
            raise VertexConfigError("backend.batch_size: Gemini tuning on Vertex AI chooses its own batch size; "
                                    "leave it null (it takes backend.epochs, backend.lr_multiplier and method.r)")
        if not METHODS[run.method.name].adapter:
            raise VertexConfigError("method: Gemini tuning on Vertex AI trains an adapter, not all weights; use "
                                    "method=lora (method.r picks the adapter size)")

    def problems(self, record: dict[str, Any], run: Any) -> list[str]:
        turns = record["contents"]
        roles = [t["role"] for t in turns]
        found = [f"turn {i} has role {r!r} (Gemini has user and model)" for i, r in enumerate(roles)
                 if r not in ("user", "model")]
        if roles[:1] != ["user"]:
            found.append("the first turn is not the user's (Gemini needs it to be)")
        if roles[-1:] != ["model"]:
            found.append("the last turn is not the model's (Gemini trains on it)")
        found += [f"turns {i} and {i + 1} are both {roles[i]} (Gemini needs user and model turns alternating)"
                  for i in range(len(roles) - 1) if roles[i] == roles[i + 1]]
        found += [f"turn {i} ({t['role']}) has no text" for i, t in enumerate(turns)
                  if not any((p.get("text") or "").strip() for p in t["parts"])]
        return found

    def tokens(self, run: Any) -> TokenCount:
        return TokenCount(_count_text(tiktoken_encoding("o200k_base")),
                          "tiktoken's o200k_base over the text (an approximation: Gemini's tokenizer is not available "
                          "offline; the job reports the billed count, which the card shows)")

    def hyperparameters(self, run: Any) -> dict[str, Any]:
        cfg = run.backend
        return {"epoch_count": cfg.epochs or "auto", "learning_rate_multiplier": cfg.lr_multiplier or "auto",
                "adapter_size": adapter_size(run.method.r)}

    def notices(self, run: Any) -> Sequence[str]:
        return []

    def connect(self, run: Any) -> VertexSession:
        return VertexSession(run.backend)

    def chat_endpoint(self, run: Any) -> tuple[str, str]:
        cfg = run.backend
        url = f"https://{_host(cfg.region)}/v1/projects/{cfg.project}/locations/{cfg.region}/endpoints/openapi"
        return cfg.chat_base_url or url, cfg.api_key_env

    def chat_model(self, run: Any, model_id: str) -> str:
        """Vertex's OpenAI-compatible endpoint names a Gemini base model ``google/<id>`` (the bare id is answered
        400 "Malformed publisher model"); a tuned model is its endpoint's resource name."""
        return model_id if "/" in model_id else f"google/{model_id}"


class VertexSession:
    """google-genai retries nothing unless told: ``HttpRetryOptions`` makes it retry 408, 429 and 5xx answers with
    exponential backoff (1 s, 2 s, 4 s … with jitter, 6 attempts). google-cloud-storage retries uploads itself."""

    def __init__(self, cfg: Any) -> None:
        from google import genai
        from google.cloud import storage
        from google.genai import types

        self.cfg = cfg
        self.api = (cfg.base_url or f"https://{_host(cfg.region)}").rstrip("/")
        credentials = _credentials()
        options = types.HttpOptions(base_url=cfg.base_url, timeout=120_000,
                                    retry_options=types.HttpRetryOptions(attempts=6, initial_delay=1.0, max_delay=60.0))
        self.client = genai.Client(vertexai=True, project=cfg.project, location=cfg.region, credentials=credentials,
                                   http_options=options)
        self.storage = storage.Client(project=cfg.project, credentials=credentials)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from google.api_core.exceptions import GoogleAPICallError
        from google.auth.exceptions import GoogleAuthError
        from google.genai.errors import APIError

        try:
            return fn(*args, **kwargs)
        except APIError as e:
            raise HostedError(f"Vertex AI at {self.api} refused {what}: HTTP {e.code} {e.status}: {e.message}"
                              ) from None
        except GoogleAPICallError as e:
            raise HostedError(f"Cloud Storage refused {what}: HTTP {e.code} {_reason(e)}") from None
        except GoogleAuthError as e:
            raise HostedError(f"Google credentials failed for {what}: {e}") from None
        except _unreachable() as e:
            raise HostedError(f"cannot reach Google Cloud for {what} ({e})") from None

    def _name(self, job_id: str) -> str:
        """Job ids are the tuning job's number, so that they make file names; the API wants the resource name."""
        return f"projects/{self.cfg.project}/locations/{self.cfg.region}/tuningJobs/{job_id}"

    def _upload(self, path: Path, run_name: str) -> str:
        """To ``bucket/prefix/<run>/<sha256[:12]>/<file>``: the same file lands on the same object, a changed
        one never overwrites what a running job reads."""
        bucket, prefix = _bucket(self.cfg.bucket)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        name = "/".join(part for part in (prefix, run_name, digest, path.name) if part)
        blob = self.storage.bucket(bucket).blob(name)
        self._call(f"the upload of {path.name} to gs://{bucket}/{name}", blob.upload_from_filename, str(path),
                   content_type="application/jsonl")
        return f"gs://{bucket}/{name}"

    def submit(self, files: dict[str, Path], run: Any) -> str:
        from google.genai import types

        uris = {split: self._upload(path, run.run_name) for split, path in files.items()}
        hp = VERTEX.hyperparameters(run)
        config = types.CreateTuningJobConfig(
            epoch_count=run.backend.epochs, learning_rate_multiplier=run.backend.lr_multiplier,
            adapter_size=ADAPTER_SIZES[hp["adapter_size"]], tuned_model_display_name=run.run_name[:128],
            validation_dataset=types.TuningValidationDataset(gcs_uri=uris["validation"]) if "validation" in uris
            else None)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The SDK's tuning implementation is experimental")
            job = self._call("the tuning job", self.client.tunings.tune, base_model=run.backend.base_model,
                             training_dataset=types.TuningDataset(gcs_uri=uris["train"]), config=config)
        return job.name.rsplit("/", 1)[-1]

    def _get(self, job_id: str) -> Any:
        return self._call(f"tuning job {job_id}", self.client.tunings.get, name=self._name(job_id))

    def job(self, job_id: str) -> Job:
        j = self._get(job_id)
        state = str(getattr(j.state, "value", j.state) or "JOB_STATE_UNSPECIFIED")
        stats = j.tuning_data_stats.supervised_tuning_data_stats if j.tuning_data_stats else None
        hp = j.supervised_tuning_spec.hyper_parameters if j.supervised_tuning_spec else None
        billable, epochs = stats and stats.total_billable_token_count, hp and hp.epoch_count
        error = f"{j.error.code}: {j.error.message}" if j.error and (j.error.code or j.error.message) else None
        return Job(id=job_id, state=STATES.get(state, RUNNING), provider_state=state,
                   tuned_model=j.tuned_model.endpoint if j.tuned_model else None,
                   total_steps=stats.tuning_step_count if stats else None,
                   trained_tokens=billable * epochs if billable and epochs else None, error=error)

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        tuned = self._get(job_id).tuned_model
        return [{"step": c.step, "epoch": c.epoch, "checkpoint_id": c.checkpoint_id, "model": c.endpoint}
                for c in (tuned.checkpoints or [] if tuned else [])]

    def cancel_hint(self, job_id: str) -> str:
        return (f"curl -X POST -H \"Authorization: Bearer $(gcloud auth print-access-token)\" "
                f"{self.api}/v1/{self._name(job_id)}:cancel")


def _reason(error: Any) -> str:
    """Google's own message from the error body; the exception's text also repeats the request and the upload
    library's repr."""
    try:
        return str(error.response.json()["error"]["message"])
    except (AttributeError, ValueError, KeyError, TypeError):
        return str(error.message)


def _unreachable() -> tuple[type[Exception], ...]:
    """Transport errors: google-genai talks through httpx2 (httpx before version 3), Cloud Storage through
    requests."""
    import requests

    try:
        import httpx2 as httpx
    except ImportError:
        import httpx
    return httpx.TransportError, requests.ConnectionError


VERTEX = VertexProvider()

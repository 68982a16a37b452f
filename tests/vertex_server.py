"""A local server in Google Cloud's wire formats, for the vertex backend's tests, driven by the real google-auth,
google-cloud-storage and google-genai clients:

- OAuth 2.0 token endpoint (``POST /token``, the ``token_uri`` of a service account key): a JWT-bearer grant gets
  ``TOKEN``, which every other request must carry, as Application Default Credentials work;
- Cloud Storage JSON API: bucket metadata (``GET /storage/v1/b/{bucket}``) and multipart uploads (``POST
  /upload/storage/v1/b/{bucket}/o?uploadType=multipart``, crc32c checked);
- Vertex AI tuning jobs as google-genai calls them (``POST /v1beta1/{parent}/tuningJobs``, ``GET {name}``, ``POST
  {name}:cancel``), 64-bit integers as JSON strings like the real API; a job reads its dataset from the bucket.

A job moves one step each time it is read (PENDING → RUNNING with data statistics → RUNNING → SUCCEEDED with the
tuned model's endpoint and one checkpoint per epoch), so a test sees its whole life in a few polls. A tuned model's
endpoint, and ``google/<base model>``, join ``serves``: the ids the chat endpoint answers. ``fail_with`` makes the
next jobs fail with a google.rpc.Status; ``faults`` answers the next requests to a path with an HTTP status before
serving them, as a busy API does. ``log`` has every request as (method, path, status, time).
"""

from __future__ import annotations

import base64
import email.parser
import itertools
import json
import threading
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

import google_crc32c

from .json_server import JsonServer, Reply, Request

TOKEN = "ya29.local-access-token"
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
          500: "INTERNAL", 503: "UNAVAILABLE"}
BATCH = 8  # examples per step, for the step count the job reports


class VertexServer(JsonServer):
    content_type = "application/json; charset=UTF-8"

    def __init__(self, buckets: set[str], serves: set[str]) -> None:
        super().__init__()
        self.buckets, self.serves = buckets, serves
        self.objects: dict[str, bytes] = {}  # gs://bucket/name -> content
        self.jobs: dict[str, dict[str, Any]] = {}  # job number -> the TuningJob resource (and _private fields)
        self.fail_with: tuple[int, str] | None = None
        self.grants: list[str] = []  # grant types the token endpoint was asked
        self.keys: set[str] = set()  # Authorization headers seen (the token endpoint's requests have none)
        self._ids = itertools.count(7_100_000_000_000_000_001)
        self._lock = threading.Lock()

    # ── OAuth and Cloud Storage ──

    def token(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        self.grants += form.get("grant_type", [])
        if not form.get("assertion"):
            return 400, {"error": "invalid_grant", "error_description": "no assertion"}
        return 200, {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}

    def bucket(self, name: str) -> tuple[int, dict[str, Any]]:
        if name not in self.buckets:
            return 404, _error(404, "The specified bucket does not exist.")
        return 200, {"kind": "storage#bucket", "id": name, "name": name, "location": "US-CENTRAL1",
                     "storageClass": "STANDARD", "metageneration": "1", "timeCreated": _now()}

    def upload(self, bucket: str, content_type: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if bucket not in self.buckets:
            return 404, _error(404, "The specified bucket does not exist.")
        metadata, content = _related(content_type, raw)
        crc = base64.b64encode(google_crc32c.Checksum(content).digest()).decode()
        if metadata.get("crc32c", crc) != crc:
            return 400, _error(400, f"Provided CRC32C \"{metadata['crc32c']}\" doesn't match calculated \"{crc}\".")
        self.objects[f"gs://{bucket}/{metadata['name']}"] = content
        return 200, {"kind": "storage#object", "id": f"{bucket}/{metadata['name']}/1", "name": metadata["name"],
                     "bucket": bucket, "generation": "1", "metageneration": "1", "size": str(len(content)),
                     "contentType": metadata.get("contentType", "application/octet-stream"), "crc32c": crc,
                     "timeCreated": _now(), "updated": _now()}

    # ── Vertex AI tuning jobs ──

    def _dataset(self, uri: str) -> tuple[int, int] | None:
        """(examples, characters) of a tuning dataset in the bucket; None if it cannot be read."""
        content = self.objects.get(uri)
        if content is None:
            return None
        rows = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
        texts = [p.get("text", "") for r in rows for t in [r.get("systemInstruction") or {}, *r["contents"]]
                 for p in t.get("parts", [])]
        return len(rows), sum(map(len, texts))

    def create_job(self, parent: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        spec = body.get("supervisedTuningSpec", {})
        if not str(body.get("baseModel", "")).startswith("gemini-"):
            return 400, _error(400, f"Base model {body.get('baseModel')} is not supported for supervised tuning.")
        for key in ("trainingDatasetUri", "validationDatasetUri"):
            if key in spec and self._dataset(spec[key]) is None:
                return 400, _error(400, f"Failed to read the dataset at {spec[key]}: the object does not exist.")
        number = str(next(self._ids))
        hp = {"epochCount": "3", "learningRateMultiplier": 1.0, "adapterSize": "ADAPTER_SIZE_FOUR",
              **spec.get("hyperParameters", {})}
        job = {"name": f"{parent}/tuningJobs/{number}", "tunedModelDisplayName": body.get("tunedModelDisplayName"),
               "baseModel": body["baseModel"], "supervisedTuningSpec": {**spec, "hyperParameters": hp},
               "state": "JOB_STATE_PENDING", "createTime": _now(), "updateTime": _now(),
               "_reads": 0, "_fail": self.fail_with}
        self.jobs[number] = job
        self.serves.add(f"google/{body['baseModel']}")
        return 200, _public(job)

    def advance(self, job: dict[str, Any]) -> None:
        """One step of the job's life per read."""
        job["_reads"] += 1
        job["updateTime"] = _now()
        if job["state"] == "JOB_STATE_PENDING":
            if job["_fail"]:
                code, message = job["_fail"]
                job.update(state="JOB_STATE_FAILED", error={"code": code, "message": message}, endTime=_now())
                return
            examples, characters = self._dataset(job["supervisedTuningSpec"]["trainingDatasetUri"])
            epochs = int(job["supervisedTuningSpec"]["hyperParameters"]["epochCount"])
            job.update(state="JOB_STATE_RUNNING", startTime=_now(), experiment=f"{job['name']}/experiment",
                       tuningDataStats={"supervisedTuningDataStats": {
                           "tuningDatasetExampleCount": str(examples), "totalTuningCharacterCount": str(characters),
                           "totalBillableCharacterCount": str(characters),
                           "totalBillableTokenCount": str(characters // 4),
                           "tuningStepCount": str(-(-examples // BATCH) * epochs)}})
        elif job["state"] == "JOB_STATE_RUNNING" and job["_reads"] >= 3:
            self._succeed(job)

    def _succeed(self, job: dict[str, Any]) -> None:
        parent = job["name"].split("/tuningJobs/")[0]
        endpoint = f"{parent}/endpoints/{next(self._ids)}"
        stats = job["tuningDataStats"]["supervisedTuningDataStats"]
        epochs = int(job["supervisedTuningSpec"]["hyperParameters"]["epochCount"])
        per_epoch = int(stats["tuningStepCount"]) // epochs
        checkpoints = [{"checkpointId": str(e), "epoch": str(e), "step": str(e * per_epoch),
                        "endpoint": endpoint if e == epochs else f"{parent}/endpoints/{next(self._ids)}"}
                       for e in range(1, epochs + 1)]
        job.update(state="JOB_STATE_SUCCEEDED", endTime=_now(),
                   tunedModel={"model": f"{parent}/models/{next(self._ids)}@1", "endpoint": endpoint,
                               "checkpoints": checkpoints})
        self.serves.add(endpoint)

    def route(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        with self._lock:
            if parts[:2] == ["storage", "v1"] and parts[2:3] == ["b"] and len(parts) == 4 and method == "GET":
                return self.bucket(parts[3])
            if parts[0] not in ("v1", "v1beta1") or parts[1:2] != ["projects"] or parts[5:6] != ["tuningJobs"]:
                return 404, _error(404, f"no route {method} {path}")
            parent = "/".join(parts[1:5])
            if method == "POST" and len(parts) == 6:
                return self.create_job(parent, body)
            number, _, verb = parts[6].partition(":") if len(parts) == 7 else ("", "", "")
            job = self.jobs.get(number)
            if job is None or job["name"] != f"{parent}/tuningJobs/{number}":
                return 404, _error(404, f"TuningJob {'/'.join(parts[1:])} not found.")
            if method == "GET" and not verb:
                self.advance(job)
                return 200, _public(job)
            if method == "POST" and verb == "cancel":
                if job["state"] not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
                    job.update(state="JOB_STATE_CANCELLED", endTime=_now(), error={"code": 1, "message": "CANCELED"})
                return 200, {}
        return 404, _error(404, f"no route {method} {path}")

    def respond(self, request: Request) -> Reply:
        return (*self._answer(request), {})

    def _answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        method, path = request.method, request.path
        if method == "POST" and path == "/token":
            return self.token(parse_qs(request.body.decode()))
        fault = self.next_fault(path)
        if fault is not None:
            return fault, _error(fault, "Quota exceeded for aiplatform.googleapis.com/tuning_jobs, please retry "
                                        "later." if fault == 429 else "Internal error encountered.")
        authorization = request.headers.get("Authorization", "")
        self.keys.add(authorization)
        if authorization != f"Bearer {TOKEN}":
            return 401, _error(401, "Request had invalid authentication credentials.")
        if method == "POST" and path.startswith("/upload/storage/v1/b/") and path.endswith("/o"):
            if parse_qs(request.query).get("uploadType") != ["multipart"]:
                return 400, _error(400, "only uploadType=multipart is served here")
            return self.upload(path.split("/")[5], request.headers.get("Content-Type", ""), request.body)
        return self.route(method, path, json.loads(request.body) if request.body else {})

    def entry(self, request: Request, status: int) -> tuple[Any, ...]:
        return request.method, request.path, status, time.monotonic()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}


def _error(code: int, message: str) -> dict[str, Any]:
    """Google's error body (google.rpc.Status with the HTTP code)."""
    return {"error": {"code": code, "message": message, "status": STATUS.get(code, "UNKNOWN")}}


def _related(content_type: str, raw: bytes) -> tuple[dict[str, Any], bytes]:
    """A multipart/related upload: the object's JSON metadata, then its content."""
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    metadata, content = message.get_payload()
    return json.loads(metadata.get_payload(decode=True)), content.get_payload(decode=True)

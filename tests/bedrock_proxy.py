"""A proxy in front of moto's server, for the bedrock backend's tests.

moto 5.2.5 answers Bedrock's model customisation API (create, get, stop) and S3 in their real wire formats, but
a job it creates stays ``InProgress`` for ever (with ``failureMessage: "Failure Message"``): its
ModelCustomizationJob is not one of moto's state-managed models, so ``/moto-api/state-manager/set-transition``
cannot move it, and moto has no way to answer a request with a throttling error. This proxy forwards every request
to moto unchanged and adds only those two things:

- a job's life: reads of a job say ``InProgress`` until the ``reads``-th, which says ``Completed`` — with its
  training loss in ``trainingMetrics``, ``step_wise_training_metrics.csv`` written to its output folder in S3 where
  Bedrock writes it, and its custom model ARN added to ``serves`` (the chat endpoint's models) — or, for a job
  created while ``fail_with`` is set, ``Failed`` with that ``failureMessage``;
- ``faults``: the next requests to a path answered with 429 ``ThrottlingException`` or 500
  ``InternalServerException`` in AWS's rest-json error format before any reaches moto.

``log`` has every request as (method, path, status, botocore's ``amz-sdk-request`` header: "attempt=2; max=8").
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
import urllib.request
from typing import Any

from .json_server import JsonServer, Reply, Request

LOSSES = [2.1, 1.4, 0.9, 0.7]  # step_wise_training_metrics.csv of a completed job, one row a step
ERRORS = {429: ("ThrottlingException", "Too many requests, please wait before trying again."),
          500: ("InternalServerException", "Internal server error")}
SKIPPED_REQUEST_HEADERS = {"host", "content-length", "connection", "accept-encoding"}
SKIPPED_ANSWER_HEADERS = {"content-length", "transfer-encoding", "connection", "server", "date"}


class BedrockProxy(JsonServer):
    def __init__(self, moto_url: str, serves: set[str], s3: Any, reads: int = 3) -> None:
        super().__init__()
        self.moto_url, self.serves, self.s3, self.reads = moto_url.rstrip("/"), serves, s3, reads
        self.fail_with: str | None = None
        self.jobs: dict[str, dict[str, Any]] = {}  # job name → {"reads", "fail"}
        self._lock = threading.Lock()

    def forward(self, request: Request) -> tuple[int, bytes, dict[str, str]]:
        """moto's answer, less the headers that describe its connection rather than its content."""
        sent = {k: v for k, v in request.headers.items() if k.lower() not in SKIPPED_REQUEST_HEADERS}
        upstream = urllib.request.Request(self.moto_url + request.target, data=request.body or None, headers=sent,
                                          method=request.method)
        try:
            with urllib.request.urlopen(upstream, timeout=60) as answer:
                status, data, headers = answer.status, answer.read(), answer.headers
        except urllib.error.HTTPError as e:
            status, data, headers = e.code, e.read(), e.headers
        return status, data, {k: v for k, v in dict(headers).items() if k.lower() not in SKIPPED_ANSWER_HEADERS}

    def created(self, body: bytes) -> None:
        self.jobs[json.loads(body)["jobName"]] = {"reads": 0, "fail": self.fail_with}

    def read(self, name: str, answer: dict[str, Any]) -> dict[str, Any]:
        """One read of job ``name`` as Bedrock describes a job at that point of its life."""
        job = self.jobs.get(name)
        if job is None or answer.get("status") != "InProgress":  # not ours, or moto stopped it
            return answer
        job["reads"] += 1
        for key in ("failureMessage", "outputModelArn", "trainingMetrics", "validationMetrics", "endTime"):
            answer.pop(key, None)
        if job["reads"] < self.reads:
            return answer
        if job["fail"]:
            return {**answer, "status": "Failed", "failureMessage": job["fail"]}
        arn = _custom_model_arn(answer)
        if arn not in self.serves:
            self.write_metrics(answer["outputDataConfig"]["s3Uri"], arn.rsplit("/", 1)[-1])
            self.serves.add(arn)
        return {**answer, "status": "Completed", "outputModelArn": arn,
                "trainingMetrics": {"trainingLoss": LOSSES[-1]}}

    def write_metrics(self, output: str, job_id: str) -> None:
        """Bedrock's per-step training metrics, where it writes them: ``<output>/model-customization-job-<id>/``."""
        bucket, _, prefix = output.removeprefix("s3://").partition("/")
        rows = "".join(f"{step},{1 + step // 2},{loss},{loss * 3:.3f}\n" for step, loss in enumerate(LOSSES))
        key = f"{prefix.rstrip('/')}/model-customization-job-{job_id}/training_artifacts/step_wise_training_metrics.csv"
        self.s3.put_object(Bucket=bucket, Key=key,
                           Body=("step_number,epoch_number,training_loss,perplexity\n" + rows).encode())

    def respond(self, request: Request) -> Reply:
        fault = self.next_fault(request.path)
        if fault is not None:
            code, message = ERRORS[fault]
            return fault, {"message": message}, {"x-amzn-ErrorType": code, "x-amzn-RequestId": "proxy-fault"}
        status, data, headers = self.forward(request)
        method, parts = request.method, request.path.strip("/").split("/")
        with self._lock:
            if method == "POST" and parts == ["model-customization-jobs"] and status < 300:
                self.created(request.body)
            if method == "GET" and parts[:1] == ["model-customization-jobs"] and len(parts) == 2 and status == 200:
                data = json.dumps(self.read(parts[1], json.loads(data))).encode()
        return status, data, headers

    def entry(self, request: Request, status: int) -> tuple[Any, ...]:
        return request.method, request.path, status, request.headers.get("amz-sdk-request", "")


def _custom_model_arn(job: dict[str, Any]) -> str:
    """A custom model's ARN as Bedrock forms it (``…:custom-model/<base model>/<12 characters>``); moto's own
    (``custom-model/<model name>-<job name>``) lacks the base model and the id."""
    account = job["jobArn"].split(":model-customization-job/")[0]
    base = job["baseModelArn"].split("foundation-model/")[-1]
    return f"{account}:custom-model/{base}/{hashlib.sha256(job['jobName'].encode()).hexdigest()[:12]}"

"""A local server in the OpenAI API's wire format, for the openai backend's tests: files, fine-tuning jobs (with
events and checkpoints), and chat completions answered by a real llama.cpp server for every model id it knows.

A job moves one step each time it is read (validating_files → queued → running, step by step → succeeded), so a
test sees the whole life of a job in a few polls. ``fail_with`` makes the next jobs fail with OpenAI's error
object; ``faults`` answers the next requests to a path with an HTTP status (429 with Retry-After, 500) before
serving them, as a busy API does. ``log`` has every request as (method, path, status).
"""

from __future__ import annotations

import email.parser
import itertools
import json
import threading
import time
import urllib.request
from typing import Any

from .json_server import JsonServer, Reply, Request

STEPS = 4


class OpenAIFineTuningServer(JsonServer):
    server_version = "local-openai"

    def __init__(self, chat_upstream: str, upstream_model: str) -> None:
        super().__init__()
        self.url += "/v1"
        self.chat_upstream, self.upstream_model = chat_upstream.rstrip("/"), upstream_model
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.models: set[str] = set()  # ids chat completions answer (base models of jobs, tuned models)
        self.fail_with: tuple[str, str] | None = None
        self.keys: set[str] = set()  # Authorization headers seen
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}"

    # ── the API ──

    def upload(self, form: dict[str, Any]) -> dict[str, Any]:
        content: bytes = form["file"]["content"]
        file = {"id": self._id("file"), "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": form["file"]["filename"], "purpose": form["purpose"], "status": "processed"}
        self.files[file["id"]] = {**file, "content": content}
        return file

    def create_job(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body["training_file"] not in self.files:
            return 400, _error(f"invalid training_file: {body['training_file']}", "invalid_request_error",
                               "training_file")
        job_id = self._id("ftjob")
        method = body.get("method") or {"type": "supervised"}
        hp = method.get(method["type"], {}).get("hyperparameters", {})  # supervised, dpo: the type names the key
        job = {"id": job_id, "object": "fine_tuning.job", "created_at": int(time.time()), "error": None,
               "fine_tuned_model": None, "finished_at": None, "model": body["model"], "organization_id": "org-local",
               "hyperparameters": {"n_epochs": hp.get("n_epochs", 3), "batch_size": hp.get("batch_size", 1),
                                   "learning_rate_multiplier": hp.get("learning_rate_multiplier", 1.8)},
               "result_files": [], "seed": body.get("seed"), "status": "validating_files", "trained_tokens": None,
               "training_file": body["training_file"], "validation_file": body.get("validation_file"),
               "method": body.get("method"), "suffix": body.get("suffix"),
               "_events": [], "_checkpoints": [], "_reads": 0, "_fail": self.fail_with}
        self.jobs[job_id] = job
        self.models.add(body["model"])
        return 200, _public(job)

    def advance(self, job: dict[str, Any]) -> None:
        """One step of the job's life per read."""
        job["_reads"] += 1
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        if job["status"] == "validating_files":
            if job["_fail"]:
                code, message = job["_fail"]
                job.update(status="failed", error={"code": code, "message": message, "param": "training_file"},
                           finished_at=int(time.time()))
                return
            job["status"] = "queued"
            return
        if job["status"] == "queued":
            job["status"] = "running"
            return
        step = len(job["_events"]) + 1
        loss = round(2.0 / step, 4)
        job["_events"].append({"object": "fine_tuning.job.event", "id": self._id("ftevent"),
                               "created_at": int(time.time()), "level": "info", "type": "metrics",
                               "message": f"Step {step}/{STEPS}: training loss={loss}",
                               "data": {"step": step, "train_loss": loss, "total_steps": STEPS}})
        if step % 2 == 0:
            job["_checkpoints"].append({
                "object": "fine_tuning.job.checkpoint", "id": self._id("ftckpt"), "created_at": int(time.time()),
                "fine_tuning_job_id": job["id"], "step_number": step, "metrics": {"step": step, "train_loss": loss},
                "fine_tuned_model_checkpoint": f"ft:{job['model']}:local::{job['id']}:ckpt-step-{step}"})
        if step == STEPS:
            tuned = f"ft:{job['model']}:local::{job['id']}"
            job.update(status="succeeded", fine_tuned_model=tuned, finished_at=int(time.time()),
                       trained_tokens=1000 * job["hyperparameters"]["n_epochs"])
            self.models.add(tuned)

    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        asked = body.get("model")
        if asked not in self.models:
            return 404, _error(f"The model `{asked}` does not exist or you do not have access to it.",
                               "invalid_request_error", None, "model_not_found")
        request = urllib.request.Request(f"{self.chat_upstream}/chat/completions",
                                         data=json.dumps({**body, "model": self.upstream_model}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as answer:
            return 200, {**json.loads(answer.read()), "model": asked}

    def route(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        parts = path.split("?")[0].strip("/").split("/")[1:]  # after "v1"
        with self._lock:
            if method == "POST" and parts == ["files"]:
                return 200, self.upload(body)
            if method == "POST" and parts == ["fine_tuning", "jobs"]:
                return self.create_job(body)
            if parts[:2] == ["fine_tuning", "jobs"] and len(parts) >= 3:
                job = self.jobs.get(parts[2])
                if job is None:
                    return 404, _error(f"No fine-tuning job found with id {parts[2]}", "invalid_request_error")
                if method == "GET" and len(parts) == 3:
                    self.advance(job)
                    return 200, _public(job)
                if method == "GET" and parts[3:] == ["events"]:
                    return 200, {"object": "list", "data": job["_events"][::-1], "has_more": False}
                if method == "GET" and parts[3:] == ["checkpoints"]:
                    return 200, {"object": "list", "data": job["_checkpoints"][::-1], "has_more": False,
                                 "first_id": None, "last_id": None}
                if method == "POST" and parts[3:] == ["cancel"]:
                    job.update(status="cancelled", finished_at=int(time.time()))
                    return 200, _public(job)
        if method == "POST" and parts == ["chat", "completions"]:
            return self.chat(body)
        return 404, _error(f"no route {method} {path}", "invalid_request_error")

    def respond(self, request: Request) -> Reply:
        self.keys.add(request.headers.get("Authorization", ""))
        fault = self.next_fault(request.path)
        if fault == 429:
            return fault, _error("Rate limit reached", "requests"), {"Retry-After": "0"}
        if fault is not None:
            return fault, _error("The server had an error", "server_error"), {}
        content_type = request.headers.get("Content-Type", "")
        body: Any = _form(content_type, request.body) if content_type.startswith("multipart/form-data") else (
            json.loads(request.body) if request.body else {})
        return (*self.route(request.method, request.target, body), {})


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}


def _error(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _form(content_type: str, raw: bytes) -> dict[str, Any]:
    """multipart/form-data fields: text values as strings, files as {filename, content}."""
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    fields: dict[str, Any] = {}
    for part in message.get_payload():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        fields[name] = {"filename": filename, "content": payload} if filename else payload.decode()
    return fields

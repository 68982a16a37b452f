"""A Hub id is checked with one request before anything runs. The Hub is unreachable here, so a local HTTP
server answers in its wire format (``GET /api/models/<repo>``, errors in ``X-Error-Code``) and the real
huggingface_hub client talks to it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .bad_inputs import GOOD
from .conftest import run_cli

REPOS = {
    "org/pickled": {"id": "org/pickled", "sha": "0" * 40,
                    "siblings": [{"rfilename": "config.json"}, {"rfilename": "pytorch_model.bin"}]},
}
ERRORS = {"org/missing": (401, "RepoNotFound"), "org/gated": (403, "GatedRepo")}


class WireFormat(BaseHTTPRequestHandler):
    """A handler of a local server standing in for the Hub: replies as the Hub does, and logs nothing."""

    def reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        """``status`` with ``headers`` and ``body`` (not sent for a HEAD request, as the Hub does)."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[WireFormat]) -> Iterator[str]:
    """``handler`` served on a free local port for the block: its URL, for ``HF_ENDPOINT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


class Hub(WireFormat):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        Hub.requests.append(self.path)
        repo = self.path.split("?")[0].removeprefix("/api/models/").split("/revision/")[0]
        if repo in REPOS:
            body, status, headers = json.dumps(REPOS[repo]).encode(), 200, {}
        else:
            status, code = ERRORS.get(repo, (404, "RepoNotFound"))
            body, headers = json.dumps({"error": code}).encode(), {"X-Error-Code": code}
        self.reply(status, body, {"Content-Type": "application/json", **headers})


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    with serving(Hub) as url:
        yield url


@pytest.mark.parametrize(("repo", "line"), [
    ("org/pickled", "error: model.source: 'org/pickled' has no safetensors weights on the Hub; finetune does not "
                    "unpickle checkpoints, because unpickling a file runs its code"),
    ("org/missing", "error: model.source: no model 'org/missing' on the Hub (a private one needs HF_TOKEN)"),
    ("org/gated", "error: model.source: 'org/gated' is gated; accept its terms on the Hub and set HF_TOKEN"),
])
def test_a_hub_model_is_checked_with_one_request_before_anything_runs(repo, line, hub, tmp_path: Path):
    (tmp_path / "data.jsonl").write_bytes(GOOD)
    Hub.requests.clear()
    proc = run_cli("dataset.path=data.jsonl", f"model.source={repo}", cwd=tmp_path, check=False,
                   env={"HF_ENDPOINT": hub, "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    assert proc.stderr.strip() == line
    models = [path.split("?")[0] for path in Hub.requests if path.startswith("/api/models/")]
    assert models == [f"/api/models/{repo}"]  # one request, no retries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]  # HF_HOME was not even created


# ── Hub datasets: the real `datasets.load_dataset` path against a local server in the Hub's wire format ──

DATASET_SHA = "d" * 40
DATASET_FILES = {"data/train.jsonl": GOOD}


class DatasetHub(WireFormat):
    """Just enough of the Hub for `load_dataset("org/chats")`: repo info, tree listings, file downloads."""

    requests: list[str] = []

    def _json(self, data: object) -> None:
        self.reply(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _tree(self, folder: str, recursive: bool) -> list[dict]:
        items: list[dict] = []
        for name, body in DATASET_FILES.items():
            parent = name.rpartition("/")[0]
            if parent == folder or (recursive and name.startswith(folder)):
                items.append({"type": "file", "path": name, "size": len(body), "oid": "b" * 40})
            elif parent.startswith(folder) and not recursive:
                sub = f"{folder}/{parent[len(folder):].strip('/').split('/')[0]}".strip("/")
                if all(i["path"] != sub for i in items):
                    items.append({"type": "directory", "path": sub, "oid": "c" * 40})
        return items

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        DatasetHub.requests.append(f"{self.command} {self.path}")
        path = self.path.split("?")[0]
        if path == "/api/datasets/org/chats" or path.startswith("/api/datasets/org/chats/revision/"):
            return self._json({"id": "org/chats", "sha": DATASET_SHA, "private": False, "tags": [],
                               "siblings": [{"rfilename": name} for name in DATASET_FILES]})
        if path.startswith(f"/api/datasets/org/chats/tree/{DATASET_SHA}"):
            folder = path.removeprefix(f"/api/datasets/org/chats/tree/{DATASET_SHA}").strip("/")
            return self._json(self._tree(folder, "recursive=true" in self.path.lower()))
        name = path.partition(f"/datasets/org/chats/resolve/{DATASET_SHA}/")[2]
        if name in DATASET_FILES:
            return self.reply(200, DATASET_FILES[name], {"ETag": '"1"', "X-Repo-Commit": DATASET_SHA})
        code = "RepoNotFound" if path.startswith("/api/datasets/") else "EntryNotFound"
        self.reply(404, json.dumps({"error": code}).encode(), {"X-Error-Code": code})

    do_HEAD = do_GET  # noqa: N815


@pytest.fixture(scope="module")
def dataset_hub() -> Iterator[str]:
    with serving(DatasetHub) as url:
        yield url


def test_a_hub_dataset_loads_through_datasets(dataset_hub, tmp_path: Path):
    env = {"HF_ENDPOINT": dataset_hub, "HF_HOME": str(tmp_path / "hf")}
    run_cli("model=tiny_random", "train.max_seq_len=128", "dataset.path=org/chats", "stages=[validate]",
            "hydra.run.dir=run", cwd=tmp_path, env=env)
    report = json.loads((tmp_path / "run" / "validate" / "report.json").read_text())
    assert report["format"] == "messages" and report["records"] == 20 and report["dataset"] == "org/chats"
    assert json.loads((tmp_path / "run" / "validate" / "train.jsonl").read_text().splitlines()[0])["messages"]
    assert report["checks"]["structure"]["count"] == 0
    assert f"GET /datasets/org/chats/resolve/{DATASET_SHA}/data/train.jsonl" in DatasetHub.requests


def test_a_missing_hub_dataset_is_one_line_after_one_request(dataset_hub, tmp_path: Path):
    DatasetHub.requests.clear()
    proc = run_cli("model=tiny_random", "dataset.path=org/nothing", cwd=tmp_path, check=False,
                   env={"HF_ENDPOINT": dataset_hub, "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: org/nothing: no such dataset on the Hub (a private one needs HF_TOKEN)"
    assert [r for r in DatasetHub.requests if "/api/datasets/" in r] == ["GET /api/datasets/org/nothing"]

"""A Hub id is checked with one request before anything runs. The Hub is unreachable here, so a local HTTP
server answers in its wire format (``GET /api/models/<repo>``, errors in ``X-Error-Code``) and the real
huggingface_hub client talks to it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
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


class Hub(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        Hub.requests.append(self.path)
        repo = self.path.split("?")[0].removeprefix("/api/models/").split("/revision/")[0]
        if repo in REPOS:
            body, status, headers = json.dumps(REPOS[repo]).encode(), 200, {}
        else:
            status, code = ERRORS.get(repo, (404, "RepoNotFound"))
            body, headers = json.dumps({"error": code}).encode(), {"X-Error-Code": code}
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


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

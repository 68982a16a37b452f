"""A local HTTP server that speaks the part of the Hugging Face Hub's API an upload uses — validate a README's
metadata, create a repo, ``preupload`` (which files go as regular git blobs), ``commit`` (NDJSON: a header
line, then one line per file, base64 content) — so that the real ``huggingface_hub`` client can push to it
offline. Files land in memory."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo id -> create_repo's request
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo id -> path -> content
    commits: list[dict[str, Any]] = field(default_factory=list)  # the header lines
    authorization: set[str] = field(default_factory=set)
    validated: list[str] = field(default_factory=list)  # README.md contents whose metadata was checked


def _handler(received: Received) -> type[BaseHTTPRequestHandler]:
    class Hub(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            received.authorization.add(self.headers.get("Authorization", ""))
            path = self.path.split("?")[0]
            base = f"http://{self.headers['Host']}"
            if path == "/api/validate-yaml":  # the Hub checks a README's metadata before an upload
                from huggingface_hub import ModelCard

                content = json.loads(self._body())["content"]
                try:
                    ModelCard(content)  # parses the YAML header and its model-index, raising on errors
                except Exception as e:
                    return self._reply(400, {"errors": [{"message": str(e)}]})
                received.validated.append(content)
                return self._reply(200, {"errors": [], "warnings": []})
            if path == "/api/repos/create":
                request = json.loads(self._body())
                repo = f"{request.get('organization') or 'me'}/{request['name']}"
                received.repos[repo] = request
                received.files.setdefault(repo, {})
                return self._reply(200, {"url": f"{base}/{repo}", "name": repo})
            parts = path.removeprefix("/api/").split("/")  # models/<owner>/<name>/<action>/<revision>
            repo, action = "/".join(parts[1:3]), parts[3] if len(parts) > 3 else ""
            if parts[0] != "models" or repo not in received.files:
                return self._reply(404, {"error": "Repository not found"})
            if action == "preupload":
                files = json.loads(self._body())["files"]
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                   for f in files]})
            if action == "commit":
                lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
                for line in lines:
                    if line["key"] == "header":
                        received.commits.append(line["value"])
                    elif line["key"] == "file":
                        value = line["value"]
                        content = value["content"].encode()
                        received.files[repo][value["path"]] = (
                            base64.b64decode(content) if value.get("encoding") == "base64" else content)
                oid = hashlib.sha1(json.dumps(sorted(received.files[repo])).encode()).hexdigest()
                return self._reply(200, {"commitUrl": f"{base}/{repo}/commit/{oid}", "commitOid": oid,
                                         "success": True})
            return self._reply(404, {"error": f"no route {path}"})

        def log_message(self, *args: object) -> None:
            pass

    return Hub


@contextmanager
def local_hub() -> Iterator[tuple[str, Received]]:
    """(base URL, what it received) of a Hub that accepts uploads, for the duration of the block."""
    received = Received()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(received))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()

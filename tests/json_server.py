"""The HTTP side that the local provider servers (OpenAI, Vertex AI, Bedrock) share, so that each of them keeps
only its API: a threaded server on a free local port until ``close()``, GET and POST requests read whole, answers
as JSON (or as bytes, for a proxy) with their length, a queue of HTTP errors (``faults``) per path for tests that
play a busy API, and no request lines on stderr."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Reply = tuple[int, dict[str, Any] | bytes, dict[str, str]]  # status, JSON body or raw bytes, headers


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # as sent: the path and its query
    headers: Message
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query


class JsonServer:
    """Subclasses answer in ``respond``; a dict answer goes out as JSON with ``content_type``. ``log`` has every
    request as ``entry`` describes it (method, path, status and what a subclass adds)."""

    content_type = "application/json"
    server_version = BaseHTTPRequestHandler.server_version  # the Server header

    def __init__(self) -> None:
        self.faults: dict[str, list[int]] = {}
        self.log: list[tuple[Any, ...]] = []
        self._faults_lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_fault(self, path: str) -> int | None:
        """The status to answer this request to ``path`` with instead of serving it, if one is queued."""
        with self._faults_lock:
            queued = self.faults.get(path)
            return queued.pop(0) if queued else None

    def respond(self, request: Request) -> Reply:
        raise NotImplementedError

    def entry(self, request: Request, status: int) -> tuple[Any, ...]:
        return request.method, request.path, status


def _handler(server: JsonServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = server.server_version

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(method, self.path, self.headers, body)
            status, answer, headers = server.respond(request)
            server.log.append(server.entry(request, status))
            if not isinstance(answer, bytes):
                answer, headers = json.dumps(answer).encode(), {"Content-Type": server.content_type, **headers}
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler

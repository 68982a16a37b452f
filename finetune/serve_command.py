"""``python -m finetune serve RUN_DIR``: the run's GGUF behind an OpenAI-compatible API, served as its Modelfile
says — llama-cpp-python's own server (``llama_cpp.server``), whose chat path renders the template the GGUF carries
(the parity gate checked it renders the training prompt, token for token, and stops at its end-of-turn), with two
things Ollama's Modelfile adds and that server lacks: the training system prompt where a request has none (the
Modelfile's SYSTEM), and the Modelfile's sampling where a request sets none (its PARAMETERs). Prints the URL, the
model name and ready ``curl`` and ``openai`` examples; Ctrl-C stops it. The server's settings are the judge's
(``local_server.server_settings``: flash attention on, as llama.cpp itself and ``chat`` have it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from finetune.errors import UserError
from finetune.finished_run import FinishedRun

CHAT_PATH = "/v1/chat/completions"
Receive = Callable[[], Awaitable[dict[str, Any]]]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune serve",
                                description="Serve a run's GGUF through an OpenAI-compatible API.")
    p.add_argument("run_dir", help="a run directory (outputs/<run_name>/<time>)")
    p.add_argument("--gguf", metavar="TYPE", help="which exported GGUF to serve (default: the Modelfile's)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="listen port (8000; 0: any free port)")
    p.add_argument("--name", help="the model name clients ask for (default: the run's run_name)")
    return p


def with_serving_defaults(request: dict[str, Any], system: str | None, sampling: dict[str, Any]) -> dict[str, Any]:
    """A chat request as the Modelfile serves it: the system prompt first when the messages have none, and each
    sampling parameter the request leaves out (or sends as null) set to the Modelfile's."""
    messages = request.get("messages")
    served = dict(request)
    if system and isinstance(messages, list) and not any(
            isinstance(m, dict) and m.get("role") == "system" for m in messages):
        served["messages"] = [{"role": "system", "content": system}, *messages]
    for key, value in sampling.items():
        if served.get(key) is None:
            served[key] = value
    return served


class ServingDefaults:
    """ASGI middleware: ``with_serving_defaults`` applied to the body of every chat completion request."""

    def __init__(self, app: Any, system: str | None, sampling: dict[str, Any]) -> None:
        self.app, self.system, self.sampling = app, system, sampling

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != CHAT_PATH:
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            request = json.loads(body)
        except ValueError:  # the server answers a malformed body itself
            request = None
        if isinstance(request, dict):
            body = json.dumps(with_serving_defaults(request, self.system, self.sampling)).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replayed() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replayed, send)


def sampling(finished: FinishedRun) -> dict[str, Any]:
    """The Modelfile's PARAMETERs as request fields of llama-cpp-python's server (min_p off, as Ollama's default)."""
    from finetune.export.modelfile import serving_parameters

    p = serving_parameters(finished.run.export)
    return {"temperature": p["temperature"], "top_p": p["top_p"], "top_k": p["top_k"],
            "repeat_penalty": p["repeat_penalty"], "min_p": 0.0}


def examples(url: str, name: str) -> str:
    """What to paste: a curl call and the official openai client."""
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello"}]}, ensure_ascii=False)
    return "\n".join([
        f"serving {name} at {url}/v1 (OpenAI-compatible; Ctrl-C stops)",
        "",
        f"  curl {url}{CHAT_PATH} -H 'Content-Type: application/json' -d '{body}'",
        "",
        "  from openai import OpenAI",
        f"  client = OpenAI(base_url=\"{url}/v1\", api_key=\"none\")",
        f"  reply = client.chat.completions.create(model=\"{name}\", messages=[{{\"role\": \"user\", \"content\": "
        "\"Hello\"}])",
        "  print(reply.choices[0].message.content)",
        "",
    ])


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        finished = FinishedRun.read(args.run_dir)
        if finished.hosted:
            raise UserError(f"{finished.dir}: a hosted run ({finished.run.backend.name}) is served by its provider; "
                            "chat with it: python -m finetune chat RUN_DIR")
        gguf = finished.gguf(args.gguf)
        system = finished.system_prompt()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import socket

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from finetune.generate.local_server import server_settings

    name = args.name or finished.run.run_name
    export = finished.run.export
    app = create_app(server_settings=ServerSettings(host=args.host, port=args.port),
                     model_settings=[ModelSettings(model=str(gguf), model_alias=name, n_ctx=export.num_ctx,
                                                   n_gpu_layers=-1, last_n_tokens_size=export.repeat_last_n,
                                                   verbose=False, **server_settings())])
    listening = socket.create_server((args.host, args.port))  # port 0: the system picks; the URL says which
    port = listening.getsockname()[1]
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    print(examples(f"http://{host}:{port}", name), flush=True)
    server = uvicorn.Server(uvicorn.Config(ServingDefaults(app, system, sampling(finished)), log_level="warning"))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn shuts down on Ctrl-C, then raises it again
        server.run(sockets=[listening])
    print("stopped", flush=True)
    return 0

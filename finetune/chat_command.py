"""``python -m finetune chat RUN_DIR``: talk to a run's model, as its Modelfile serves it.

By default the Modelfile's GGUF (the first of ``export.gguf_types``) answers through llama.cpp, streaming; the prompt
is the training template's own tokens (``chat.generation_prompt_ids``), with the training system prompt, and the
Modelfile's sampling and stop tokens. ``--merged`` asks the merged model in process instead, ``--base`` the base
model (its f16 GGUF when the run exported one, else in process) — the same prompt, for comparison. A hosted run is
asked through its provider's chat endpoint (answers arrive whole).

Interactive: ``/reset`` forgets the conversation, ``/system TEXT`` sets the system prompt (and resets), ``/exit``
(or Ctrl-D) ends; Ctrl-C stops an answer. ``--once "question"`` — or a question on stdin — answers once and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from typing import Any

from finetune.chat import has_chat_template
from finetune.data.canonical import Conversation, Message
from finetune.errors import UserError
from finetune.finished_run import FinishedRun, RunNotUsable
from finetune.generate import Answer

HELP = "/reset forgets the conversation, /system TEXT sets the system prompt, /exit ends"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune chat", description="Talk to a run's model.")
    p.add_argument("run_dir", help="a run directory (outputs/<run_name>/<time>)")
    p.add_argument("--once", metavar="QUESTION", help="answer this once and exit (or give the question on stdin)")
    p.add_argument("--system", help="the system prompt (default: the one the run trained and serves with)")
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of the Modelfile's sampling")
    p.add_argument("--max-new-tokens", type=int, default=512, help="the longest answer, in tokens (512)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--gguf", metavar="TYPE", help="which exported GGUF answers (default: the Modelfile's)")
    which.add_argument("--merged", action="store_true", help="the merged model in process (transformers)")
    which.add_argument("--base", action="store_true", help="the base model, asked the same way")
    return p


class Speaker:
    """Who answers: ``reply(messages, on_text)`` → the answer, its text streamed to ``on_text``."""

    def __init__(self, finished: FinishedRun, args: argparse.Namespace) -> None:
        self.finished, self.args = finished, args
        self.system: str | None = args.system
        self.default_system = finished.system_prompt()
        self.turn = 0
        # a hosted model: its provider's endpoint renders the template and knows the stop tokens
        self.tokenizer = None if finished.hosted else finished.tokenizer()
        if self.tokenizer is not None and not has_chat_template(self.tokenizer):
            raise RunNotUsable(f"{finished.dir}: the model has no chat template (it trained on plain text), so it "
                               "holds no conversation; it continues text: its Modelfile's TEMPLATE passes a prompt "
                               "through as it is (ollama run)")
        self.decoding = finished.decoding(self.tokenizer, args.max_new_tokens, args.greedy)
        self.label, self.engine = self._hosted() if finished.hosted else self._local()

    def _local(self) -> tuple[str, Any]:
        from finetune.generate.hf import InProcessModel
        from finetune.generate.llama_cpp import LlamaCppModel
        from finetune.models import resolve_model_source
        from finetune.stages.export import BASE_GGUF

        f, args = self.finished, self.args
        if args.base:
            base_gguf = f.dir / "export" / BASE_GGUF
            if f.has("export") and base_gguf.is_file():
                return f"base ({base_gguf.name}, llama.cpp)", LlamaCppModel(base_gguf, self.tokenizer, "base")
            source = resolve_model_source(f.run.model)
            return f"base ({f.run.model.source}, transformers)", InProcessModel(source, f.run.model, self.tokenizer,
                                                                               "base")
        if args.merged or (not f.has("export") and args.gguf is None):
            merged = f.artifact("merge", "model")
            return f"merged model ({merged}, transformers)", InProcessModel(str(merged), f.run.model, self.tokenizer,
                                                                           "tuned")
        gguf = f.gguf(args.gguf)
        return f"{gguf.name} (llama.cpp)", LlamaCppModel(gguf, self.tokenizer, "tuned")

    def _hosted(self) -> tuple[str, Any]:
        if self.args.merged or self.args.gguf:
            raise UserError(f"{self.finished.dir}: a hosted run ({self.finished.run.backend.name}) has no local "
                            "model; chat asks the provider's tuned model (drop --merged / --gguf)")
        from finetune.backends import BACKENDS

        who = "base" if self.args.base else "tuned"
        ctx = self.finished.stage_context("evaluate")
        asked = BACKENDS[self.finished.run.backend.name].generators(self.finished.run, ctx)[who]
        return f"{who}: {asked.source} ({asked.via})", asked.generator

    def messages(self, history: list[Message]) -> list[Message]:
        system = self.system if self.system is not None else self.default_system
        return ([{"role": "system", "content": system}] if system else []) + history

    def prompt_ids(self, history: list[Message]) -> list[int]:
        from finetune.chat import generation_prompt_ids

        return generation_prompt_ids(self.tokenizer, Conversation(self.messages(history), "chat"))

    def reply(self, history: list[Message], on_text: Callable[[str], None]) -> Answer:
        seed = self.decoding.seed + self.turn
        self.turn += 1
        if self.tokenizer is None:  # a provider's endpoint: one request, the answer whole
            decoding = dataclasses.replace(self.decoding, seed=seed)
            answer = self.engine.ask(Conversation(self.messages(history), "chat"), decoding)
            on_text(answer.text)
            return answer
        return self.engine.stream(self.prompt_ids(history), self.decoding, seed, on_text)

    def close(self) -> None:
        if close := getattr(self.engine, "close", None) or getattr(self.engine, "release", None):
            close()


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """Ctrl-C during an answer ends that answer, not the chat."""
    try:
        yield
    except KeyboardInterrupt:
        _write(" [stopped]")


def _interactive(speaker: Speaker) -> None:
    print(f"{speaker.label}; {HELP}")
    history: list[Message] = []
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        command, _, rest = line.strip().partition(" ")
        if command == "/exit":
            return
        if command == "/reset":
            history = []
            print("(conversation cleared)")
            continue
        if command == "/system":
            speaker.system, history = rest.strip() or None, []
            print(f"(system prompt {'set' if speaker.system else 'back to the default'}; conversation cleared)")
            continue
        if command.startswith("/"):
            print(f"(unknown command {command}; {HELP})")
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        answer = Answer("", "stop", 0)
        with _stoppable():
            answer = speaker.reply(history, _write)
        print()
        history.append({"role": "assistant", "content": answer.text})


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        question = args.once if args.once is not None else None if sys.stdin.isatty() else sys.stdin.read().strip()
        if question == "":
            raise UserError("chat: the question on stdin is empty")
        speaker = Speaker(FinishedRun.read(args.run_dir), args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if question is not None:
            speaker.reply([{"role": "user", "content": question}], _write)
            print()
        else:
            _interactive(speaker)
    except UserError as e:  # a provider that no longer serves the model, a prompt longer than the context
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        speaker.close()
    return 0

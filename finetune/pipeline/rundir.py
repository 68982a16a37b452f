"""The run directory belongs to finetune, not to Hydra: Hydra only names it (and creates the empty folder).

A run is first checked (config, data, model, stage order); only an accepted run takes the directory's lock and
writes into it: the saved config in ``.hydra/`` (secrets redacted), ``finetune.log``, then the stages' folders.
A refused run removes exactly the folders that this invocation created — never a folder that was already
there, nor anything in it — so a typo leaves the disk as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import logging.handlers
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from finetune.errors import UserError
from finetune.pipeline.manifest import atomic_write_text
from finetune.redact import RedactingFilter, redact_yaml

LOG_NAME = "finetune.log"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

# Folders that existed when this invocation started, noted by ``NoteExistingFolders`` before Hydra creates
# the run (or sweep) directory. None when Hydra's callback did not run: then nothing is ever removed.
_existing: set[Path] | None = None


class RunDirBusy(UserError, RuntimeError):
    """Another finetune process holds this run directory."""


class NoteExistingFolders(Callback):
    """Hydra callback: before Hydra creates the run directory, note which folders on its path exist already.

    In a multirun, the sweep folder and everything above it count as existing (jobs share them), and so do
    the job folders already in it: a refused job removes only a job folder it created.
    """

    def on_run_start(self, config: DictConfig, **_: Any) -> None:
        _note(Path(str(config.hydra.run.dir)), children=False)

    def on_multirun_start(self, config: DictConfig, **_: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir)).resolve()
        _note(sweep, children=True)
        assert _existing is not None
        _existing.update((sweep, *sweep.parents))


def _note(path: Path, *, children: bool) -> None:
    global _existing
    path = path.resolve()
    _existing = {p for p in (path, *path.parents) if p.is_dir()}
    if children and path.is_dir():
        _existing.update(p for p in path.iterdir() if p.is_dir())


def remove_created(run_dir: Path) -> None:
    """Remove the empty folders on ``run_dir``'s path that this invocation created, innermost first; a folder
    that existed before, or that holds anything, is never removed."""
    if _existing is None:
        return
    for path in (run_dir.resolve(), *run_dir.resolve().parents):
        if path in _existing:
            break
        try:
            path.rmdir()
        except OSError:  # not empty: someone else's now
            break


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on the run directory itself (flock on the folder, so no lock file is written):
    a second run into the same directory is refused instead of interleaving with the first."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusy(
                f"hydra.run.dir: {run_dir} is in use by another finetune run; wait for it to finish or "
                "choose another directory"
            ) from None
        except OSError as e:  # a filesystem without flock (some network mounts): run unlocked, and say so
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF):
                raise
            logging.getLogger(__name__).warning("cannot lock %s (%s); do not start a second run into it",
                                                run_dir, e.strerror)
        yield
    finally:
        os.close(fd)


def save_run_config(run_dir: Path, task_cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """What Hydra would write to ``.hydra/`` (the composed spec, Hydra's settings, the overrides), with
    secret-looking values redacted. The spec is saved unresolved, as Hydra saves it, so a rerun composes
    the same way."""
    folder = run_dir / ".hydra"
    atomic_write_text(folder / "config.yaml", redact_yaml(OmegaConf.to_yaml(task_cfg)))
    atomic_write_text(folder / "hydra.yaml", redact_yaml(OmegaConf.to_yaml(hydra_cfg)))
    atomic_write_text(folder / "overrides.yaml", redact_yaml(OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)))


def ours(record: logging.LogRecord) -> bool:
    """Whether a log record is finetune's own: only those reach the console; the libraries' go to the file."""
    return record.name == "finetune" or record.name.startswith("finetune.")


class RunLog:
    """Console logging from the start; the log file only once the run is accepted. Records logged before
    then (model conversion, checks) are held in memory and written to the file first.

    The console shows our lines and our progress bars. What libraries log, and their Python warnings, goes to
    the file only; what they write straight to stdout/stderr, inside ``library_output``."""

    def __init__(self) -> None:
        self.root = logging.getLogger()
        self.replaced = self.root.handlers[:]  # Hydra's own console handler: ours replaces it for the run
        for handler in self.replaced:
            self.root.removeHandler(handler)
        formatter = logging.Formatter(LOG_FORMAT)
        self.console = logging.StreamHandler(sys.stdout)
        self.held = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
        self.file: logging.Handler | None = None
        self.console.addFilter(ours)
        for handler in (self.console, self.held):
            handler.setFormatter(formatter)
            handler.addFilter(RedactingFilter())
            self.root.addHandler(handler)
        self.root.setLevel(logging.INFO)
        logging.captureWarnings(True)  # a library's UserWarning becomes a record of logger py.warnings
        # Deprecation notices are for the libraries' developers, and bitsandbytes' hint about an optional CPU
        # kernel package for nobody running a job: the user sees our lines and one progress bar per stage.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        for client in ("httpx", "httpx2"):  # one line per HTTP request: an hour of polling floods the log
            logging.getLogger(client).setLevel(logging.WARNING)
        # transformers prints its warnings through a handler of its own (Llama 3's tokenizer_config, with its
        # clean_up_tokenization_spaces, earns one): as records, they reach the file only.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()

    def to_file(self, run_dir: Path) -> None:
        self.file = logging.FileHandler(run_dir / LOG_NAME, encoding="utf-8")
        self.file.setFormatter(self.console.formatter)
        self.file.addFilter(RedactingFilter())
        self.held.setTarget(self.file)
        self.held.flush()
        self.root.removeHandler(self.held)
        self.root.addHandler(self.file)

    def close(self) -> None:
        for handler in (self.console, self.held, self.file):
            if handler is not None:
                self.root.removeHandler(handler)
                handler.close()
        for handler in self.replaced:
            self.root.addHandler(handler)
        logging.captureWarnings(False)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()


def _run_log_stream() -> IO[str] | None:
    """The open finetune.log of the run in progress, if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).name == LOG_NAME:
            return handler.stream
    return None


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """llama.cpp's C code, lm-eval's progress bars and ``git`` write straight to file descriptors 1 and 2, past
    logging and ``sys.stdout``: while this block runs, both go to the run's finetune.log, where even a crash
    leaves them. Before a run has its log (the checks) they go to a temporary file, shown only if the block
    fails. Keep the block to the library call: our own lines and bars written inside it would go there too."""
    log_file = _run_log_stream()
    with contextlib.ExitStack() as stack:
        sink = log_file or stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace"))
        for stream in (sys.stdout, sys.stderr, sink):
            stream.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        except Exception:
            if log_file is None:
                sink.seek(0)
                os.write(saved[2], sink.read()[-4000:].encode())
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)

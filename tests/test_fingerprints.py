"""Every config key a stage reads is part of its fingerprint, so changing it reruns that stage.

The real stages run on the tiny model with a config that records each field they read; then, for every key
recorded, the key is changed and the stage's fingerprint must change (the graph reruns a stage exactly when
its fingerprint differs).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from finetune.backends.local import PLACEMENT
from finetune.config import RunConfig, SourceConfig, load_run_config, section
from finetune.pipeline.graph import _fingerprint, run_graph, stages_for
from finetune.pipeline.manifest import Manifest
from finetune.stages import STAGES

from .test_config import composed

TINY = ["model=tiny_random", "train.max_seq_len=128", "eval.max_new_tokens=4", "eval.show_samples=1",
        "export.parity_samples=2", "train.max_steps=1", "run_name=tiny"]


def recording(obj: Any, prefix: str, reads: set[str]) -> Any:
    """A copy of config dataclass ``obj`` whose field reads are added to ``reads`` as dotted keys."""
    names = {f.name for f in dataclasses.fields(obj)}

    class Recording(type(obj)):
        def __getattribute__(self, name: str) -> Any:
            value = object.__getattribute__(self, name)
            if name in names and not dataclasses.is_dataclass(value):
                reads.add(prefix + name)
            return value

    copied = copy.copy(obj)
    copied.__class__ = Recording
    for name in names:
        value = object.__getattribute__(obj, name)
        if dataclasses.is_dataclass(value):
            object.__setattr__(copied, name, recording(value, f"{prefix}{name}.", reads))
    return copied


def changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, list):
        return [*value, "changed"]
    return "changed"  # None


def set_key(run: RunConfig, dotted: str, value: Any) -> None:
    *parents, name = dotted.split(".")
    node: Any = run
    for part in parents:
        node = getattr(node, part)
    setattr(node, name, value)


def test_every_key_a_stage_reads_changes_its_fingerprint(chat_dataset, tmp_path):
    spec = load_run_config(composed(*TINY, f"dataset.path={chat_dataset}"))
    kept, _ = stages_for(spec, STAGES)  # as the CLI runs them (synthesize: tests/test_synthetic.py)
    reads: dict[str, set[str]] = defaultdict(set)
    stages = tuple(
        dataclasses.replace(stage, run=lambda run, ctx, stage=stage: stage.run(
            recording(run, "", reads[stage.name]), ctx))
        for stage in kept
    )
    run_dir = tmp_path / "run"
    run_graph(spec, run_dir, stages)
    done = {stage.name: Manifest.read(run_dir / stage.name) for stage in kept}

    for stage in kept:
        assert reads[stage.name], stage.name  # the recording saw the stage's reads
        before = _fingerprint(stage, spec, done)
        for key in sorted(reads[stage.name]):
            if stage.name == "train" and key.removeprefix("train.") in PLACEMENT:
                continue  # where the workers run: another engine resumes the same training
            other = copy.deepcopy(spec)
            if key.startswith("dataset.") and key.endswith("path"):  # another file with the same data
                set_key(other, key, str(shutil.copy(chat_dataset, tmp_path / "copy.jsonl")))
            elif key == "dataset.sources":  # one more source
                set_key(other, key, [SourceConfig(path=str(chat_dataset))])
            else:
                set_key(other, key, changed(section(spec, key)))
            assert _fingerprint(stage, other, done) != before, f"stage {stage.name} reads {key} but ignores it"


@pytest.mark.quick
def test_the_recording_sees_nested_reads(tmp_path: Path):
    reads: set[str] = set()
    run = recording(RunConfig(), "", reads)
    _ = run.train.lr, run.model.dtype, dataclasses.asdict(run.eval)
    assert {"train.lr", "model.dtype", "eval.max_samples", "eval.max_new_tokens"} <= reads


@pytest.mark.quick
@pytest.mark.parametrize(("strategy", "resumes"), [("ddp", True), ("fsdp", False)])
def test_another_node_count_with_the_same_global_batch_is_the_same_training_where_checkpoints_allow(strategy, resumes):
    """2 nodes × 2 accumulation steps and 1 node × 4 train the same steps: the train stage resumes across them, unless
    the strategy shards the optimizer state across the workers (its checkpoints load only on as many)."""
    from finetune.backends import BACKENDS

    def train_config(nnodes: int, grad_accum: int) -> dict[str, Any]:
        run = RunConfig()
        run.train.distributed, run.train.nnodes, run.train.grad_accum = strategy, nnodes, grad_accum
        return {key: section(run, key) for key in BACKENDS[run.backend.name].config_keys(run)}

    assert (train_config(2, 2) == train_config(1, 4)) is resumes
    assert train_config(2, 2) != train_config(2, 4)  # another global batch is another training

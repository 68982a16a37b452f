"""The stage graph: order, selection, skipping unchanged stages, rerunning changed ones, resuming."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from finetune.config import RunConfig
from finetune.pipeline import graph
from finetune.pipeline.graph import Stage, StageOrderError, check_graph, run_graph


@pytest.fixture
def spec(chat_dataset) -> RunConfig:
    run = RunConfig()
    run.dataset.path = str(chat_dataset)
    run.model.source = "unused"
    run.stages = ["a", "b"]
    return run


class Recorder:
    """Two small real stages: `a` writes the seed, `b` copies it; calls are recorded."""

    def __init__(self, fail_b: bool = False, b_resumable: bool = True):
        self.calls: list[tuple[str, bool]] = []
        self.fail_b = fail_b
        self.b_resumable = b_resumable

    def a(self, run, ctx):
        self.calls.append(("a", ctx.resume))
        (ctx.out_dir / "seed.txt").write_text(str(run.seed))
        return {"seed": "seed.txt"}

    def b(self, run, ctx):
        self.calls.append(("b", ctx.resume))
        if self.fail_b:
            (ctx.out_dir / "partial.txt").write_text("half")
            raise RuntimeError("interrupted")
        (ctx.out_dir / "copy.txt").write_text(ctx.input("a", "seed").read_text() + run.export.gguf_types[0])
        return {"copy": "copy.txt"}

    def stages(self):
        return (Stage("a", self.a, needs=(), config_keys=("seed",), input_files=lambda run: [Path(run.dataset.path)]),
                Stage("b", self.b, needs=("a",), config_keys=("export",), resumable=self.b_resumable))


@pytest.mark.quick
def test_runs_in_order_and_writes_manifests(spec, tmp_path):
    rec = Recorder()
    done = run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == [("a", False), ("b", False)]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["artifacts"]["copy"]["path"] == "copy.txt"
    assert len(manifest["artifacts"]["copy"]["sha256"]) == 64 and manifest["duration_s"] >= 0
    assert (tmp_path / "b" / "copy.txt").read_text() == "42f16"
    assert set(done) == {"a", "b"}


@pytest.mark.quick
def test_second_run_skips_and_a_config_change_reruns_only_what_depends_on_it(spec, tmp_path):
    run_graph(spec, tmp_path, Recorder().stages())
    rec = Recorder()
    run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == []
    spec.export.gguf_types = ["q8_0"]  # only `b` reads export
    run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == [("b", False)]
    spec.seed = 7  # `a` changes, so `b`'s input changes too
    run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == [("b", False), ("a", False), ("b", False)]
    assert (tmp_path / "b" / "copy.txt").read_text() == "7q8_0"


@pytest.mark.quick
def test_selection_needs_complete_upstream(spec, tmp_path):
    spec.stages = ["b"]
    with pytest.raises(StageOrderError, match="stage 'b' needs 'a', which has not run"):
        run_graph(spec, tmp_path, Recorder().stages())
    spec.stages = ["a", "b"]
    run_graph(spec, tmp_path, Recorder().stages())
    spec.stages, spec.seed = ["b"], 1
    with pytest.raises(StageOrderError, match="which is out of date for this config"):
        run_graph(spec, tmp_path, Recorder().stages())


@pytest.mark.quick
def test_failed_stage_is_recorded_and_resumed_with_its_files(spec, tmp_path):
    with pytest.raises(RuntimeError):
        run_graph(spec, tmp_path, Recorder(fail_b=True).stages())
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "interrupted" in manifest["error"]
    rec = Recorder()
    run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == [("b", True)]  # `a` skipped, `b` resumed
    assert (tmp_path / "b" / "partial.txt").exists()  # kept for the stage to resume from


@pytest.mark.quick
def test_a_stage_that_cannot_resume_starts_again_from_an_empty_folder(spec, tmp_path):
    with pytest.raises(RuntimeError):
        run_graph(spec, tmp_path, Recorder(fail_b=True, b_resumable=False).stages())
    rec = Recorder(b_resumable=False)
    run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == [("b", False)]
    assert not (tmp_path / "b" / "partial.txt").exists()
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["status"] == "complete"


@pytest.mark.quick
def test_ctrl_c_marks_the_stage_interrupted_and_the_next_run_resumes_it(spec, tmp_path):
    def interrupted(run, ctx):
        (ctx.out_dir / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    rec = Recorder()
    a, b = rec.stages()
    with pytest.raises(KeyboardInterrupt):
        run_graph(spec, tmp_path, (a, Stage("b", interrupted, needs=("a",), config_keys=("export",), resumable=True)))
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["status"] == "interrupted"
    run_graph(spec, tmp_path, (a, b))
    assert rec.calls == [("a", False), ("b", True)]


def test_order_errors_and_checks_come_before_any_stage_runs(spec, tmp_path):
    checked = []

    def check(run):
        checked.append(run.seed)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rec = Recorder()
    a, b = rec.stages()
    stages = (a, Stage("b", rec.b, needs=("a",), config_keys=("export",), checks=(check, check)))
    spec.stages = ["b"]
    with pytest.raises(StageOrderError):
        check_graph(spec, run_dir, stages)
    assert checked == [] and not any(run_dir.iterdir())
    spec.stages = ["a", "b"]
    assert check_graph(spec, run_dir, stages).runs == ["a", "b"]
    assert checked == [42]  # a check shared by stages, or listed twice, runs once
    assert not any(run_dir.iterdir())  # checking wrote nothing
    run_graph(spec, run_dir, stages)
    assert check_graph(spec, run_dir, stages).runs == []  # all complete: nothing to run, nothing to check
    assert checked == [42]


def test_what_a_check_prepares_reaches_its_run_through_the_plan(spec, tmp_path, monkeypatch):
    hashed: list[Path] = []
    monkeypatch.setattr(graph, "sha256_path", lambda path, real=graph.sha256_path: hashed.append(path) or real(path))
    got = []
    rec = Recorder()

    def b(run, ctx):
        got.append(ctx.prepared)
        return rec.b(run, ctx)

    a, _ = rec.stages()
    run_dir = tmp_path / "run"
    stages = (a, Stage("b", b, needs=("a",), config_keys=("export",), prepare=lambda run: {"rows": run.seed}))
    plan = check_graph(spec, run_dir, stages)
    assert plan.prepared == {"b": {"rows": 42}} and not run_dir.exists()
    run_graph(spec, run_dir, stages, plan)
    assert got == [{"rows": 42}] and plan.prepared == {}  # handed over once, then let go
    assert hashed.count(Path(spec.dataset.path)) == 1  # a's input file: hashed when planning, not again
    run_graph(spec, run_dir, stages)  # without check_graph: planned now, nothing prepared
    spec.export.gguf_types = ["q8_0"]
    run_graph(spec, run_dir, stages)
    assert got == [{"rows": 42}, None]


@pytest.mark.quick
def test_changed_inputs_clear_a_stage_folder(spec, tmp_path):
    with pytest.raises(RuntimeError):
        run_graph(spec, tmp_path, Recorder(fail_b=True).stages())
    spec.export.gguf_types = ["q8_0"]
    rec = Recorder()
    run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == [("b", False)]
    assert not (tmp_path / "b" / "partial.txt").exists()


@pytest.mark.quick
def test_an_edited_input_file_reruns_the_stage_that_reads_it(spec, tmp_path):
    run_graph(spec, tmp_path, Recorder().stages())
    with open(spec.dataset.path, "a", encoding="utf-8") as f:
        f.write("\n")
    rec = Recorder()
    run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == [("a", False), ("b", False)]


def _edit_manifest(stage_dir: Path, edit) -> None:
    path = stage_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.quick
def test_manifest_records_the_config_values_and_the_environment(spec, tmp_path):
    from finetune.pipeline.env import environment

    run_graph(spec, tmp_path, Recorder().stages())
    a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert a["config"] == {"seed": 42} and b["config"]["export"]["gguf_types"] == ["f16"]
    assert a["environment"] == json.loads(json.dumps(environment()))
    versions, hardware = a["environment"]["versions"], a["environment"]["hardware"]
    assert {"python", "torch", "transformers", "peft", "llama-cpp-python", "finetune"} <= set(versions)
    assert {"cpu", "cpu_count", "ram_total_gb", "gpus", "torch_threads"} <= set(hardware)


@pytest.mark.quick
def test_a_stage_kept_from_other_library_versions_warns_and_names_them(spec, tmp_path, caplog):
    from finetune.pipeline.env import environment

    now = environment()["versions"]
    run_graph(spec, tmp_path, Recorder().stages())
    _edit_manifest(tmp_path / "a", lambda m: m["environment"]["versions"].update(transformers="4.0.0", peft="0.1.0"))
    _edit_manifest(tmp_path / "a", lambda m: m["environment"]["hardware"].update(cpu="another CPU"))
    rec = Recorder()
    with caplog.at_level(logging.WARNING):
        run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == []  # versions are not in the fingerprint: nothing reruns
    assert _warnings(caplog) == [
        f"a/ was made with transformers 4.0.0 and peft 0.1.0; now transformers {now['transformers']} and peft "
        f"{now['peft']} — its results may differ from a fresh run"]


@pytest.mark.quick
def test_a_resumed_stage_made_with_other_versions_warns(spec, tmp_path, caplog):
    with pytest.raises(RuntimeError):
        run_graph(spec, tmp_path, Recorder(fail_b=True).stages())
    _edit_manifest(tmp_path / "b", lambda m: m["environment"]["versions"].update(numpy="1.0.0"))
    rec = Recorder()
    with caplog.at_level(logging.WARNING):
        run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == [("b", True)]
    [warning] = _warnings(caplog)
    assert warning.startswith("b/ was made with numpy 1.0.0; now numpy ")


@pytest.mark.quick
def test_manifests_written_before_the_environment_was_recorded_still_load(spec, tmp_path, caplog):
    run_graph(spec, tmp_path, Recorder().stages())
    for stage in ("a", "b"):
        _edit_manifest(tmp_path / stage, lambda m: [m.pop("config"), m.pop("environment")])
    rec = Recorder()
    with caplog.at_level(logging.WARNING):
        run_graph(spec, tmp_path, rec.stages())
    assert rec.calls == [] and _warnings(caplog) == []

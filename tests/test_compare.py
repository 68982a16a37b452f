"""``python -m finetune compare RUN_A RUN_B``: one table of what differs, from two real tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.compare import main

from .conftest import TINY, run_cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run) -> tuple[Path, Path]:
    """The session's tiny run (rank 16, the method's default learning rate) and one that differs from it in the
    adapter's rank and the learning rate only."""
    work = tmp_path_factory.mktemp("work")
    run_cli(*TINY, f"dataset.path={tiny_run.dataset}", "train.max_steps=4", "train.save_steps=2", "method.r=8",
            "train.lr=1e-4", f"hydra.run.dir={work / 'b'}", cwd=work)
    return tiny_run.dir, work / "b"


def _table(out: str) -> dict[str, list[str]]:
    """The printed table's rows: key -> [A, B, Δ]."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    return {row[0]: row[1:] for row in rows[1:]}


def test_the_table_shows_differing_config_then_metrics(runs, capsys):
    a, b = runs
    assert main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    table = _table(out)
    keys = list(table)
    assert keys[:2] == ["method.r", "train.lr"]  # only the config keys that differ, before the numbers
    assert table["method.r"] == ["16", "8", "-8"] and table["train.lr"] == ["null", "0.0001", ""]
    assert "train.seed" not in table and "model.source" not in table
    assert "config keys are equal and left out." in out
    for key in ("train.train_loss", "train.last_eval_loss", "train.tokens_per_s", "train.global_step",
                "eval.perplexity (tuned)", "eval.perplexity (base)", "eval.rougeL (tuned)",
                "parity.model-f16.gguf top1", "duration_s.train", "duration_s.export"):
        assert key in table, key
    assert table["train.global_step"] == ["4", "4", "0"]
    assert table["eval.perplexity (base)"][2] == "0"  # the same base model answers both runs
    widths = {len(line) for line in out.splitlines() if line.startswith("|")}
    assert len(widths) == 1  # aligned


def test_json_output_has_the_same_rows(runs, capsys):
    a, b = runs
    assert main(["--json", str(a), str(b)]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {row["key"]: row for row in result["rows"]}
    assert rows["method.r"] == {"key": "method.r", "a": 16, "b": 8, "delta": -8}
    loss = rows["train.train_loss"]
    assert loss["delta"] == pytest.approx(loss["b"] - loss["a"])
    assert result["equal_config_keys"] > 50


def test_bad_input_is_one_error_line_naming_the_path(runs, tmp_path, capsys):
    a, _ = runs
    sweep = tmp_path / "multirun_x"
    (sweep / "job0" / ".hydra").mkdir(parents=True)
    (sweep / "job0" / ".hydra" / "config.yaml").write_text("seed: 1\n")
    cases = {
        (str(a),): "expected two run directories",
        (str(a), str(tmp_path / "missing")): f"{tmp_path / 'missing'}: no such directory",
        (str(a), str(tmp_path)): f"{tmp_path}: not a run directory; expected a folder holding .hydra/config.yaml",
        (str(a), str(sweep)): f"{sweep}: a sweep folder with 1 jobs; expected one job's folder",
    }
    for argv, expected in cases.items():
        assert main(list(argv)) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith(f"error: {expected}"), argv
        assert captured.err.count("\n") == 1


def test_library_versions_that_differ_are_rows(runs, tmp_path, capsys):
    import shutil

    a, b = runs
    older = tmp_path / "older"
    shutil.copytree(b, older)
    for manifest in older.glob("*/manifest.json"):  # as if run b had been made with another transformers
        data = json.loads(manifest.read_text())
        data["environment"]["versions"]["transformers"] = "4.0.0"
        manifest.write_text(json.dumps(data))
    assert main([str(a), str(older)]) == 0
    table = _table(capsys.readouterr().out)
    assert table["version.transformers"][1] == "4.0.0" and table["version.transformers"][0] != "4.0.0"
    assert "version.torch" not in table  # equal versions are left out

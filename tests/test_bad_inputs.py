"""Every case of the bad-input corpus (tests/bad_inputs.py), through the CLI: one line, exit 2, nothing written
and nothing touched; and the two ways a refused run used to harm a directory that was already there.

The cases go through the CLI's entry point in this process (no interpreter start-up per case); those that set an
environment variable in a process of their own (a new interpreter where a library reads the variable at import);
a handful of others through ``python -m finetune`` as a user runs it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from .bad_inputs import CASES, GOOD, TINY_MODEL, Case, jsonl
from .conftest import conversation, run_cli, run_cli_in_process

# No test may reach the network: a Hub id goes to a closed loopback port and fails at once (conftest sets the same
# for this process).
OFFLINE = {"HF_ENDPOINT": "http://127.0.0.1:9"}
# Besides the cases with an environment of their own: one refusal from each layer through a real process.
THROUGH_A_PROCESS = {"rank-negative", "unknown-group-option", "override-syntax", "malformed-jsonl", "corrupt-gguf"}


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under ``root`` with its content hash (files) and mode: what "untouched" means."""
    state = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[str(path.relative_to(root))] = (digest, path.stat().st_mode)
    return state


def expected_line(case: Case, cwd: Path) -> re.Pattern[str]:
    parts = case.expect.replace("{cwd}", str(cwd)).split("...")
    return re.compile(".*".join(map(re.escape, parts)))


@pytest.mark.quick
def test_the_corpus_is_large_and_names_are_unique():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.id for c in CASES} >= THROUGH_A_PROCESS


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line_leaving_the_directory_as_it_was(case, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    for name, contents in case.files.items():
        path = cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(contents(cwd) if callable(contents) else contents)
    before = snapshot(cwd)

    fresh = case.id in THROUGH_A_PROCESS
    if case.env or fresh:
        proc = run_cli(*case.args, cwd=cwd, check=False, env={**OFFLINE, **case.env}, fresh=fresh)
    else:
        proc = run_cli_in_process(*case.args, cwd=cwd, check=False, env=OFFLINE)

    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    [line] = proc.stderr.strip().splitlines()
    assert expected_line(case, cwd).fullmatch(line), line
    assert snapshot(cwd) == before
    assert not (tmp_path / "UNPICKLED").exists()  # nothing was unpickled


def test_a_refused_run_into_a_folder_of_files_deletes_none_of_them(tmp_path):
    """The old cleanup removed any run directory without sub-folders: here, the user's files."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    proc = run_cli("method.r=-1", f"hydra.run.dir={mine}", cwd=tmp_path, check=False, env=OFFLINE)
    assert proc.returncode == 2
    assert snapshot(tmp_path) == before


def test_a_refused_rerun_into_a_finished_run_changes_nothing_in_it(tmp_path):
    """The saved config, the log and the manifests of the earlier run stay as they were."""
    data = tmp_path / "data.jsonl"
    data.write_bytes(GOOD)
    run = tmp_path / "run"
    run_cli(*TINY_MODEL, f"dataset.path={data}", "stages=[validate]", f"hydra.run.dir={run}", cwd=tmp_path, env=OFFLINE)
    before = snapshot(run)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(conversation(0)) + "\n{oops\n", encoding="utf-8")
    for args in (["method.r=-1"], [f"dataset.path={bad}"], ["stages=[validate,evaluate]"]):
        proc = run_cli(*TINY_MODEL, f"dataset.path={data}", "stages=[validate]", f"hydra.run.dir={run}", *args,
                       cwd=tmp_path, check=False, env=OFFLINE)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert snapshot(run) == before


@pytest.mark.parametrize("variant", ["bom", "crlf", "bom+crlf"])
def test_a_byte_order_mark_and_windows_line_ends_are_accepted(variant, tmp_path):
    text = GOOD.decode()
    if "crlf" in variant:
        text = text.replace("\n", "\r\n")
    data = tmp_path / "data.jsonl"
    data.write_bytes(("\ufeff" if "bom" in variant else "").encode() + text.encode())
    run_cli(*TINY_MODEL, f"dataset.path={data}", "stages=[validate]", "hydra.run.dir=run", cwd=tmp_path, env=OFFLINE)
    report = json.loads((tmp_path / "run" / "validate" / "report.json").read_text())
    assert report["records"] == 20 and report["splits"]["train"] == 16


def test_moving_leaked_rows_out_of_a_fixed_split_is_an_explicit_option(tmp_path):
    for name, rows in (("data.jsonl", range(20)), ("val.jsonl", [100, 5]), ("test.jsonl", [3, 101, 4, 102])):
        (tmp_path / name).write_bytes(jsonl([conversation(i) for i in rows]))
    (tmp_path / "test.jsonl").write_bytes((tmp_path / "test.jsonl").read_bytes() + jsonl([conversation(102)]))
    run_cli(*TINY_MODEL, "dataset.path=data.jsonl", "dataset.validation_path=val.jsonl", "dataset.test_path=test.jsonl",
            "dataset.checks.leakage.action=move_to_train", "stages=[validate]", "hydra.run.dir=run", cwd=tmp_path,
            env=OFFLINE)
    report = json.loads((tmp_path / "run" / "validate" / "report.json").read_text())
    assert report["moved_to_train_as_leaks"] == 3  # conversation 5 from validation, 3 and 4 from test
    assert report["splits"] == {"train": 23, "validation": 1, "test": 2}
    assert report["checks"]["duplicates"]["count"] == 1  # the second conversation 102
    assert report["checks"]["duplicates"]["examples"][0]["row"] == "test.jsonl:5"

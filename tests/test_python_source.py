"""Docstring → function pairs from Python source (`dataset.path=python:…`), and the code_assistant recipe
that trains on them end to end."""

from __future__ import annotations

import json
import textwrap

import pytest

from finetune.data.canonical import DataError
from finetune.data.load import load_source
from finetune.data.python_source import PythonSourceConfig, source_root

from .conftest import STAGES, TINY, run_cli, run_dirs

MODULE = textwrap.dedent('''
    """A module."""
    import functools


    @functools.cache
    def area(width: float, height: float = 1.0) -> float:
        """Return the area of a rectangle of the given width and height, in square units."""
        # multiply
        return width * height


    def undocumented(x):
        return x


    def short(x):
        """Too short."""
        return x


    def _private(x):
        """A private helper that is long enough to count but private, so it is left out of the data."""
        return x


    class Shape:
        def scaled(self, factor: int) -> "Shape":
            """Return a copy of this shape scaled by an integer factor, leaving this shape unchanged."""
            ...
''')


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "pkg" / "geometry.py").write_text(MODULE, encoding="utf-8")
    (tmp_path / "pkg" / "tests" / "test_geometry.py").write_text(MODULE, encoding="utf-8")
    (tmp_path / "pkg" / "broken.py").write_text("def (:\n", encoding="utf-8")
    return tmp_path / "pkg"


@pytest.mark.quick
def test_documented_public_functions_become_instruction_and_code(tree):
    loaded = load_source(f"python:{tree}", python=PythonSourceConfig(min_docstring_chars=40))
    assert loaded.format == "alpaca"
    assert [c.location for c in loaded.conversations] == ["pkg/geometry.py:7", "pkg/geometry.py:28"]
    user, answer = (m["content"] for m in loaded.conversations[0].messages)
    assert user == ("Write a function with the signature `def area(width: float, height: float=1.0) -> float`.\n\n"
                    "Return the area of a rectangle of the given width and height, in square units.")
    assert answer == ("```python\n@functools.cache\ndef area(width: float, height: float = 1.0) -> float:\n"
                      "    # multiply\n    return width * height\n```")
    method = loaded.conversations[1].messages
    assert method[0]["content"].startswith("Write a method of class `Shape` with the signature `def scaled(self, ")
    assert "Return a copy" not in method[1]["content"] and method[1]["content"].endswith("    ...\n```")


@pytest.mark.quick
def test_include_exclude_and_thresholds(tree):
    everything = PythonSourceConfig(exclude=[], min_docstring_chars=40)
    assert len(load_source(f"python:{tree}", python=everything).conversations) == 4  # tests/ counted too
    strict = PythonSourceConfig(min_docstring_chars=40, max_lines=3)
    assert [c.location for c in load_source(f"python:{tree}", python=strict).conversations] == ["pkg/geometry.py:28"]


@pytest.mark.quick
def test_an_installed_package_is_found_without_importing_it():
    assert source_root("python:jinja2").name == "jinja2"
    loaded = load_source("python:jinja2")
    assert len(loaded.conversations) > 100
    with pytest.raises(DataError, match="no installed Python package or folder 'no_such_package'"):
        source_root("python:no_such_package")


def test_a_missing_package_is_one_line(tmp_path):
    proc = run_cli(*TINY, "dataset.path=python:no_such_package", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: dataset.path: no installed Python package or folder 'no_such_package'"


def test_code_assistant_recipe_runs_end_to_end_on_the_tiny_model(tmp_path):
    run_cli("+recipe=code_assistant", *TINY, "train.max_steps=2", "eval.max_samples=4", cwd=tmp_path)
    [run_dir] = run_dirs(tmp_path / "outputs" / "tiny")
    for stage in STAGES:
        assert json.loads((run_dir / stage / "manifest.json").read_text())["status"] == "complete", stage
    report = json.loads((run_dir / "validate" / "report.json").read_text())
    assert report["format"] == "alpaca" and report["records"] > 100
    first = json.loads((run_dir / "validate" / "train.jsonl").read_text().splitlines()[0])["messages"]
    assert first[0]["content"].startswith("You are a Python coding assistant")
    assert first[2]["content"].startswith("```python\n")

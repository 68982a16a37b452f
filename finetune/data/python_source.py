"""A dataset built from Python source code: every documented function of a source tree becomes an Alpaca
record — the instruction is the function's signature and docstring, the output is the function without its
docstring — read with ``ast``, so nothing is imported or run.

``dataset.path=python:<installed package or folder>`` selects it; ``dataset.python`` says which files
(include / exclude globs) and which functions (a docstring at least ``min_docstring_chars`` long, at most
``max_lines`` long) count.
"""

from __future__ import annotations

import ast
import importlib.util
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.data.canonical import DataError
from finetune.fields import setting

SCHEME = "python:"


@dataclass
class PythonSourceConfig:
    include: list[str] = setting(["**/*.py"])
    exclude: list[str] = setting(["**/tests/**", "**/test_*.py", "**/*_test.py"])
    min_docstring_chars: int = setting(60, low=1)
    max_lines: int = setting(60, low=2)  # longer functions are left out: too long to learn from at this size


def source_root(name: str) -> Path:
    """The folder (or single file) behind ``python:<package or folder>``."""
    target = name.removeprefix(SCHEME)
    if Path(target).exists():
        return Path(target)
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise DataError(f"{name}: no installed Python package or folder {target!r}")
    origin = Path(spec.origin)
    return origin.parent if spec.submodule_search_locations else origin


def _files(root: Path, cfg: PythonSourceConfig) -> list[Path]:
    if root.is_file():
        return [root]
    found = {p for pattern in cfg.include for p in root.glob(pattern) if p.is_file()}
    excluded = {p for pattern in cfg.exclude for p in root.glob(pattern)}
    return sorted(found - excluded)


def _without_docstring(source: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The function's source lines (decorators included) minus the docstring statement."""
    doc = node.body[0]
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    assert node.end_lineno is not None and doc.end_lineno is not None
    lines = source[first - 1:doc.lineno - 1] + source[doc.end_lineno:node.end_lineno]
    if len(node.body) == 1:  # the docstring was the whole body
        indent = len(source[doc.lineno - 1]) - len(source[doc.lineno - 1].lstrip())
        lines.append(" " * indent + "...")
    return textwrap.dedent("\n".join(lines))


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{prefix} {node.name}({ast.unparse(node.args)}){returns}"


def _functions(tree: ast.Module) -> Iterator[tuple[str | None, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Module-level functions and methods of module-level classes, with the class name."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield None, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield node.name, item


def read_python(name: str, cfg: PythonSourceConfig) -> Iterator[tuple[str, Any]]:
    root = source_root(name)
    base = root.parent
    for path in _files(root, cfg):
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue  # not Python this interpreter parses (a template, another version): nothing to learn
        lines = text.splitlines()
        for owner, node in _functions(tree):
            doc = ast.get_docstring(node)
            assert node.end_lineno is not None
            if not doc or len(doc) < cfg.min_docstring_chars or node.name.startswith("_") or \
                    node.end_lineno - node.lineno + 1 > cfg.max_lines:
                continue
            where = f"a method of class `{owner}`" if owner else "a function"
            yield f"{path.relative_to(base)}:{node.lineno}", {
                "instruction": f"Write {where} with the signature `{_signature(node)}`.\n\n{doc}",
                "input": "",
                "output": f"```python\n{_without_docstring(lines, node)}\n```",
            }

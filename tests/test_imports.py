"""The schema is the lowest layer: importing it loads no backend, no model code and no provider SDK, and finetune's
modules import each other without a cycle (an import-time cycle makes what works depend on which module a caller
happens to import first)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import finetune

PACKAGE = Path(finetune.__file__).parent

# What `import finetune.config` must not load: backend implementations, model libraries, provider SDKs
HEAVY = ("finetune.backends.hosted", "finetune.backends.hf", "finetune.backends.unsloth", "torch", "transformers",
         "peft", "openai", "google", "boto3", "botocore")


def test_the_schema_imports_no_backend_model_code_or_sdk():
    code = "import json, sys; import finetune.config; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    assert "finetune.config" in loaded
    assert [m for m in loaded if any(m == h or m.startswith(f"{h}.") for h in HEAVY)] == []


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("finetune", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not inside functions, not under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            found += _module_level_imports(node.orelse if _is_type_checking(node) else [*node.body, *node.orelse])
        elif isinstance(node, ast.Try):
            found += _module_level_imports([*node.body, *(s for h in node.handlers for s in h.body), *node.orelse,
                                            *node.finalbody])
        elif isinstance(node, ast.With | ast.ClassDef):
            found += _module_level_imports(node.body)
    return found


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The finetune modules that module ``name`` imports by name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, base] if base else parent)
        found |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                return [*path[path.index(other):], other]
            if other not in state and (found := visit(other)):
                return found
        state[name] = "done"
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


@pytest.mark.quick
def test_finetunes_modules_import_each_other_without_a_cycle():
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert graph["finetune.stages"] >= {"finetune.config", "finetune.stages.train"}  # the graph sees imports
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


@pytest.mark.quick
def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None

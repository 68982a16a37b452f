"""Generated code: the share of answers whose code parses and defines a function, and the share that pass the
tests given with the sample — the doctest examples (``>>>``) in its prompt, as the code_assistant recipe's
docstrings carry them.

Each answer runs in its own ``python -I`` subprocess in an empty temporary folder, with a timeout, memory and
CPU limits, and an audit hook installed before the answer's code that refuses every socket and subprocess
(``socket.*``, ``subprocess.Popen``, ``os.system``…): no network, nothing started. This protects the run
from accidents, not from hostile code; run untrusted models' code in a container.
"""

from __future__ import annotations

import ast
import doctest
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune.generate import Answer
from finetune.metrics import Metric, Sample, Scored

MEMORY_LIMIT_BYTES = 1 << 30
_CLOSING_QUOTES = re.compile(r"^\s*(\"\"\"|\'\'\')\s*$", re.MULTILINE)  # a docstring's end, read as expected output
_BLOCK = re.compile(r"```[\w-]*\n(.*?)(?:```|\Z)", re.DOTALL)

# Runs in the child: limits, the audit hook, then the answer's code and the doctest examples in its namespace.
_RUNNER = """
import doctest, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))
resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))
_BLOCKED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.fork", "pty.", "ctypes.")
def _refuse(event, args):
    if event.startswith(_BLOCKED):
        raise PermissionError(f"blocked in the code sandbox: {{event}}")
sys.addaudithook(_refuse)
job = json.load(open("job.json", encoding="utf-8"))
namespace = {{"__name__": "answer"}}
exec(compile(job["code"], "answer.py", "exec"), namespace)
test = doctest.DocTestParser().get_doctest(job["tests"], namespace, "tests", "prompt", 0)
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
runner.run(test, out=lambda s: None)
print(json.dumps({{"attempted": runner.tries, "failed": runner.failures}}))
"""


def extract_code(answer: str) -> str:
    """The Python code of an answer: its first fenced block (to the end when the fence is never closed), else
    the whole answer."""
    match = _BLOCK.search(answer)
    return match.group(1) if match else answer.strip()


def defines_function(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for node in ast.walk(tree))


def doctest_source(prompt_text: str) -> str:
    """The prompt's ``>>>`` examples with their expected output, re-indented as one doctest."""
    examples = doctest.DocTestParser().get_examples(prompt_text)
    return "\n".join(f">>> {e.source.rstrip()}\n{_CLOSING_QUOTES.sub('', e.want)}".rstrip() for e in examples)


def run_tests(code: str, tests: str, timeout_s: float) -> dict[str, Any]:
    """Run ``tests`` (doctest text) against ``code`` in the sandboxed subprocess; ``passed`` when every example
    gives its expected output."""
    with tempfile.TemporaryDirectory(prefix="finetune-code-") as folder:
        Path(folder, "job.json").write_text(json.dumps({"code": code, "tests": tests}), encoding="utf-8")
        runner = _RUNNER.format(mem=MEMORY_LIMIT_BYTES, cpu=max(1, int(timeout_s)))
        try:
            proc = subprocess.run([sys.executable, "-I", "-c", runner], cwd=folder, capture_output=True, text=True,
                                  timeout=timeout_s, env={"PATH": "/usr/bin:/bin"})
        except subprocess.TimeoutExpired:
            return {"passed": False, "error": f"timed out after {timeout_s} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["exit status " + str(proc.returncode)])[-1]
        return {"passed": False, "error": last[:200]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"passed": result["failed"] == 0 and result["attempted"] > 0, **result}


def code(samples: Sequence[Sample], answers: Sequence[Answer], settings: Any) -> Scored:
    per: list[dict[str, Any]] = []
    for s, a in zip(samples, answers, strict=True):
        source = extract_code(a.text)
        row: dict[str, Any] = {"code_parses": float(defines_function(source))}
        tests = doctest_source(s.prompt.messages[-1]["content"])
        if tests:
            outcome = run_tests(source, tests, settings.code_timeout_s) if row["code_parses"] else \
                {"passed": False, "error": "does not parse"}
            row["code_passes"] = float(outcome["passed"])
            if "error" in outcome:
                row["code_error"] = outcome["error"]
        per.append(row)
    tested = [p["code_passes"] for p in per if "code_passes" in p]
    return Scored(
        {"code_parses": sum(p["code_parses"] for p in per) / len(per) if per else None,
         "code_passes": sum(tested) / len(tested) if tested else None},
        per, {"samples_with_tests": len(tested), "tests": "doctest examples in the prompt"},
    )


METRICS = (
    Metric("code", "answers", code, True, "share of answers whose code parses, and that pass the sample's doctests"),
)

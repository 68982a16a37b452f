"""The README and docs/ cannot rot: every ``python -m finetune …`` they show (in code blocks and inline code) is
run through the CLI — composed with ``--cfg job`` and checked against the schema, so nothing trains — a command
shown with its ``error:`` line prints exactly that line, and the config tables name every option in ``conf/``.
Commands that need what a test machine has not got are listed in ``NOT_RUN`` with the reason, and only parsed."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from finetune import resolvers
from finetune.config import load_run_config
from finetune.paths import CONF_DIR, RECIPES_DIR
from finetune.usage import unknown_word

from .conftest import REPO, conversation, run_cli

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAM = "python -m finetune"
# What the docs write for "your run directory": a stand-in that the working directory below provides.
PLACEHOLDERS = {"$RUN": "outputs/support_bot/RUN", "<timestamp>": "TS", "<ts>": "TS"}
NOT_RUN = {  # first argument → why the command is only parsed here
    "compare": "needs two finished run directories (tests/test_compare.py runs it)",
    "chat": "needs a finished run directory (tests/test_chat_serve.py runs it)",
    "serve": "needs a finished run directory (tests/test_chat_serve.py runs it)",
    "launch": "writes a SkyPilot task and checks it with SkyPilot (tests/test_launch.py runs it)",
    "--config-path": "reruns a finished run from its .hydra/ (tests/test_reproducible.py runs it)",
}
MISTAKES = {  # commands the docs show as mistakes → what the one-line error names
    ("train", "RUN"): "'train' is not a command",
    ("--port", "8000"): "unknown option --port",
}
SHOWS_ITSELF = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i"}  # runs nothing as it is
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")
COMMAND_LINE = re.compile(rf"(\$ )?([A-Z_]+=(\$\([^)]*\)|\S+) )*{PROGRAM}\b")  # after a prompt, VAR=… VAR=$(…)


@dataclass(frozen=True)
class Shown:
    args: tuple[str, ...]
    where: str
    error: str | None  # the error line the docs show after it


def _args(command: str) -> tuple[str, ...]:
    command = " ".join(command[command.index(PROGRAM):].split())
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    return tuple(shlex.split(command, comments=True)[3:])


def _lines(block: str, first: int) -> list[tuple[int, str]]:
    """A code block's lines with ``\\`` continuations joined, each with the number of the line it starts on."""
    joined: list[tuple[int, str]] = []
    for i, line in enumerate(block.splitlines()):
        if joined and joined[-1][1].endswith("\\"):
            joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line)
        else:
            joined.append((first + i, line))
    return joined


def shown_commands() -> dict[tuple[str, ...], Shown]:
    """Every command the docs show (a code line that starts with it, after a ``$`` prompt or environment
    variables; inline code that starts with it), once: where it is first shown."""
    found: dict[tuple[str, ...], Shown] = {}

    def add(command: str, where: str, error: str | None = None) -> None:
        args = _args(command)
        if args and (args not in found or (error and not found[args].error)):
            found[args] = Shown(args, where, error)

    for path in DOCS:
        text, name = path.read_text(encoding="utf-8"), path.relative_to(REPO)
        for block in FENCE.finditer(text):
            lines = _lines(block.group(1), text.count("\n", 0, block.start(1)) + 1)
            for (number, line), (_, after) in zip(lines, [*lines[1:], (0, "")], strict=True):
                if COMMAND_LINE.match(line):
                    shown_error = after if line.startswith("$ ") and after.startswith("error: ") else None
                    add(line, f"{name}:{number}", shown_error)
        prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for span in INLINE.finditer(prose):
            if span.group(1).startswith(PROGRAM):
                add(span.group(1), f"{name}:{prose.count(chr(10), 0, span.start()) + 1}")
    return found


SHOWN = shown_commands()
RUNNABLE = [a for a in SHOWN if a not in MISTAKES and not SHOWN[a].error and a[0] not in NOT_RUN]


def _id(args: tuple[str, ...]) -> str:
    return " ".join(args)[:80]


def first_job(args: tuple[str, ...]) -> list[str]:
    """A multirun as its first job (``--cfg`` composes one run): each sweep at its first value, an interval at its
    lower end."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    parser, job = OverridesParser.create(), []
    for arg in args:
        if arg in ("-m", "--multirun"):
            continue
        override = parser.parse_override(arg) if "=" in arg and not arg.startswith("-") else None
        if override is None or not override.is_sweep_override():
            job.append(arg)
            continue
        sweep = override.value()
        first = sweep.start if isinstance(sweep, IntervalSweep) else next(override.sweep_string_iterator())
        job.append(f"{override.get_key_element()}={first}")
    return job


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory with the files the docs' commands name: data files, a run's GGUF, bundled_data/."""
    root = tmp_path_factory.mktemp("docs")
    for name in ("data.jsonl", "pairs.jsonl", "alpaca.jsonl"):
        (root / name).write_text(json.dumps(conversation(0)) + "\n", encoding="utf-8")
    gguf = root / PLACEHOLDERS["$RUN"] / "export" / "model-q8_0.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF")
    (root / "bundled_data").symlink_to(REPO / "bundled_data")
    return root


def _as_run(args: tuple[str, ...]) -> list[str]:
    """What is run for a shown command: its first job, composed with ``--cfg job`` unless it shows itself; a
    ``plan`` command's overrides as a run's (tests/test_plan.py runs it)."""
    job = first_job(args[1:] if args[0] == "plan" else args)
    return job if any(a.split("=")[0] in SHOWS_ITSELF for a in job) else ["--cfg", "job", *job]


@pytest.fixture(scope="module")
def composed(workdir) -> dict[tuple[str, ...], dict]:
    """Every runnable command's outcome, all run in one process by ``tests/compose_many.py``."""
    commands = [_as_run(args) for args in RUNNABLE]
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "compose_many.py")], input=json.dumps(commands),
                          cwd=workdir, capture_output=True, text=True, timeout=600, check=True)
    return dict(zip(RUNNABLE, json.loads(proc.stdout), strict=True))


@pytest.mark.quick
def test_the_docs_show_commands_and_the_exceptions_are_among_them():
    assert len(SHOWN) > 40
    assert set(MISTAKES) <= set(SHOWN)
    assert {args[0] for args in SHOWN if args[0] in NOT_RUN} == set(NOT_RUN)


@pytest.mark.quick
@pytest.mark.parametrize("args", [a for a in SHOWN if a[0] in NOT_RUN], ids=_id)
def test_commands_that_need_a_finished_run_parse(args):
    if args[0] == "compare":
        assert len([a for a in args[1:] if a != "--json"]) == 2, SHOWN[args].where
    elif args[0] in ("chat", "serve"):
        module = importlib.import_module(f"finetune.{args[0]}_command")
        assert module.parser().parse_args(list(args[1:])).run_dir, SHOWN[args].where
    elif args[0] == "launch":
        from finetune.launch_command import split

        overrides, _, _ = split(list(args[1:]))
        assert unknown_word(overrides) is None, SHOWN[args].where
    else:
        assert unknown_word(args) is None, SHOWN[args].where


@pytest.mark.parametrize("args", [a for a in SHOWN if a in MISTAKES or SHOWN[a].error], ids=_id)
def test_a_documented_error_is_the_error(args, tmp_path):
    proc = run_cli(*args, cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2, f"{SHOWN[args].where}: {proc.stdout}{proc.stderr}"
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("error: "), line
    if args in MISTAKES:
        assert MISTAKES[args] in line
    else:
        assert line == SHOWN[args].error, SHOWN[args].where
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", RUNNABLE, ids=_id)
def test_every_shown_command_composes_and_fits_the_schema(args, composed, workdir):
    outcome, job = composed[args], _as_run(args)
    assert outcome["code"] == 0, f"{SHOWN[args].where}: python -m finetune {' '.join(job)}\n{outcome['stderr']}"
    if job[:2] != ["--cfg", "job"]:
        return
    resolvers.register()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        load_run_config(OmegaConf.create(outcome["stdout"]))  # raises ConfigError naming the key


def _table_options(path: Path) -> dict[str, set[str]]:
    """The config groups table: group → the option names in its options column (``+dataset/synthetic=example``
    names ``example``; ``+recipe=NAME`` none)."""
    rows = re.findall(r"^\| `([\w/]+)` \| (.*?) \|", path.read_text(encoding="utf-8"), re.M)
    return {group: {name for span in re.findall(r"`([^`]+)`", options)
                    if re.fullmatch(r"[a-z0-9_]+", name := span.rsplit("=", 1)[-1])}
            for group, options in rows}


@pytest.mark.quick
@pytest.mark.parametrize("path", [REPO / "README.md", REPO / "docs" / "configuration.md"], ids=lambda p: p.name)
def test_the_config_tables_name_every_option_in_conf(path):
    groups = {d.name: {p.stem for p in d.rglob("*.yaml")} for d in CONF_DIR.iterdir() if any(d.rglob("*.yaml"))}
    groups["recipe"] = {p.stem for p in RECIPES_DIR.glob("*.yaml")}
    table = _table_options(path)
    assert set(table) == set(groups)
    for group, options in groups.items():
        assert table[group] == options, group


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.quick
@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_between_the_docs_lead_somewhere(path):
    for target, anchor in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", path.read_text(encoding="utf-8")):
        linked = (path.parent / target).resolve() if target else path
        assert linked.is_file(), f"{path.name}: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", FENCE.sub("", linked.read_text(encoding="utf-8")), re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{path.name}: {target}#{anchor}"

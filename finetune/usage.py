"""What ``python -m finetune`` says about itself: the ``--help`` page (Hydra's help config, chosen with
``hydra/help=finetune``) and the one line that answers a word on the command line that is neither a command, one
of Hydra's flags nor an override — instead of Hydra's usage block, which ends in the overrides the CLI adds."""

from __future__ import annotations

import contextlib
import io
import textwrap
from collections.abc import Sequence
from pathlib import Path

from hydra.core.config_store import ConfigStore

COMMANDS = (
    ("python -m finetune [+recipe=NAME] [key=value ...]", "a run: validate, train, merge, evaluate, export, card"),
    ("python -m finetune -m [+recipe=NAME] key=a,b ...", "a sweep: one run per combination, then a summary"),
    ("python -m finetune compare A B [--json]", "two run directories' config and numbers in one table"),
    ("python -m finetune plan [+recipe=NAME] [key=value ...]", "memory, time and cost per GPU; no weights"),
    ("python -m finetune chat RUN [--once Q]", "talk to a run's model (its GGUF, as the Modelfile serves it)"),
    ("python -m finetune serve RUN [--port N]", "the run's GGUF behind an OpenAI-compatible API"),
)
HELP_OVERRIDE = "hydra/help=finetune"

ABOUT = """\
finetune: fine-tune a language model from one YAML recipe. A run validates the data, trains (LoRA, DoRA, QLoRA or
every weight; on this CPU, a GPU or through a hosted API), merges, evaluates base vs tuned, exports GGUF files and an
Ollama Modelfile, writes a model card and, if asked, publishes to the Hub. Each run is a folder,
outputs/<run_name>/<timestamp>/, that is enough to rerun, resume or compare it."""

MORE = """\
== More ==
  python -m finetune --cfg job [+recipe=NAME] [key=value ...]   print the composed config, run nothing
  Every key, its default and range: finetune/config.py, docs/configuration.md. Hydra's own flags: --hydra-help."""


def _recipe_line(path: Path) -> str:
    """A recipe's name and the first sentence of its header comment (which ends at an indented example)."""
    comments = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("# ") or line.startswith("#  "):
            break
        if not line.startswith("# @package"):
            comments.append(line[2:].strip())
    about = " ".join(comments).split(". ")[0].rstrip(".")
    return textwrap.fill(about, 116, initial_indent=f"  {path.stem:<16} ", subsequent_indent=" " * 19)


def _literal(text: str) -> str:
    """``text`` as it must be written in the help template to print as it is: the template is an OmegaConf
    string (``${…}`` interpolates) and then a ``string.Template`` (``$NAME`` substitutes)."""
    return text.replace("$", "$$").replace("$${", "$\\${")


def help_template(recipes: Sequence[Path]) -> str:
    commands = "\n".join(f"  {usage:<56} {what}" for usage, what in COMMANDS)
    listed = "\n".join(_recipe_line(p) for p in recipes)
    page = (f"{ABOUT}\n\n== Commands ==\n{commands}\n\n== Recipes (+recipe=NAME) ==\n{listed}\n\n"
            "== Configuration groups (group=option) ==\n")
    return f"{_literal(page)}$APP_CONFIG_GROUPS\n{_literal(MORE)}"


def register_help(recipes: Sequence[Path]) -> None:
    """``hydra/help=finetune``: Hydra's ``--help`` page, saying what finetune is first."""
    node = {"app_name": "finetune", "header": "", "footer": "", "template": help_template(recipes)}
    ConfigStore.instance().store(group="hydra/help", name="finetune", node=node, provider="finetune")


def unknown_word(args: Sequence[str]) -> str | None:
    """The first argument that Hydra's command line takes neither as one of its flags (or a flag's value) nor as
    an override (``key=value``, ``+key=value``, ``~key``): a mistyped command or flag. Parsed by Hydra's own
    parser, so every flag it knows keeps working; what that parser itself refuses (``--cfg nope``) or answers
    (``--version``) is left to Hydra."""
    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            parsed, extra = get_args_parser().parse_known_args(list(args))
    except SystemExit:
        return None
    words = [*parsed.overrides, *extra]
    mistakes = {w for w in words if w.startswith("-") or ("=" not in w and not w.startswith("~"))}
    return next((arg for arg in args if arg in mistakes), None)


def unknown_word_message(word: str) -> str:
    """One line: the word, and what the command line takes instead."""
    what = f"unknown option {word.split('=')[0]}" if word.startswith("-") else \
        f"{word!r} is not a command or a key=value override"
    others = ", ".join(usage.split(" [")[0] for usage, _ in COMMANDS[2:])
    return f"{what}; the commands are {COMMANDS[0][0]} (a run; -m: a sweep), {others}; see python -m finetune --help"

"""``python tests/compose_many.py < commands.json``: many ``python -m finetune ARGS`` in one process, each run by
``finetune.cli.main`` exactly as the command line runs it; prints a JSON list with one ``{"code", "stdout",
"stderr"}`` per command. ``tests/test_docs.py`` composes every command the docs show this way: one Python
start-up (~4 s here) instead of one per command."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback
from typing import Any

from hydra.core.global_hydra import GlobalHydra

from finetune import cli


def run(args: list[str]) -> dict[str, Any]:
    GlobalHydra.instance().clear()  # each command initialises Hydra afresh, as its own process would
    sys.argv = ["finetune", *args]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main()
        except SystemExit as e:
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        except Exception:  # a bug: its traceback, as the process would print it
            traceback.print_exc()
            code = 1
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    # Hydra's ConfigStore outlives GlobalHydra.clear(): the recipes, the schema and the help page that main()
    # registers are registered once, as in a process of its own (a third of each command's time here).
    cli.register_recipes()
    cli.register_recipes = lambda: None
    print(json.dumps([run(args) for args in json.load(sys.stdin)]))

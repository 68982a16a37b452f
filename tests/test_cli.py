"""What the command line says about itself: ``--help`` starts with what finetune does, its commands and recipes,
then Hydra's groups; a mistyped command or flag is one line naming it, while every flag of Hydra's and every
override keeps reaching Hydra."""

from __future__ import annotations

import string

import pytest
from omegaconf import OmegaConf

from finetune.paths import CONF_DIR, RECIPES_DIR
from finetune.usage import help_template, unknown_word

from .conftest import run_cli, run_cli_in_process


def test_help_says_what_finetune_is_then_its_commands_recipes_and_groups(tmp_path):
    out = run_cli("--help", cwd=tmp_path).stdout
    assert out.startswith("finetune: fine-tune a language model")
    parts = ["== Commands ==", "python -m finetune [+recipe=NAME] [key=value ...]", "python -m finetune compare A B",
             "== Recipes (+recipe=NAME) ==", "code_assistant   A Python code assistant", "support_bot      Customer",
             "== Configuration groups (group=option) ==", "backend: bedrock, hf, openai, unsloth, vertex",
             "recipe: arithmetic_grpo, code_assistant, support_bot", "--cfg job"]
    at = [out.find(part) for part in parts]
    assert -1 not in at and at == sorted(at), dict(zip(parts, at, strict=True))
    assert "$" not in out and "Powered by Hydra" not in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "named"), [
    (("train", "outputs/support_bot/run"), "'train' is not a command or a key=value override"),
    (("--port", "8000"), "unknown option --port"),
    (("+recipe=support_bot", "--port=8000"), "unknown option --port"),
    (("+recipe=support_bot", "evaluate"), "'evaluate' is not a command or a key=value override"),
])
def test_a_mistyped_command_or_flag_is_one_line_naming_it(tmp_path, args, named):
    proc = run_cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {named}; the commands are "), proc.stderr
    assert "python -m finetune compare A B" in proc.stderr and "hydra" not in proc.stderr
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.quick
@pytest.mark.parametrize("args", [
    (), ("+recipe=support_bot", "method.r=8", "++train.lr=1e-4", "~eval.compare", "~card.tags=[a]"),
    ("--cfg", "job"), ("-c", "hydra"), ("--cfg=all",), ("--cf", "job"), ("--resolve", "--cfg", "job"),
    ("--package", "method", "--cfg", "job"), ("-p", "method", "-c", "job"),
    ("--info",), ("-i", "searchpath"), ("--info", "defaults-tree", "model=tiny_random"),
    ("-m", "method.r=4,8"), ("--multirun", "train.lr=choice(1e-4,2e-4)"), ("-mc", "job"),
    ("--config-path", "/tmp/run/.hydra", "--config-name", "config"), ("-cp", "/x", "-cn", "config"),
    ("--config-dir", "conf2"), ("-cd", "conf2"), ("--experimental-rerun", "config.pickle"),
    ("--help",), ("-h",), ("--hydra-help",), ("--version",), ("--shell-completion", "-sc", "install=bash"),
    ("--run", "seed=1"), ("-r",),
])
def test_hydra_flags_and_overrides_are_not_mistakes(args):
    assert unknown_word(args) is None


@pytest.mark.quick
@pytest.mark.parametrize(("args", "word"), [
    (("chat", "RUN"), "chat"), (("--port", "8000"), "--port"), (("seed=1", "train"), "train"),
    (("--cfg", "job", "job"), "job"), (("-x",), "-x"), (("--cfg", "job", "--verbose"), "--verbose"),
])
def test_the_first_word_hydra_cannot_take_is_the_mistake(args, word):
    assert unknown_word(args) == word


def test_hydra_flags_still_reach_hydra(tmp_path):
    assert run_cli("--version", cwd=tmp_path).stdout.startswith("Hydra 1.3")
    out = run_cli("--cfg", "job", "--package", "method", "+recipe=support_bot", "method.r=8", cwd=tmp_path).stdout
    assert "r: 8" in out and "train:" not in out
    assert "recipe: support_bot" in run_cli("--info", "defaults-tree", "+recipe=support_bot", cwd=tmp_path).stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.quick
def test_the_help_page_prints_a_recipes_dollar_signs_as_they_are(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("# @package _global_\n# Reads ${bundled_data:x} and $HOME, costs $5.\n#   example\n")
    page = string.Template(OmegaConf.create({"t": help_template([recipe])}).t).substitute(APP_CONFIG_GROUPS="")
    assert "  mine             Reads ${bundled_data:x} and $HOME, costs $5\n" in page


@pytest.mark.quick
def test_no_config_of_ours_sets_hydra_mode():
    """What lets the CLI take the run mode from the command line without composing the config a first time."""
    files = [*CONF_DIR.rglob("*.yaml"), *RECIPES_DIR.glob("*.yaml")]
    assert files and not [p for p in files if OmegaConf.select(OmegaConf.load(p), "hydra.mode") is not None]


@pytest.mark.quick
@pytest.mark.parametrize(("args", "compositions"), [
    (("method.r=-1",), 1),
    (("method.r=-1", "hydra.mode=RUN"), 2),  # a mode set on the command line: Hydra reads it as it always does
    (("method.r=-1", f"--config-dir={CONF_DIR}"), 2),  # a config dir of the user's may set it: as well
])
def test_a_run_composes_its_config_once(monkeypatch, tmp_path, args, compositions):
    from hydra._internal.hydra import Hydra

    calls = []
    compose = Hydra.compose_config
    monkeypatch.setattr(Hydra, "compose_config", lambda self, *a, **k: calls.append(1) or compose(self, *a, **k))
    proc = run_cli_in_process(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: method.r=-1: must be in"), proc.stderr
    assert len(calls) == compositions

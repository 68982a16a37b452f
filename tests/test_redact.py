"""Which names count as secret, and what redaction leaves alone."""

from __future__ import annotations

import pytest

from finetune.redact import MASK, looks_secret, redact_text, redact_yaml

pytestmark = pytest.mark.quick  # no model run, no server, no subprocess: make check


@pytest.mark.parametrize("name", ["HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "api_key",
                                  "hydra.job.env_set.WANDB_API_KEY", "token"])
def test_secret_names(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["max_new_tokens", "smoke_test_max_tokens", "tokenizer", "pad_token_id", "key",
                                  "lr_scheduler"])
def test_ordinary_names(name):
    assert not looks_secret(name)


def test_yaml_loses_secret_values_and_keeps_the_rest(monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "tok-123456789")
    text = ("eval:\n  max_new_tokens: 96\njob:\n  env_set:\n    WANDB_API_KEY: 'abc'\n"
            "overrides:\n- +hydra.job.env_set.WANDB_API_KEY=abc\n- run_name=tok-123456789\n")
    assert redact_yaml(text) == (
        "eval:\n  max_new_tokens: 96\njob:\n  env_set:\n    WANDB_API_KEY: ***\n"
        f"overrides:\n- +hydra.job.env_set.WANDB_API_KEY={MASK}\n- run_name={MASK}\n")
    assert redact_text("short values such as 1 stay") == "short values such as 1 stay"

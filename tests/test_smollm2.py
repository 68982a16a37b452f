"""The real embedded SmolLM2-135M-Instruct through the whole graph for a handful of training steps."""

from __future__ import annotations

import json

import pytest

from .conftest import run_cli, run_dirs


@pytest.mark.slow
def test_real_smollm2_runs_the_support_bot_recipe_end_to_end(tmp_path):
    # The real weights where they decide something (a trained model's perplexity, its answers, the judge, the
    # parity gates); the other metrics of the recipe run on the tiny model with the same tokenizer elsewhere.
    run_cli("+recipe=support_bot", "train.max_steps=2", "train.max_seq_len=128", "eval.max_samples=2",
            "eval.metrics=[perplexity,rouge,bleu,chrf,repetition,stopped,style]", "eval.lm_eval.local_task=false",
            "eval.show_samples=1", "eval.max_new_tokens=16", "eval.judge.max_samples=1",
            "export.parity_samples=1", "export.gguf_types=[f16]", cwd=tmp_path)
    [run_dir] = run_dirs(tmp_path / "outputs" / "support_bot")
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["dtype"] == "float32"
    result = json.loads((run_dir / "evaluate" / "eval.json").read_text())
    assert result["metrics"]["perplexity"]["base"] < 100  # a real, trained language model, not random weights
    assert result["metrics"]["style"]["tuned"] is not None and result["judge"]["models"]["tuned"]["scored"] == 1
    parity = json.loads((run_dir / "export" / "parity.json").read_text())
    # After 2 steps the model is near SmolLM2 itself, whose bf16 (98.8 %) and q8_0 (93.9 %) files miss their gates
    # here; after the recipe's training they pass (99.1 %, 96.8 % on 2026-11-29: docs/benchmarks.md). K-quants,
    # measured and never gated: tests/test_parity.py.
    passed = {name: r["passed"] for name, r in parity["files"].items()}
    assert passed == {"model-f16.gguf": True, "base-f16.gguf + adapter.gguf": True}
    assert not parity["template_failures"]
    modelfile = (run_dir / "export" / "Modelfile").read_text()
    assert "SYSTEM \"\"\"あなたはABC株式会社のサポート担当です。" in modelfile

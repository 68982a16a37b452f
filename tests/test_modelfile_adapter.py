"""The Modelfile names a GGUF LoRA adapter with Ollama's ADAPTER command, right after FROM."""

from __future__ import annotations

import pytest

from finetune.export.modelfile import CHATML, modelfile

pytestmark = pytest.mark.quick  # no model run, no server, no subprocess: make check


def test_adapter_line_follows_from() -> None:
    params = {"temperature": 0.2}
    with_adapter = modelfile("base-f16.gguf", CHATML, "Be brief.", params, adapter="adapter-f32.gguf")
    assert with_adapter.startswith("FROM ./base-f16.gguf\nADAPTER ./adapter-f32.gguf\n\nTEMPLATE ")
    assert with_adapter.count("ADAPTER") == 1
    # without an adapter the text is what it always was
    without = modelfile("base-f16.gguf", CHATML, "Be brief.", params)
    assert "ADAPTER" not in without
    assert with_adapter.replace("ADAPTER ./adapter-f32.gguf\n", "") == without

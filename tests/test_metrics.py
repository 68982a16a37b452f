"""Each metric on cases where a wrong implementation gives a different number: Japanese and Chinese text, loops,
JSON and schemas, style rules, code that passes, fails, hangs or reaches for the network, and perplexity that
must be token-weighted across batches of different lengths."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from finetune.chat import tokenize
from finetune.data.canonical import Conversation
from finetune.generate import Answer
from finetune.metrics import METRICS, Sample
from finetune.metrics.code import code, extract_code
from finetune.metrics.formats import StyleRule, json_format, style
from finetune.metrics.likelihood import CPU_BATCH_TOKENS, PROBE, LikelihoodInputs, batches, nll, probe_texts
from finetune.metrics.text import (
    bleu,
    chrf,
    exact_match,
    length,
    numeric_match,
    repeated_ngram_share,
    repetition,
    rouge,
    stopped,
    units,
)

SETTINGS = SimpleNamespace(json_schema=None, style=[], code_timeout_s=10.0)


def pairs(*items: tuple[str, str], prompt: str = "question") -> tuple[list[Sample], list[Answer]]:
    """(reference, answer) pairs as samples and answers."""
    samples = [Sample(Conversation([{"role": "user", "content": prompt}], "t:1"), ref) for ref, _ in items]
    return samples, [Answer(text, "stop", 1) for _, text in items]


@pytest.mark.quick
def test_units_are_cjk_characters_and_lowercased_words():
    assert units("ABC Cloud ERPのログイン、OK?") == ["abc", "cloud", "erp", "の", "ロ", "グ", "イ", "ン", "ok"]
    assert units("登录失败了") == ["登", "录", "失", "败", "了"]
    assert units("ＡＢＣ１２３") == ["abc123"]  # full-width forms folded (NFKC)


def test_rouge_scores_japanese_answers_by_what_they_say():
    from rouge_score.rouge_scorer import RougeScorer

    reference = "ログインURLをご確認ください"
    same, other = "ログインURLをご確認ください", "請求書はメールで送付いたします"
    # rouge_score's default tokenizer keeps only [a-z0-9]: the different answer scores like the identical one.
    default, kana = RougeScorer(["rougeL"]), "ご確認ください"
    assert default.score(kana, kana)["rougeL"].fmeasure == default.score(kana, other)["rougeL"].fmeasure == 0
    samples, answers = pairs((reference, same), (reference, other), (reference, "URLをご確認ください"))
    per = rouge(samples, answers, SETTINGS).per_sample
    assert per[0]["rougeL"] == 1.0
    assert per[1]["rougeL"] < 0.1
    # reference: 13 units (ロ グ イ ン url を ご 確 認 く だ さ い), answer 9, all 9 in order: F1 = 2·9/(13+9)
    assert per[2]["rougeL"] == pytest.approx(18 / 22, abs=1e-4)
    assert per[2]["rouge2"] == pytest.approx(2 * 8 / (12 + 8), abs=1e-4)


@pytest.mark.quick
def test_rouge_scores_chinese_by_character():
    samples, answers = pairs(("请重新设置密码", "请重新设置密码"), ("请重新设置密码", "今天天气很好"))
    per = rouge(samples, answers, SETTINGS).per_sample
    assert per[0]["rouge1"] == 1.0 and per[1]["rouge1"] == 0.0


def test_bleu_and_chrf_reward_overlap_in_japanese():
    reference = "パスワードは管理画面の設定から変更できます。"
    samples, answers = pairs((reference, reference))
    assert bleu(samples, answers, SETTINGS).values["bleu"] == pytest.approx(100.0)
    assert chrf(samples, answers, SETTINGS).values["chrf"] == pytest.approx(100.0)
    near = pairs((reference, "パスワードは設定から変更できます。"))
    far = pairs((reference, "本日は晴天なり。"))
    assert bleu(*near, SETTINGS).values["bleu"] > bleu(*far, SETTINGS).values["bleu"] + 20
    assert chrf(*near, SETTINGS).values["chrf"] > chrf(*far, SETTINGS).values["chrf"] + 20


@pytest.mark.quick
def test_exact_match_normalises_width_and_spaces_only():
    samples, answers = pairs(("ABC 1", "ＡＢＣ\u3000 1 "), ("ABC 1", "abc 1"), ("yes", "yes."))
    assert [p["exact_match"] for p in exact_match(samples, answers, SETTINGS).per_sample] == [1.0, 0.0, 0.0]


@pytest.mark.quick
def test_numeric_match_compares_the_last_numbers_and_leaves_references_without_one_unscored():
    samples, answers = pairs(("The total is 1,234.", "so 1200 + 34 = １２３４"), ("-3", "It is −3.0"), ("42", "42.5"),
                             ("42", "no idea"), ("Press Export.", "Press 2"))
    scored = numeric_match(samples, answers, SETTINGS)
    assert [p["numeric_match"] for p in scored.per_sample] == [1.0, 1.0, 0.0, 0.0, None]
    assert scored.values["numeric_match"] == 0.5 and scored.details["scored"] == 4


@pytest.mark.quick
def test_repetition_is_high_for_a_loop_and_zero_for_prose():
    loop = "ご確認ください。ご確認ください。ご確認ください。ご確認ください。"
    assert repeated_ngram_share(loop) > 0.6
    assert repeated_ngram_share("ログイン画面の「パスワードをお忘れの方」から再設定できます。") == 0.0
    assert repeated_ngram_share("short") == 0.0
    samples, answers = pairs(("x", loop), ("x", "one two three four five"))
    assert repetition(samples, answers, SETTINGS).values["repetition"] == pytest.approx(
        repeated_ngram_share(loop) / 2)


@pytest.mark.quick
def test_stopped_counts_answers_that_ended_on_their_own():
    samples, _ = pairs(("a", "b"), ("a", "b"))
    answers = [Answer("b", "stop", 2), Answer("b", "length", 80)]
    assert stopped(samples, answers, SETTINGS).values["stopped"] == 0.5


@pytest.mark.quick
def test_length_counts_tokens_and_brevity_is_the_share_of_max_new_tokens_left():
    samples, _ = pairs(("a", "b"), ("a", "b"), ("a", "b"))
    answers = [Answer("b", "stop", 6), Answer("b", "length", 24), Answer("b", "length", 30)]
    scored = length(samples, answers, SimpleNamespace(max_new_tokens=24))
    assert scored.values["length"] == 20 and [p["brevity"] for p in scored.per_sample] == [0.75, 0.0, 0.0]


@pytest.mark.quick
def test_json_parses_fenced_answers_and_checks_the_schema():
    schema = {"type": "object", "required": ["intent"], "properties": {"intent": {"enum": ["refund", "login"]}}}
    samples, answers = pairs(("", '{"intent": "login"}'), ("", '```json\n{"intent": "refund"}\n```'),
                             ("", '{"intent": "other"}'), ("", "intent: login"))
    scored = json_format(samples, answers, SimpleNamespace(json_schema=schema))
    assert [p["json_valid"] for p in scored.per_sample] == [1.0, 1.0, 1.0, 0.0]
    assert [p["json_schema"] for p in scored.per_sample] == [1.0, 1.0, 0.0, 0.0]
    assert "'other' is not one of" in scored.per_sample[2]["json_schema_error"]
    assert scored.values == {"json_valid": 0.75, "json_schema": 0.5}
    assert "json_schema" not in json_format(samples, answers, SETTINGS).values  # no schema: parse rate only


@pytest.mark.quick
def test_style_rules_from_the_support_bot_recipe():
    import yaml

    from finetune.paths import RECIPES_DIR

    rules = [StyleRule(**r) for r in yaml.safe_load((RECIPES_DIR / "support_bot.yaml").read_text())["eval"]["style"]]
    texts = ["承知いたしました。設定画面からご変更いただけます。",
             "パスワードは設定画面から変更できる。",  # plain form: not polite
             "ご本人確認のため、パスワードを教えてください。",  # asks for the password
             "カード番号はチャットに入力なさらないようお願いいたします。"]  # mentions it, asks nothing
    samples, answers = pairs(*(("", t) for t in texts))
    scored = style(samples, answers, SimpleNamespace(style=rules))
    assert [p["style"] for p in scored.per_sample] == [1.0, 0.0, 0.0, 1.0]
    assert [p["style: polite form"] for p in scored.per_sample] == [1.0, 0.0, 1.0, 1.0]
    assert scored.values["style"] == 0.5


@pytest.mark.quick
def test_every_bundled_support_answer_passes_the_recipe_style():
    import yaml

    from finetune.paths import DATA_DIR, RECIPES_DIR

    rules = [StyleRule(**r) for r in yaml.safe_load((RECIPES_DIR / "support_bot.yaml").read_text())["eval"]["style"]]
    rows = [json.loads(line) for line in (DATA_DIR / "support_bot" / "conversations.jsonl").open(encoding="utf-8")]
    texts = [m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant"]
    assert style(*pairs(*(("", t) for t in texts)), SimpleNamespace(style=rules)).values["style"] == 1.0


PROMPT = '''def add(a, b):
    """Add two numbers.

    >>> add(2, 3)
    5
    >>> add("a", "b")
    'ab'
    """'''


@pytest.mark.parametrize(("answer", "parses", "passes", "error"), [
    ("```python\ndef add(a, b):\n    return a + b\n```", 1.0, 1.0, None),
    ("Here it is:\n```python\ndef add(a, b):\n    return a - b\n```\nDone.", 1.0, 0.0, None),
    ("def add(a, b) return a + b", 0.0, 0.0, "does not parse"),
    ("x = 1", 0.0, 0.0, "does not parse"),  # no function
    ("def add(a, b):\n    while True:\n        pass", 1.0, 0.0, "timed out"),
    ("import socket\nsocket.create_connection(('127.0.0.1', 9))\ndef add(a, b):\n    return a + b", 1.0, 0.0,
     "blocked in the code sandbox: socket"),
    ("import subprocess\nsubprocess.run(['true'])\ndef add(a, b):\n    return a + b", 1.0, 0.0,
     "blocked in the code sandbox: subprocess.Popen"),
])
def test_code_runs_the_prompts_doctests_in_a_sandbox(answer, parses, passes, error):
    samples, answers = pairs(("", answer), prompt=PROMPT)
    [row] = code(samples, answers, SimpleNamespace(code_timeout_s=3.0)).per_sample
    assert (row["code_parses"], row["code_passes"]) == (parses, passes)
    if error:
        assert error in row["code_error"], row
    else:
        assert "code_error" not in row, row


@pytest.mark.quick
def test_code_without_tests_counts_parsing_only():
    samples, answers = pairs(("", "def f():\n    return 1"), prompt="Write f.")
    scored = code(samples, answers, SETTINGS)
    assert scored.values == {"code_parses": 1.0, "code_passes": None}
    assert scored.details["samples_with_tests"] == 0


@pytest.mark.quick
def test_extract_code_takes_the_first_block_even_unclosed():
    assert extract_code("a\n```py\nx = 1\n```\n```\ny\n```") == "x = 1\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("def f(): pass") == "def f(): pass"


def test_perplexity_is_token_weighted_across_batches_and_ignores_padding(tiny_model):
    """Batches of 1, 2 and 3 rows of very different lengths give the same total; the total equals a plain
    per-row cross-entropy; the mean of batch means (the guide's weighting) would differ."""
    import torch

    from finetune.chat import TokenizedConversation

    model, tokenizer = tiny_model
    texts = ["short one", "a much longer row " * 12, "medium length text here", "x " * 30]
    rows = [TokenizedConversation(ids := tokenizer(t)["input_ids"], list(ids)) for t in texts]
    sums = []
    for r in rows:
        ids = torch.tensor([r.input_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        sums.append(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")))
    expected = (sum(sums), sum(len(r.input_ids) - 1 for r in rows))
    for batch_size in (1, 2, 3):
        total, count = nll(model, rows, max_len=512, batch_size=batch_size)
        assert count == expected[1]
        assert total == pytest.approx(expected[0], rel=1e-5)
    batch_means = [(sums[0] + sums[1]) / (len(rows[0].input_ids) + len(rows[1].input_ids) - 2),
                   (sums[2] + sums[3]) / (len(rows[2].input_ids) + len(rows[3].input_ids) - 2)]
    assert abs(sum(batch_means) / 2 - expected[0] / expected[1]) > 0.01


@pytest.mark.quick
def test_a_cpu_scores_long_rows_alone_and_short_ones_together_a_gpu_by_batch_size():
    """Shortest first, every row once; on a CPU a pass holds at most CPU_BATCH_TOKENS padded tokens (a longer row
    alone) — the support_bot test split's rows of 296–768 tokens go one by one — on a GPU batch_size rows."""
    lengths = [600, 40, 300, 50, 45, 900, 310]
    cpu = batches(lengths, 8, on_cpu=True)
    assert cpu == [[1, 4, 3], [2], [6], [0], [5]]
    assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= CPU_BATCH_TOKENS for b in cpu)
    assert batches(lengths, 3, on_cpu=False) == [[1, 4, 3], [2, 6, 0], [5]]
    assert batches(lengths, 2, on_cpu=True) == [[1, 4], [3], [2], [6], [0], [5]]


def test_perplexity_metrics_score_assistant_tokens_and_whole_conversations(tiny_model):
    model, tokenizer = tiny_model
    test = [Conversation([{"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer number {i} " * (i + 1)}], f"t:{i}")
            for i in range(3)]
    inputs = LikelihoodInputs([tokenize(tokenizer, c) for c in test], max_len=256, batch_size=2)
    assistant = METRICS["perplexity"].compute(model, tokenizer, inputs, SETTINGS)
    whole = METRICS["sequence_perplexity"].compute(model, tokenizer, inputs, SETTINGS)
    assert 0 < assistant.details["tokens"] < whole.details["tokens"]
    assert assistant.values["perplexity"] == pytest.approx(math.exp(assistant.details["loss"]))
    probe = METRICS["forgetting"].compute(model, tokenizer, inputs, SETTINGS)
    assert probe.details["rows"] == len(probe_texts()) == 20 and probe.values["forgetting"] > 1


@pytest.mark.quick
def test_the_forgetting_probe_ships_with_the_package():
    assert PROBE.is_file() and PROBE.parent.name == "probe"
    assert sum(any("\u3040" <= ch <= "\u30ff" for ch in t) for t in probe_texts()) == 4  # Japanese too

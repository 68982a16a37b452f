"""Signs of mode collapse in the training answers, as dataset-level statistics that warn: how many distinct
ways answers begin (first-words score), distinct word bigrams (distinct-2), how much answer lengths vary, and
answers written in another language than their question."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass

from finetune.data.canonical import Conversation, answers, questions
from finetune.data.checks import Check, CheckInput, Outcome
from finetune.fields import setting


@dataclass
class DiversitySettings:
    action: str = setting("warn", choices=("warn", "off"))
    min_first_words: float = setting(0.1, low=0.0, high=1.0)  # distinct answer openings / answers
    min_distinct_2: float = setting(0.1, low=0.0, high=1.0)  # distinct bigrams / bigrams
    min_length_spread: float = setting(0.1, low=0.0)  # coefficient of variation of answer lengths
    max_language_mismatch: float = setting(0.05, low=0.0, high=1.0)  # share of answers not in the question's


SCRIPTS = {  # the letters that tell a writing system apart; kana make a text Japanese however much kanji it has
    "ja": re.compile(r"[\u3040-\u30ff]"), "zh": re.compile(r"[\u4e00-\u9fff]"), "ko": re.compile(r"[\uac00-\ud7af]"),
    "ru": re.compile(r"[\u0400-\u04ff]"), "ar": re.compile(r"[\u0600-\u06ff]"), "en": re.compile(r"[A-Za-z]"),
}
SAMPLE = 20000  # rows the statistics are computed on: ratios, not counts, so a sample measures them


def script(text: str) -> str:
    """The dominant writing system of ``text``: ja (any kana), zh (Han without kana), ko, ru, ar, en (Latin),
    or none — enough to tell a Japanese answer to an English question."""
    head = text[:400]
    counts = {name: len(pattern.findall(head)) for name, pattern in SCRIPTS.items()}
    if counts["ja"]:
        return "ja"
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else "none"


def units(text: str) -> list[str]:
    """Words, or characters for Japanese and Chinese, which are written without spaces."""
    return [ch for ch in text if not ch.isspace()] if script(text) in ("ja", "zh") else text.split()


def stats(rows: list[Conversation]) -> dict[str, float | dict[str, int]]:
    """The figures, on an evenly spaced sample of at most ``SAMPLE`` rows."""
    rows = rows[::max(1, len(rows) // SAMPLE)][:SAMPLE]
    texts = [a for c in rows for a in answers(c) if a.strip()]
    if not texts:
        return {}
    openings = {" ".join(units(t)[:3]) for t in texts}
    bigrams = [tuple(u[i:i + 2]) for t in texts for u in [units(t)] for i in range(len(u) - 1)]
    lengths = [len(t) for t in texts]
    languages = Counter(script(t) for t in texts)
    pairs = [(script(" ".join(questions(c))), script(" ".join(answers(c)))) for c in rows if questions(c)]
    return {
        "sampled_rows": len(rows),
        "first_words": round(len(openings) / len(texts), 4),
        "distinct_2": round(len(set(bigrams)) / len(bigrams), 4) if bigrams else 1.0,
        "length_spread": round(statistics.pstdev(lengths) / statistics.fmean(lengths), 4),
        "language_mismatch": round(sum(q != a for q, a in pairs) / len(pairs), 4) if pairs else 0.0,
        "answer_languages": dict(languages.most_common()),
    }


def _find(data: CheckInput) -> Outcome:
    s, figures = data.settings, stats(data.rows)
    if not figures or len(data.rows) < 20:  # too few rows for these ratios to mean anything
        return Outcome(stats=figures)
    warnings = []
    if figures["first_words"] < s.min_first_words:
        warnings.append(f"answers begin in few distinct ways (first-words score {figures['first_words']} < "
                        f"{s.min_first_words}): a sign of templated or collapsed answers")
    if figures["distinct_2"] < s.min_distinct_2:
        warnings.append(f"little lexical variety (distinct-2 {figures['distinct_2']} < {s.min_distinct_2})")
    if figures["length_spread"] < s.min_length_spread:
        warnings.append(f"answers of nearly one length (spread {figures['length_spread']} < {s.min_length_spread})")
    if figures["language_mismatch"] > s.max_language_mismatch:
        warnings.append(f"{figures['language_mismatch']:.0%} of answers are in another language than their "
                        f"question (more than {s.max_language_mismatch:.0%})")
    return Outcome(stats=figures, warnings=warnings)


CHECK = Check("diversity", "dataset", "low diversity", DiversitySettings, _find)

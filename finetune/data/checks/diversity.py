"""Signs of mode collapse in the training answers, as dataset-level statistics that warn: how many distinct
ways answers begin (first-words score), distinct word bigrams (distinct-2), how much answer lengths vary, and
answers written in another language than their question."""

from __future__ import annotations

import statistics
import unicodedata
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


def script(text: str) -> str:
    """The dominant writing system of ``text``: ja (any kana), zh (Han without kana), ko, ru, ar, en (Latin),
    or other — enough to tell a Japanese answer to an English question."""
    counts: Counter[str] = Counter()
    for ch in text[:400]:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        if "HIRAGANA" in name or "KATAKANA" in name:
            counts["ja"] += 3  # a few kana make a text Japanese, however much kanji it has
        elif "CJK UNIFIED" in name:
            counts["zh"] += 1
        elif "HANGUL" in name:
            counts["ko"] += 1
        elif "CYRILLIC" in name:
            counts["ru"] += 1
        elif "ARABIC" in name:
            counts["ar"] += 1
        elif "LATIN" in name:
            counts["en"] += 1
        else:
            counts["other"] += 1
    if counts["ja"] and counts["zh"]:
        counts["ja"] += counts.pop("zh")
    return counts.most_common(1)[0][0] if counts else "none"


def units(text: str) -> list[str]:
    """Words, or characters for text written without spaces (Japanese, Chinese)."""
    words = text.split()
    return words if len(words) * 8 >= len(text) else [ch for ch in text if not ch.isspace()]


def stats(rows: list[Conversation]) -> dict[str, float | dict[str, int]]:
    texts = [a for c in rows for a in answers(c) if a.strip()]
    if not texts:
        return {}
    openings = {" ".join(units(t)[:3]) for t in texts}
    bigrams = [tuple(u[i:i + 2]) for t in texts for u in [units(t)] for i in range(len(u) - 1)]
    lengths = [len(t) for t in texts]
    languages = Counter(script(t) for t in texts)
    pairs = [(script(" ".join(questions(c))), script(" ".join(answers(c)))) for c in rows if questions(c)]
    return {
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

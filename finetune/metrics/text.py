"""Answer-vs-reference text metrics that work for Japanese and Chinese as well as English.

Texts are compared as *units*: every CJK character (kanji, kana, hangul) is one unit, every other run of
letters and digits one lower-cased word; punctuation and spaces are dropped. rouge_score's default tokenizer
keeps only ``[a-z0-9]``, so two different Japanese answers both become empty and score alike; a Japanese
morphological analyser (fugashi/MeCab, Sudachi) would need a dictionary package and still segment differently
across versions, while character units are what Japanese and Chinese ROUGE evaluations commonly use and need
nothing but the text. BLEU is computed on the same units (sacrebleu, ``tokenize="none"``); chrF works on
characters already.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from finetune.generate import Answer
from finetune.metrics import Metric, Sample, Scored

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\uac00-\ud7af"
_UNIT = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")
REPEAT_N = 4


def units(text: str) -> list[str]:
    return [u.lower() for u in _UNIT.findall(unicodedata.normalize("NFKC", text))]


class _UnitTokenizer:
    """rouge_score's tokenizer interface."""

    def tokenize(self, text: str) -> list[str]:
        return units(text)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def rouge(samples: Sequence[Sample], answers: Sequence[Answer], _settings: object) -> Scored:
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_UnitTokenizer())
    per = [{k: round(v.fmeasure, 4) for k, v in scorer.score(s.reference, a.text).items()}
           for s, a in zip(samples, answers, strict=True)]
    return Scored({k: _mean([p[k] for p in per]) for k in ("rouge1", "rouge2", "rougeL")}, per,
                  {"units": "CJK characters and lower-cased words", "score": "F1, mean over samples"})


def bleu(samples: Sequence[Sample], answers: Sequence[Answer], _settings: object) -> Scored:
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize="none", effective_order=True)
    joined = [" ".join(units(a.text)) for a in answers]
    refs = [" ".join(units(s.reference)) for s in samples]
    score = metric.corpus_score(joined, [refs])
    per = [{"bleu": round(metric.sentence_score(h, [r]).score, 2)} for h, r in zip(joined, refs, strict=True)]
    return Scored({"bleu": score.score}, per, {"signature": str(metric.get_signature()), "units": "as ROUGE"})


def chrf(samples: Sequence[Sample], answers: Sequence[Answer], _settings: object) -> Scored:
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    hyps, refs = [a.text for a in answers], [s.reference for s in samples]
    per = [{"chrf": round(metric.sentence_score(h, [r]).score, 2)} for h, r in zip(hyps, refs, strict=True)]
    return Scored({"chrf": metric.corpus_score(hyps, [refs]).score}, per, {"signature": str(metric.get_signature())})


def _normalized(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def exact_match(samples: Sequence[Sample], answers: Sequence[Answer], _settings: object) -> Scored:
    per = [{"exact_match": float(_normalized(s.reference) == _normalized(a.text))}
           for s, a in zip(samples, answers, strict=True)]
    return Scored({"exact_match": _mean([p["exact_match"] for p in per])}, per,
                  {"compared": "after Unicode NFKC and whitespace normalisation"})


# A number as answers write it: a sign, digits with optional thousands separators, a decimal part (after NFKC, so
# full-width digits count).
_NUMBER = re.compile(r"[-+−]?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (the final answer of a worked solution), or None."""
    found = _NUMBER.findall(unicodedata.normalize("NFKC", text))
    return float(found[-1].replace(",", "").replace("−", "-")) if found else None


def numeric_match(samples: Sequence[Sample], answers: Sequence[Answer], _settings: object) -> Scored:
    per = []
    for s, a in zip(samples, answers, strict=True):
        expected, given = last_number(s.reference), last_number(a.text)
        matched = None if expected is None else float(given is not None and math.isclose(given, expected,
                                                                                        rel_tol=1e-9))
        per.append({"numeric_match": matched})
    scored = [p["numeric_match"] for p in per if p["numeric_match"] is not None]
    return Scored({"numeric_match": _mean(scored)}, per,
                  {"compared": "the last number of the answer and of the reference (NFKC, thousands separators "
                               "dropped); references without a number are not scored", "scored": len(scored)})


def repeated_ngram_share(text: str, n: int = REPEAT_N) -> float:
    """The share of an answer's unit n-grams that repeat an earlier one: 0 for no repetition, near 1 for a
    loop."""
    u = units(text)
    grams = [tuple(u[i:i + n]) for i in range(len(u) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def repetition(_samples: Sequence[Sample], answers: Sequence[Answer], _settings: object) -> Scored:
    per = [{"repetition": round(repeated_ngram_share(a.text), 4)} for a in answers]
    return Scored({"repetition": _mean([p["repetition"] for p in per])}, per,
                  {"definition": f"share of repeated {REPEAT_N}-grams of units per answer, mean"})


def stopped(_samples: Sequence[Sample], answers: Sequence[Answer], _settings: object) -> Scored:
    per = [{"stopped": float(a.finish_reason == "stop")} for a in answers]
    return Scored({"stopped": _mean([p["stopped"] for p in per])}, per,
                  {"definition": "share of answers that ended with an end-of-turn token before max_new_tokens"})


def length(_samples: Sequence[Sample], answers: Sequence[Answer], settings: Any) -> Scored:
    """Tokens per answer; per answer also its brevity, 1 − tokens / eval.max_new_tokens (the ``brevity`` reward's
    value, against objective.max_completion_length in training)."""
    cap = settings.max_new_tokens
    per = [{"length": a.tokens, "brevity": round(1 - min(a.tokens, cap) / cap, 4)} for a in answers]
    return Scored({"length": _mean([p["length"] for p in per])}, per,
                  {"definition": "tokens per answer, mean; brevity = 1 − tokens / max_new_tokens"})


METRICS = (
    Metric("rouge", "answers", rouge, True, "ROUGE-1/2/L F1 on character/word units"),
    Metric("bleu", "answers", bleu, True, "corpus BLEU on the same units (sacrebleu)"),
    Metric("chrf", "answers", chrf, True, "corpus chrF (sacrebleu)"),
    Metric("exact_match", "answers", exact_match, True, "answer equals the reference after normalisation"),
    Metric("numeric_match", "answers", numeric_match, True, "the answer's last number equals the reference's"),
    Metric("repetition", "answers", repetition, False, "share of repeated 4-grams in an answer (loops)"),
    Metric("stopped", "answers", stopped, True, "share of answers that stopped on their own"),
    Metric("length", "answers", length, False, "tokens per answer"),
)

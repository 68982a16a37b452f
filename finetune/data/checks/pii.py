"""Personal data in training rows: e-mail addresses, phone numbers (Japanese formats and +81/international),
credit-card numbers (Luhn-valid), My Number (Japan's 12-digit individual number, check digit valid), US Social
Security numbers (AAA-GG-SSSS, in the ranges the SSA issues) and IPv4 addresses. ``redact`` replaces each with a
typed placeholder such as ``<EMAIL>``, so the model learns the shape of an answer without anyone's data."""

from __future__ import annotations

import re
from dataclasses import dataclass

from finetune.data.canonical import Conversation, rewrite_texts, written_texts
from finetune.data.checks import Check, CheckInput, Finding, Outcome
from finetune.fields import setting

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
NUMBER = re.compile(
    r"(?P<IP_ADDRESS>(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?!\.?\d))"
    r"|(?P<DIGITS>(?<![A-Za-z0-9+-])(?:\+\d{1,3}[ -]?)?\(?\d[\d ()-]{7,22}\d(?![A-Za-z0-9-]))"
)
DIGIT = re.compile(r"\d")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def my_number_valid(digits: str) -> bool:
    """The check digit of a 12-digit My Number (個人番号): weights 2–7, 2–6 from the right, mod 11."""
    if len(digits) != 12:
        return False
    body = [int(d) for d in reversed(digits[:11])]
    remainder = sum(p * (n + 1 if n <= 6 else n - 5) for n, p in enumerate(body, start=1)) % 11
    return int(digits[11]) == (0 if remainder <= 1 else 11 - remainder)


def ssn_valid(text: str) -> bool:
    """A US Social Security number as written (123-45-6789, or with spaces): an area the SSA issues (not 000, 666
    or 900–999), a group other than 00 and a serial other than 0000."""
    m = re.fullmatch(r"(\d{3})([ -])(\d{2})\2(\d{4})", text)
    return m is not None and m[1] not in ("000", "666") and m[1][0] != "9" and m[3] != "00" and m[4] != "0000"


JP_PHONE = re.compile(r"0\d{1,4}-\d{1,4}-\d{3,4}|0[5789]0\d{8}|0\d{9}|\(0\d{1,4}\)\d{1,4}-\d{4}")


def _digit_kind(text: str) -> str | None:
    """What a run of digits (with spaces, dashes, parentheses) is, if it is personal data."""
    digits = re.sub(r"\D", "", text)
    plain = re.fullmatch(r"[\d -]+", text) is not None
    if plain and 13 <= len(digits) <= 19 and luhn_valid(digits):
        return "CREDIT_CARD"
    if plain and len(digits) == 12 and re.fullmatch(r"\d{12}|\d{4}[ -]\d{4}[ -]\d{4}", text) and \
            my_number_valid(digits):
        return "MY_NUMBER"
    if ssn_valid(text):
        return "SSN"
    if text.startswith("+") and 8 <= len(digits) <= 15:
        return "PHONE"
    if JP_PHONE.fullmatch(text) or re.fullmatch(r"\d{3}-\d{3}-\d{4}|\(\d{3}\) ?\d{3}-\d{4}", text):
        return "PHONE"
    return None


def spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each piece of personal data in ``text``. The patterns run only on text that
    has an '@' or a digit: most rows have neither, and a regex scan is the slow part at a million rows."""
    found = []
    if "@" in text:
        found += [(m.start(), m.end(), "EMAIL") for m in EMAIL.finditer(text)]
    if DIGIT.search(text):
        for m in NUMBER.finditer(text):
            kind = m.lastgroup if m.lastgroup != "DIGITS" else _digit_kind(m.group().strip())
            if kind and not any(s <= m.start() < e for s, e, _ in found):
                found.append((m.start(), m.end(), kind))
    return sorted(found)


def redact_text(text: str) -> str:
    for start, end, kind in reversed(spans(text)):
        text = f"{text[:start]}<{kind}>{text[end:]}"
    return text


@dataclass
class PiiSettings:
    action: str = setting("warn", choices=("warn", "redact", "drop", "error", "off"))


def _find(data: CheckInput) -> Outcome:
    findings, kinds = [], {}
    for i, c in enumerate(data.rows):
        found = [kind for t in written_texts(c) for _, _, kind in spans(t)]
        for kind in found:
            kinds[kind] = kinds.get(kind, 0) + 1
        if found:
            findings.append(Finding(i, "personal data: " + ", ".join(sorted(set(found))).lower().replace("_", " ")))
    return Outcome(findings, {"by_kind": dict(sorted(kinds.items()))})


def _redact(c: Conversation, settings: PiiSettings) -> Conversation:
    return rewrite_texts(c, redact_text)


CHECK = Check("pii", "rows", "personal data", PiiSettings, _find, rewrites="redact", rewrite=_redact)

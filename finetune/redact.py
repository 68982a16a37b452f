"""Keep secrets out of what a run writes: saved configs, logs and manifests.

Two rules. Values of environment variables whose names look secret (``HF_TOKEN``, ``OPENAI_API_KEY``, any
``*_TOKEN`` / ``*_API_KEY`` / ``*_SECRET`` / ``*_PASSWORD``) are replaced wherever they appear. In saved
configs, the value of any key that looks secret (``hydra.job.env_set.WANDB_API_KEY=…``, ``api_key: …``) is
replaced too, whatever the value.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
# A name that holds a secret ends in TOKEN, API_KEY, ACCESS_KEY, SECRET(_KEY), PASSWORD, PASSWD or
# CREDENTIAL(S), as a whole word: not `max_new_tokens`, `tokenizer` or `pad_token_id`.
_SECRET_NAME = re.compile(
    r"(?i)(?:^|[._\-])(?:token|api_?key|access_?key|secret(?:_?key)?|password|passwd|credentials?)$"
)
# key=value (overrides, override_dirname) or key: value (YAML), where key is a dotted/underscored name.
_ASSIGNMENT = re.compile(r"(?P<key>[A-Za-z_][\w.\-]*)(?P<sep>=|:[ \t]+)(?P<value>['\"]?[^\s,'\"]+['\"]?)")
_MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would mask ordinary text


def looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def secret_values() -> list[str]:
    """The values of secret-looking environment variables, longest first (so overlaps mask fully)."""
    values = {v for k, v in os.environ.items() if looks_secret(k) and len(v) >= _MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


def redact_yaml(text: str) -> str:
    """A saved config: secret-looking keys lose their values, and secret environment values are masked."""
    def mask(m: re.Match[str]) -> str:
        return f"{m['key']}{m['sep']}{MASK}" if looks_secret(m["key"]) else m[0]

    return redact_text(_ASSIGNMENT.sub(mask, text))


class RedactingFilter(logging.Filter):
    """Masks secret environment values in a log record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True

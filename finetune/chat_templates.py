"""``model.chat_template``: the template training renders, when the model brings none (a base model) or another
one is wanted. A named template (``NAMED``) or a ``.jinja`` file; it replaces the tokenizer's own, so it is what
the merged model's tokenizer saves, what the GGUF carries and what the Modelfile is verified against."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.errors import UserError


class ChatTemplateSettingError(UserError, ValueError):
    """``model.chat_template`` names no template, or one the tokenizer cannot render."""


@dataclass(frozen=True)
class NamedTemplate:
    jinja: str
    tokens: tuple[str, ...]  # special tokens it writes, which must each be one token of the vocabulary


CHATML = NamedTemplate(
    jinja=("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
           "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
           "{% endif %}"),
    tokens=("<|im_start|>", "<|im_end|>"),
)
# Llama 3.1 / 3.3 Instruct's format without tools: a system block always (the knowledge and "today" dates, then the
# conversation's system message), each turn ended by <|eot_id|>. Contents are not trimmed as Meta's template trims
# them: Ollama's Go template cannot, and the Modelfile must render what training did.
LLAMA3 = NamedTemplate(
    jinja=("{{ bos_token }}{{ '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
           "Today Date: 26 Jul 2024\n\n' }}{% if messages and messages[0]['role'] == 'system' %}"
           "{{ messages[0]['content'] }}{% set messages = messages[1:] %}{% endif %}{{ '<|eot_id|>' }}"
           "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
           "message['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
)
NAMED = {"chatml": CHATML, "llama3": LLAMA3}


def template_text(value: str) -> str:
    """The Jinja source ``model.chat_template`` names."""
    if value in NAMED:
        return NAMED[value].jinja
    path = Path(value).expanduser()
    if path.suffix != ".jinja":
        raise ChatTemplateSettingError(f"model.chat_template={value!r}: expected a named template "
                                       f"({', '.join(NAMED)}) or a .jinja file")
    if not path.is_file():
        raise ChatTemplateSettingError(f"model.chat_template={value!r}: no such file")
    return path.read_text(encoding="utf-8")


# A template that writes today's date (Llama 3.2's "Today Date: …") renders another prompt every day: a rerun would
# train on other tokens, and no Modelfile could match it. Its clock is pinned to the date Meta's templates fall back
# to without a clock, so training, reruns, the GGUF and the Modelfile render one prompt.
PINNED_DATE = datetime.date(2024, 7, 26)
_STRFTIME_NOW = re.compile(r"""strftime_now\(\s*(['"])(.*?)\1\s*\)""")


def pin_clock(jinja: str) -> str:
    """``jinja`` with ``strftime_now`` answering ``PINNED_DATE`` in each format the template asks for: a macro
    that shadows the renderer's function (transformers' and llama.cpp's alike). Unchanged when it never asks or is
    pinned already (a merged model's tokenizer saves the pinned template)."""
    formats = sorted({m.group(2) for m in _STRFTIME_NOW.finditer(jinja)})
    if not formats:
        return jinja
    branches = "".join(f"{{%- {'if' if i == 0 else 'elif'} format == {fmt!r} -%}}{PINNED_DATE.strftime(fmt)}"
                       for i, fmt in enumerate(formats))
    macro = f"{{%- macro strftime_now(format) -%}}{branches}{{%- endif -%}}{{%- endmacro -%}}\n"
    return jinja if jinja.startswith(macro) else macro + jinja


def apply(tokenizer: Any, value: str) -> None:
    """Give ``tokenizer`` the template ``value`` names; a named template's special tokens must be tokens of it
    (a template whose end-of-turn splits into pieces could not be trained to stop)."""
    if value in NAMED:
        vocab = tokenizer.get_vocab()
        missing = [t for t in NAMED[value].tokens if t not in vocab]
        if missing:
            raise ChatTemplateSettingError(
                f"model.chat_template={value}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                f"a token of this model's vocabulary; choose another template ({', '.join(NAMED)}) or a .jinja "
                "file written in tokens the model has")
    tokenizer.chat_template = template_text(value)

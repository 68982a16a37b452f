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
    ends_with_eos: bool = False  # each answer ends in the model's own EOS token (its end of turn)


@dataclass(frozen=True)
class InstructionPrompt:
    """An Alpaca-style prompt in plain text: a preamble (the conversation's system message replaces it), then
    each instruction and response under its heading. No special token but the model's EOS after each response:
    a base model learns to stop where the template says the answer ends."""

    preamble: str
    instruction: str
    response: str

    def jinja(self) -> str:
        return (
            "{%- if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
            "{%- set messages = messages[1:] %}{%- else %}{{ " + repr(self.preamble) + " }}{%- endif %}"
            "{{ '\\n\\n' }}{%- for message in messages %}{%- if message['role'] == 'user' %}"
            "{{ " + repr(self.instruction + "\n") + " + message['content'] + '\\n\\n' }}"
            "{%- elif message['role'] == 'assistant' %}"
            "{{ " + repr(self.response + "\n") + " + message['content'] + eos_token + '\\n\\n' }}"
            "{%- else %}{{ raise_exception('this template takes system, user and assistant messages') }}"
            "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{ " + repr(self.response + "\n") + " }}"
            "{%- endif %}"
        )


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
# Gemma's turns, the conversation's system message written at the start of the first user turn as Gemma 3's template
# writes it: for Gemma 2, whose own template refuses a system message. Contents not trimmed, as above.
GEMMA = NamedTemplate(
    jinja=("{{ bos_token }}{% set prefix = '' %}{% if messages and messages[0]['role'] == 'system' %}"
           "{% set prefix = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}{% endif %}"
           "{% for message in messages %}"
           "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
           "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] + "
           "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"),
    tokens=("<start_of_turn>", "<end_of_turn>"),
)


def _mistral_jinja(separator: str) -> str:
    """Mistral's [INST] turns, each answer ended by the model's EOS, the conversation's system message written at the
    start of the first user turn; ``separator`` after ``[INST]`` and before each answer (v0.3's space, none in
    Nemo's). Mistral's own templates write it only into the last user turn, so the answers before it (or, Nemo's, all
    of them) would be trained without it: here every turn after the first sees it."""
    return ("{% set prefix = '' %}{% if messages and messages[0]['role'] == 'system' %}"
            "{% set prefix = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}{% endif %}"
            "{% for message in messages %}{% if message['role'] == 'user' %}"
            f"{{{{ '[INST]{separator}' + (prefix if loop.first else '') + message['content'] + '[/INST]' }}}}"
            f"{{% elif message['role'] == 'assistant' %}}{separator}{{{{ message['content'] + eos_token }}}}"
            "{% else %}{{ raise_exception('this template takes system, user and assistant messages') }}{% endif %}"
            "{% endfor %}")


# Mistral-Nemo's spacing (``[INST]question[/INST]answer</s>``) and Mistral v0.3's (``[INST] question[/INST]
# answer</s>``; answers not trimmed as v0.3's template trims them: Ollama's Go template cannot).
MISTRAL = NamedTemplate(jinja=_mistral_jinja(""), tokens=("[INST]", "[/INST]"), ends_with_eos=True)
MISTRAL_V3 = NamedTemplate(jinja=_mistral_jinja(" "), tokens=("[INST]", "[/INST]"), ends_with_eos=True)
# The guide's §5 instruction prompt (Japanese Alpaca), and Stanford Alpaca's own.
ALPACA_PROMPTS = {
    "alpaca": InstructionPrompt(preamble="以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。",
                                instruction="### 指示:", response="### 応答:"),
    "alpaca_en": InstructionPrompt(preamble="Below is an instruction that describes a task. Write a response that "
                                            "appropriately completes the request.",
                                   instruction="### Instruction:", response="### Response:"),
}
NAMED = {"chatml": CHATML, "llama3": LLAMA3, "gemma": GEMMA, "mistral": MISTRAL, "mistral_v3": MISTRAL_V3,
         **{name: NamedTemplate(jinja=prompt.jinja(), tokens=(), ends_with_eos=True)
            for name, prompt in ALPACA_PROMPTS.items()}}


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


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its BOS token before any text by itself (Llama's do): llama.cpp and Ollama then
    add it to every prompt, so a template meant for any model writes it first for training to see it too."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def apply(tokenizer: Any, value: str) -> None:
    """Give ``tokenizer`` the template ``value`` names; a named template's special tokens must be tokens of it
    (a template whose end-of-turn splits into pieces could not be trained to stop)."""
    named = NAMED.get(value)
    if named is not None:
        if named.ends_with_eos and not tokenizer.eos_token:
            raise ChatTemplateSettingError(f"model.chat_template={value}: ends each answer with the model's EOS "
                                           "token, and this tokenizer has none; choose a .jinja file")
        vocab = tokenizer.get_vocab()
        missing = [t for t in named.tokens if t not in vocab]
        if missing:
            raise ChatTemplateSettingError(
                f"model.chat_template={value}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                f"a token of this model's vocabulary; choose another template ({', '.join(NAMED)}) or a .jinja "
                "file written in tokens the model has")
    tokenizer.chat_template = _text_for(tokenizer, value)


def _text_for(tokenizer: Any, value: str) -> str:
    """The Jinja source ``value`` names, for ``tokenizer``: a named template that ends answers with EOS starts with
    the BOS token where the tokenizer adds one (``adds_bos``)."""
    named = NAMED.get(value)
    text = template_text(value)
    return "{{ bos_token }}" + text if named is not None and named.ends_with_eos and adds_bos(tokenizer) else text


def same_format(tokenizer: Any) -> str | None:
    """The named template that renders a conversation without a system message as the tokenizer's own template
    does (``mistral`` for Mistral-Nemo's, ``mistral_v3`` for Mistral v0.3's), or None: the way out that keeps the
    model's format when its template keeps the system message from the answers (``chat.drops_the_system_message``)."""
    probe = [{"role": role, "content": f"{role} {n}"} for n in (1, 2) for role in ("user", "assistant")]
    own = tokenizer.apply_chat_template(probe, tokenize=False)
    return next((name for name in NAMED if own == tokenizer.apply_chat_template(
        probe, chat_template=_text_for(tokenizer, name), tokenize=False)), None)

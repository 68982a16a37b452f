"""Ollama Modelfile for an exported GGUF, with a TEMPLATE that renders prompts exactly as training did.

Ollama's TEMPLATE is a Go template, not the model's Jinja chat template, so a family is supported only when we
hold both its Go template and a Python rendering of that Go template, and the Python rendering reproduces the
model's own Jinja template on probe conversations. A mismatch is an error, never a silently different prompt
format (the cause of "fine in transformers, gibberish in Ollama").
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune.chat import has_chat_template
from finetune.chat_templates import ALPACA_PROMPTS, PINNED_DATE, InstructionPrompt, adds_bos
from finetune.errors import UserError
from finetune.generate import Decoding

Message = dict[str, str]


class TemplateError(UserError, ValueError):
    """The model's chat template matches no Ollama TEMPLATE we can vouch for."""


@dataclass(frozen=True)
class TemplateFamily:
    name: str
    go_template: str
    render: Callable[[list[Message]], str]  # what go_template renders for these messages, prompting a reply
    stop: tuple[str, ...]
    system_block: str  # a regex matching the system message's block at the start of a rendering, content in group 1
    bos: bool = False  # the chat template writes the BOS token first; under Ollama the tokenizer adds it instead
    # why the Go template would render a conversation with this system message otherwise than the chat template
    # does, or None where it renders it alike
    system_refused: Callable[[str], str | None] = lambda system: None


def _render_chatml(messages: list[Message]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + (
        "<|im_start|>assistant\n"
    )


CHATML = TemplateFamily(
    name="chatml",
    go_template=(
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
        "{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    ),
    render=_render_chatml,
    stop=("<|im_end|>", "<|im_start|>"),
    system_block=r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n",
)


def _render_gemma(messages: list[Message]) -> str:
    prefix, out = "", []
    for m in messages:
        if m["role"] == "system":
            prefix = f"{m['content']}\n\n"
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        out.append(f"<start_of_turn>{role}\n{prefix}{m['content']}<end_of_turn>\n")
        prefix = ""
    return "".join(out) + "<start_of_turn>model\n"


# Gemma 3: no system role; a system message is written at the start of the first user turn.
GEMMA = TemplateFamily(
    name="gemma",
    go_template=(
        '{{- $prefix := "" }}{{- range .Messages }}'
        '{{- if eq .Role "system" }}{{ $prefix = printf "%s\\n\\n" .Content }}'
        '{{- else }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
        '{{ $prefix }}{{ .Content }}<end_of_turn>\n'
        '{{ $prefix = "" }}{{- end }}{{- end }}<start_of_turn>model\n'
    ),
    render=_render_gemma,
    stop=("<end_of_turn>",),
    system_block=r"^(?!)",  # Gemma's template writes no default system prompt
    bos=True,
)

# Llama 3.1 / 3.3 Instruct: a system block always, holding the template's knowledge and "today" dates and then
# the conversation's first message when it is a system message; every turn ends in <|eot_id|>.
_LLAMA3_SYSTEM_HEADER = ("<|start_header_id|>system<|end_header_id|>\n\n"
                         "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")


def _render_llama3(messages: list[Message]) -> str:
    system, rest = (messages[0]["content"], messages[1:]) if messages[0]["role"] == "system" else ("", messages)
    turns = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in rest)
    return f"{_LLAMA3_SYSTEM_HEADER}{system}<|eot_id|>{turns}<|start_header_id|>assistant<|end_header_id|>\n\n"


LLAMA3 = TemplateFamily(
    name="llama3",
    go_template=(
        '{{- $first := index .Messages 0 }}' + _LLAMA3_SYSTEM_HEADER +
        '{{ if eq $first.Role "system" }}{{ $first.Content }}{{ end }}<|eot_id|>'
        '{{- range $i, $m := .Messages }}{{- if or $i (ne $m.Role "system") }}'
        '<|start_header_id|>{{ $m.Role }}<|end_header_id|>\n\n{{ $m.Content }}<|eot_id|>'
        '{{- end }}{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n'
    ),
    render=_render_llama3,
    stop=("<|eot_id|>", "<|start_header_id|>"),
    system_block=r"^(?!)",  # an empty system message is the template's default: nothing for SYSTEM to say
    bos=True,
)


def _render_phi3(messages: list[Message]) -> str:
    kept = [m for m in messages if m["role"] in ("user", "assistant") or (m["role"] == "system" and m["content"])]
    return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in kept) + "<|assistant|>\n"


# Phi-3 / 3.5: a block per turn, an empty system message left out, each turn ended by <|end|>; no default system.
PHI3 = TemplateFamily(
    name="phi3",
    go_template=(
        '{{- range .Messages }}{{- if and (eq .Role "system") .Content }}<|system|>\n{{ .Content }}<|end|>\n'
        '{{ else if eq .Role "user" }}<|user|>\n{{ .Content }}<|end|>\n'
        '{{ else if eq .Role "assistant" }}<|assistant|>\n{{ .Content }}<|end|>\n'
        '{{ end }}{{- end }}<|assistant|>\n'
    ),
    render=_render_phi3,
    stop=("<|end|>", "<|user|>", "<|assistant|>"),
    system_block=r"^(?!)",  # Phi-3's template writes no default system prompt
)


def _render_phi4_mini(messages: list[Message]) -> str:
    return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"


# Phi-4-mini: Phi-3's tokens without its newlines, every message written (an empty system message too).
PHI4_MINI = TemplateFamily(
    name="phi4-mini",
    go_template="{{- range .Messages }}<|{{ .Role }}|>{{ .Content }}<|end|>{{ end }}<|assistant|>",
    render=_render_phi4_mini,
    stop=("<|end|>", "<|user|>", "<|assistant|>"),
    system_block=r"^(?!)",  # Phi-4-mini's template writes no default system prompt
)
# SmolLM3: ChatML turns under a system block that always holds the template's metadata, then the conversation's
# system message, else a default naming SmolLM. The template reads flags ("/think", "/no_think"; Hugging Face's
# revision also "/system_override") out of the system message and strips its trailing whitespace, which Go's template
# language cannot: the Go template renders the template's default, thinking mode, and a system message it would
# render otherwise is refused (``system_refused``). Two revisions: llama.cpp's copy (Unsloth's edit for inference
# engines) closes the system block; Hugging Face's own writes today's date (pinned: ``chat_templates.pin_clock``)
# and closes the block only in its tools section, so a conversation without tools leaves it open.
_SMOLLM3_DEFAULT_SYSTEM = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an assistant involves "
    "thoroughly exploring questions through a systematic thinking process before providing the final precise and "
    "accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, exploration, "
    "reassessment, reflection, backtracking, and iteration to develop well-considered thinking process. Please "
    "structure your response into two main sections: Thought and Solution using the specified format: <think> "
    "Thought section </think> Solution section. In the Thought section, detail your reasoning process in steps. Each "
    "step should include detailed considerations such as analysing questions, summarizing relevant findings, "
    "brainstorming new ideas, verifying the accuracy of the current steps, refining any errors, and revisiting "
    "previous steps. In the Solution section, based on various attempts, explorations, and reflections from the "
    "Thought section, systematically present the final solution that you deem correct. The Solution section should be "
    "logical, accurate, and concise and detail necessary steps needed to reach the conclusion.")


def smollm3_family(name: str, dated: bool, closes_system: bool, flags: tuple[str, ...]) -> TemplateFamily:
    """A revision of SmolLM3's template: ``dated``, its metadata has today's date (pinned); ``closes_system``, the
    system block ends in <|im_end|>; ``flags``, what it reads out of a system message."""
    today = f"Today Date: {PINNED_DATE.strftime('%d %B %Y')}\n" if dated else ""
    header = ("<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\n" + today +
              "Reasoning Mode: /think\n\n## Custom Instructions\n\n")
    end_of_system = "\n\n<|im_end|>\n" if closes_system else "\n\n"

    def render(messages: list[Message]) -> str:
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        turns = "".join(f"<|im_start|>{'assistant' if m['role'] == 'assistant' else 'user'}\n{m['content']}"
                        "<|im_end|>\n" for m in messages if m["role"] in ("user", "assistant", "tool"))
        return f"{header}{system or _SMOLLM3_DEFAULT_SYSTEM}{end_of_system}{turns}<|im_start|>assistant\n"

    def system_refused(system: str) -> str | None:
        if found := [flag for flag in flags if flag in system]:
            return f"SmolLM3's template reads the flag {found[0]} out of it, which a Go template cannot"
        if system != system.rstrip():
            return "SmolLM3's template strips its trailing whitespace, which a Go template cannot"
        return None

    return TemplateFamily(
        name=name,
        go_template=(
            '{{- $system := "" }}{{- with .Messages }}{{- $first := index . 0 }}'
            '{{- if eq $first.Role "system" }}{{ $system = $first.Content }}{{ end }}{{- end }}' + header +
            '{{ if $system }}{{ $system }}{{ else }}' + _SMOLLM3_DEFAULT_SYSTEM + '{{ end }}' + end_of_system +
            '{{ range .Messages }}{{ if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
            '{{ else if or (eq .Role "user") (eq .Role "tool") }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
            '{{ end }}{{ end }}<|im_start|>assistant\n'
        ),
        render=render,
        stop=("<|im_end|>", "<|im_start|>"),
        system_block=r"^(?!)",  # the default system text is the Go template's own
        system_refused=system_refused,
    )


SMOLLM3 = smollm3_family("smollm3", dated=False, closes_system=True, flags=("/no_think", "/think"))
SMOLLM3_HUB = smollm3_family("smollm3-hub", dated=True, closes_system=False,
                             flags=("/no_think", "/think", "/system_override"))
FAMILIES = (CHATML, GEMMA, LLAMA3, PHI3, PHI4_MINI, SMOLLM3, SMOLLM3_HUB)


def _render_instruction(prompt: InstructionPrompt, eos: str, messages: list[Message]) -> str:
    system, rest = (messages[0]["content"], messages[1:]) if messages[0]["role"] == "system" else (
        prompt.preamble, messages)
    turns = "".join(f"{prompt.instruction}\n{m['content']}\n\n" if m["role"] == "user" else
                    f"{prompt.response}\n{m['content']}{eos}\n\n" for m in rest)
    return f"{system}\n\n{turns}{prompt.response}\n"


def instruction_family(name: str, prompt: InstructionPrompt, eos: str, bos: bool) -> TemplateFamily:
    """An Alpaca-style prompt (``chat_templates.ALPACA_PROMPTS``) for a model whose EOS is ``eos``: the EOS ends
    each past answer in the history, as training wrote it, so the Go template holds the model's own. ``bos``: the
    tokenizer adds BOS, so the template writes it (and Ollama's tokenizer adds it)."""
    return TemplateFamily(
        name=name,
        go_template=(
            '{{- $first := index .Messages 0 }}{{ if eq $first.Role "system" }}{{ $first.Content }}{{ else }}'
            f'{prompt.preamble}{{{{ end }}}}\n\n'
            f'{{{{ range .Messages }}}}{{{{ if eq .Role "user" }}}}{prompt.instruction}\n{{{{ .Content }}}}\n\n'
            f'{{{{ else if eq .Role "assistant" }}}}{prompt.response}\n{{{{ .Content }}}}{eos}\n\n'
            f'{{{{ end }}}}{{{{ end }}}}{prompt.response}\n'
        ),
        render=lambda messages: _render_instruction(prompt, eos, messages),
        stop=(eos, prompt.instruction),
        system_block=r"^(?!)",  # without a system message the template writes its preamble, as the Go one does
        bos=bos,
    )


def _render_mistral(eos: str, system_in_last_turn: bool, separator: str, messages: list[Message]) -> str:
    system, rest = (messages[0]["content"], messages[1:]) if messages[0]["role"] == "system" else (None, messages)
    out = []
    for i, m in enumerate(rest):
        if m["role"] == "user":
            here = i == len(rest) - 1 if system_in_last_turn else i == 0
            out.append(f"[INST]{separator}{system}\n\n{m['content']}[/INST]" if system is not None and here else
                       f"[INST]{separator}{m['content']}[/INST]")
        elif m["role"] == "assistant":
            out.append(f"{separator}{m['content']}{eos}")
    return "".join(out)


# Mistral's families by where the system message goes (the final user turn: the models' own templates, as Ollama's
# templates for them; the first: model.chat_template=mistral / mistral_v3) and the separator after [INST] and before
# each answer (none in Mistral-Nemo's, a space in Mistral v0.3's).
MISTRAL_FAMILIES = {(True, ""): "mistral-nemo", (False, ""): "mistral", (True, " "): "mistral-v0.3",
                    (False, " "): "mistral_v3"}


def mistral_family(eos: str, bos: bool, *, system_in_last_turn: bool, separator: str) -> TemplateFamily:
    """Mistral's ``[INST] … [/INST]`` turns, each answer ended by the model's EOS, no generation prompt after the
    last question. The models' own templates write the system message into the final user turn only, when it ends
    the conversation (as Ollama's templates for them do); ``model.chat_template=mistral`` / ``mistral_v3`` into the
    first, where every later turn sees it as training did (``MISTRAL_FAMILIES``). Mistral v0.3's template trims each
    answer, which a Go template cannot (Ollama gives it no such function): the answer is written as given, as in
    Ollama's template for v0.3, which is what v0.3's renders of an answer without whitespace around it."""
    if system_in_last_turn:
        go_template = (
            '{{- $system := "" }}{{- $has := false }}{{- $first := index .Messages 0 }}'
            '{{- if eq $first.Role "system" }}{{ $system = $first.Content }}{{ $has = true }}{{ end }}'
            '{{- range $i, $m := .Messages }}{{- if eq $m.Role "user" }}'
            f'[INST]{separator}{{{{ if and $has (eq (len (slice $.Messages $i)) 1) }}}}'
            '{{ $system }}\n\n{{ end }}{{ $m.Content }}[/INST]'
            f'{{{{- else if eq $m.Role "assistant" }}}}{separator}{{{{ $m.Content }}}}{eos}{{{{- end }}}}{{{{- end }}}}'
        )
    else:
        go_template = (
            '{{- $prefix := "" }}{{- $first := index .Messages 0 }}'
            '{{- if eq $first.Role "system" }}{{ $prefix = printf "%s\\n\\n" $first.Content }}{{ end }}'
            f'{{{{- range .Messages }}}}{{{{- if eq .Role "user" }}}}[INST]{separator}{{{{ $prefix }}}}'
            '{{ .Content }}[/INST]'
            f'{{{{- else if eq .Role "assistant" }}}}{separator}{{{{ .Content }}}}{eos}{{{{- end }}}}'
            '{{- if ne .Role "system" }}{{ $prefix = "" }}{{- end }}{{- end }}'
        )
    return TemplateFamily(
        name=MISTRAL_FAMILIES[system_in_last_turn, separator],
        go_template=go_template,
        render=lambda messages: _render_mistral(eos, system_in_last_turn, separator, messages),
        stop=(eos, "[INST]"),
        system_block=r"^(?!)",  # Mistral's templates write no default system prompt
        bos=bos,
    )


def _render_completion(messages: list[Message]) -> str:
    # Ollama's path for a TEMPLATE without .Messages fills .Prompt with each user message in turn: a completion
    # request is one, the text as given
    return "".join(m["content"] for m in messages if m["role"] == "user")


def completion_family(eos: str) -> TemplateFamily:
    """A model without a chat template (a base model trained on plain text): Ollama's raw TEMPLATE, the text passed
    through as it was trained (BOS the tokenizer's to add, as in training), continued until EOS."""
    return TemplateFamily(
        name="completion",
        go_template="{{ .Prompt }}",
        render=_render_completion,
        stop=(eos,) if eos else (),
        system_block=r"^(?!)",
        system_refused=lambda system: "the model has no chat template, so nothing would write a system prompt",
    )


def families(tokenizer: Any) -> tuple[TemplateFamily, ...]:
    """Every family a tokenizer's template may be: the fixed ones, and those written with its EOS (the
    instruction prompts, Mistral's)."""
    eos, bos = tokenizer.eos_token or "", adds_bos(tokenizer)
    return (*FAMILIES, *(instruction_family(name, prompt, eos, bos) for name, prompt in ALPACA_PROMPTS.items()),
            *(mistral_family(eos, bos, system_in_last_turn=last, separator=separator)
              for last, separator in MISTRAL_FAMILIES))


PROBES: tuple[list[Message], ...] = (
    [{"role": "system", "content": "S1"}, {"role": "user", "content": "U1"}],
    [
        {"role": "system", "content": "S1"}, {"role": "user", "content": "U1 line\nnext"},
        {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
    ],
)


def rendered(tokenizer: Any, messages: list[Message]) -> str | None:
    """The chat template's prompt for ``messages``, or None where the template refuses them."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template's raise_exception (e.g. a role it does not take)
        return None


@functools.lru_cache(maxsize=8)
def takes_system(tokenizer: Any) -> bool:
    """Whether the chat template renders a system message: Gemma 2's raises on one. Training refuses data with one
    before it starts (``chat.render``), so no prompt of such a run has one."""
    return rendered(tokenizer, PROBES[0]) is not None or rendered(tokenizer, PROBES[0][1:]) is None


def as_taken(tokenizer: Any, messages: list[Message]) -> list[Message]:
    """``messages`` as a run can send them: without their system message where the template takes none
    (``takes_system``), which is how such a template is held to a Modelfile family and to llama.cpp."""
    if messages and messages[0]["role"] == "system" and not takes_system(tokenizer):
        return messages[1:]
    return messages


def _renders_like(tokenizer: Any, family: TemplateFamily, probe: list[Message]) -> bool:
    """Whether the family's Go template renders ``probe`` (``as_taken``) as the chat template does."""
    probe = as_taken(tokenizer, probe)
    return rendered(tokenizer, probe) == (tokenizer.bos_token if family.bos else "") + family.render(probe)


def template_family(tokenizer: Any) -> TemplateFamily:
    """The family whose Go template renders every probe exactly like the tokenizer's chat template; for a tokenizer
    without one (plain-text training), text completion."""
    if not has_chat_template(tokenizer):
        return completion_family(tokenizer.eos_token or "")
    candidates = families(tokenizer)
    for family in candidates:
        if all(_renders_like(tokenizer, family, p) for p in PROBES):
            return family
    raise TemplateError(
        "the model's chat template matches none of the Ollama templates we verify "
        f"({', '.join(f.name for f in candidates)}); set export.ollama=false to export the GGUF alone"
    )


def tools_left_out(train_rows_with_tools: int, takes_tools: bool) -> str | None:
    """What the Modelfile cannot carry of training data that defines tools, and the way that can; None when no
    training conversation defines any (validate's report counts them). Ollama renders TEMPLATE with Go's
    text/template, whose only JSON is its ``json`` function (Go's compact encoding): it cannot write tool definitions
    and calls as a chat template's ``tojson`` does (``", "`` and ``": "``), so these Go templates write none."""
    if not train_rows_with_tools:
        return None
    way = ("ask with tools through `python -m finetune serve RUN_DIR` (OpenAI's tools parameter): llama.cpp's chat "
           "path renders the GGUF's own template, tools included, as the parity gate checks" if takes_tools else
           "the model's template renders no tools, so they were trained as text in the system message "
           "(finetune.chat.TOOLS_PREAMBLE and a <tools> list): give them the same way")
    return ("the training data defines tools, which the Modelfile's TEMPLATE does not write (Ollama's template "
            f"language writes JSON without the spaces of the chat template's tojson): {way}")


def stop_strings(tokenizer: Any) -> tuple[str, ...]:
    """Where an answer ends: the stop strings of the tokenizer's template family, or none for a template without
    an Ollama family (the tokenizer's end-of-sequence token alone)."""
    try:
        return template_family(tokenizer).stop
    except TemplateError:
        return ()


def template_default_system(tokenizer: Any, family: TemplateFamily) -> str | None:
    """The system prompt the chat template writes into a conversation that has none (SmolLM2's names itself),
    or None. Ollama renders no system block without a SYSTEM, so the Modelfile must state it to match."""
    if not has_chat_template(tokenizer):
        return None
    probe = [{"role": "user", "content": "U1"}]
    text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    if family.bos:
        text = text.removeprefix(tokenizer.bos_token)
    if text == family.render(probe):
        return None
    found = re.match(family.system_block, text, re.DOTALL)
    if found and family.render([{"role": "system", "content": found.group(1)}, *probe]) == text:
        return found.group(1)
    raise TemplateError("the chat template adds text to a conversation without a system message that the Modelfile "
                        "cannot reproduce; set export.system_prompt")


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def serving_parameters(export: Any) -> dict[str, Any]:
    """The Modelfile's PARAMETERs besides its stops: how Ollama samples, and so how ``evaluate`` answers by
    default (``eval.decoding=modelfile``)."""
    return {"temperature": export.temperature, "top_p": export.top_p, "top_k": export.top_k,
            "repeat_penalty": export.repeat_penalty, "repeat_last_n": export.repeat_last_n,
            "num_ctx": export.num_ctx}


def serving_decoding(export: Any, max_new_tokens: int, seed: int, stop: tuple[str, ...], greedy: bool = False
                     ) -> Decoding:
    """The Modelfile's sampling (``serving_parameters``) as a ``Decoding`` — how ``evaluate`` answers by default,
    and ``chat``; ``greedy``: argmax, no repeat penalty."""
    if greedy:
        return Decoding(max_new_tokens=max_new_tokens, seed=seed, stop=stop)
    p = serving_parameters(export)
    return Decoding(max_new_tokens=max_new_tokens, temperature=p["temperature"], top_p=p["top_p"], top_k=p["top_k"],
                    repeat_penalty=p["repeat_penalty"], repeat_last_n=p["repeat_last_n"], seed=seed, stop=stop)


def modelfile(gguf_name: str, family: TemplateFamily, system: str | None, parameters: dict[str, Any],
              adapter: str | None = None) -> str:
    """The Modelfile text; ``adapter``, a GGUF LoRA adapter beside the Modelfile, is applied to the FROM model."""
    lines = [f"FROM ./{gguf_name}"]
    if adapter:
        lines.append(f"ADAPTER ./{adapter}")
    lines += ["", f'TEMPLATE """{family.go_template}"""', ""]
    if system and '"""' in system:
        raise TemplateError('the system prompt contains """, which cannot be written in a Modelfile SYSTEM')
    if system and (why := family.system_refused(system)):
        raise TemplateError(f"the system prompt cannot be written for Ollama: {why}; change it, or set "
                            "export.ollama=false to export the GGUF alone")
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f"PARAMETER {key} {value}" for key, value in parameters.items()]
    lines += [f"PARAMETER stop {_quote(s)}" for s in family.stop]
    return "\n".join(lines) + "\n"

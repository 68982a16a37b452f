"""LLM-as-a-judge (guide §10) through any OpenAI-compatible endpoint.

Single-answer grading: every model's answer gets a score from 1 to ``scale`` on each criterion (by default the
guide's 正確性 / 完全性 / 明確さ / 有用性), with the question and the reference answer in view. Pairwise: the base
and the tuned answer side by side, in an order drawn per sample from the run's seed (half the time the tuned
answer comes first), so the judge's preference for a position cancels out; how often the first position won is
reported as well.

Answers are parsed robustly (the first JSON object anywhere in the reply, code fences and prose around it
allowed, numbers as strings); an unparseable reply is asked again up to ``retries`` times with the reason, and
if it stays unparseable it is *unscored*: counted and reported, never scored as 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.fields import setting
from finetune.generate import Answer, json_objects
from finetune.metrics import Sample

log = logging.getLogger(__name__)

GUIDE_CRITERIA = ["正確性", "完全性", "明確さ", "有用性"]
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
JUDGE_SERVE_TYPES = ("f16", "f32")
SYSTEM = "You are a strict, impartial evaluator of answers written by AI assistants."


@dataclass
class JudgeConfig:
    base_url: str | None = None  # an OpenAI-compatible endpoint; None (and no gguf): no judge
    gguf: str | None = None  # or: serve this GGUF with llama-cpp-python's server for the run (a .gguf or package:)
    # gguf's weights served as they are (null) or written again as f16 / f32 (once, kept in the cache): a CPU
    # evaluates the judge's long prompts from f16 ~1.7x faster than from Q4_1 (whose kernels also round activations
    # to 8 bits); nothing to a judge at base_url, which its provider serves
    serve_as: str | None = setting(None, choices=JUDGE_SERVE_TYPES)
    model: str = "judge"
    api_key_env: str = "JUDGE_API_KEY"  # the key's environment variable; the key itself is never in config
    criteria: list[str] = setting(list(GUIDE_CRITERIA))
    scale: int = setting(10, low=2, high=100)
    pairwise: bool = True
    retries: int = setting(2, low=0, high=10)  # asks again after an unparseable reply
    max_samples: int | None = setting(None, low=1)
    # text: ask for JSON in words; json_object: the server's JSON mode; json_schema: JSON mode with our schema
    # (llama.cpp's server and others take {"type": "json_object", "schema": …})
    response_format: str = setting("text", choices=RESPONSE_FORMATS)
    max_tokens: int = setting(256, low=16)
    timeout_s: float = setting(120.0, low=1.0)


@contextlib.contextmanager
def endpoint(cfg: JudgeConfig, what: str = "judge") -> Iterator[str]:
    """The judge's base URL while the block runs: ``cfg.base_url``, or llama.cpp's server on ``cfg.gguf`` (logged as
    ``what``)."""
    if cfg.base_url:
        yield cfg.base_url
        return
    from finetune.generate.local_server import serve_gguf
    from finetune.models import package_file

    spec = cfg.gguf or ""
    gguf = package_file(spec, "eval.judge.gguf") if spec.startswith("package:") else Path(spec)
    with serve_gguf(written_as(gguf, cfg.serve_as) if cfg.serve_as else gguf, cfg.model) as url:
        log.info("%s: %s%s served by llama.cpp at %s", what, gguf.name, f" as {cfg.serve_as}" if cfg.serve_as else "",
                 url)
        yield url


def written_as(gguf: Path, out_type: str) -> Path:
    """``gguf``'s weights written again as ``out_type`` by llama.cpp's quantizer, once per content of the file and
    version of llama.cpp: kept in the cache, as a GGUF model source's safetensors copy is (2 s a run for SmolLM2,
    more for a larger judge, and again in every trial of a sweep). Written beside its place, then renamed: never
    half there."""
    import llama_cpp

    from finetune.export.gguf_writer import llama_quantize, temp_path
    from finetune.paths import cache_dir, cache_key, file_digest
    from finetune.pipeline.manifest import umask_mode

    key = cache_key(file_digest(gguf), out_type, llama_cpp.__version__)
    target = cache_dir() / "judges" / f"{gguf.stem}-{key}.{out_type}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with temp_path(target) as written:
        llama_quantize(gguf, written, out_type)
        written.chmod(umask_mode())  # mkstemp makes it owner-only
        written.replace(target)  # another process writing it too: the same bytes
    return target


@dataclass(frozen=True)
class Verdict:
    value: dict[str, Any] | None  # None: unscored
    replies: list[str]
    problem: str | None = None


def _key(text: str) -> str:
    return unicodedata.normalize("NFKC", str(text)).strip().strip('"').lower()


def _score(value: Any, scale: int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*\d+)?\s*", value)
        value = float(match.group(1)) if match else None
    if isinstance(value, int | float) and float(value).is_integer() and 1 <= value <= scale:
        return int(value)
    return None


def parse_scores(text: str, criteria: Sequence[str], scale: int) -> tuple[dict[str, int] | None, str | None]:
    """The criterion → score object in a judge's reply, or None and why not."""
    objects = json_objects(text)
    if not objects:
        return None, "no JSON object in the reply"
    wanted = {_key(c): c for c in criteria}
    problem = "no object with every criterion"
    for obj in objects:
        scores: dict[str, int] = {}
        for k, v in obj.items():
            if _key(k) in wanted and (s := _score(v, scale)) is not None:
                scores[wanted[_key(k)]] = s
        if len(scores) == len(criteria):
            return scores, None
        missing = [c for c in criteria if c not in scores]
        problem = f"missing or out of 1..{scale}: {', '.join(missing)}"
    return None, problem


def parse_winner(text: str) -> tuple[str | None, str | None]:
    """"A", "B" or "tie" from a pairwise reply, or None and why not."""
    for obj in json_objects(text):
        for k, v in obj.items():
            if _key(k) == "winner" and isinstance(v, str):
                word = _key(v).replace("answer", "").strip()
                if word in ("a", "b"):
                    return word.upper(), None
                if word in ("tie", "draw", "equal", "both"):
                    return "tie", None
        return None, "winner is not A, B or tie"
    return None, "no JSON object in the reply"


def _scores_schema(criteria: Sequence[str], scale: int) -> dict[str, Any]:
    return {"type": "object", "required": list(criteria), "additionalProperties": False,
            "properties": {c: {"type": "integer", "minimum": 1, "maximum": scale} for c in criteria}}


WINNER_SCHEMA = {"type": "object", "required": ["winner"], "additionalProperties": False,
                 "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}}}


class Judge:
    def __init__(self, cfg: JudgeConfig, base_url: str, seed: int, *, local: bool = False) -> None:
        """``local``: a llama.cpp server started for the run (``eval.judge.gguf``), which takes no API key."""
        from finetune.generate.openai_compat import client

        self.cfg, self.seed = cfg, seed
        self.client = client(base_url, None if local else cfg.api_key_env, cfg.timeout_s, max_retries=4)

    def _ask(self, prompt: str, schema: dict[str, Any], parse: Any) -> Verdict:
        messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        fmt = {"text": None, "json_object": {"type": "json_object"},
               "json_schema": {"type": "json_object", "schema": schema}}[self.cfg.response_format]
        replies: list[str] = []
        problem = None
        for _ in range(self.cfg.retries + 1):
            out = self.client.chat.completions.create(
                model=self.cfg.model, messages=messages, temperature=0.0, max_tokens=self.cfg.max_tokens,
                seed=self.seed, **({"response_format": fmt} if fmt else {}),
            )
            reply = out.choices[0].message.content or ""
            replies.append(reply)
            value, problem = parse(reply)
            if value is not None:
                return Verdict(value, replies)
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": f"That reply could not be used ({problem}). Reply with only "
                                                     f"the JSON object, nothing else."}]
        return Verdict(None, replies, problem)

    def grade(self, sample: Sample, answer: str) -> Verdict:
        c, scale = self.cfg.criteria, self.cfg.scale
        example = json.dumps({k: scale // 2 + i % 3 for i, k in enumerate(c)}, ensure_ascii=False)
        prompt = (f"Question:\n{_question(sample)}\n\nReference answer:\n{sample.reference}\n\n"
                  f"Answer to grade:\n{answer}\n\nGrade the answer from 1 (worst) to {scale} (best) on each "
                  f"criterion: {', '.join(c)}. Reply with only a JSON object such as {example}.")
        return self._ask(prompt, _scores_schema(c, scale), lambda r: parse_scores(r, c, scale))

    def compare(self, sample: Sample, first: str, second: str) -> Verdict:
        prompt = (f"Question:\n{_question(sample)}\n\nReference answer:\n{sample.reference}\n\n"
                  f"Answer A:\n{first}\n\nAnswer B:\n{second}\n\nWhich answer is better overall "
                  f"({', '.join(self.cfg.criteria)})? Reply with only a JSON object: "
                  '{"winner": "A"}, {"winner": "B"} or {"winner": "tie"}.')
        return self._ask(prompt, WINNER_SCHEMA, _winner)


def _winner(reply: str) -> tuple[dict[str, str] | None, str | None]:
    winner, problem = parse_winner(reply)
    return ({"winner": winner} if winner else None), problem


def _question(sample: Sample) -> str:
    return sample.prompt.messages[-1]["content"]


def judge_all(judge: Judge, samples: Sequence[Sample], answers: dict[str, Sequence[Answer]], pairwise: bool
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grades for every model, the base-vs-tuned comparison, and per-sample records for samples.jsonl. Asked
    sample by sample (each model's answer, then the pair): consecutive requests then share the question and the
    reference as a prefix, which llama.cpp's server does not compute again (nor a provider's prompt cache bill
    again) — the reference answers are most of a prompt."""
    from finetune.progress import Bar

    criteria = judge.cfg.criteria
    per: list[dict[str, Any]] = [{} for _ in samples]
    grades: dict[str, list[Verdict]] = {who: [] for who in answers}
    compare = pairwise and {"base", "tuned"} <= answers.keys()
    counts = {"tuned": 0, "base": 0, "tie": 0, "unscored": 0, "first_position_won": 0}
    for i, (s, *given) in enumerate(Bar(list(zip(samples, *answers.values(), strict=True)), desc="judge",
                                        unit="sample")):
        asked = dict(zip(answers, given, strict=True))
        for who, answer in asked.items():
            verdict = judge.grade(s, answer.text)
            per[i][f"judge_{who}"] = verdict.value if verdict.value is not None else \
                {"unscored": verdict.problem, "replies": verdict.replies}
            grades[who].append(verdict)
        if compare:
            per[i]["judge_pairwise"] = _compare(judge, i, s, asked["base"], asked["tuned"], counts)
    summary: dict[str, Any] = {"criteria": criteria, "scale": judge.cfg.scale,
                               "models": {who: _grades_summary(g, criteria) for who, g in grades.items()}}
    if compare:
        scored = counts["tuned"] + counts["base"] + counts["tie"]
        summary["pairwise"] = {**counts, "scored": scored,
                               "tuned_win_rate": (counts["tuned"] + 0.5 * counts["tie"]) / scored if scored else None}
    return summary, per


def _grades_summary(grades: Sequence[Verdict], criteria: Sequence[str]) -> dict[str, Any]:
    scored = [g.value for g in grades if g.value is not None]
    means = {c: sum(v[c] for v in scored) / len(scored) if scored else None for c in criteria}
    return {
        "means": means, "overall": sum(means.values()) / len(means) if scored else None,  # type: ignore[arg-type]
        "scored": len(scored), "unscored": len(grades) - len(scored),
        "unscored_reasons": sorted({g.problem for g in grades if g.value is None}),
    }


def tuned_shown_first(seed: int, sample: int) -> bool:
    """Whether the tuned answer is "A" for this sample: drawn from the run's seed, so reruns ask the same."""
    return random.Random(seed * 1_000_003 + sample).random() < 0.5


def _compare(judge: Judge, i: int, sample: Sample, base: Answer, tuned: Answer, counts: dict[str, int]
             ) -> dict[str, Any]:
    """Sample ``i``'s base-vs-tuned verdict, counted into ``counts``; its record for samples.jsonl."""
    tuned_first = tuned_shown_first(judge.seed, i)
    first, second = (tuned, base) if tuned_first else (base, tuned)
    verdict = judge.compare(sample, first.text, second.text)
    if verdict.value is None:
        counts["unscored"] += 1
        return {"unscored": verdict.problem, "replies": verdict.replies}
    w = verdict.value["winner"]
    winner = "tie" if w == "tie" else ("tuned" if (w == "A") == tuned_first else "base")
    counts[winner] += 1
    counts["first_position_won"] += w == "A"
    return {"winner": winner, "tuned_shown_first": tuned_first}

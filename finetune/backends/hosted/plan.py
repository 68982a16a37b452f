"""What a hosted job will be, before anything is uploaded: the split files in the provider's format, checked by
its rules; the token count and the cost from the price table (``conf/hosted_prices.yaml``); the hyperparameters.

Any example the provider would reject stops the run here with its location, instead of after an upload and a
queue wait (or a bill).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.backends.hosted import Provider
from finetune.data import formats
from finetune.data.canonical import Conversation, DataError
from finetune.paths import CONF_DIR
from finetune.pipeline.manifest import atomic_write_json, atomic_write_text

UPLOADED = ("train", "validation")  # the test split stays here, for evaluate


class HostedDataError(DataError):
    """An example the provider would reject."""


@dataclass(frozen=True)
class Price:
    usd_per_mtok: float | None  # None: the model is not in the table
    max_example_tokens: int | None
    default_epochs: int
    min_examples: int
    pricing_page: str


def price(provider: str, model: str) -> Price:
    """The longest key of the provider's table that ``model`` starts with."""
    import yaml

    table = yaml.safe_load((CONF_DIR / "hosted_prices.yaml").read_text(encoding="utf-8"))[provider]
    key = max((k for k in table["models"] if model.startswith(k)), key=len, default=None)
    entry = table["models"][key] if key else {}
    return Price(entry.get("usd_per_mtok"), entry.get("max_example_tokens"), table["default_epochs"],
                 table["min_examples"], table["pricing_page"])


def _rows(provider: Provider, run: Any, conversations: list[Conversation], limit: int | None,
          problems: list[str]) -> tuple[list[dict[str, Any]], list[int]]:
    records, tokens = [], []
    count = provider.tokens(run).count
    for c in conversations:
        where = f"validate/{c.location}"
        try:
            record = formats.write(c, provider.data_format(run))
        except formats.CannotExpress as e:
            problems.append(f"{where}: {e}")
            continue
        problems += [f"{where}: {why}" for why in provider.problems(record, run)]
        n = count(record)
        if limit is not None and n > limit:
            problems.append(f"{where}: {n} tokens, over the provider's {limit} per example")
        records.append(record)
        tokens.append(n)
    return records, tokens


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)
    return hashlib.sha256(text.encode()).hexdigest()


def prepare(provider: Provider, run: Any, splits: dict[str, list[Conversation]], out_dir: Path
            ) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write ``<split>.<format>.jsonl`` for the uploaded splits and ``plan.json``/``plan.md``; returns the files
    and the plan. Raises ``HostedDataError`` naming the first rejected example and how many more there are."""
    cfg = run.backend
    p = price(provider.name, cfg.base_model)
    problems: list[str] = []
    files: dict[str, Path] = {}
    counted: dict[str, dict[str, Any]] = {}
    for split in UPLOADED:
        if not splits.get(split):
            continue
        records, tokens = _rows(provider, run, splits[split], p.max_example_tokens, problems)
        path = out_dir / f"{split}.{provider.data_format(run)}.jsonl"
        counted[split] = {"file": path.name, "examples": len(records), "tokens": sum(tokens),
                          "max_example_tokens": max(tokens, default=0), "sha256": _write_jsonl(path, records)}
        files[split] = path
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise HostedDataError(f"backend={provider.name}: {problems[0]}{more}; {provider.title} would reject the "
                              "file — fix the data, or leave such rows out with dataset checks")
    examples = counted.get("train", {}).get("examples", 0)
    if examples < p.min_examples:
        raise HostedDataError(f"backend={provider.name}: {examples} training examples; {provider.title} needs at "
                              f"least {p.min_examples}")
    epochs = cfg.epochs or p.default_epochs
    billed = counted["train"]["tokens"] * epochs
    plan = {
        "provider": provider.name, "service": provider.title, "base_model": cfg.base_model,
        "hyperparameters": provider.hyperparameters(run), "files": counted,
        "token_count": provider.tokens(run).method,
        "epochs": epochs, "epochs_from": "backend.epochs" if cfg.epochs else "the provider's usual default",
        "billed_tokens": billed,
        "usd_per_mtok": p.usd_per_mtok,
        "estimated_usd": None if p.usd_per_mtok is None else round(billed / 1e6 * p.usd_per_mtok, 4),
        "pricing_page": p.pricing_page, "notices": list(provider.notices(run)),
    }
    atomic_write_json(out_dir / "plan.json", plan)
    atomic_write_text(out_dir / "plan.md", markdown(plan))
    return files, plan


def cost_text(plan: dict[str, Any]) -> str:
    tokens = f"{plan['billed_tokens']:,} billed tokens ({plan['files']['train']['tokens']:,} × {plan['epochs']} epochs)"
    if plan["estimated_usd"] is None:
        return f"{tokens}; no price for {plan['base_model']} in conf/hosted_prices.yaml — see {plan['pricing_page']}"
    return f"{tokens} ≈ ${plan['estimated_usd']:.2f} at ${plan['usd_per_mtok']:.2f}/M tokens"


def markdown(plan: dict[str, Any]) -> str:
    lines = [f"# Hosted fine-tuning plan: {plan['service']}", "",
             *(f"> **{notice}**" for notice in plan["notices"]), *([""] if plan["notices"] else []),
             f"- base model: `{plan['base_model']}`",
             f"- hyperparameters: `{json.dumps(plan['hyperparameters'])}`",
             f"- cost: {cost_text(plan)}" + (f" (list price; check {plan['pricing_page']})"
                                             if plan["estimated_usd"] is not None else ""),
             f"- tokens counted with {plan['token_count']}", "",
             "| file | examples | tokens | longest example | sha256 |", "|---|---|---|---|---|"]
    lines += [f"| {f['file']} | {f['examples']} | {f['tokens']:,} | {f['max_example_tokens']:,} | "
              f"`{f['sha256'][:12]}` |" for f in plan["files"].values()]
    return "\n".join(lines) + "\n"

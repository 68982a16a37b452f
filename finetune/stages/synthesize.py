"""synthesize: conversations about ``dataset.synthetic.topic`` written by a model behind an OpenAI-compatible URL
(``finetune/data/synthetic.py``), saved as OpenAI-format JSONL that ``validate`` then reads as one more source.
A run without ``dataset.synthetic`` has no such stage.

Writes ``synthetic.jsonl`` and ``report.json`` (requested, written, requests made, rejects by reason with an
example reply each, model and endpoint; never the key). Fewer conversations than asked is a warning; none is an
error, after the report is written.
"""

from __future__ import annotations

import json
import logging

from finetune.config import RunConfig
from finetune.data.synthetic import nothing_usable, summary, synthesize
from finetune.pipeline.graph import StageContext
from finetune.pipeline.manifest import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

CONFIG_KEYS = ("dataset.synthetic", "seed")


def left_out(run: RunConfig) -> str | None:
    return None if run.dataset.synthetic else "dataset.synthetic is not set"


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    cfg = run.dataset.synthetic
    assert cfg is not None, "left out without dataset.synthetic"
    rows, report = synthesize(cfg, run.seed)
    atomic_write_json(ctx.out_dir / "report.json", report)
    if not rows:
        raise nothing_usable(report)
    atomic_write_text(ctx.out_dir / "synthetic.jsonl", (json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if report["complete"]:
        log.info("synthesize: %s", summary(report))
    else:
        log.warning("synthesize: only %s (dataset.synthetic.max_attempts=%d); refused replies are in report.json",
                    summary(report), cfg.max_attempts)
    return {"data": "synthetic.jsonl", "report": "report.json"}

"""merge: fold the trained adapter into the base weights and save a standalone safetensors model folder
(weights, config, generation config, tokenizer and chat template) that ``from_pretrained`` loads alone.

The base is always loaded unquantized for merging, also after QLoRA: merging into a 4-bit base rounds the
merged weights again and loses quality (transformers #31293).
"""

from __future__ import annotations

import logging
import shutil

from finetune.config import RunConfig
from finetune.methods import METHODS
from finetune.models import load_model, load_tokenizer, resolve_model_source, save_tokenizer, torch_dtype
from finetune.pipeline.graph import StageContext

log = logging.getLogger(__name__)


def run(run: RunConfig, ctx: StageContext) -> dict[str, str]:
    out = ctx.out_dir / "model"
    if not METHODS[run.method.name].adapter:
        shutil.copytree(ctx.input("train", "model"), out)
        return {"model": "model"}
    from peft import PeftModel

    source = resolve_model_source(run.model)
    dtype = torch_dtype(run.model.dtype)
    base = load_model(source, run.model, dtype=dtype)
    adapter = ctx.input("train", "adapter")
    log.info("merging %s into %s (%s)", adapter, source, str(dtype).removeprefix("torch."))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tmp = ctx.out_dir / ".model.tmp"
    merged.save_pretrained(str(tmp))
    save_tokenizer(load_tokenizer(str(adapter), run.model), str(adapter), run.model, tmp)
    tmp.rename(out)
    return {"model": "model"}

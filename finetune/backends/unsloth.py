"""backend=unsloth: unsloth's FastLanguageModel loads the base and attaches the LoRA adapter with its fused
kernels, with unsloth's settings: no bias on the adapter, its own gradient checkpointing, its random state from
``seed`` (``method.dropout=0`` is its fastest path). unsloth runs on CUDA GPUs only and is an optional extra
(``pip install 'finetune[unsloth]'``); the training loop, checkpoints and saving are the shared ones."""

from __future__ import annotations

import importlib.util
from typing import Any

from finetune import methods
from finetune.backends.local import LocalBackend
from finetune.errors import UserError

SUPPORTED_METHODS = tuple(name for name, m in methods.METHODS.items() if not m.dora)  # unsloth's peft has no DoRA


class UnslothError(UserError, RuntimeError):
    """unsloth cannot run this here."""


def check(run: Any) -> None:
    import torch

    if not torch.cuda.is_available():
        raise UnslothError("backend=unsloth needs a CUDA GPU and none is visible here; use backend=hf "
                           "(every method, on CPU too)")
    if importlib.util.find_spec("unsloth") is None:
        raise UnslothError("backend=unsloth: unsloth is not installed; pip install 'finetune[unsloth]'")
    if run.method.name not in SUPPORTED_METHODS:
        raise UnslothError(f"backend=unsloth trains method.name in {', '.join(SUPPORTED_METHODS)}, not "
                           f"{run.method.name}; use backend=hf for it")


def load(run: Any) -> Any:
    from unsloth import FastLanguageModel

    from finetune.models import resolve_model_source, torch_dtype

    method = methods.METHODS[run.method.name]
    model, _ = FastLanguageModel.from_pretrained(
        model_name=resolve_model_source(run.model), max_seq_length=run.train.max_seq_len,
        dtype=torch_dtype(run.model.dtype),
        load_in_4bit=method.quantized, full_finetuning=not method.adapter,
        trust_remote_code=run.model.trust_remote_code,
    )
    if not method.adapter:
        return model
    targets = methods.target_modules(run.method.target_modules, model.config)
    return methods.sets_sorted(FastLanguageModel.get_peft_model(
        model, r=run.method.r, lora_alpha=run.method.alpha, lora_dropout=run.method.dropout, bias="none",
        target_modules=targets, use_rslora=run.method.rslora, random_state=run.seed,
        use_gradient_checkpointing="unsloth" if run.train.gradient_checkpointing else False,
    ))


BACKEND = LocalBackend(load, check)

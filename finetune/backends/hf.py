"""backend=hf: transformers loads the base (NF4 through bitsandbytes for QLoRA) and peft attaches the adapter."""

from __future__ import annotations

from typing import Any

from finetune import methods
from finetune.backends.local import LocalBackend


def check(run: Any) -> None:
    """Everything the hf backend needs is a dependency; the method's own needs are checked by the method."""


def load(run: Any) -> Any:
    from finetune.models import load_model, resolve_model_source, torch_dtype

    method = methods.METHODS[run.method.name]
    dtype = torch_dtype(run.model.dtype)
    model = load_model(resolve_model_source(run.model), run.model, **methods.load_kwargs(method, dtype))
    return methods.attach(method, run, model, dtype)


BACKEND = LocalBackend(load, check)

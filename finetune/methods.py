"""Training methods as a registry: ``method.name`` picks an entry, and the entry says how the base model loads
and which adapter (if any) wraps it — so the train and merge stages never ask ``if name == ...``.

``full`` trains every weight; ``lora`` an adapter on a full-precision base (``method.rslora`` scales it by
alpha/√r); ``dora`` a weight-decomposed LoRA adapter; ``qlora`` a LoRA adapter on an NF4 base with double
quantisation (bitsandbytes, which runs it on CPU too), adapter weights in the compute dtype. ``merge`` always
reloads the base in full precision, so a QLoRA adapter is never merged into 4-bit weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from finetune.errors import UserError

# method.target_modules=auto: every linear projection of the architecture's blocks (config.model_type; each list is
# checked against the model transformers builds: tests/test_methods.py); others: all-linear. Mixtral's experts are
# fused parameters in transformers 5, not linear modules: LoRA reaches its attention.
TARGETS_BY_ARCHITECTURE = {
    **{arch: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
       for arch in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "smollm3")},
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],  # fused Q/K/V and gate/up
    **{arch: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
       for arch in ("falcon", "gpt_neox", "bloom")},
}


class MethodError(UserError, RuntimeError):
    """The method cannot run here; the message says what to install or use instead."""


@dataclass(frozen=True)
class Method:
    name: str
    adapter: bool  # trains a peft adapter (merge folds it in), or every weight
    lr: float  # the learning rate when train.lr is not set: the usual one for the method
    quantized: bool = False  # the base loads in 4 bit (bitsandbytes NF4)
    dora: bool = False  # the adapter also rescales each weight by a magnitude vector

    @property
    def plain_lora(self) -> bool:
        """A LoRA adapter without DoRA's magnitudes: what llama.cpp applies to a GGUF base."""
        return self.adapter and not self.dora


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", adapter=False, lr=2e-5),
    Method("lora", adapter=True, lr=2e-4),
    Method("dora", adapter=True, lr=2e-4, dora=True),
    Method("qlora", adapter=True, lr=2e-4, quantized=True),
)}
# train.optimizer: transformers' names; the 8-bit ones need bitsandbytes, the paged ones CUDA as well.
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit",
              "paged_adamw_32bit")


# What a vision-language model's language model layers carry in their names (model.language_model.layers.0… in
# transformers 5, language_model.model.layers.0… before): what training adapts and the GGUF writers map.
LANGUAGE_MODEL = "language_model."


def target_names(setting: Any, config: Any) -> list[str] | str:
    """``method.target_modules`` for the model whose transformers config is ``config``: a list of layer names,
    ``all-linear``, or for ``auto`` the usual projections of its (language model's) architecture (all-linear where
    the architecture is not in the table)."""
    if setting == "auto":
        return TARGETS_BY_ARCHITECTURE.get(config.get_text_config().model_type, "all-linear")
    return setting if setting == "all-linear" else list(setting)


def vision_language(config: Any) -> bool:
    """Whether the transformers ``config`` is a vision-language model's, its language model's config inside it."""
    return config.get_text_config() is not config


def target_modules(setting: Any, config: Any) -> list[str] | str:
    """``target_names`` as peft takes them. For a vision-language model (Gemma 3 4B and up) they name its language
    model's layers alone, as a regex peft matches against each layer's full name: by their names alone peft would
    adapt the vision tower's q/k/v projections too, which text never trains and a GGUF of the language model leaves
    out. ``all-linear`` is peft's, vision tower included."""
    names = target_names(setting, config)
    if names == "all-linear" or not vision_language(config):
        return names
    return rf"(.*\.)?{re.escape(LANGUAGE_MODEL)}(.*\.)?({'|'.join(map(re.escape, names))})"


def _has_bitsandbytes() -> bool:
    """Imported, not only found: a broken install fails the same way as a missing one."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def check_available(method: Method, optimizer: str) -> None:
    """What this machine lacks for the method or the optimizer, as one line."""
    if method.quantized and not _has_bitsandbytes():
        raise MethodError("method.name=qlora needs bitsandbytes (it runs on CPU and CUDA): pip install "
                          "'finetune[qlora]', or use method=lora")
    if optimizer.startswith("paged_"):
        import torch

        if not torch.cuda.is_available():
            raise MethodError(f"train.optimizer={optimizer} pages optimizer state through CUDA memory; on CPU use "
                              "adamw_torch or adamw_8bit")
    if optimizer.endswith("_8bit") and not _has_bitsandbytes():
        raise MethodError(f"train.optimizer={optimizer} needs bitsandbytes: pip install 'finetune[qlora]'")


def load_kwargs(method: Method, dtype: Any) -> dict[str, Any]:
    """What ``from_pretrained`` needs for this method's base model."""
    if not method.quantized:
        return {"dtype": dtype}
    import torch
    from transformers import BitsAndBytesConfig

    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    return {
        "dtype": dtype,
        "device_map": {"": device},
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        ),
    }


def peft_config(method: Method, cfg: Any, config: Any) -> Any:
    """The adapter to train (None for full fine-tuning); ``cfg`` is ``run.method``, ``config`` the model's."""
    if not method.adapter:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_dora=method.dora,
                      use_rslora=cfg.rslora, target_modules=target_modules(cfg.target_modules, config),
                      task_type="CAUSAL_LM")


def sets_sorted(model: Any) -> Any:
    """peft keeps ``target_modules`` as a set and writes it to ``adapter_config.json`` in iteration order, which
    Python's per-process string hashing changes: a rerun would write a different file. Sorted, it does not."""
    for config in getattr(model, "peft_config", {}).values():
        for name, value in vars(config).items():
            if isinstance(value, set):
                setattr(config, name, sorted(value, key=str))
    return model


def adapter_in_compute_dtype(method: Method, model: Any, dtype: Any) -> None:
    """TRL casts a quantized model's trainable weights to bf16 (the QLoRA paper's choice on GPUs); keep them in
    the compute dtype instead — fp32 on CPU, where bf16 matmuls are two orders of magnitude slower."""
    if method.quantized:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(dtype)


def own_unquantized_weights(model: Any) -> None:
    """transformers reads safetensors through a memory map, and a weight left unquantized on the CPU (embeddings,
    norms) is a view into it. The map then stays open, and with it every page of the full-precision weights read
    for quantisation: 0.42 GB of SmolLM2-135M's 0.54 GB held in the process's resident set for nothing. Copied
    out, the map closes."""
    for tensor in (*model.parameters(), *model.buffers()):  # each once: a tied weight is one tensor
        if tensor.device.type == "cpu" and getattr(tensor, "quant_state", None) is None:
            tensor.data = tensor.data.clone()


def prepare(method: Method, model: Any, gradient_checkpointing: bool) -> Any:
    """A quantized base gets peft's k-bit preparation (norms in fp32, input grads for checkpointing)."""
    if not method.quantized:
        return model
    from peft import prepare_model_for_kbit_training

    own_unquantized_weights(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def attach(method: Method, run: Any, model: Any, dtype: Any) -> Any:
    """The loaded base ready to train with ``method``: prepared when quantized, then wrapped in its adapter, whose
    plain LoRA layers add their product into the base output in one matmul (``finetune.lora_forward``)."""
    model = prepare(method, model, run.train.gradient_checkpointing)
    config = peft_config(method, run.method, model.config)
    if config is None:
        return model
    from peft import get_peft_model

    from finetune import lora_forward

    model = sets_sorted(get_peft_model(model, config))
    adapter_in_compute_dtype(method, model, dtype)
    lora_forward.install(model)
    return model

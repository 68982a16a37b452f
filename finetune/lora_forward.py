"""LoRA's forward pass with the adapter's product added into the base layer's output by one matrix product.

peft computes ``result + lora_B(lora_A(dropout(x))) * scaling``: the adapter's output, as wide as the layer's (1,536
columns for SmolLM2's MLP), is written, read and written again to scale it, then read with the base output to add
them, and the backward pass scales its gradient the same way. A rank-16 adapter's products are ~6 % of a
SmolLM2-135M step's arithmetic, yet with peft's forward the adapter made a CPU step 7–18 % slower than the frozen
model alone: its work is passes over full-width activations and thin matrix products, bound by memory. Here the
scaling multiplies the rank-r activation instead (a 96th of that width) and ``addmm`` adds ``h @ lora_B.weightᵀ``
into the base output as it computes it: the same sum, a step 1–3 % faster (``benchmarks/lora_forward.py``). With a
scaling that is a power of two (alpha = 2r, as in the recipes; rsLoRA's alpha/√r at r = 16), multiplying before or
after the product rounds alike, and losses and gradients are peft's to the bit (``tests/test_lora_forward.py``).

Only plain LoRA on a layer in the adapter's dtype takes this path, one adapter active and none merged; anything
else — DoRA, QLoRA's 4-bit layers, a disabled adapter (DPO's reference), mixed adapters, autocast — runs peft's
forward. The adapter's weights, state dict and saved files are peft's. Imported where peft is.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear


class AddmmLoraLinear(Linear):
    """peft's ``lora.Linear``, its forward as above when ``plain_adapter`` allows."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = plain_adapter(self, x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        h = self.lora_A[name](self.lora_dropout[name](x)) * self.scaling[name]
        return torch.addmm(result.flatten(0, -2), h.flatten(0, -2), self.lora_B[name].weight.t()).view(result.shape)


def plain_adapter(layer: Linear, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter's name when ``layer`` computes plain LoRA on ``x`` alone, in one dtype, else None."""
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in layer.lora_variant or layer.lora_B[name].bias is not None:
        return None
    weight = layer.lora_A[name].weight
    if torch.is_autocast_enabled(x.device.type) or not x.dtype == weight.dtype == layer.base_layer.weight.dtype:
        return None
    return name


def install(model: torch.nn.Module) -> int:
    """Give every plain ``lora.Linear`` of ``model`` this forward, in place: the modules, their weights and names
    stay peft's. Returns how many. DoRA's layers keep peft's: their variant computes its own."""
    layers = [m for m in model.modules() if type(m) is Linear and not m.lora_variant]
    for layer in layers:
        layer.__class__ = AddmmLoraLinear
    return len(layers)

"""LoRA's forward with one addmm (``finetune.lora_forward``) against peft's own, on a tiny random Llama."""

from __future__ import annotations

import pytest

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_lora(alpha: int = 16, dropout: float = 0.1, dora: bool = False):
    """A 2-layer Llama with a rank-8 adapter on every projection, its B matrices drawn (peft starts them at zero,
    which would leave the adapter's product out of the comparison)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGETS,
                                             use_dora=dora))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return model.train()


def loss_and_gradients(model, ids):
    """The loss and every trainable weight's gradient of one batch, dropout drawn from the same seed."""
    import torch

    torch.manual_seed(1)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads


def with_peft_forward(model):
    """The same modules back on peft's class."""
    from peft.tuners.lora.layer import Linear

    from finetune.lora_forward import AddmmLoraLinear

    for module in model.modules():
        if type(module) is AddmmLoraLinear:
            module.__class__ = Linear
    return model


def batch():
    import torch

    return torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(2))


@pytest.mark.quick
def test_with_a_power_of_two_scaling_the_loss_and_gradients_are_peft_s_to_the_bit():
    """alpha = 2r (scaling 2, the recipes' LoRA), dropout on: the same bits as peft's forward."""
    from finetune import lora_forward

    model, ids = tiny_lora(), batch()
    assert lora_forward.install(model) == 2 * len(TARGETS)
    ours = loss_and_gradients(model, ids)
    theirs = loss_and_gradients(with_peft_forward(model), ids)
    assert ours[0].item() == theirs[0].item()
    assert ours[1].keys() == theirs[1].keys() and len(ours[1]) == 4 * len(TARGETS)
    assert all(ours[1][name].equal(theirs[1][name]) for name in ours[1])


@pytest.mark.quick
def test_another_scaling_rounds_differently_but_computes_the_same_sum():
    import torch

    from finetune import lora_forward

    model, ids = tiny_lora(alpha=12), batch()  # scaling 1.5
    lora_forward.install(model)
    ours = loss_and_gradients(model, ids)
    theirs = loss_and_gradients(with_peft_forward(model), ids)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-6, atol=0)
    for name, grad in ours[1].items():
        torch.testing.assert_close(grad, theirs[1][name], rtol=1e-4, atol=1e-7)


@pytest.mark.quick
def test_a_disabled_adapter_autocast_and_dora_keep_peft_s_forward():
    """DPO's reference is the adapter disabled: the base model's output, without the adapter's product."""
    import torch

    from finetune import lora_forward

    model, ids = tiny_lora(dropout=0.0), batch()
    lora_forward.install(model)
    with torch.no_grad():
        with model.disable_adapter():
            disabled = model(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(input_ids=ids).logits
        adapted = model(input_ids=ids).logits
        with_peft_forward(model)
        with model.disable_adapter():
            assert model(input_ids=ids).logits.equal(disabled)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(input_ids=ids).logits.equal(autocast)
    assert not adapted.equal(disabled)
    assert lora_forward.install(tiny_lora(dora=True)) == 0


@pytest.mark.parametrize(("method", "installed"), [("lora", True), ("dora", False)])
def test_the_hf_backend_trains_plain_lora_through_it(method, installed):
    from peft.tuners.lora.layer import Linear

    from finetune import resolvers
    from finetune.backends import hf
    from finetune.cli import register_recipes
    from finetune.lora_forward import AddmmLoraLinear
    from finetune.plan_command import composed

    resolvers.register()
    register_recipes()
    model = hf.load(composed(["model=tiny_random", f"method={method}"]))
    layers = [type(m) for m in model.modules() if isinstance(m, Linear)]
    assert layers and set(layers) == {AddmmLoraLinear if installed else Linear}

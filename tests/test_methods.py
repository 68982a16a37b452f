"""The methods registry: every method trains the tiny model through the CLI — QLoRA on this CPU too — and
merge always writes a full-precision model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from finetune.config import MethodConfig
from finetune.methods import METHODS, TARGETS_BY_ARCHITECTURE, target_modules

from .conftest import TINY, run_cli


@pytest.mark.quick
def test_registry_is_the_config_choice_list():
    choices = next(f for f in MethodConfig.__dataclass_fields__.values() if f.name == "name").metadata["choices"]
    assert choices == tuple(METHODS) == ("full", "lora", "dora", "qlora")


@pytest.mark.quick
def test_target_modules_auto_all_linear_and_lists():
    from transformers import AutoConfig, PretrainedConfig

    llama = AutoConfig.for_model("llama")
    assert target_modules("auto", llama) == TARGETS_BY_ARCHITECTURE["llama"]
    assert target_modules("auto", AutoConfig.for_model("gpt_neox")) == ["query_key_value", "dense", "dense_h_to_4h",
                                                                        "dense_4h_to_h"]
    assert target_modules("auto", PretrainedConfig()) == "all-linear"  # an architecture not in the table
    assert target_modules("all-linear", llama) == "all-linear"
    assert target_modules(["q_proj"], llama) == ["q_proj"]


@pytest.mark.quick
def test_a_vision_language_models_targets_are_its_language_models_layers_alone():
    """Gemma 3 4B: its SigLIP tower has q/k/v projections too, which peft would adapt by their names alone."""
    import re

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "gemma3", text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "vocab_size": 300,
                               "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14}, mm_tokens_per_image=4)
    model = AutoModelForCausalLM.from_config(config)
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    assert any("vision_tower" in name and name.endswith("q_proj") for name in linear)
    for setting, names in (("auto", TARGETS_BY_ARCHITECTURE["gemma3_text"]), (["q_proj", "v_proj"],) * 2):
        pattern = target_modules(setting, config)
        adapted = [name for name in linear if re.fullmatch(pattern, name)]
        assert adapted and all(".language_model." in name for name in adapted)
        assert {name.rsplit(".", 1)[-1] for name in adapted} == set(names)


@pytest.mark.quick
@pytest.mark.parametrize("architecture", TARGETS_BY_ARCHITECTURE)
def test_auto_targets_every_linear_projection_of_the_architecture_and_nothing_it_lacks(architecture):
    """Checked on the model transformers builds for the architecture (peft adapts the names that match and is
    silent about those that do not: a name the model lacks would leave its projection untrained)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(architecture, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, vocab_size=32064,
                                  pad_token_id=0)  # some defaults (SmolLM3's 128004) lie past this vocabulary
    model = AutoModelForCausalLM.from_config(config)
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert linear - {"lm_head"} == set(TARGETS_BY_ARCHITECTURE[architecture])


def train_and_merge(tmp_path: Path, *args: str) -> Path:
    data = tmp_path / "chats.jsonl"
    from .conftest import conversation

    data.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(20)), encoding="utf-8")
    run_cli(*TINY, f"dataset.path={data}", "train.max_steps=2", "stages=[validate,train,merge]",
            "hydra.run.dir=run", *args, cwd=tmp_path)
    return tmp_path / "run"


@pytest.mark.parametrize(("args", "expect"), [
    (("method=dora",), {"use_dora": True, "use_rslora": False}),
    (("method=lora", "method.rslora=true", "method.target_modules=all-linear"),
     {"use_dora": False, "use_rslora": True}),
    (("method=lora", "method.target_modules=auto"), {"use_dora": False}),
])
def test_lora_family_options_reach_the_adapter(tmp_path, args, expect):
    run_dir = train_and_merge(tmp_path, *args)
    adapter = json.loads((run_dir / "train" / "adapter" / "adapter_config.json").read_text())
    for key, value in expect.items():
        assert adapter[key] == value, key
    layers = {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]}
    assert layers == set(TARGETS_BY_ARCHITECTURE["llama"])  # all-linear (peft expands it) and auto alike
    assert (run_dir / "merge" / "model" / "model.safetensors").is_file()


def test_qlora_trains_on_cpu_and_merges_into_full_precision(tmp_path):
    run_dir = train_and_merge(tmp_path, "method=qlora")
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert metrics["method"] == "qlora" and metrics["global_step"] == 2
    assert (run_dir / "train" / "adapter" / "adapter_model.safetensors").is_file()
    with safe_open(str(run_dir / "train" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(name).dtype for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert {str(d) for d in dtypes} == {"torch.float32"}  # adapter weights in the compute dtype
    merged = run_dir / "merge" / "model"
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    with safe_open(str(merged / "model.safetensors"), "pt") as f:
        merged_dtypes = {str(f.get_tensor(name).dtype) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert merged_dtypes == {"torch.float32"}


@pytest.mark.quick
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_a_quantized_base_lets_go_of_its_weight_files_memory_map(tiny_model, tmp_path):
    """The unquantized weights (embeddings, norms) are copied out of safetensors' memory map, so that the pages of
    the full-precision weights read for quantisation leave the process: without the copy the map stays open."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.methods import load_kwargs, prepare

    loaded, prepared = tmp_path / "loaded", tmp_path / "prepared"
    for folder in (loaded, prepared):
        tiny_model[0].save_pretrained(folder)
    kwargs = load_kwargs(METHODS["qlora"], torch.float32)
    control = AutoModelForCausalLM.from_pretrained(loaded, **kwargs)  # loaded alone, as transformers leaves it
    model = prepare(METHODS["qlora"], AutoModelForCausalLM.from_pretrained(prepared, **kwargs), False)
    maps = Path("/proc/self/maps").read_text()
    assert str(loaded / "model.safetensors") in maps  # held open by the control's embeddings, a view into it
    assert str(prepared / "model.safetensors") not in maps
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # still tied
    del control  # alive until the maps were read


@pytest.mark.parametrize(("args", "lr", "optimizer"), [
    (("method=full",), 2e-5, "adamw_torch"),  # the method's usual rate when train.lr is not set
    (("method=lora", "train.optimizer=adafactor", "train.max_grad_norm=0.5", "train.eval_steps=1"), 2e-4,
     "adafactor"),
    (("method=lora", "train.lr=1e-3"), 1e-3, "adamw_torch"),
])
def test_learning_rate_defaults_per_method_and_optimizer_knobs(tmp_path, args, lr, optimizer):
    run_dir = train_and_merge(tmp_path, *args)
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert (metrics["lr"], metrics["optimizer"]) == (lr, optimizer)
    if "train.max_grad_norm=0.5" in args:
        assert metrics["max_grad_norm"] == 0.5
        evals = [r for r in map(json.loads, (run_dir / "train" / "loss.jsonl").read_text().splitlines())
                 if "eval_loss" in r]
        assert [r["step"] for r in evals] == [1, 2]  # eval_steps=1, apart from save_steps

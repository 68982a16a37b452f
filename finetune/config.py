"""The run spec's schema: dataclasses that the composed Hydra config must fit before any work starts.

``load_run_config`` merges the composed config into these dataclasses (types, unknown keys), then checks each
field's declared range or choices and that input files exist. Every failure is one ``ConfigError`` line that
names the config key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from finetune.backends import BACKENDS
from finetune.backends.base import LOCAL_WEIGHTS
from finetune.data.checks import CHECKS
from finetune.data.formats import READABLE, WRITABLE
from finetune.data.python_source import PythonSourceConfig
from finetune.data.readers import path_problem
from finetune.distributed import STRATEGIES
from finetune.errors import UserError
from finetune.export.gguf_types import OUT_TYPES
from finetune.fields import setting as _field
from finetune.generate import OLLAMA_REPEAT_LAST_N, OLLAMA_TOP_K
from finetune.launch import ENGINES
from finetune.methods import METHODS, OPTIMIZERS
from finetune.metrics import METRICS
from finetune.metrics.formats import StyleRule, check_style_rules
from finetune.metrics.harness import LmEvalConfig
from finetune.metrics.judge import RESPONSE_FORMATS, JudgeConfig
from finetune.objectives import DPO_LOSSES, GRPO_LOSSES, KTO_LOSSES, OBJECTIVES

STAGE_NAMES = ("synthesize", "validate", "rejected", "train", "merge", "evaluate", "export", "card", "publish")


class ConfigError(UserError, ValueError):
    """An invalid run spec; the message is one line naming the key."""


@dataclass
class RandomInitConfig:
    """Build a small randomly initialised model of the source's architecture (smoke tests, CI)."""

    hidden_size: int = _field(64, low=8)
    num_hidden_layers: int = _field(2, low=1)
    num_attention_heads: int = _field(4, low=1)
    num_key_value_heads: int = _field(2, low=1)
    intermediate_size: int = _field(128, low=8)
    seed: int = 0


@dataclass
class ModelConfig:
    # A Hub id, a local safetensors folder, a .gguf file, or package:<python package>/<file in it>.
    source: str = MISSING
    gguf_file: str | None = None  # a GGUF file inside a local folder `source`
    revision: str | None = None  # Hub revision (branch, tag or commit)
    dtype: str = _field("auto", choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = False
    # The chat template training renders, replacing the model's own: a named one (finetune/chat_templates.py:
    # chatml, llama3, gemma, mistral, mistral_v3, alpaca, alpaca_en) or a .jinja file. A base model without a template
    # needs one for chat data (plain text: none).
    chat_template: str | None = None
    random_init: RandomInitConfig | None = None
    hub_id: str | None = None  # the model's Hub id, named in the card (base_model); a Hub `source` is its own id
    license: str | None = None  # the model's license (an SPDX-like id the Hub knows: apache-2.0, llama3.1, …)


@dataclass
class SourceConfig:
    """One more data source, mixed into the training pool (``dataset.sources``)."""

    path: str = MISSING  # a .jsonl/.json/.csv/.parquet file, a save_to_disk folder, a Hub id, or python:<package>
    format: str = _field("auto", choices=("auto", *READABLE))
    columns: dict[str, str] = _field({})  # a format's key → this source's column: {instruction: question}
    split: str = "train"  # which split of a Hub dataset or a saved DatasetDict
    weight: float = _field(1.0, low=0.0, low_open=True)  # 2: every training row twice; 0.5: a seeded half


# One field per registered data check (finetune/data/checks): dataset.checks.<name>.action and its thresholds.
ChecksConfig = make_dataclass(
    "ChecksConfig", [(name, check.settings, field(default_factory=check.settings)) for name, check in CHECKS.items()]
)
ChecksConfig.__module__ = __name__  # pickled by reference, like the other classes (a sweep's jobs on submitit)


@dataclass
class SyntheticConfig:
    """Conversations about ``topic`` written by a model behind any OpenAI-compatible URL (the ``synthesize``
    stage), then mixed into the training pool like one more source. The API key is read from the environment
    variable ``api_key_env`` when the stage runs, and never written anywhere."""

    topic: str = MISSING  # what the conversations are about: "exporting reports from ABC Cloud ERP"
    count: int = _field(100, low=1)  # conversations to keep
    base_url: str = MISSING  # https://api.openai.com/v1, a vLLM or llama.cpp server's …/v1
    model: str = MISSING  # the model id at base_url
    api_key_env: str = "OPENAI_API_KEY"
    system_prompt: str | None = None  # the generated conversations' system message; the writer is told it too
    temperature: float = _field(0.8, low=0.0, high=2.0)  # > 0, or a deterministic model repeats itself
    max_tokens: int = _field(512, low=16)  # per reply; a reply cut here is rejected as truncated
    max_attempts: int = _field(3, low=1, high=100)  # requests per kept conversation: count × this at most in all
    # json_schema: JSON mode with our schema, which llama.cpp's server turns into a grammar (sent as
    # {"type": "json_object", "schema": …}); json_object: JSON mode alone (OpenAI); text: asked for in words
    response_format: str = _field("json_schema", choices=RESPONSE_FORMATS)
    timeout_s: float = _field(120.0, low=1.0)  # per request


@dataclass
class DatasetConfig:
    path: str | None = None  # the main source: a data file, a save_to_disk folder, a Hub id, or python:<package>
    format: str = _field("auto", choices=("auto", *READABLE))
    columns: dict[str, str] = _field({})  # a format's key → the file's column: {instruction: question, output: answer}
    split: str = "train"  # which split of a Hub dataset or a saved DatasetDict
    sources: list[SourceConfig] = _field([])  # more sources, mixed with weights
    validation_path: str | None = None  # fixed splits: when both are given, the sources are the training split
    test_path: str | None = None
    validation_fraction: float = _field(0.1, low=0.0, high=0.5)
    test_fraction: float = _field(0.1, low=0.0, high=0.5)
    system_prompt: str | None = None  # prepended to conversations that have no system message
    skip_invalid_rows: bool = False  # skip (and count) records that cannot be read, instead of stopping
    checks: ChecksConfig = field(default_factory=ChecksConfig)  # type: ignore[valid-type]
    write_formats: list[str] = _field([], choices=tuple(WRITABLE))  # also each split in a provider's format
    python: PythonSourceConfig = field(default_factory=PythonSourceConfig)  # for python:<package or folder>
    synthetic: SyntheticConfig | None = None  # generated conversations, one more source
    # Pairs from conversations for a preference objective: each training and validation conversation's answer is
    # the chosen one and the answer this model writes to it the rejected one (the ``rejected`` stage). `model`: the
    # model the run starts from (model.source: the base, or with run:<dir> that earlier run's, e.g. its SFT model);
    # or any model source (run:<dir>, a folder, a Hub id).
    rejected_by: str | None = None
    rejected_max_new_tokens: int = _field(256, low=1)  # the most tokens a rejected answer runs to (greedy)


@dataclass
class MethodConfig:
    name: str = _field("lora", choices=tuple(METHODS))
    r: int = _field(16, low=1, high=1024)
    alpha: float = _field(32.0, low=0.0, low_open=True)
    # on the adapter's inputs; 0 (peft's default): the random masks cost a CPU step ~12 % (benchmarks/lora_dropout.py)
    dropout: float = _field(0.0, low=0.0, high=0.9)
    rslora: bool = False  # scale the adapter by alpha/sqrt(r) instead of alpha/r (rank-stabilised LoRA)
    # `auto` (every projection of the architecture's blocks: finetune/methods.py), a list of names or `all-linear`.
    target_modules: Any = "auto"


@dataclass
class ObjectiveConfig:
    """What training optimises (finetune/objectives/): ``sft`` on conversations, a preference objective on
    chosen/rejected pairs (or KTO's answers labeled desirable or not) from the data, or ``grpo`` with rewards."""

    name: str = _field("sft", choices=tuple(OBJECTIVES))
    # dpo, kto: how far the policy may move from the reference (the model before training); orpo: the weight of the
    # odds ratio term; simpo: the scale of the reward margin. null: the trainer's own (TRL's 0.1; OpenAI's "auto")
    # grpo: the weight of the KL term against the model before training (TRL's 0.0: none, and no reference pass)
    beta: float | None = _field(None, low=0.0)
    # dpo: TRL's DPO losses (sigmoid, the paper's); kto: kto or apo_zero_unpaired; grpo: TRL's GRPO losses (dapo);
    # null: the trainer's default
    loss_type: str | None = _field(None, choices=(*DPO_LOSSES, *KTO_LOSSES, *GRPO_LOSSES))
    # dpo: the weight of a supervised loss on the chosen answer, added to DPO's (RPO; LLaMA-Factory's pref_ftx; TRL's
    # loss_type [<loss>, sft]): it keeps the chosen answers, end of turn included, likely where DPO alone lowers the
    # likelihood of both answers (on support_bot at lr 5e-5: answers that stop 94 % → 6 %)
    sft_weight: float = _field(0.0, low=0.0)
    # kto: the weights of the desirable and undesirable answers' losses, to even out unequal counts (TRL's 1 and 1)
    desirable_weight: float = _field(1.0, low=0.0, low_open=True)
    undesirable_weight: float = _field(1.0, low=0.0, low_open=True)
    simpo_gamma: float = _field(0.5, low=0.0)  # simpo: the target reward margin (TRL's default)
    num_generations: int = _field(8, low=2)  # grpo: answers generated to each prompt, scored against each other
    max_completion_length: int = _field(512, low=1)  # grpo: tokens an answer may run to (TRL's default)
    epsilon: float = _field(0.2, low=0.0, low_open=True)  # grpo: the clipping range of the policy ratio (TRL's)
    temperature: float = _field(1.0, low=0.0, low_open=True)  # grpo: the answers' sampling temperature (TRL's)


@dataclass
class RewardConfig:
    """objective=grpo's reward: the sum of ``functions`` (finetune/rewards/ names, or ``package.module:function``
    with TRL's signature), each times its weight (all 1 when ``weights`` is empty)."""

    functions: list[str] = _field([])
    weights: list[float] = _field([])


@dataclass
class BackendConfig:
    """Where training runs. The hosted backends' settings (finetune/backends/hosted/) say which job is run; the
    ``RUNTIME`` ones only how this process submits and watches it, so changing them never starts a second job."""

    RUNTIME: typing.ClassVar[tuple[str, ...]] = ("submit", "poll_interval_s", "chat_base_url")

    name: str = _field("hf", choices=tuple(BACKENDS))
    # hosted: the provider's id of the model to tune (gpt-4.1-mini-2025-04-14, gemini-2.5-flash, amazon.nova-micro-v1:0)
    base_model: str | None = None
    # openai: the OpenAI-compatible API (https://api.openai.com/v1, Together, Fireworks …); vertex, bedrock: an
    # endpoint override (a private endpoint, or a local server in tests)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the key's environment variable; the key itself is never written anywhere
    project: str | None = None  # vertex: the Google Cloud project
    region: str | None = None  # vertex: its location (us-central1); bedrock: the AWS region (us-east-1)
    bucket: str | None = None  # vertex: gs://bucket/prefix, bedrock: s3://bucket/prefix — data and outputs go there
    role_arn: str | None = None  # bedrock: the IAM role the customisation job runs as
    epochs: int | None = _field(None, low=1)  # null: the provider's default
    batch_size: int | None = _field(None, low=1)  # null: the provider's default
    lr_multiplier: float | None = _field(None, low=0.0, low_open=True)  # × the provider's learning rate; null: default
    submit: bool = False  # submitting costs money: false writes the plan, its cost and the exact files, then stops
    poll_interval_s: float = _field(30.0, low=0.0, low_open=True)
    # The OpenAI-compatible endpoint evaluate asks the base and tuned models through; null: the provider's own
    chat_base_url: str | None = None


@dataclass
class TrainConfig:
    max_steps: int = _field(-1, low=-1)  # -1: train for `epochs`
    epochs: float = _field(1.0, low=0.0, low_open=True)
    batch_size: int = _field(1, low=1)
    grad_accum: int = _field(4, low=1)
    lr: float | None = _field(None, low=0.0, high=1.0, low_open=True)  # None: the method's (LoRA 2e-4, full 2e-5)
    lr_scheduler: str = _field("cosine", choices=("cosine", "linear", "constant", "constant_with_warmup"))
    warmup_ratio: float = _field(0.03, low=0.0, high=0.5)
    weight_decay: float = _field(0.0, low=0.0, high=1.0)
    max_grad_norm: float = _field(1.0, low=0.0)  # gradient clipping; 0 turns it off
    optimizer: str = _field("adamw_torch", choices=OPTIMIZERS)
    max_seq_len: int = _field(1024, low=16)
    gradient_checkpointing: bool = False
    packing: bool = False  # a micro-batch's rows as one row, no padding, no attention across samples
    loss_on: str = _field("assistant", choices=("assistant", "all"))  # all: every token (full-sequence loss)
    save_steps: int = _field(50, low=1)
    eval_steps: int | None = _field(None, low=1)  # None: evaluate when saving
    save_total_limit: int = _field(2, low=1)
    keep_best: bool = False  # end with the checkpoint of lowest eval loss instead of the last one
    early_stopping_patience: int | None = _field(None, low=1)  # stop after this many evals without improving
    overfit_ratio: float = _field(1.5, low=1.0)  # flag over-fitting when eval loss > this × train loss
    overfit_rising_evals: int = _field(3, low=1)  # ...or when eval loss rose at this many evaluations in a row
    logging_steps: int = _field(1, low=1)
    num_processes: int = _field(1, low=1)  # >1: data-parallel workers (finetune/distributed.py)
    distributed: str = _field("ddp", choices=tuple(STRATEGIES))  # ddp (CPU or CUDA); fsdp, deepspeed on CUDA
    # how the workers start (finetune/launch/): torchrun on this node (train.nnodes > 1: on each node, with c10d
    # rendezvous), or ray: a Ray Train TorchTrainer on a Ray cluster (train.ray_address)
    engine: str = _field("torchrun", choices=tuple(ENGINES))
    nnodes: int = _field(1, low=1)  # nodes, each running train.num_processes workers
    max_restarts: int = _field(0, low=0)  # a failed worker group starts again from the last checkpoint
    ray_address: str | None = None  # engine=ray: ray://host:10001 or auto; null: RAY_ADDRESS, else a local cluster

    @property
    def rows_per_step(self) -> int:
        """The global batch: what one optimizer step averages over, however the workers split it."""
        return self.batch_size * self.grad_accum * self.num_processes * self.nnodes


@dataclass
class CompareConfig:
    """One more model asked the same prompts, scored on the same answer metrics: a GGUF through llama.cpp
    (what quantisation cost) or a model behind an OpenAI-compatible URL (a hosted model)."""

    name: str = MISSING  # its column in the table
    gguf: str | None = None
    base_url: str | None = None
    model: str | None = None  # the model id at base_url
    api_key_env: str = "OPENAI_API_KEY"  # the key's environment variable; the key itself is never in config
    sampler_extras: bool = False  # also send top_k and repeat_penalty (llama.cpp and vLLM servers take them)


DEFAULT_METRICS = ["perplexity", "sequence_perplexity", "forgetting", "rouge", "bleu", "chrf", "exact_match",
                   "repetition", "stopped"]


@dataclass
class EvalConfig:
    max_samples: int | None = _field(None, low=1)  # cap on held-out conversations scored and prompts answered
    metrics: list[str] = _field(DEFAULT_METRICS, choices=tuple(METRICS))  # finetune/metrics/
    # modelfile: the exported Modelfile's sampling (export.temperature, top_p, top_k, repeat_penalty,
    # repeat_last_n, its stop tokens; seeded) — what Ollama users get; greedy: argmax, no repeat penalty
    decoding: str = _field("modelfile", choices=("modelfile", "greedy"))
    max_new_tokens: int = _field(96, low=1)
    # who runs the base and tuned answers' forward passes: llama.cpp from f16 GGUFs of both (written for the
    # evaluation), or transformers in process; auto: llama.cpp on a CPU where the model converts to GGUF
    engine: str = _field("auto", choices=("auto", "llama_cpp", "transformers"))
    # prompts generated together (transformers), conversations scored together (on a CPU: as fit in 512 tokens)
    batch_size: int = _field(8, low=1)
    show_samples: int = _field(3, low=0)  # answers shown side by side in eval.md (all are in samples.jsonl)
    style: list[StyleRule] = _field([])  # the `style` metric's rules
    json_schema: Any = None  # the `json` metric's JSON schema for answers
    code_timeout_s: float = _field(10.0, low=0.1)  # per answer, for the `code` metric's tests
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    compare: list[CompareConfig] = _field([])


@dataclass
class ExportConfig:
    # Each one written and checked by the parity gate (finetune/export/parity.py): gated, or measured (K-quants)
    gguf_types: list[str] = _field(["f16"], choices=OUT_TYPES)
    adapter: bool = False  # LoRA methods: also the base model as f16 GGUF + the adapter as a llama.cpp GGUF LoRA
    ollama: bool = True
    # also `ollama create <run_name> -f Modelfile` and one held-out question, when an ollama binary is on PATH
    ollama_create: bool = False
    system_prompt: str | None = None  # None: the training data's most common system prompt
    # The Modelfile's sampling, which `evaluate` also answers with (eval.decoding=modelfile)
    temperature: float = _field(0.3, low=0.0, high=2.0)
    top_p: float = _field(0.9, low=0.0, high=1.0, low_open=True)
    top_k: int = _field(OLLAMA_TOP_K, low=0)
    repeat_penalty: float = _field(1.1, low=0.0, low_open=True)
    repeat_last_n: int = _field(OLLAMA_REPEAT_LAST_N, low=0)
    num_ctx: int = _field(2048, low=128)
    parity_samples: int = _field(8, low=1)  # held-out conversations the parity gate compares on
    parity_max_tokens: int = _field(512, low=16)  # each cut to this many tokens


@dataclass
class CardConfig:
    """The model card's metadata (README.md's YAML header, as the Hub reads it)."""

    language: list[str] = _field([])  # ISO 639-1 codes of the training data: [ja]
    license: str | None = None  # None: model.license
    tags: list[str] = _field([])
    datasets: list[str] = _field([])  # Hub ids of the training data, when it is on the Hub


@dataclass
class PublishConfig:
    """Pushing the results to a Hub model repo (off while repo_id is null). The token is read from the
    environment variable ``token_env`` at push time and never written anywhere."""

    repo_id: str | None = None  # user/name
    include: list[str] = _field(["gguf"], choices=("merged", "gguf", "adapter"))
    private: bool = True
    dry_run: bool = False  # true: write the exact upload folder and its file list, contact nothing
    token_env: str = "HF_TOKEN"
    endpoint: str | None = None  # another Hub endpoint (a mirror or a private Hub); null: huggingface.co


@dataclass
class SweepConfig:
    """How a multirun's jobs are ranked (finetune/sweep/): the summary marks the best job by ``metric``, and an
    Optuna search (``hparams_search=optuna``) optimises it. No stage reads these keys: changing them reruns
    nothing."""

    # eval_loss (train's best or last), train_loss, tokens_per_s, or a metric of evaluate's table (rouge, …)
    metric: str = "eval_loss"
    direction: str = _field("auto", choices=("auto", "minimize", "maximize"))  # auto: losses down, scores up


@dataclass
class RunConfig:
    run_name: str = "default"
    seed: int = 42
    stages: list[str] = _field(list(STAGE_NAMES))
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    card: CardConfig = field(default_factory=CardConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


def _check_reward(run: RunConfig) -> None:
    """reward.* is objective=grpo's, which needs at least one function, each a reward name or an import path."""
    from finetune.rewards import REWARDS

    functions, weights = run.reward.functions, run.reward.weights
    if not OBJECTIVES[run.objective.name].rollouts:
        if functions or weights:
            raise ConfigError(f"reward.functions: objective={run.objective.name} uses no reward (objective=grpo does)")
        return
    if not functions:
        raise ConfigError(f"reward.functions: objective={run.objective.name} needs at least one: {', '.join(REWARDS)} "
                          "or package.module:function")
    for i, name in enumerate(functions):
        if name not in REWARDS and (":" not in name or not all(name.split(":"))):
            raise ConfigError(f"reward.functions[{i}]={name!r}: expected one of {', '.join(REWARDS)} or "
                              "package.module:function")
    if weights and len(weights) != len(functions):
        raise ConfigError(f"reward.weights: {len(weights)} weights for {len(functions)} reward.functions")
    t, n = run.train, run.objective.num_generations
    if (rows := t.rows_per_step) % n:
        raise ConfigError(f"objective.num_generations={n}: the answers to a prompt are compared within a step, so "
                          f"train.batch_size × train.grad_accum × train.num_processes × train.nnodes ({rows}) must "
                          "be a multiple of it")


def _check_objective_settings(objective: ObjectiveConfig) -> None:
    """A setting the chosen objective does not read is refused, naming the objectives that read it; so is a loss
    of another objective."""
    entry = OBJECTIVES[objective.name]
    if objective.loss_type is not None and entry.losses and objective.loss_type not in entry.losses:
        raise ConfigError(f"objective.loss_type={objective.loss_type}: objective={objective.name} takes "
                          f"{', '.join(entry.losses)}")
    used = entry.settings
    for f in dataclasses.fields(ObjectiveConfig):
        if f.name != "name" and f.name not in used and getattr(objective, f.name) != f.default:
            readers = [o.name for o in OBJECTIVES.values() if f.name in o.settings]
            raise ConfigError(f"objective.{f.name}={getattr(objective, f.name)}: objective={objective.name} does not "
                              f"use it ({', '.join(readers)} {'does' if len(readers) == 1 else 'do'})")


def _range_text(meta: dict[str, Any]) -> str:
    low, high = meta["low"], meta["high"]
    if low is not None and high is not None:
        return f"in {'(' if meta['low_open'] else '['}{low}, {high}]"
    if low is not None:
        return f"{'>' if meta['low_open'] else '>='} {low}"
    return f"<= {high}"


def _check_fields(node: Any, prefix: str) -> None:
    for f in dataclasses.fields(node):
        key, value = f"{prefix}{f.name}", getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_fields(value, f"{key}.")
            continue
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                _check_fields(item, f"{key}[{i}].")
            continue
        meta = f.metadata
        if not meta or value is None:
            continue
        if meta["choices"] is not None:
            for item in value if isinstance(value, list) else [value]:
                if item not in meta["choices"]:
                    raise ConfigError(f"{key}={item!r}: must be one of {', '.join(meta['choices'])}")
            continue
        if meta["low"] is None and meta["high"] is None:
            continue
        too_low = meta["low"] is not None and (value <= meta["low"] if meta["low_open"] else value < meta["low"])
        too_high = meta["high"] is not None and value > meta["high"]
        if too_low or too_high or (isinstance(value, float) and math.isnan(value)):
            raise ConfigError(f"{key}={value}: must be {_range_text(meta)}")


def _check_cross_fields(run: RunConfig) -> None:
    for name in run.stages:
        if name not in STAGE_NAMES:
            raise ConfigError(f"stages: unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")
    d = run.dataset
    if d.validation_fraction + d.test_fraction >= 1.0:
        raise ConfigError("dataset.validation_fraction + dataset.test_fraction must be < 1")
    if (d.validation_path is None) != (d.test_path is None):
        raise ConfigError("dataset.validation_path and dataset.test_path: give both (fixed splits) or neither")
    if d.path is None and not d.sources and d.synthetic is None:
        raise ConfigError("dataset.path: not set; give a data file, a datasets.save_to_disk folder or a Hub dataset "
                          "id (or dataset.sources, or dataset.synthetic)")
    if d.synthetic is not None:
        for key in ("topic", "model"):
            if not getattr(d.synthetic, key).strip():
                raise ConfigError(f"dataset.synthetic.{key} is empty")
        if not d.synthetic.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"dataset.synthetic.base_url={d.synthetic.base_url!r}: expected the http(s) URL of an "
                              "OpenAI-compatible API (…/v1)")
    paths = [(f"dataset.{key}", getattr(d, key)) for key in ("path", "validation_path", "test_path")]
    for key, value in [*paths, *((f"dataset.sources[{i}].path", s.path) for i, s in enumerate(d.sources))]:
        if value is None:
            continue
        if not value.strip():
            raise ConfigError(f"{key} is empty; expected a data file, a datasets.save_to_disk folder or a Hub "
                              "dataset id")
        if problem := path_problem(value):
            raise ConfigError(f"{key}: {problem}")
    train = run.train
    if train.keep_best or train.early_stopping_patience is not None:
        key = "train.keep_best" if train.keep_best else "train.early_stopping_patience"
        if d.validation_fraction == 0 and d.validation_path is None:
            raise ConfigError(f"{key}: the best checkpoint is chosen by eval loss, and there is no validation split "
                              "(dataset.validation_fraction=0, no dataset.validation_path)")
        if train.eval_steps is not None and train.save_steps % train.eval_steps:
            raise ConfigError(f"train.save_steps={train.save_steps} must be a multiple of train.eval_steps="
                              f"{train.eval_steps} when the best checkpoint is kept (train.keep_best or "
                              "train.early_stopping_patience): set train.eval_steps to a divisor of "
                              f"{train.save_steps}")
    if run.export.ollama_create and not run.export.ollama:
        raise ConfigError("export.ollama_create=true needs the Modelfile it loads: set export.ollama=true")
    targets = run.method.target_modules
    if targets not in ("auto", "all-linear") and (not isinstance(targets, list) or not targets or
                                                  not all(isinstance(t, str) and t for t in targets)):
        raise ConfigError(f"method.target_modules={targets!r}: expected a list of layer names, all-linear or auto")
    objective = run.objective.name
    if objective not in BACKENDS[run.backend.name].objectives:
        able = " or ".join(f"backend={b.name}" for b in BACKENDS.values() if objective in b.objectives)
        raise ConfigError(f"objective={objective}: {OBJECTIVES[objective].description} runs only with {able}, not "
                          f"backend={run.backend.name}")
    _check_objective_settings(run.objective)
    if d.rejected_by is not None:
        if not d.rejected_by.strip():
            raise ConfigError("dataset.rejected_by is empty; expected model (the model the run starts from) or a "
                              "model source")
        if "pair" not in OBJECTIVES[objective].data:
            takers = ", ".join(o.name for o in OBJECTIVES.values() if "pair" in o.data)
            raise ConfigError(f"dataset.rejected_by={d.rejected_by}: rejected answers make preference pairs, and "
                              f"objective={objective} trains on none ({takers} do)")
        if LOCAL_WEIGHTS not in BACKENDS[run.backend.name].capabilities:
            raise ConfigError(f"dataset.rejected_by={d.rejected_by}: the rejected answers are written here, by a local "
                              f"model; backend={run.backend.name} trains the provider's — give it pairs")
    if train.batch_size < (fewest := OBJECTIVES[objective].batch_rows(run.objective)):
        loss = run.objective.loss_type or OBJECTIVES[objective].losses[0]
        raise ConfigError(f"train.batch_size={train.batch_size}: objective={objective} with its {loss} loss needs at "
                          f"least {fewest} rows in a micro-batch (it compares the rows of one)")
    _check_reward(run)
    hosted = LOCAL_WEIGHTS not in BACKENDS[run.backend.name].capabilities
    if run.objective.loss_type not in (None, "sigmoid") and hosted:
        raise ConfigError(f"objective.loss_type={run.objective.loss_type}: backend={run.backend.name} trains DPO's "
                          "sigmoid loss only")
    if run.objective.sft_weight and hosted:
        raise ConfigError(f"objective.sft_weight={run.objective.sft_weight:g}: backend={run.backend.name} trains DPO's "
                          "sigmoid loss only, with no supervised term")
    _check_eval(run.eval)
    if not run.model.source.strip():
        raise ConfigError("model.source is empty; expected a Hub id, a model folder, a .gguf file or "
                          "package:<pkg>/<file>")
    if run.model.chat_template is not None:
        from finetune.chat_templates import ChatTemplateSettingError, template_text

        try:
            template_text(run.model.chat_template)
        except ChatTemplateSettingError as e:
            raise ConfigError(str(e)) from None


def _check_eval(ev: EvalConfig) -> None:
    if "style" in ev.metrics and not ev.style:
        raise ConfigError("eval.metrics: `style` needs rules in eval.style (name, require_any, forbid)")
    if problem := check_style_rules(ev.style):
        raise ConfigError(problem)
    if ev.json_schema is not None:
        import jsonschema

        try:
            jsonschema.Draft202012Validator.check_schema(ev.json_schema)
        except jsonschema.SchemaError as e:
            raise ConfigError(f"eval.json_schema: not a JSON schema ({e.message})") from None
    for i, c in enumerate(ev.compare):
        key = f"eval.compare[{i}]"
        if (c.gguf is None) == (c.base_url is None):
            raise ConfigError(f"{key}: give gguf (a .gguf file) or base_url and model (an OpenAI-compatible API)")
        if c.base_url is not None and not c.model:
            raise ConfigError(f"{key}.model: the model id to ask at {c.base_url} is not set")
        if c.gguf is not None and not Path(c.gguf).is_file():
            raise ConfigError(f"{key}.gguf: no such file {c.gguf}")
        if c.name in ("base", "tuned") or [d.name for d in ev.compare].count(c.name) > 1:
            raise ConfigError(f"{key}.name={c.name!r}: must differ from base, tuned and the other names")
    judge = ev.judge
    if judge.base_url and judge.gguf:
        raise ConfigError("eval.judge: give base_url (an OpenAI-compatible endpoint) or gguf (served locally), "
                          "not both")
    if judge.gguf and not judge.gguf.startswith("package:") and not Path(judge.gguf).is_file():
        raise ConfigError(f"eval.judge.gguf: no such file {judge.gguf}")
    if not judge.criteria or len(set(judge.criteria)) != len(judge.criteria):
        raise ConfigError(f"eval.judge.criteria={judge.criteria!r}: expected a list of distinct criterion names")


def _nested_schema(schema: Any, key: str) -> Any:
    """The dataclass of field ``key`` (also when Optional), or None for a plain value."""
    hint = typing.get_type_hints(schema)[key]
    return next((t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), None)


def unknown_key_message(dotted: str) -> str:
    """``train.lr_sched: no such key; did you mean train.lr_scheduler?`` — close names come from the schema."""
    schema: Any = RunConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(schema)]
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            return f"{dotted}: no such key" + (f"; did you mean {'.'.join([*parts[:i], close[0]])}?" if close else "")
        schema = _nested_schema(schema, part)
        if schema is None:
            break
    return f"{dotted}: no such key"


def _check_known_keys(node: DictConfig, schema: Any, prefix: str) -> None:
    """Every key must be a field of the schema: Hydra lets ``+method.foo=1`` into a typed config, and
    OmegaConf then drops it silently when building the dataclasses."""
    names = {f.name for f in dataclasses.fields(schema)}
    for key in node:
        if key not in names:
            raise ConfigError(unknown_key_message(f"{prefix}{key}"))
        nested = _nested_schema(schema, str(key))
        if nested is not None and isinstance(node[key], DictConfig):
            _check_known_keys(node[key], nested, f"{prefix}{key}.")


def load_run_config(cfg: DictConfig) -> RunConfig:
    """Validate a composed config and return it as a typed ``RunConfig``; raises ``ConfigError``."""
    _check_known_keys(cfg, RunConfig, "")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        OmegaConf.resolve(merged)
        run = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        reason = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {reason}" if key else reason) from None
    assert isinstance(run, RunConfig)
    _check_fields(run, "")
    _check_cross_fields(run)
    return run


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``{"train": {"lr": 1}}`` → ``{"train.lr": 1}``); lists stay whole values."""
    if not isinstance(data, dict) or not data:
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
    return flat


def section(run: RunConfig, dotted: str) -> Any:
    """A plain-data view of one config key (``"train.max_seq_len"``, ``"model"``), for fingerprints."""
    value: Any = run
    for part in dotted.split("."):
        value = getattr(value, part)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

"""The pipeline's stages in order. Each module has one entry point, ``run(config, context) -> artifacts``;
``needs`` names the upstream stages whose artifacts it reads, ``config_keys`` the config it depends on."""

from finetune.graph import Stage
from finetune.stages import evaluate, export, merge, train, validate

STAGES: tuple[Stage, ...] = (
    Stage("validate", validate.run, needs=(), config_keys=("model", "dataset", "seed", "train.max_seq_len")),
    Stage("train", train.run, needs=("validate",), config_keys=("model", "method", "backend", "train", "seed")),
    Stage("merge", merge.run, needs=("train",), config_keys=("model", "method")),
    Stage("evaluate", evaluate.run, needs=("validate", "merge"), config_keys=("model", "eval", "train.max_seq_len")),
    Stage("export", export.run, needs=("validate", "merge", "evaluate"), config_keys=("export", "seed", "run_name")),
)

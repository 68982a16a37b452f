"""The pipeline's stages in order. Each module has one entry point, ``run(config, context) -> artifacts``;
``needs`` names the upstream stages whose artifacts it reads, ``config_keys`` the config it depends on (a test
records every key each stage reads and checks it is listed), ``checks`` what refuses bad input before any
stage runs. Only ``train`` resumes; the others start again from an empty folder."""

from finetune.models import check_source
from finetune.pipeline.graph import Stage
from finetune.stages import card, evaluate, export, merge, publish, train, validate

STAGES: tuple[Stage, ...] = (
    Stage("validate", validate.run, needs=(), config_keys=validate.CONFIG_KEYS, input_files=validate.input_files,
          checks=(check_source, validate.check)),
    Stage("train", train.run, needs=("validate",), config_keys=("model", "method", "backend", "train", "seed"),
          resumable=True, checks=(check_source, train.check)),
    Stage("merge", merge.run, needs=("train",), config_keys=("model", "method"), checks=(check_source,)),
    Stage("evaluate", evaluate.run, needs=("validate", "merge"), config_keys=evaluate.CONFIG_KEYS,
          checks=(check_source, evaluate.check)),
    Stage("export", export.run, needs=("validate", "train", "merge"), config_keys=export.CONFIG_KEYS,
          checks=(export.check,)),
    Stage("card", card.run, needs=("validate", "train", "evaluate", "export"), config_keys=card.CONFIG_KEYS),
    Stage("publish", publish.run, needs=("train", "merge", "export", "card"), config_keys=publish.CONFIG_KEYS,
          checks=(publish.check,)),
)

"""The pipeline's stages in order. Each module has one entry point, ``run(config, context) -> artifacts``;
``needs`` names the upstream stages whose artifacts it reads, ``config_keys`` the config it depends on (a test
records every key each stage reads and checks it is listed), ``checks`` what refuses bad input before any
stage runs. Only ``train`` resumes; the others start again from an empty folder."""

from types import ModuleType
from typing import Any

from finetune.backends import BACKENDS, lacks
from finetune.backends.base import LOCAL_WEIGHTS
from finetune.config import RunConfig
from finetune.models import check_source
from finetune.pipeline.graph import Stage
from finetune.stages import card, evaluate, export, merge, publish, rejected, synthesize, train, validate


def _train_keys(run: RunConfig) -> tuple[str, ...]:
    """What the run's backend reads to train (a hosted job's settings, or the local model, method and train.*)."""
    return BACKENDS[run.backend.name].config_keys(run)


def _stage(module: ModuleType, **how: Any) -> Stage:
    """A stage named by its module, ``finetune/stages/<name>.py``; ``config.STAGE_NAMES`` lists them in this order."""
    return Stage(module.__name__.rpartition(".")[2], module.run, **how)


STAGES: tuple[Stage, ...] = (
    _stage(synthesize, needs=(), config_keys=synthesize.CONFIG_KEYS, left_out=synthesize.left_out),
    _stage(validate, needs=("synthesize",), config_keys=validate.CONFIG_KEYS, input_files=validate.input_files,
           checks=(check_source,), prepare=validate.check),
    _stage(rejected, needs=("validate",), config_keys=rejected.CONFIG_KEYS, input_files=rejected.input_files,
           checks=(rejected.check,), left_out=rejected.left_out),
    # its config keys are its backend's, which stages_for sets for each run
    _stage(train, needs=("validate", "rejected"), config_keys=(), keys_for=_train_keys, resumable=True,
           checks=(check_source, train.check)),
    _stage(merge, needs=("train",), config_keys=("model", "method"), checks=(check_source,),
           left_out=lacks(LOCAL_WEIGHTS)),
    _stage(evaluate, needs=("validate", "train", "merge"), config_keys=evaluate.CONFIG_KEYS,
           checks=(check_source, evaluate.check)),
    _stage(export, needs=("validate", "train", "merge"), config_keys=export.CONFIG_KEYS, checks=(export.check,),
           left_out=lacks(LOCAL_WEIGHTS)),
    _stage(card, needs=("validate", "train", "evaluate", "export"), config_keys=card.CONFIG_KEYS),
    _stage(publish, needs=("train", "merge", "export", "card"), config_keys=publish.CONFIG_KEYS,
           checks=(publish.check,), left_out=lacks(LOCAL_WEIGHTS)),
)

"""Hydra instantiates a sweeper only from a class defined in the ``hydra_plugins`` namespace: finetune's Optuna
search (``finetune/sweep/optuna_search.py``) is named here, for ``hydra/sweeper=finetune_optuna``."""

from finetune.sweep import optuna_search


class OptunaSearch(optuna_search.OptunaSearch):
    """The class Hydra finds; everything is in ``finetune.sweep.optuna_search.OptunaSearch``."""


optuna_search.register_config()

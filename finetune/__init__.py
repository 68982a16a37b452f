"""finetune: a declarative, Hydra-driven pipeline that fine-tunes language models.

Entry point: ``python -m finetune`` (see ``cli.py``), which composes ``conf/`` and runs the stage graph
(``pipeline/graph.py``) over the stages in ``stages/``.
"""

__version__ = "0.1.0"

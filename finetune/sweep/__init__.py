"""Multiruns: the summary a sweep ends with (``summary.py``), the Optuna search behind Hydra's sweeper interface
(``optuna_search.py``), and a trial's side of it inside the job (``trial.py``)."""

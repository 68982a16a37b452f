"""``python -m finetune``: see ``finetune/cli.py``. The CLI lives in an importable module so that a launcher
that runs jobs in other processes (submitit) can pickle the task function by reference."""

from finetune.cli import main

if __name__ == "__main__":
    main()

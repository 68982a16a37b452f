"""What ``python -m finetune`` imports on a run, imported once by the fork server that ``run_cli`` starts its
processes from (``tests/forked_cli.py``). Importing is all this does: no model, thread or file is made here. What
it imported is then frozen out of the garbage collector's sight: a run's collections (``gc.collect`` as each model
is released) walk the run's own objects, not the ~670,000 of these libraries (0.46 s a collection)."""

from __future__ import annotations

import gc
import importlib
import pkgutil

import finetune

# The libraries a tiny run imports, in the order a run meets them; the finetune modules themselves are light.
LIBRARIES = (
    "torch",
    "transformers",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.auto.modeling_auto",
    "transformers.models.llama.modeling_llama",
    "transformers.trainer",
    "transformers.generation.utils",
    "peft",
    "accelerate",
    "datasets",
    "safetensors.torch",
    "torch.utils.tensorboard",
    "matplotlib.pyplot",
    "lm_eval.evaluator",
    "lm_eval.tasks",
    "lm_eval.models.huggingface",
    "rouge_score.rouge_scorer",
    "sacrebleu",
    "gguf",
    "llama_cpp",
    "optuna",
    "trl",  # the objectives past SFT, and their trainers
    "trl.trainer.dpo_trainer",
    "trl.trainer.kto_trainer",
    "trl.trainer.grpo_trainer",
)

for name in LIBRARIES:
    importlib.import_module(name)
for module in pkgutil.walk_packages(finetune.__path__, "finetune."):
    importlib.import_module(module.name)
gc.freeze()

"""A non-editable install finds its configs, recipes and data as package data, from any directory."""

from __future__ import annotations

import os
import subprocess
import sys

from omegaconf import OmegaConf

from .conftest import REPO


def test_wheel_runs_from_any_directory(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, REPO], check=True)
    [wheel] = wheels.glob("finetune-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-m", "finetune", "--cfg", "job", "--resolve", "+recipe=support_bot"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )
    spec = OmegaConf.create(proc.stdout)
    assert spec.run_name == "support_bot"
    assert spec.dataset.path == str(target / "finetune" / "bundled_data" / "support_bot" / "conversations.jsonl")
    assert (target / "finetune" / "conf" / "config.yaml").is_file()
    assert (target / "finetune" / "recipes" / "support_bot.yaml").is_file()
    assert (target / "finetune" / "model_configs" / "meta-llama--Llama-3.1-8B-Instruct.json").is_file()  # plan, offline

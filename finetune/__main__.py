"""``python -m finetune [overrides]``: compose the config with Hydra, validate it, run the stage graph.

Reading order for newcomers: this file → ``config.py`` (the schema) → ``graph.py`` (order, skipping,
resuming) → ``stages/__init__.py`` (the stages) → any one stage module.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from finetune import resolvers
from finetune.config import ConfigError, load_run_config
from finetune.errors import UserError
from finetune.paths import CONF_DIR, RECIPES_DIR


def register_recipes() -> None:
    """Make ``recipes/*.yaml`` the config group ``recipe`` (``+recipe=NAME``) wherever finetune is installed,
    without a search path that depends on the working directory."""
    store = ConfigStore.instance()
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        store.store(group="recipe", name=path.stem, node=OmegaConf.load(path), package="_global_")


def _remove_empty_run_dir(run_dir: Path) -> None:
    """A rejected config ran nothing: remove the run directory Hydra made, and its parents it left empty."""
    shutil.rmtree(run_dir)
    cwd = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:
        if parent == cwd or not parent.is_relative_to(cwd) or any(parent.iterdir()):
            break
        parent.rmdir()


def _fail(error: Exception) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def _summary(run_dir: Path, manifests: dict) -> str:
    lines = [f"run directory: {run_dir}"]
    for name, manifest in manifests.items():
        lines.append(f"  {name}/  ({manifest.duration_s} s)")
        for artifact in manifest.artifacts.values():
            path = run_dir / name / artifact["path"]
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else (
                path.stat().st_size)
            lines.append(f"    {artifact['path']:<28} {size / 1e6:9.2f} MB")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def run(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        spec = load_run_config(cfg)
    except ConfigError as e:
        if not any(p.is_dir() and not p.name.startswith(".") for p in run_dir.iterdir()):
            _remove_empty_run_dir(run_dir)
        _fail(e)
    # The stages pull in torch and friends: imported only now, so --cfg, --help and bad configs stay fast.
    from finetune.graph import run_graph
    from finetune.stages import STAGES

    try:
        manifests = run_graph(spec, run_dir, STAGES)
    except UserError as e:
        _fail(e)
    print(_summary(run_dir, manifests))


def main() -> None:
    resolvers.register()
    register_recipes()
    run()


if __name__ == "__main__":
    main()

"""``python -m finetune launch``: the run as a SkyPilot task on rented GPUs, ``launch.nodes`` nodes of
``launch.accelerators`` each, on whichever cloud SkyPilot picks (or ``launch.cloud``).

The task carries the run's composed config (a file mounted at ``/finetune/task/config.yaml``, so the cluster runs
exactly what was checked and planned here), the local files it reads (mounted under ``/finetune/inputs/``, the
config pointing there), this checkout as SkyPilot's workdir (installed with ``pip install -e .``), and a bucket
mounted at ``/finetune/outputs`` that holds the run folder: every node sees it, as the workers' checkpoints need,
and it outlives the cluster. Every node runs the same ``python -m finetune`` with ``train.nnodes`` and
``train.num_processes`` from SkyPilot's variables; ``finetune.launch.torchrun`` reads the node's rank and node 0's
address from SkyPilot's variables too.

SkyPilot pins libraries ours need newer (click), so it lives in an environment of its own: nothing here imports
``sky``. Its ``sky`` command launches, and its interpreter parses the task (``sky.Task.from_yaml``) to check it.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from finetune.errors import UserError
from finetune.paths import PACKAGE_DIR

PROJECT_DIR = PACKAGE_DIR.parent  # the checkout SkyPilot syncs as the workdir
REMOTE = "/finetune"
OUTPUTS, INPUTS, TASK = f"{REMOTE}/outputs", f"{REMOTE}/inputs", f"{REMOTE}/task"
VENV = "~/.finetune-venv"
INSTALL_HINT = ("install SkyPilot in an environment of its own (it pins click<8.2) with `sky` on PATH: `pipx install "
                "skypilot`, or `pip install 'skypilot[aws]'` in another venv (`make sky` builds .venv-sky)")
# The keys that may name a file or folder on this machine; the rest name Hub ids, packages or URLs.
PATH_KEYS = ("model.source", "model.chat_template", "dataset.path", "dataset.validation_path", "dataset.test_path",
             "dataset.rejected_by", "eval.judge.gguf")
LIST_PATH_KEYS = (("dataset.sources", "path"), ("eval.compare", "gguf"))
PREFIXES = ("run:", "python:", "")  # sources given as a scheme and a local path
ACCELERATORS = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*(:[1-9][0-9]*)?")
CLUSTER = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
CLOUD = re.compile(r"[a-z][a-z0-9]*")
REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:/-]*")  # a Kubernetes context is a region too
PATTERNS = {"accelerators": ACCELERATORS, "cluster": CLUSTER, "cloud": CLOUD, "region": REGION}
BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
BUCKET_URL = re.compile(r"(s3|gs|r2|cos|oci)://[^\s]+|https://[^\s]+")


class LaunchError(UserError, ValueError):
    """A launch setting is wrong, the task cannot be made, or SkyPilot refused it."""


@dataclass(frozen=True)
class LaunchSettings:
    """What ``launch.*`` on the command line asks for; defaults fill the rest."""

    accelerators: str  # each node's GPUs, as SkyPilot spells them: H100:8, A100-80GB:4, L4
    nodes: int = 1
    cloud: str | None = None  # null: SkyPilot picks the cheapest cloud with the GPUs
    region: str | None = None
    use_spot: bool = False
    bucket: str | None = None  # for the outputs: a name (made, or reused) or s3://, gs://… of one that exists
    cluster: str | None = None  # null: finetune-<run_name>
    down: bool = True  # tear the cluster down once the run folder is back (the bucket keeps it too)

    @property
    def gpus_per_node(self) -> int:
        return int(self.accelerators.partition(":")[2] or 1)

    @property
    def gpu(self) -> str:
        return self.accelerators.partition(":")[0]


EXPECTED = {
    "accelerators": "each node's GPUs as NAME:COUNT, as SkyPilot names them (H100:8, A100-80GB:4, L4)",
    "nodes": "a whole number of nodes, 1 or more",
    "cloud": "a cloud SkyPilot knows (aws, gcp, azure, lambda, runpod, kubernetes, …), or null to let it choose",
    "region": "a region of that cloud, or null",
    "use_spot": "true or false",
    "bucket": "a bucket name (3-63 lowercase letters, digits, hyphens) or the URL of one (s3://, gs://, r2://…)",
    "cluster": "a cluster name: lowercase letters, digits and hyphens, starting with a letter",
    "down": "true or false",
}


def _slug(text: str) -> str:
    """A name clouds take for a cluster or a bucket: lowercase letters, digits and hyphens, at most 63."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower())[:63].strip("-")


def settings(values: dict[str, Any]) -> LaunchSettings:
    """The settings from ``launch.KEY`` values (YAML-typed), each checked; a wrong one is refused in one line."""
    for key in values:
        if key not in EXPECTED:
            raise LaunchError(f"launch.{key}: unknown key; launch keys are {', '.join(EXPECTED)}")
    if values.get("accelerators") is None:
        raise LaunchError(f"launch.accelerators: not set; expected {EXPECTED['accelerators']}")
    s = LaunchSettings(**values)
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if not _valid(f.name, value):
            raise LaunchError(f"launch.{f.name}={value!r}: expected {EXPECTED[f.name]}")
    return s


def named(s: LaunchSettings, run_name: str) -> LaunchSettings:
    """``s`` with the cluster and the bucket named after the run where the command line named none."""
    return dataclasses.replace(s, cluster=s.cluster or _slug(f"finetune-{run_name}"),
                               bucket=s.bucket or _slug(f"finetune-{getpass.getuser()}-{run_name}"))


def _valid(key: str, value: Any) -> bool:
    if key == "nodes":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if key in ("use_spot", "down"):
        return isinstance(value, bool)
    if value is None and key != "accelerators":
        return True
    if not isinstance(value, str):
        return False
    if key == "bucket":
        return bool(BUCKET.fullmatch(value) or BUCKET_URL.fullmatch(value))
    return bool(PATTERNS[key].fullmatch(value))


def _local(value: str | None) -> tuple[str, Path] | None:
    """The scheme and the file or folder on this machine that ``value`` names, or None (a Hub id, a package, a
    URL, or what ships inside finetune: the cluster has its own copy)."""
    if not value:
        return None
    for prefix in PREFIXES:
        if value.startswith(prefix) and (path := Path(value.removeprefix(prefix)).expanduser()).exists():
            return None if _shipped(path.resolve()) else (prefix, path.resolve())
    return None


def _shipped(path: Path) -> bool:
    """Whether ``path`` is part of finetune itself (the package, its configs, recipes and bundled data)."""
    from finetune.paths import CONF_DIR, DATA_DIR, RECIPES_DIR

    return any(path.is_relative_to(root.resolve()) for root in (PACKAGE_DIR, CONF_DIR, DATA_DIR, RECIPES_DIR))


def local_inputs(run: Any) -> dict[str, tuple[str, Path]]:
    """Each config key that names a local file or folder: its scheme and path. They are mounted on the cluster."""
    from finetune.config import section

    found = {key: local for key in PATH_KEYS if (local := _local(section(run, key)))}
    for key, field in LIST_PATH_KEYS:
        for i, item in enumerate(section(run, key)):
            if local := _local(getattr(item, field)):
                found[f"{key}.{i}.{field}"] = local
    return found


def remote_input(key: str, path: Path) -> str:
    """Where a local input is mounted: one folder per key, so that two files of one name do not collide."""
    return f"{INPUTS}/{key}/{path.name}"


def shipped_config(cfg: Any, inputs: dict[str, tuple[str, Path]]) -> str:
    """The composed config as the cluster runs it (YAML, unresolved like a run's ``.hydra/config.yaml``, so that
    ``${bundled_data:…}`` finds the cluster's own copy), the local inputs pointing to their mounts."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    for key, (prefix, path) in inputs.items():
        OmegaConf.update(cfg, key, prefix + remote_input(key, path), merge=False)
    return OmegaConf.to_yaml(cfg)


def torch_requirement() -> str:
    """The torch release this machine runs, as the cluster installs it (PyPI's Linux build, with CUDA)."""
    try:
        return f"torch=={version('torch').split('+')[0]}"
    except PackageNotFoundError:
        return "torch"


def task(s: LaunchSettings, name: str, run_dir: str, config_file: Path, inputs: dict[str, tuple[str, Path]]
         ) -> dict[str, Any]:
    """The SkyPilot task (its YAML as a dict): ``run_dir`` is the run folder on the cluster, under the bucket."""
    resources: dict[str, Any] = {"accelerators": s.accelerators, "use_spot": s.use_spot}
    resources |= {k: v for k, v in (("cloud", s.cloud), ("region", s.region)) if v is not None}
    assert s.bucket is not None
    outputs = ({"source": s.bucket} if BUCKET_URL.fullmatch(s.bucket) else {"name": s.bucket}) | {"mode": "MOUNT"}
    mounts: dict[str, Any] = {OUTPUTS: outputs, f"{TASK}/config.yaml": str(config_file)}
    mounts |= {remote_input(key, path): str(path) for key, (_, path) in inputs.items()}
    pip = f"{VENV}/bin/pip install -q"
    setup = "\n".join([
        "set -e",
        f"python3 -m venv {VENV}",
        f"{pip} --upgrade pip",
        f"{pip} '{torch_requirement()}'",
        # llama.cpp (evaluation, export) compiles portably, as the Makefile builds it
        f"CMAKE_ARGS=-DGGML_NATIVE=OFF {pip} -e .",
    ])
    run = (f"{VENV}/bin/python -m finetune --config-path {TASK} --config-name config "
           'hydra.run.dir="$FINETUNE_RUN_DIR" '
           "train.nnodes=$SKYPILOT_NUM_NODES train.num_processes=$SKYPILOT_NUM_GPUS_PER_NODE")
    return {"name": name, "workdir": str(PROJECT_DIR), "num_nodes": s.nodes, "resources": resources,
            "envs": {"FINETUNE_RUN_DIR": run_dir}, "file_mounts": mounts, "setup": setup + "\n", "run": run + "\n"}


def sky_command() -> Path | None:
    """SkyPilot's ``sky`` on PATH, in whatever environment it was installed."""
    found = shutil.which("sky")
    return Path(found) if found else None


def sky_python(sky: Path) -> str:
    """The interpreter SkyPilot is installed in: the one its ``sky`` script starts (pip's, pipx's or uv's)."""
    lines = sky.resolve().read_text(encoding="utf-8", errors="replace").splitlines()[:3]
    if lines and lines[0].startswith("#!") and "python" in lines[0]:
        return lines[0][2:].strip().split()[0]
    for line in lines:  # pip's form for long paths: '''exec' "/path/python" "$0" "$@"
        if match := re.match(r"'''exec' \"?([^\"\s]+)", line):
            return match[1]
    raise LaunchError(f"{sky}: cannot tell which Python SkyPilot runs in; {INSTALL_HINT}")


# Run in SkyPilot's interpreter: parse the task as `sky launch` does and say what it understood.
PARSE = """
import json, sys
import sky
t = sky.Task.from_yaml(sys.argv[1])
r = next(iter(t.resources))
print(json.dumps({"version": sky.__version__, "name": t.name, "num_nodes": t.num_nodes,
    "accelerators": r.accelerators, "cloud": str(r.cloud) if r.cloud else None, "region": r.region,
    "use_spot": r.use_spot, "envs": dict(t.envs), "workdir": t.workdir, "setup": t.setup, "run": t.run,
    "file_mounts": dict(t.file_mounts or {}),
    "storage_mounts": {p: {"name": s.name, "source": s.source, "mode": s.mode.value}
                       for p, s in (t.storage_mounts or {}).items()}}))
"""


def validate(task_file: Path, sky: Path) -> dict[str, Any]:
    """The task as SkyPilot's own parser reads it; refused in one line (SkyPilot's last) when it cannot."""
    done = subprocess.run([sky_python(sky), "-c", PARSE, str(task_file)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise LaunchError(f"{task_file}: SkyPilot refused the task: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def launch(task_file: Path, s: LaunchSettings, run_dir: str, back_to: Path, sky: Path) -> int:
    """``sky launch`` (SkyPilot asks before it rents anything, showing its own price), then the run folder rsynced
    back from node 0 into ``back_to``, then, with ``launch.down``, the cluster torn down. The exit status is
    SkyPilot's, else rsync's."""
    assert s.cluster is not None
    secrets = [arg for name in ("HF_TOKEN",) if name in os.environ for arg in ("--secret", name)]
    code = subprocess.run([str(sky), "launch", "-c", s.cluster, *secrets, str(task_file)]).returncode
    back_to.mkdir(parents=True, exist_ok=True)
    # SkyPilot writes an ssh alias for the cluster's head node: rsync reaches the bucket through its mount
    fetched = subprocess.run(["rsync", "-a", f"{s.cluster}:{run_dir}/", f"{back_to}/"]).returncode
    print(f"run folder: {back_to}" if not fetched else
          f"the run folder did not come back (rsync exit {fetched}); it is in the bucket {s.bucket} "
          f"({run_dir.removeprefix(OUTPUTS + '/')})")
    if s.down:
        subprocess.run([str(sky), "down", "-y", s.cluster])
    return code or fetched

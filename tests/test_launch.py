"""``python -m finetune launch``: the SkyPilot task for a recipe on 2 nodes of 8 H100s, read back by SkyPilot's own
parser (in its own venv, ``make sky``: it pins click<8.2); refusals in one line with nothing written. Nothing is
launched: that needs a cloud account."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from finetune.launch import skypilot
from finetune.paths import DATA_DIR

from .conftest import run_cli_in_process

SKY_VENV_BIN = skypilot.PROJECT_DIR / ".venv-sky" / "bin"
LAUNCH = ("launch", "+recipe=support_bot", "launch.accelerators=H100:8", "launch.nodes=2")


@pytest.fixture(scope="module")
def sky() -> Path:
    """SkyPilot's ``sky``: on PATH, or in the venv ``make sky`` builds (CI's ``make test`` does). Missing, the tests
    that need it fail: they are how CI knows the task parses."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{SKY_VENV_BIN}{os.pathsep}{os.environ['PATH']}")
        found = skypilot.sky_command()
        if found is None:
            pytest.fail("SkyPilot is not installed: `make sky` builds .venv-sky (or put a `sky` on PATH)")
        yield found


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, sky):
    """``launch --dry-run`` of support_bot on 2 × H100:8, its data given as a local file (mounted on the cluster)."""
    cwd = tmp_path_factory.mktemp("launch")
    data = shutil.copy(DATA_DIR / "support_bot" / "conversations.jsonl", cwd / "chats.jsonl")
    proc = run_cli_in_process(*LAUNCH, f"dataset.path={data}", "--dry-run", cwd=cwd)
    folder, = (cwd / "outputs" / "support_bot").glob("launch_*")
    return proc, folder, Path(data)


def test_skypilot_parses_the_task_with_its_nodes_gpus_mounts_and_command(dry_run, sky):
    _, folder, data = dry_run
    task = skypilot.validate(folder / "task.yaml", sky)
    assert task["version"] == "0.14.1"
    assert (task["num_nodes"], task["accelerators"], task["cloud"], task["use_spot"]) == (2, {"H100": 8}, None, False)
    assert task["workdir"] == str(skypilot.PROJECT_DIR)
    run_dir = task["envs"]["FINETUNE_RUN_DIR"]
    assert run_dir == f"/finetune/outputs/support_bot/{folder.name.removeprefix('launch_')}"
    assert task["storage_mounts"] == {"/finetune/outputs": {"name": f"finetune-{getpass.getuser()}-support-bot",
                                                            "source": None, "mode": "MOUNT"}}
    assert task["file_mounts"] == {"/finetune/task/config.yaml": str((folder / "config.yaml").resolve()),
                                   "/finetune/inputs/dataset.path/chats.jsonl": str(data.resolve())}
    assert "pip install -q -e ." in task["setup"] and "'torch==" in task["setup"]
    assert task["run"].split() == [
        "~/.finetune-venv/bin/python", "-m", "finetune", "--config-path", "/finetune/task", "--config-name", "config",
        'hydra.run.dir="$FINETUNE_RUN_DIR"', "train.nnodes=$SKYPILOT_NUM_NODES",
        "train.num_processes=$SKYPILOT_NUM_GPUS_PER_NODE"]


def test_the_variables_the_run_reads_are_skypilots(sky):
    """The names in the run command and in ``finetune.launch.torchrun`` are the ones SkyPilot sets on each node."""
    names = subprocess.run([skypilot.sky_python(sky), "-c", "from sky.skylet import constants as c; print(c.SKYPILOT_"
                            "NUM_NODES, c.SKYPILOT_NUM_GPUS_PER_NODE, c.SKYPILOT_NODE_RANK, c.SKYPILOT_NODE_IPS)"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert names == ["SKYPILOT_NUM_NODES", "SKYPILOT_NUM_GPUS_PER_NODE", "SKYPILOT_NODE_RANK", "SKYPILOT_NODE_IPS"]
    torchrun = (skypilot.PACKAGE_DIR / "launch" / "torchrun.py").read_text(encoding="utf-8")
    assert '"SKYPILOT_NODE_RANK"' in torchrun and '"SKYPILOT_NODE_IPS"' in torchrun


def test_the_shipped_config_is_the_composed_run_reading_its_mounted_data(dry_run):
    """What the cluster composes: the local data file at its mount, the bundled data left to the cluster's own copy,
    the nodes and GPUs as the run command sets them."""
    from hydra import compose, initialize_config_dir

    _, folder, _ = dry_run
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert config["dataset"]["path"] == "/finetune/inputs/dataset.path/chats.jsonl"
    assert config["run_name"] == "support_bot" and config["method"]["r"] == 16  # the recipe's
    assert config["eval"]["judge"]["gguf"].startswith("package:")  # ships with the install: nothing to mount
    with initialize_config_dir(config_dir=str(folder.resolve()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["train.nnodes=2", "train.num_processes=8"])
    assert (cfg.train.nnodes, cfg.train.num_processes) == (2, 8)


def test_dry_run_prints_the_task_its_check_and_the_cost_from_the_plan(dry_run):
    proc, folder, _ = dry_run
    out = proc.stdout
    printed = out[out.index("name: support_bot\n"):out.index("\ntask: ")]  # after the data checks' warnings
    assert yaml.safe_load(printed) == yaml.safe_load((folder / "task.yaml").read_text())
    assert "checked by SkyPilot 0.14.1's parser: 2 × H100:8 on the cloud SkyPilot picks" in out
    cost = next(line for line in out.splitlines() if line.startswith("cost: training ≈ "))
    assert "on 2 × H100:8 (16 × H100 80GB), ≈ $" in cost and "on-demand" in cost
    assert "dry run: nothing launched" in out


def test_skypilot_refusing_the_task_is_one_line(tmp_path, sky):
    s = skypilot.named(skypilot.settings({"accelerators": "H100:8", "cloud": "nocloud"}), "x")
    task_file = tmp_path / "task.yaml"
    task_file.write_text(yaml.safe_dump(skypilot.task(s, "x", "/finetune/outputs/x/1", tmp_path / "c.yaml", {})))
    with pytest.raises(skypilot.LaunchError, match=r"SkyPilot refused the task: .*'nocloud' is not one of") as e:
        skypilot.validate(task_file, sky)
    assert "\n" not in str(e.value)


@pytest.mark.quick
@pytest.mark.parametrize(("args", "message"), [
    (("launch.nodes=0",), "launch.nodes=0: expected a whole number of nodes, 1 or more"),
    (("launch.accelerators=H100:x",), "launch.accelerators='H100:x': expected each node's GPUs as NAME:COUNT"),
    (("launch.use_spot=maybe",), "launch.use_spot='maybe': expected true or false"),
    (("launch.bucket=My_Bucket",), "launch.bucket='My_Bucket': expected a bucket name"),
    (("launch.gpus=8",), "launch.gpus: unknown key; launch keys are accelerators, nodes, cloud"),
    (("train.nnodes=4",), "train.nnodes: set by launch.nodes; leave it out of the launch command"),
    (("launch.accelerators=null",), "launch.accelerators: not set; expected each node's GPUs as NAME:COUNT"),
    (("-m",), "-m: unknown option; launch takes --dry-run"),
])
def test_a_bad_launch_setting_is_refused_in_one_line_and_writes_nothing(tmp_path, args, message):
    proc = run_cli_in_process(*LAUNCH, *args, "--dry-run", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {message}") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.quick
def test_a_real_launch_without_skypilot_refuses_saying_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `sky` anywhere
    proc = run_cli_in_process(*LAUNCH, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"error: launch: SkyPilot's `sky` is not on PATH; {skypilot.INSTALL_HINT}\n"
    assert "pipx install skypilot" in proc.stderr and not (tmp_path / "outputs").exists()

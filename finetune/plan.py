"""The plan printed before the first training step, and the measured peak memory set beside it afterwards.

Memory is estimated per part, from the loaded model rather than from a rule of thumb:
- weights: the bytes of every parameter and buffer as loaded (4-bit packing and quantisation constants included);
- gradients: one value per trainable parameter, in its dtype;
- optimizer state: per trainable parameter, what the optimizer keeps (AdamW two fp32 moments; 8-bit AdamW two
  bytes; SGD none);
- activations: the bytes autograd keeps for the backward pass, counted on this very model (what the graph
  still holds after traced forwards of 64 and 128 tokens, extended to the largest micro-batch) — so LoRA's dropout
  copies, DoRA's extra products, grouped-query attention or 4-bit layers are counted as they are, not assumed;
  with gradient checkpointing, each layer's input plus one layer's worth recomputed;
- logits: how the objective's loss reads the vocabulary (``Objective.head``, ``logit_bytes``): our loop's, where a
  target is (``finetune.training`` asks for no others), three vocabulary-wide fp32 tensors per position (logits,
  log-softmax, their gradient); TRL's chunked log-probability head (DPO, KTO, GRPO) and the full logits of TRL's
  ORPO and CPO as measured by ``benchmarks/trl_head_memory.py``;
- on CPU, the process's own footprint before the model was loaded (Python, torch, tokenizer, data), measured;
  and ``CPU_ALLOCATOR_SLACK`` × (activations + logits), less the gradients: glibc's malloc keeps the freed blocks
  of earlier steps of other lengths and fragments them, so the resident peak exceeds the live tensors (at SmolLM2
  LoRA's peak here, 0.7–1.1 GB free inside the heap beside 0.9 GB of activations); a backward pass allocates the
  gradients while it frees the activations, into those blocks.

Time: model FLOPs per token (2N forward, 2N backward to the inputs, 2N more for trainable weights when every
weight trains, 2N more to recompute under gradient checkpointing) over tokens; here at this machine's measured
fp32 matmul rate, and per GPU of the price table in ``conf/gpu_prices.yaml`` at its dense bf16 rate — both at
``ASSUMED_MFU``, a little under the utilisation our training benchmark reaches here (0.6,
``benchmarks/results/train_speed.json``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.paths import CONF_DIR

ASSUMED_MFU = 0.5
# On-demand clouds bill by the second with a minimum (a minute is common): a job of seconds costs the minimum, so
# the cheapest hour wins, not the fastest card.
BILLED_AT_LEAST_H = 1 / 60
CPU_IS_ENOUGH_S = 3600.0  # an estimate here under an hour: the plan says no GPU is needed
CPU_ALLOCATOR_SLACK = 1.0  # fitted on benchmarks/train_methods.py's runs (LoRA's dropout off)
TRACE_TOKENS = 128
# Per trainable parameter: torch's AdamW keeps two moments in the parameter's own dtype (bf16 weights: 4 bytes);
# bitsandbytes' in fp32 (32-bit) or one byte each (8-bit); Adafactor a factored second moment; SGD nothing.
MOMENTS_IN_PARAMETER_DTYPE = {"adamw_torch": 2, "adamw_torch_fused": 2}
OPTIMIZER_BYTES = {"paged_adamw_32bit": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "adafactor": 0.05, "sgd": 0}
NF4_BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes' NF4 with double quantisation, as methods.load_kwargs asks
# TRL's chunked log-probability head (trl.kernels.ChunkedLogProbFunction) works on tiles of at most this many
# positions × vocabulary entries. Without Triton (a CPU) it scores every position of the micro-batch, and its
# backward holds 8.3 fp32 tiles at once (the tile, its scaled copy, log-probabilities, probabilities, the one-hot
# target, the gradient, temporaries); with Triton (CUDA) only the positions with a target, one tile in the model's
# dtype (from TRL's code; unmeasured here). TRL's ORPO and CPO take the logits of every position and hold 3.3
# fp32 copies of them. Both measured by benchmarks/trl_head_memory.py, the same for other vocabulary sizes.
FUSED_TILE = (4096, 32768)
FUSED_TILES_HELD = 8.3
FULL_LOGITS_HELD = 3.3


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def release_freed_memory() -> None:
    """Hand memory freed while loading (QLoRA's full-precision copy before quantisation) back to the system:
    glibc keeps it otherwise, and the run's peak would carry it. A no-op without glibc."""
    import ctypes
    import ctypes.util

    if name := ctypes.util.find_library("c"):
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def available_bytes() -> int:
    """Memory available to a new process now (MemAvailable; 0 where /proc is missing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_bytes() -> int:
    """The process's resident set now (0 where /proc is missing)."""
    return _status_bytes("VmRSS") or 0


class PeakMemory:
    """Peak memory from now on: ``torch.cuda.max_memory_reserved`` on CUDA; on Linux the process's peak resident
    set (VmHWM, whose high-water mark is reset here through ``/proc/self/clear_refs``); else ``ru_maxrss``."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> dict[str, Any]:
        import torch

        if self.cuda:
            return {"bytes": torch.cuda.max_memory_reserved(), "what": "torch.cuda.max_memory_reserved"}
        peak = _status_bytes("VmHWM")
        if peak is None:
            import resource

            return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "what": "ru_maxrss"}
        return {"bytes": peak, "what": "peak RSS (VmHWM)"}


def _parameter_count(param: Any) -> int:
    """Logical parameters: a bitsandbytes 4-bit tensor stores two per byte and keeps its shape aside."""
    state = getattr(param, "quant_state", None)
    return math.prod(state.shape) if state is not None else param.numel()


def _optimizer_bytes(optimizer: str, params: list[Any]) -> int:
    trainable = [p for p in params if p.requires_grad]
    if optimizer in MOMENTS_IN_PARAMETER_DTYPE:
        return MOMENTS_IN_PARAMETER_DTYPE[optimizer] * sum(p.numel() * p.element_size() for p in trainable)
    return int(OPTIMIZER_BYTES[optimizer] * sum(p.numel() for p in trainable))


def _quantized_on_load(model: Any) -> set[int]:
    """The weights a 4-bit load quantizes, for a model not loaded (a plan from its config): every linear layer's
    but the output embedding's, as transformers' bitsandbytes integration leaves it (and any weight tied to it)."""
    import torch

    output = model.get_output_embeddings()
    kept = {id(output.weight)} if output is not None else set()
    return {id(m.weight) for m in model.modules()
            if type(m) is torch.nn.Linear and id(m.weight) not in kept and not m.weight.requires_grad}


def _nf4_bytes(weights: int) -> int:
    """A weight as bitsandbytes stores it in NF4 with double quantisation: half a byte per weight, an 8-bit absmax
    per block of 64 and an fp32 absmax per 256 of those, and two code tables (16 and 256 fp32 values)."""
    blocks = math.ceil(weights / NF4_BLOCK)
    return math.ceil(weights / 2) + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 4 * (16 + 256)


def _weight_bytes(model: Any, quantized: bool = False) -> int:
    """The bytes of the weights as loaded; ``quantized``: of a model on the meta device as a 4-bit load would
    store it."""
    nf4 = _quantized_on_load(model) if quantized else set()
    total = sum(_nf4_bytes(t.numel()) if id(t) in nf4 else t.numel() * t.element_size()
                for t in [*model.parameters(), *model.buffers()])
    for param in model.parameters():  # NF4 quantisation constants (absmax, double-quantised)
        state = getattr(param, "quant_state", None)
        if state is not None:
            total += sum(t.numel() * t.element_size() for t in state.as_dict(packed=False).values()
                         if hasattr(t, "element_size"))
    return total


class _Saved:
    """A tensor autograd saved, held by the graph for as long as the graph needs it."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor


@contextlib.contextmanager
def _faked_on_cpu(model: Any) -> Iterator[None]:
    """A model on the meta device, its weights swapped for fake CPU tensors (shapes and dtypes, no data) for the
    time of a forward: it takes the kernels a CPU run takes (SDPA's fused attention; on the meta device it would
    be the math path, saving the T×T attention weights), and a GPU's fused kernels save the same tensors. One
    sequence, as the trace feeds: transformers cannot tell that from fake position ids, and would build an explicit
    mask instead of a causal kernel."""
    from unittest import mock

    import torch
    import transformers.masking_utils as masking
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fakes: dict[int, Any] = {}  # by the original's id: tied weights stay one tensor
    swapped = []
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in list(table.items()):
                if tensor is None:
                    continue
                if id(tensor) not in fakes:
                    fake = FakeTensor(mode, tensor, torch.device("cpu"))
                    fakes[id(tensor)] = (torch.nn.Parameter(fake, tensor.requires_grad)
                                         if table is module._parameters else fake)
                swapped.append((table, name, tensor))
                table[name] = fakes[id(tensor)]
    try:
        with mode, mock.patch.object(masking, "find_packed_sequence_indices", lambda position_ids: None):
            yield
    finally:
        for table, name, tensor in swapped:
            table[name] = tensor


def _saved_bytes(model: Any, tokens: int) -> int:
    """Bytes autograd keeps for backward after one training-mode forward of ``tokens`` tokens: the tensors still
    held by the graph once the forward is done (a detached side computation, such as DoRA's weight norm, lets go
    of what it saved), weights excluded, each storage once. A model on the meta device (a plan from its config
    alone) runs the same forward on fake tensors."""
    import weakref

    import torch

    held: list[Any] = []

    def pack(tensor: Any) -> _Saved:
        saved = _Saved(tensor)
        held.append(weakref.ref(saved))
        return saved

    device = next(model.parameters()).device
    ids = (torch.arange(tokens) * 7919 % model.config.get_text_config().vocab_size).unsqueeze(0)
    was_training = model.training
    model.train()
    # forked: the trace's dropout draws must not shift the training run's random stream
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            _faked_on_cpu(model) if device.type == "meta" else contextlib.nullcontext(), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved.tensor):
        output = model(input_ids=ids if device.type == "meta" else ids.to(device), logits_to_keep=1,
                       use_cache=False)
        weights = {p.untyped_storage()._cdata for p in model.parameters()}
        storages = {}
        for ref in held:
            if (saved := ref()) is not None:
                storage = saved.tensor.untyped_storage()
                if storage._cdata not in weights:
                    storages[storage._cdata] = storage.nbytes()
    model.train(was_training)
    del output
    return sum(storages.values())


def _uniform_layers(model: Any) -> tuple[Any, str] | None:
    """The module holding the decoder's layers and the attribute's name, when every layer has the same
    parameters of the same shapes (a plain decoder; not one that mixes dense and expert layers)."""
    import torch

    count = model.config.get_text_config().num_hidden_layers
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == count:
                shapes = {tuple((n, tuple(p.shape)) for n, p in layer.named_parameters()) for layer in child}
                return (parent, name) if len(shapes) == 1 else None
    return None


def _traced_bytes(model: Any, tokens: int) -> int:
    """``_saved_bytes``; for a model on the meta device whose layers are all alike, from its first layer and its
    first two alone (L layers save A(1) + (L − 1)·(A(2) − A(1))): fake tensors cost per operation, and a 70B
    model has 80 layers."""
    import torch

    found = _uniform_layers(model) if next(model.parameters()).device.type == "meta" else None
    layers = getattr(*found) if found else ()
    if len(layers) <= 2:
        return _saved_bytes(model, tokens)
    parent, name = found
    try:
        setattr(parent, name, torch.nn.ModuleList(layers[:1]))
        one = _saved_bytes(model, tokens)
        setattr(parent, name, torch.nn.ModuleList(layers[:2]))
        two = _saved_bytes(model, tokens)
    finally:
        setattr(parent, name, layers)
    return one + (len(layers) - 1) * (two - one)


def _activation_bytes(model: Any, tokens: int, checkpointing: bool) -> int:
    """Saved activations for a micro-batch of ``tokens``: traced at two lengths, so that what grows with the
    tokens and what does not (anything the size of a weight) are told apart."""
    half = TRACE_TOKENS // 2
    short, long = _traced_bytes(model, half), _traced_bytes(model, TRACE_TOKENS)
    per_token = (long - short) / half
    fixed = max(0.0, short - per_token * half)
    if checkpointing:  # kept: each layer's input; recomputed at a time: one layer
        text = model.config.get_text_config()
        layers, hidden = text.num_hidden_layers, text.hidden_size * next(model.parameters()).element_size()
        per_token, fixed = layers * hidden + per_token / layers, fixed / layers
    return int(fixed + per_token * tokens)


def _gpu_table() -> list[dict[str, Any]]:
    import yaml

    return yaml.safe_load((CONF_DIR / "gpu_prices.yaml").read_text(encoding="utf-8"))["gpus"]


def gpu_costs(flops: float, memory_bytes: float, count: int = 1) -> list[dict[str, Any]]:
    """Each GPU of the price table, ``count`` of them sharing the work: whether ``memory_bytes`` (one process's)
    fits, the hours ``flops`` take and what the ``count`` GPUs cost for them."""
    gpus = []
    for g in _gpu_table():
        hours = flops / (count * g["bf16_tflops"] * 1e12 * ASSUMED_MFU) / 3600
        gpus.append({"gpu": g["name"], "count": count, "memory_gb": g["memory_gb"],
                     "fits": memory_bytes < g["memory_gb"] * 1e9, "hours": round(hours, 5),
                     "usd": round(count * max(hours, BILLED_AT_LEAST_H) * g["usd_per_hour"], 4)})
    return gpus


def cpu_name() -> str:
    """This CPU's model name and core count ("AMD EPYC 9454P, 2 cores"), for plans and cards."""
    import os

    from finetune.pipeline.env import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores"


def _cpu_matmul_flops() -> float:
    """This machine's fp32 matmul rate, measured (a fifth of a second: an estimate's input, paid by every run)."""
    import torch

    own = torch.Generator().manual_seed(0)  # leaves the training run's random stream alone
    a, b = torch.randn(1024, 1024, generator=own), torch.randn(1024, 1024, generator=own)
    a @ b
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - start)


def make(run: Any, model: Any, train_set: Any, processes: int, baseline_bytes: int, on_gpu: bool | None = None
         ) -> dict[str, Any]:
    """The plan of this run (a JSON-able dict); ``train_set`` holds the tokenized rows with their ``length`` and
    ``trained`` token counts. The memory is for the device the model is on, or for a GPU or this CPU (``on_gpu``)
    when it is on the meta device (``python -m finetune plan``): in the dtype it was built in, and as the method
    would load it (4-bit weights for QLoRA)."""
    import torch

    from finetune.distributed import STRATEGIES
    from finetune.methods import METHODS
    from finetune.objectives import OBJECTIVES

    t = run.train
    params = list(model.parameters())
    total = sum(_parameter_count(p) for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    grad_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    copies = run.objective.num_generations if OBJECTIVES[run.objective.name].rollouts else 1  # answers per prompt
    lengths = [n for n in train_set["length"] for _ in range(copies)]
    trained = [n for n in train_set["trained"] for _ in range(copies)]
    micro_tokens = t.batch_size * max(lengths)
    step_rows = t.batch_size * t.grad_accum * processes
    steps_per_epoch = math.ceil(len(lengths) / step_rows)
    steps = t.max_steps if t.max_steps > 0 else math.ceil(steps_per_epoch * t.epochs)
    tokens = sum(lengths) * (steps / steps_per_epoch if t.max_steps > 0 else t.epochs)
    device = next(model.parameters()).device
    cuda = device.type == "cuda" or (device.type == "meta" and torch.cuda.is_available())
    on_gpu = device.type == "cuda" if on_gpu is None else on_gpu
    memory = {
        "weights": _weight_bytes(model, quantized=device.type == "meta" and METHODS[run.method.name].quantized),
        "gradients": grad_bytes,
        "optimizer": _optimizer_bytes(t.optimizer, params),
        "activations": _activation_bytes(model, micro_tokens, t.gradient_checkpointing),
        "logits": logit_bytes(OBJECTIVES[run.objective.name].head, model, t.batch_size * max(trained),
                              micro_tokens, on_gpu),
        "process": 0 if on_gpu else baseline_bytes,
    }
    for part in STRATEGIES[t.distributed].sharded if processes > 1 else ():  # each process holds its share
        memory[part] = math.ceil(memory[part] / processes)
    churn = memory["activations"] + memory["logits"]
    memory["allocator"] = 0 if on_gpu else max(0, int(CPU_ALLOCATOR_SLACK * churn) - memory["gradients"])
    memory["total"] = sum(memory.values())
    adapter = trainable < total / 2
    flops_per_token = (4 if adapter else 6) * total + (2 * total if t.gradient_checkpointing else 0)
    flops = flops_per_token * tokens
    reference = _reference(run, memory["weights"], adapter)
    if reference:  # a forward pass of the model before training: each step's pairs, or every pair once ahead
        flops += 2 * total * (tokens if adapter else sum(lengths))
    here = (torch.cuda.get_device_name() if cuda else cpu_name(), None if cuda else _cpu_matmul_flops())
    gpus = gpu_costs(flops, memory["total"] - memory["process"] - memory["allocator"], processes)
    adapter_config = getattr(model, "peft_config", {}).get("default")
    return {
        "parameters": total,
        "trainable_parameters": trainable,
        "adapter_on": sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if hasattr(module, "lora_A")}) if adapter_config else None,
        "trainable_percent": round(100 * trainable / total, 3),
        "train_rows": len(lengths),
        "tokens_per_epoch": sum(lengths),
        "tokens_to_train": int(tokens),
        "optimizer_steps": steps,
        "largest_micro_batch_tokens": micro_tokens,
        "processes": processes,
        "distributed": t.distributed if processes > 1 else None,
        "memory_estimate_bytes": memory,
        "reference": reference,
        "flops": flops,
        "assumed_mfu": ASSUMED_MFU,
        "here": {"device": here[0], "fp32_matmul_flops": here[1],
                 "estimated_s": round(flops / (here[1] * ASSUMED_MFU), 1) if here[1] else None},
        "gpus": gpus,
    }


def logit_bytes(head: str, model: Any, trained_positions: int, positions: int, on_gpu: bool) -> int:
    """What a micro-batch's loss holds for the vocabulary at once: ``head`` is the objective's (``Objective.head``);
    ``trained_positions`` the positions with a target, ``positions`` all of them."""
    text = model.config.get_text_config()
    vocab = text.vocab_size
    if head == "targets":
        return 3 * 4 * vocab * trained_positions
    if head == "full":
        return int(FULL_LOGITS_HELD * 4 * vocab * positions)
    if on_gpu:  # Triton's kernels: one tile in the model's dtype, and the hidden states' fp32 gradient
        element = next(model.parameters()).element_size()
        return (min(trained_positions, FUSED_TILE[0]) * min(vocab, FUSED_TILE[1]) * element
                + 4 * text.hidden_size * trained_positions)
    return int(FUSED_TILES_HELD * 4 * min(positions, FUSED_TILE[0]) * min(vocab, FUSED_TILE[1]))


def _reference(run: Any, weight_bytes: int, adapter: bool) -> dict[str, Any] | None:
    """How an objective that compares the policy with the model before training (DPO) gets that model, at what
    memory, and what a second copy — TRL's way without an adapter or precomputed scores — would take."""
    from finetune.objectives import OBJECTIVES

    if not OBJECTIVES[run.objective.name].reference(run.objective):
        return None
    how = ("the policy with its adapter switched off" if adapter else
           "its log-probabilities, computed in one forward pass over the data before the first step")
    return {"how": how, "bytes": 0, "second_copy_bytes": weight_bytes}


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _usd(amount: float) -> str:
    return f"${amount:.2f}" if amount >= 0.01 else "< $0.01"


def text(plan: dict[str, Any]) -> str:
    m = plan["memory_estimate_bytes"]
    parts = ", ".join(f"{k} {_gb(v)}" for k, v in m.items() if k != "total" and v)
    where = f" in {', '.join(plan['adapter_on'])}" if plan["adapter_on"] else ""
    lines = [
        f"plan: {plan['parameters'] / 1e6:.1f}M parameters, {plan['trainable_parameters'] / 1e6:.2f}M trainable "
        f"({plan['trainable_percent']}%{where}); "
        f"{plan['train_rows']} rows, {plan['tokens_per_epoch']:,} tokens per epoch, "
        f"{plan['optimizer_steps']} optimizer steps, {plan['tokens_to_train']:,} tokens",
        f"  memory estimate {_gb(m['total'])}" + (f" per process ({plan['distributed']} over {plan['processes']})"
                                                  if plan.get("distributed") else "") + f" ({parts})",
    ]
    if reference := plan.get("reference"):
        lines.append(f"  reference model: {reference['how']}, {_gb(reference['bytes'])} (a second copy would take "
                     f"{_gb(reference['second_copy_bytes'])})")
    here = plan["here"]
    if here["estimated_s"] is not None:
        enough = "; this CPU is enough, no GPU needed"
        if here.get("memory_available_bytes") and here["memory_bytes"] > here["memory_available_bytes"]:
            enough = (f"; in fp32 it needs {_gb(here['memory_bytes'])} of memory, this machine has "
                      f"{_gb(here['memory_available_bytes'])} available")
        lines.append(f"  time here ≈ {_duration(here['estimated_s'])} at {here['fp32_matmul_flops'] / 1e9:.0f} "
                     f"GFLOP/s × {plan['assumed_mfu']} utilisation" + (enough if here["estimated_s"] <
                                                                       CPU_IS_ENOUGH_S else ""))
    cheapest = sorted((g for g in plan["gpus"] if g["fits"]), key=lambda g: (g["usd"], g["hours"]))[:3]
    if cheapest:
        lines.append("  cheapest GPUs that fit (conf/gpu_prices.yaml): " + "; ".join(
            (f"{g['count']}× " if g["count"] > 1 else "") + f"{g['gpu']} {_duration(g['hours'] * 3600)} "
            f"{_usd(g['usd'])}" for g in cheapest))
    else:
        lines.append("  no GPU of conf/gpu_prices.yaml fits: try method=qlora, train.gradient_checkpointing=true, a "
                     "smaller train.batch_size or train.max_seq_len, or several GPUs (train.distributed=fsdp)")
    return "\n".join(lines)


def compare(plan: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    estimate = plan["memory_estimate_bytes"]["total"]
    return {"estimate_bytes": estimate, "measured_bytes": measured["bytes"], "measured_as": measured["what"],
            "error_percent": round(100 * (estimate - measured["bytes"]) / measured["bytes"], 1)}


def memory_line(comparison: dict[str, Any]) -> str:
    return (f"{_gb(comparison['measured_bytes'])} ({comparison['measured_as']}) vs estimate "
            f"{_gb(comparison['estimate_bytes'])}, {comparison['error_percent']:+.1f}%")

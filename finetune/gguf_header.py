"""A GGUF file's header read directly: one metadata value without parsing the rest, or the whole header.
gguf-py's ``GGUFReader`` builds a numpy view per field and per array item first, which takes seconds for a value
a few bytes into the file (the card names the base GGUF's quantisation; the converter asks for its
pre-tokenizer) and ~25 s for the whole header of a file with Llama 3's 128,256 tokens and 280,147 merges."""

from __future__ import annotations

import struct
from dataclasses import dataclass
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


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # as the file lists it: the fastest-varying dimension first
    type: int  # a GGMLQuantizationType value
    offset: int  # from the start of the tensor data


def gguf_header(path: Path) -> tuple[dict[str, Any], list[TensorInfo], int]:
    """Every metadata value, every tensor's info in file order, and the offset where the tensor data starts."""
    with open(path, "rb") as f:
        magic, _version, n_tensors, kv_count = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        metadata = {}
        for _ in range(kv_count):
            name, kind = _string(f), _unpack(f, "<I")
            metadata[name] = _value(f, kind)
        tensors = []
        for _ in range(n_tensors):
            name, n_dims = _string(f), _unpack(f, "<I")
            shape = struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims))
            tensors.append(TensorInfo(name, shape, _unpack(f, "<I"), _unpack(f, "<Q")))
        alignment = metadata.get("general.alignment", 32)
        return metadata, tensors, -(-f.tell() // alignment) * alignment


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

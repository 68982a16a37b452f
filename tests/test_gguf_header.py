"""Reading one value from a GGUF header gives what gguf-py's full reader gives, for every kind of value."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from finetune.gguf_header import gguf_header, gguf_value

pytestmark = pytest.mark.quick  # no model run, no server, no subprocess: make check


def test_each_kind_of_value_reads_as_gguf_py_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_token_list(["<s>", "a", "ünï"])  # an array of strings, skipped string by string
    writer.add_array("test.floats", [0.5, 1.5])  # an array of numbers, skipped in one seek
    writer.add_string("tokenizer.ggml.pre", "smollm")
    writer.add_float32("test.scale", 0.25)
    writer.add_bool("test.flag", True)
    writer.add_tensor("w", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(path)
    for key in ("general.architecture", "general.file_type", "tokenizer.ggml.tokens", "test.floats",
                "tokenizer.ggml.pre", "test.scale", "test.flag"):
        expected = reader.get_field(key).contents()
        assert gguf_value(path, key) == expected, key
    assert gguf_value(path, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_1
    assert gguf_value(path, "no.such.key") is None
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_value(tmp_path / "not.gguf", "general.file_type")


def test_the_whole_header_reads_as_gguf_py_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(["<s>", "a", "ünï"])
    writer.add_uint32("test.count", 7)
    writer.add_tensor("a", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.add_tensor("b", gguf.quants.quantize(np.ones((2, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(path)
    metadata, tensors, data_start = gguf_header(path)
    assert metadata == {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert [(t.name, list(t.shape), t.type) for t in tensors] == [
        (t.name, list(t.shape), t.tensor_type) for t in reader.tensors]
    assert [data_start + t.offset for t in tensors] == [t.data_offset for t in reader.tensors]

"""The GGUF output types the writer makes (``export.gguf_types``), apart from the writer itself, so that the
schema takes its choices from here without importing the converter."""

# Output types gguf-py's numpy quantizers write: (tensor type of 2-D weights, file type), as gguf enum names.
NUMPY_TYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}
# Output types only llama.cpp's quantizer makes (gguf.LlamaFileType names = llama.cpp's llama_ftype values).
K_QUANTS = {"q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}
OUT_TYPES = (*NUMPY_TYPES, *K_QUANTS)

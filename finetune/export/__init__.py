"""What leaves the pipeline: GGUF files (``gguf_writer``), GGUF LoRA adapters (``lora_gguf``), the Ollama
Modelfile (``modelfile``), the parity gate that proves a GGUF behaves like the model it came from (``parity``),
the model card and publishing."""

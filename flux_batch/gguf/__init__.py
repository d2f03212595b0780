"""GGUF files: FLUX key layouts, quantizing a checkpoint, reading and inspecting a file."""

"""Stage 2, the model: files found and checked, the pipeline loaded (GGUF transformer, LoRAs)
and kept between the runs of a sweep."""

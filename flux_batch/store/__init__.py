"""Stage 4, the store: images and the manifest written into the run directory, crash-safe."""

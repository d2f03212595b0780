"""FLUX.2: the family modules of [dev] and [klein] (family.py), their shared GGUF key table
(keys.py) and the pieces of their embedded tiny models (tiny.py)."""

from flux_batch.families.flux2.family import Flux2Dev, Flux2Klein

DEV = Flux2Dev()
KLEIN = Flux2Klein()

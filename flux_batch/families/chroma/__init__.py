"""Chroma: the family module (family.py), its GGUF key table (keys.py) and the pieces of its
embedded tiny model (tiny.py)."""

from flux_batch.families.chroma.family import Chroma

FAMILY = Chroma()

"""FLUX.1: the family module (family.py), its GGUF key table (keys.py) and the pieces of its
embedded tiny model (tiny.py)."""

from flux_batch.families.flux1.family import Flux1

FAMILY = Flux1()

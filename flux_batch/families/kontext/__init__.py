"""FLUX.1 Kontext [dev]: FLUX.1-dev's transformer under `FluxKontextPipeline` (family.py)."""

from flux_batch.families.kontext.family import FAMILY

__all__ = ["FAMILY"]

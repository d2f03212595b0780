"""Model families, by their `model.family` name: each one a `base.Family` in a module or folder
of its own (FLUX.1: families/flux1/). docs/development.md says how to add one."""

from __future__ import annotations

from flux_batch.errors import ConfigError
from flux_batch.families import chroma, flux1, flux2, kontext
from flux_batch.families.base import Embedding, Family, Features
from flux_batch.families.tensor_names import unprefixed

__all__ = [
    "DEFAULT",
    "Embedding",
    "Family",
    "Features",
    "check_model",
    "for_tensors",
    "get",
    "key_table",
    "names",
    "of_pipeline",
]

DEFAULT = "flux1"  # model.family's default
# FLUX.1 first: families sharing a key table (Kontext reads FLUX.1 files) name a file by the first
_FAMILIES: dict[str, Family] = {
    f.name: f for f in (flux1.FAMILY, kontext.FAMILY, flux2.DEV, flux2.KLEIN, chroma.FAMILY)
}


def names() -> list[str]:
    return list(_FAMILIES)


def get(name: str) -> Family:
    """The family called `name`, or ConfigError naming model.family and the known ones."""
    family = _FAMILIES.get(name)
    if family is None:
        raise ConfigError(
            f"model.family={name}: unknown model family; the known ones are {', '.join(names())}"
        )
    return family


def check_model(model, cache_method: str, loras: bool, true_cfg: float) -> Family:
    """The config's family, its variant and the features the config asks for, checked."""
    family = get(str(model.family))
    family.check_variant(str(model.variant))
    family.check_features(cache_method, loras, true_cfg)
    return family


def of_pipeline(pipe) -> Family:
    """The family whose pipeline class `pipe` is (load_pipeline marks the pipelines it makes)."""
    marked = getattr(pipe, "flux_batch_family", None)
    if marked is not None:
        return get(marked)
    for family in _FAMILIES.values():
        if isinstance(pipe, family.pipeline_class()):
            return family
    raise TypeError(f"{type(pipe).__name__} is the pipeline of no known model family")


def for_tensors(tensor_names) -> Family | None:
    """The family whose GGUF key table knows these tensor names (with or without the
    `model.diffusion_model.` prefix of full checkpoints), or None."""
    names = unprefixed(tensor_names)
    for family in _FAMILIES.values():  # families sharing a key table: the first one registered
        if family.keys.identifies(names):
            return family
    return None


def key_table(tensor_names):
    """The GGUF key table for these tensor names: their family's, or FLUX.1's when no family
    knows them (the tools then refuse the file, naming the names they expected)."""
    return (for_tensors(tensor_names) or get(DEFAULT)).keys

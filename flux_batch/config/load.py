"""The composed config as the run reads it: built once, checked, with a warning for each
setting its section's chosen method (layout) does not read."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flux_batch.config.fields import is_read, plain
from flux_batch.config.schema import (
    SECTIONS,
    CacheConfig,
    DatasetConfig,
    EngineConfig,
    FluxBatchConfig,
    ModelConfig,
    QuantConfig,
    SamplerConfig,
)
from flux_batch.errors import ConfigError
from flux_batch.refusals import no_such_key
from flux_batch.store.layouts import Layout as StoreLayout
from flux_batch.store.layouts import make_layout

log = logging.getLogger("flux_batch.config")


def register_schemas() -> None:
    """The schemas into Hydra's ConfigStore, where the YAML files' defaults find them."""
    cs = ConfigStore.instance()
    cs.store(name="flux_batch_schema", node=FluxBatchConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="quant", name="quant_schema", node=QuantConfig)
    cs.store(group="sampler", name="sampler_schema", node=SamplerConfig)
    cs.store(group="cache", name="cache_schema", node=CacheConfig)
    cs.store(group="engine", name="engine_schema", node=EngineConfig)
    # a template's slots are named by the user: `dataset.slots.colour=[red,green]` adds one
    # without Hydra's `+`, as every other key is set
    dataset = OmegaConf.structured(DatasetConfig)
    OmegaConf.set_struct(dataset.slots, False)
    cs.store(group="dataset", name="dataset_schema", node=dataset)


def load(cfg: DictConfig | FluxBatchConfig) -> FluxBatchConfig:
    """The typed config of Hydra's composed one (as given when it is typed already): every
    interpolation resolved, every value checked (ConfigError names the key), one warning
    logged for each setting that has no effect."""
    if isinstance(cfg, FluxBatchConfig):
        return cfg
    _refuse_added_keys(cfg)
    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:  # e.g. a key added with +key=…, which no section has
        raise ConfigError(f"{e.full_key}: {str(e.msg).splitlines()[0]}") from None
    for line in unread_settings(typed):
        log.warning(line)
    return typed


def _refuse_added_keys(cfg: DictConfig) -> None:
    """A key added with `+key=value`: Hydra takes it, no section reads it."""
    for key, schema in (("", FluxBatchConfig), *SECTIONS.items()):
        node = cfg[key] if key else cfg
        names = [f.name for f in dataclasses.fields(schema)]
        for name in node.keys():
            if name not in names:
                raise ConfigError(no_such_key(f"{key}.{name}" if key else name, names))


def unread_settings(cfg: FluxBatchConfig) -> list[str]:
    """A line for each knob set away from its default that the chosen method does not read."""
    found = []
    for key in ("cache", "output"):
        section = getattr(cfg, key)
        chooser = type(section).CHOOSER
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if not is_read(section, f) and value != f.default:
                readers = f.metadata["read_by"]
                found.append(
                    f"{key}.{f.name}={plain(value)} has no effect: {key}.{chooser}="
                    f"{plain(getattr(section, chooser))} does not read it (only "
                    f"{' and '.join(readers)} {'does' if len(readers) == 1 else 'do'})"
                )
    return found + _unread_dataset_settings(cfg.dataset)


def _unread_dataset_settings(d) -> list[str]:
    """The template keys a run does not read: dataset.count outside sample mode, and the mode,
    slots and count without a template."""
    if d.template is None:
        return [
            f"dataset.{key}={plain(getattr(d, key))} has no effect: it goes with dataset.template"
            for key, unset in (("slots", {}), ("count", None), ("mode", "product"))
            if plain(getattr(d, key)) != unset
        ]
    if d.count is not None and plain(d.mode) != "sample":
        return [
            f"dataset.count={d.count} has no effect: dataset.mode={plain(d.mode)} does not read it "
            "(only sample does)"
        ]
    return []


def output_layout(output: Any) -> StoreLayout:
    """The `output` config as the store takes it (output.shard_size, or the layout's default)."""
    return make_layout(plain(output.layout), output.shard_size, bool(output.captions))


def as_dict(cfg: FluxBatchConfig) -> dict[str, Any]:
    """The config as plain data (enums as strings), as run.json records it."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)

"""Config schemas (registered in Hydra's ConfigStore) and the checks OmegaConf cannot express.

The YAML files under `flux_batch/conf/` fill these schemas; Hydra refuses unknown keys and
wrong types by itself, `validate()` refuses values that are well-typed but unusable.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from .errors import ConfigError


class ImageFormat(str, Enum):
    png = "png"
    webp = "webp"
    jpg = "jpg"


class Offload(str, Enum):
    none = "none"
    model = "model"
    auto = "auto"
    sequential = "sequential"  # accepted by the schema only to be refused with a reason


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class ModelConfig:
    name: str = MISSING
    # diffusers pipeline folder or hub id: text encoders, tokenizers, VAE, scheduler, configs
    base: str = MISSING
    # GGUF transformer: local path, URL, or `hub_id/filename.gguf`
    transformer: str = MISSING
    # `tiny`: the embedded model, built on first use into the cache; null for real weights
    builder: Optional[str] = None
    variant: str = "dev"  # dev (guidance embedding) or schnell
    steps: int = MISSING
    guidance: float = MISSING
    max_sequence_length: int = MISSING
    width: int = 1024
    height: int = 1024
    how_to_get: str = ""  # shown when a file is missing


@dataclass
class QuantConfig:
    name: str = MISSING
    gguf_type: str = MISSING  # GGML type name written by the quantizer, e.g. Q8_0
    file_tag: str = MISSING  # the tag community file names carry, e.g. Q5_K_S


@dataclass
class SamplerConfig:
    name: str = "euler"
    steps: int = MISSING
    guidance: float = MISSING
    width: int = MISSING
    height: int = MISSING
    max_sequence_length: int = MISSING


@dataclass
class DatasetConfig:
    path: str = MISSING
    format: str = "auto"
    prompt_field: str = "prompt"
    id_field: str = "id"


@dataclass
class OutputConfig:
    dir: Optional[str] = None  # null: outputs/<dataset>-<model>-<quant>-<fingerprint>
    format: ImageFormat = ImageFormat.png
    quality: int = 95  # jpg / webp quality


@dataclass
class RuntimeConfig:
    device: str = "auto"
    offload: Offload = Offload.auto
    dtype: DType = DType.auto
    progress: bool = True


@dataclass
class FluxBatchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = 0
    num_images: int = 1
    batch_size: int = 1
    limit: Optional[int] = None
    max_errors: int = 3


def register_configs() -> None:
    """Schemas into Hydra's ConfigStore, and the resolvers the YAML files use."""
    from omegaconf import OmegaConf

    from . import tiny
    from .runinfo import run_dir_resolver
    from .sweeps import job_dir_resolver, sweep_dir_resolver

    OmegaConf.register_new_resolver("fb_run_dir", run_dir_resolver, replace=True)
    OmegaConf.register_new_resolver("fb_sweep_dir", sweep_dir_resolver, replace=True)
    OmegaConf.register_new_resolver("fb_job_dir", job_dir_resolver, replace=True)
    OmegaConf.register_new_resolver("fb_tiny_dir", lambda: str(tiny.base_dir()), replace=True)
    cs = ConfigStore.instance()
    cs.store(name="flux_batch_schema", node=FluxBatchConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="quant", name="quant_schema", node=QuantConfig)
    cs.store(group="sampler", name="sampler_schema", node=SamplerConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)


def value_of(setting: Any) -> str:
    """The string of an enum-typed setting (OmegaConf hands back Enum members)."""
    return str(getattr(setting, "value", setting))


DATASET_FORMATS = ("auto", "jsonl", "csv", "tsv", "txt")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def check_size(key: str, value: Any) -> None:
    if not isinstance(value, int) or value <= 0 or value % 16:
        raise ConfigError(f"{key}={value}: image sizes must be positive multiples of 16")


def check_positive_int(key: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}={value}: must be an integer >= {minimum}")


def check_guidance(key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key}={value}: must be a finite number >= 0")


def validate(cfg: DictConfig) -> None:
    """Refuse well-typed but unusable values, naming the key. Resolves every interpolation."""
    s = cfg.sampler
    check_size("sampler.width", s.width)
    check_size("sampler.height", s.height)
    check_positive_int("sampler.steps", s.steps)
    check_guidance("sampler.guidance", s.guidance)
    check_positive_int("sampler.max_sequence_length", s.max_sequence_length)
    if s.name != "euler":
        raise ConfigError(f"sampler.name={s.name}: only 'euler' (FlowMatchEuler) is available")
    check_positive_int("seed", cfg.seed, minimum=0)
    check_positive_int("num_images", cfg.num_images)
    check_positive_int("batch_size", cfg.batch_size)
    check_positive_int("max_errors", cfg.max_errors, minimum=0)
    if cfg.limit is not None:
        check_positive_int("limit", cfg.limit, minimum=0)
    if cfg.dataset.format not in DATASET_FORMATS:
        raise ConfigError(
            f"dataset.format={cfg.dataset.format}: expected one of {', '.join(DATASET_FORMATS)}"
        )
    if not _DEVICE.match(cfg.runtime.device):
        raise ConfigError(
            f"runtime.device={cfg.runtime.device}: expected auto, cpu, cuda, cuda:N or mps"
        )
    if cfg.runtime.offload == Offload.sequential:
        raise ConfigError(
            "runtime.offload=sequential: diffusers' sequential CPU offload does not work with "
            "GGUF-quantized transformers (it fails with KeyError: None); use runtime.offload=model"
        )
    if not 1 <= cfg.output.quality <= 100:
        raise ConfigError(f"output.quality={cfg.output.quality}: must be between 1 and 100")
    if cfg.model.variant not in ("dev", "schnell"):
        raise ConfigError(f"model.variant={cfg.model.variant}: expected dev or schnell")

"""Config schemas (registered in Hydra's ConfigStore) and the checks OmegaConf cannot express.

The YAML files under `flux_batch/conf/` fill these schemas; Hydra refuses unknown keys and
wrong types by itself, `validate()` refuses values that are well-typed but unusable.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from flux_batch import families
from flux_batch.errors import ConfigError
from flux_batch.plan.sizes import parse_aspect
from flux_batch.render import step_cache
from flux_batch.render.step_cache import CacheOptions
from flux_batch.samplers import SCHEDULERS
from flux_batch.store.layout import DEFAULT_SHARD_SIZE
from flux_batch.store.layout import Layout as StoreLayout


class ImageFormat(str, Enum):
    png = "png"
    webp = "webp"
    jpg = "jpg"


class Offload(str, Enum):
    none = "none"
    model = "model"
    auto = "auto"
    sequential = "sequential"  # accepted by the schema only to be refused with a reason


class Schedule(str, Enum):
    auto = "auto"  # phased when the run has more than one batch
    phased = "phased"  # per chunk: encode every prompt, then denoise, then decode
    per_item = "per_item"  # one plain pipeline call per batch


class CacheMethod(str, Enum):
    none = "none"
    fbcache = "fbcache"
    taylorseer = "taylorseer"


class Dequantize(str, Enum):
    never = "never"  # GGUF weights dequantized at every forward pass (least memory)
    once = "once"  # dequantized to the compute dtype after loading (fastest; same pixels)
    auto = "auto"  # once when that fits in the device's free memory, else never


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
    # `tiny`: the random embedded model, built on first use into the cache; `demo`: the trained
    # one shipped in the package; null for real weights
    builder: Optional[str] = None
    family: str = "flux1"  # a name in flux_batch.families: the pipeline, encoders, GGUF layout
    variant: str = "dev"  # one of the family's: dev (guidance embedding) or schnell for flux1
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
    scheduler: str = "euler"  # a name in schedulers.SCHEDULERS
    shift: Optional[float] = None  # null: the model's schedule; a number: that fixed shift
    steps: int = MISSING
    guidance: float = MISSING
    true_cfg: float = 1.0  # > 1 with a negative prompt: true classifier-free guidance
    negative_prompt: str = ""  # for rows without their own
    width: int = MISSING
    height: int = MISSING
    aspect: Optional[str] = None  # e.g. 16:9; replaces width/height, keeping `megapixels`
    megapixels: Optional[float] = None  # null: the area of width x height (1 = 1024 x 1024)
    max_sequence_length: int = MISSING


@dataclass
class CacheConfig:
    """Step caching (render/step_cache.py); each method reads its own knobs."""

    method: CacheMethod = CacheMethod.none
    threshold: float = 0.08  # fbcache: relative change of the first block's residual that recomputes
    interval: int = 2  # taylorseer: a full step every `interval` steps after the warm-up
    warmup: int = 3  # taylorseer: steps computed in full before the first prediction
    order: int = 1  # taylorseer: order of the Taylor expansion


@dataclass
class LoraConfig:
    path: str = MISSING  # local .safetensors file or `hub_id/file.safetensors`
    scale: float = 1.0


@dataclass
class DatasetConfig:
    path: str = MISSING
    format: str = "auto"
    prompt_field: str = "prompt"
    id_field: str = "id"


class Layout(str, Enum):
    flat = "flat"  # images/<stem>.png
    sharded = "sharded"  # images/<5 digits>/<stem>.png, at most shard_size per folder
    webdataset = "webdataset"  # shards/000000.tar, … of shard_size samples (png + json + txt)


@dataclass
class OutputConfig:
    dir: Optional[str] = None  # null: outputs/<dataset>-<model>-<quant>-<fingerprint>
    format: ImageFormat = ImageFormat.png
    quality: int = 95  # jpg / webp quality
    layout: Layout = Layout.flat
    shard_size: Optional[int] = None  # images per folder (null: 10,000) or samples per tar (1,000)
    captions: bool = False  # <stem>.txt with the prompt beside each image


@dataclass
class RuntimeConfig:
    device: str = "auto"
    offload: Offload = Offload.auto
    dequantize: Dequantize = Dequantize.auto
    dtype: DType = DType.auto
    progress: bool = True
    schedule: Schedule = Schedule.auto
    chunk_size: int = 32  # phased: items encoded, then denoised, then decoded together
    embed_cache: Optional[str] = None  # folder of prompt embeddings kept between runs
    compile: bool = False  # torch.compile the transformer
    writers: int = 2  # threads encoding and writing images while the next batch renders; 0: none
    write_queue: int = 8  # images handed to the writers and not yet listed, at most
    shard: int = 0  # this job's shard of the items (ranks.py), for arrays of independent jobs
    num_shards: int = 1
    dry_run: bool = False  # print which items and device each rank or shard gets; render nothing


@dataclass
class FluxBatchConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    lora: List[LoraConfig] = field(default_factory=list)
    seed: int = 0
    num_images: int = 1
    batch_size: Any = 1  # an integer >= 1, or auto
    limit: Optional[int] = None
    max_errors: int = 3


def register_schemas() -> None:
    """The schemas into Hydra's ConfigStore, where the YAML files' defaults find them."""
    cs = ConfigStore.instance()
    cs.store(name="flux_batch_schema", node=FluxBatchConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="quant", name="quant_schema", node=QuantConfig)
    cs.store(group="sampler", name="sampler_schema", node=SamplerConfig)
    cs.store(group="cache", name="cache_schema", node=CacheConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)


def cache_options(cache: DictConfig) -> CacheOptions:
    """The `cache` config as the renderer takes it."""
    return CacheOptions(method=value_of(cache.method), threshold=float(cache.threshold),
                        interval=cache.interval, warmup=cache.warmup, order=cache.order)


def output_layout(output: DictConfig) -> StoreLayout:
    """The `output` config as the store takes it."""
    return StoreLayout(value_of(output.layout), shard_size(output), bool(output.captions))


def shard_size(output: DictConfig) -> int:
    """output.shard_size, or the layout's default (0 for flat: no folders)."""
    layout = value_of(output.layout)
    if layout == "flat":
        return 0
    return output.shard_size if output.shard_size is not None else DEFAULT_SHARD_SIZE[layout]


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


def check_batch_size(value: Any) -> None:
    if value == "auto":
        return
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"batch_size={value}: must be an integer >= 1, or auto")


# The checks of settings a prompt row may override too (plan/prompts.py): each returns why a
# value is refused, or None, and the config and the rows put the key in front their own way.

def guidance_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return "must be a finite number >= 0"
    return None


def true_cfg_problem(value: Any) -> str | None:
    problem = guidance_problem(value)
    if problem is None and value < 1:
        return "must be >= 1 (1 turns true CFG off)"
    return problem


def scheduler_problem(name: Any) -> str | None:
    return None if name in SCHEDULERS else f"expected one of {', '.join(SCHEDULERS)}"


def aspect_problem(text: Any) -> str | None:
    try:
        parse_aspect(str(text))
    except ValueError as e:
        return str(e)
    return None


def check_guidance(key: str, value: Any) -> None:
    if (problem := guidance_problem(value)) is not None:
        raise ConfigError(f"{key}={value}: {problem}")


def check_finite(key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}={value}: must be a finite number")


def check_sampler_extras(s: DictConfig) -> None:
    """Scheduler, shift, true CFG and aspect settings."""
    if (problem := scheduler_problem(s.scheduler)) is not None:
        raise ConfigError(f"sampler.scheduler={s.scheduler}: {problem}")
    if s.shift is not None and (not math.isfinite(s.shift) or s.shift <= 0):
        raise ConfigError(f"sampler.shift={s.shift}: must be a number > 0, or null for the model's")
    if (problem := true_cfg_problem(s.true_cfg)) is not None:
        raise ConfigError(f"sampler.true_cfg={s.true_cfg}: {problem}")
    if s.negative_prompt.strip() and s.true_cfg <= 1:
        raise ConfigError(
            "sampler.negative_prompt has no effect with sampler.true_cfg=1: set sampler.true_cfg "
            "above 1 (e.g. 4) to render with it"
        )
    if s.megapixels is not None and (not math.isfinite(s.megapixels) or s.megapixels <= 0):
        raise ConfigError(f"sampler.megapixels={s.megapixels}: must be a number > 0")
    if s.aspect is not None and (problem := aspect_problem(s.aspect)) is not None:
        hint = ""
        if str(s.aspect).isdigit():  # YAML 1.1 reads an unquoted 16:9 as the number 969
            hint = '; in a YAML file, quote it (aspect: "16:9")'
        raise ConfigError(f"sampler.aspect={s.aspect}: {problem}{hint}")


def validate(cfg: DictConfig) -> None:
    """Refuse well-typed but unusable values, naming the key. Resolves every interpolation."""
    s = cfg.sampler
    check_size("sampler.width", s.width)
    check_size("sampler.height", s.height)
    check_positive_int("sampler.steps", s.steps)
    check_guidance("sampler.guidance", s.guidance)
    check_positive_int("sampler.max_sequence_length", s.max_sequence_length)
    check_sampler_extras(s)
    if (found := step_cache.problem(cache_options(cfg.cache))) is not None:
        key, why = found
        raise ConfigError(f"{key}={cfg.cache[key.split('.')[1]]}: {why}")
    for i, entry in enumerate(cfg.lora):
        check_finite(f"lora.{i}.scale", entry.scale)
    check_positive_int("seed", cfg.seed, minimum=0)
    check_positive_int("num_images", cfg.num_images)
    check_batch_size(cfg.batch_size)
    check_positive_int("runtime.chunk_size", cfg.runtime.chunk_size)
    if cfg.output.shard_size is not None:
        check_positive_int("output.shard_size", cfg.output.shard_size)
    if cfg.output.captions and value_of(cfg.output.layout) == "webdataset":
        raise ConfigError("output.captions=true: output.layout=webdataset stores each prompt as "
                          "its sample's .txt already; drop output.captions")
    check_positive_int("runtime.writers", cfg.runtime.writers, minimum=0)
    check_positive_int("runtime.write_queue", cfg.runtime.write_queue)
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
    cache = cfg.runtime.embed_cache
    if cache and os.path.exists(os.path.expanduser(cache)) and not os.path.isdir(os.path.expanduser(cache)):
        raise ConfigError(f"runtime.embed_cache={cache}: not a folder")
    if not 1 <= cfg.output.quality <= 100:
        raise ConfigError(f"output.quality={cfg.output.quality}: must be between 1 and 100")
    families.check_model(cfg.model, value_of(cfg.cache.method), bool(cfg.lora), cfg.sampler.true_cfg)

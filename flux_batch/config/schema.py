"""The config schemas: registered in Hydra's ConfigStore, and the typed config a run reads.

The YAML files under `flux_batch/conf/` hold only what differs from these defaults. Hydra
composes them and refuses unknown keys and wrong types; `load()` then builds these classes
from the composed config once, each section checking its values (fields.Section).
Each field declares its rule, whether it changes pixels, and which method reads it
(config/fields.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Dict, List, Optional

from omegaconf import MISSING

import flux_batch.config.checks as checks
from flux_batch import families
from flux_batch.config.fields import Rule, Section, check_rules, pixels, plain, setting
from flux_batch.errors import ConfigError
from flux_batch.model.files import model_identity
from flux_batch.model.lora import identity as lora_identity
from flux_batch.plan.sizes import area, default_size
from flux_batch.store.layouts import LAYOUTS, make_layout


class ImageFormat(str, Enum):
    png = "png"
    webp = "webp"
    jpg = "jpg"


class Offload(str, Enum):
    none = "none"
    model = "model"
    auto = "auto"  # model offload only when the pipeline does not fit
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


class InputFit(str, Enum):
    crop = "crop"  # scale to cover the output size, centre-crop what overflows
    pad = "pad"  # scale to fit inside it, pad with white
    stretch = "stretch"  # scale each side to it, changing the aspect


class EncoderDevice(str, Enum):
    auto = "auto"  # where the pipeline runs (offloaded with it under runtime.offload=model)
    cpu = "cpu"  # the text encoders stay in host memory and run there (docs/models.md)


class DType(str, Enum):
    auto = "auto"  # bfloat16 on CUDA, float32 elsewhere
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class TemplateMode(str, Enum):
    product = "product"  # every combination of the slots' values, the first slot varying slowest
    sample = "sample"  # dataset.count of them, drawn without repeats by the run's seed


class Engine(str, Enum):
    local = "local"  # this process, or the ranks of a launch (scale/ranks.py)
    ray = "ray"  # a Ray cluster's actor pool (scale/ray_engine.py)


class Layout(str, Enum):
    flat = "flat"  # images/<stem>.png
    sharded = "sharded"  # images/<5 digits>/<stem>.png, at most shard_size per folder
    webdataset = "webdataset"  # shards/000000.tar, … of shard_size samples (png + json + txt)


@dataclass
class ModelConfig(Section):
    KEY: ClassVar[str] = "model"

    name: str = setting(pixels=pixels())
    # diffusers pipeline folder or hub id: text encoders, tokenizers, VAE, scheduler, configs
    base: str = MISSING
    # GGUF transformer: local path, URL, or `hub_id/filename.gguf`; in the fingerprint with
    # `base` as model_identity (model/files.py): by name and size, without reading the weights
    transformer: str = setting(pixels=pixels(value=model_identity, spread=True))
    # `tiny`: the random embedded model, built on first use into the cache; `demo`: the trained
    # one shipped in the package; null for real weights
    builder: Optional[str] = None
    # one of the family's variants (flux1: dev, with a guidance embedding, or schnell), which
    # checks it (families/)
    variant: str = setting("dev", pixels=pixels())
    # the model family (flux_batch.families); in the fingerprint when not FLUX.1's, so runs
    # made before families keep their directories
    family: str = setting("flux1", pixels=pixels(when=lambda m: m.family != "flux1"))
    steps: int = MISSING
    guidance: float = MISSING
    max_sequence_length: int = MISSING
    width: int = 1024
    height: int = 1024
    how_to_get: str = ""  # shown when a file is missing

    def check(self) -> None:
        if not self.family:
            raise ConfigError("model.family=: must name a model family")
        families.get(self.family).check_variant(self.variant)  # an unknown family names the known


@dataclass
class QuantConfig(Section):
    KEY: ClassVar[str] = "quant"

    name: str = setting(pixels=pixels(key="quant", group=""))
    gguf_type: str = MISSING  # GGML type name written by the quantizer, e.g. Q8_0
    file_tag: str = MISSING  # the tag community file names carry, e.g. Q5_K_S


def _size(s: Any) -> tuple[Any, Any]:
    try:
        return default_size(s)
    except ValueError:  # a bad sampler.aspect: load() names it; naming the run dir must not fail first
        return str(s.aspect), None


@dataclass
class SamplerConfig(Section):
    """Sampling settings; unset values follow the model's (sampler/euler.yaml). Shift, true
    CFG, the negative prompt and the area enter the fingerprint only when set away from their
    defaults (`when`), so runs made before those settings existed keep their directory."""

    KEY: ClassVar[str] = "sampler"

    # a name in schedulers.SCHEDULERS; in the fingerprint as "name", its key before
    # schedulers were selectable
    scheduler: str = setting("euler", rule=Rule(problem=checks.scheduler_problem), pixels=pixels(key="name"))
    # null: the model's schedule (dev shifts by resolution); a number: that fixed shift
    shift: Optional[float] = setting(
        None,
        rule=Rule(problem=checks.shift_problem),
        pixels=pixels(value=lambda s: float(s.shift), when=lambda s: s.shift is not None),
    )
    steps: int = setting(rule=Rule(minimum=1), pixels=pixels())
    guidance: float = setting(
        rule=Rule(problem=checks.guidance_problem), pixels=pixels(value=lambda s: float(s.guidance))
    )
    # > 1 renders rows that have a negative prompt with true CFG (2x cost)
    true_cfg: float = setting(
        1.0,
        rule=Rule(problem=checks.true_cfg_problem),
        pixels=pixels(value=lambda s: float(s.true_cfg), when=lambda s: s.true_cfg != 1),
    )
    # for rows without their own negative_prompt
    negative_prompt: str = setting(
        "",
        pixels=pixels(
            value=lambda s: s.negative_prompt.strip(), when=lambda s: bool(s.negative_prompt.strip())
        ),
    )
    # width and height enter the fingerprint as the run's image size (after `aspect`)
    width: int = setting(rule=Rule(multiple=16), pixels=pixels(value=lambda s: _size(s)[0]))
    height: int = setting(rule=Rule(multiple=16), pixels=pixels(value=lambda s: _size(s)[1]))
    # e.g. 16:9: replaces width/height at `megapixels`; with `megapixels`, in the fingerprint
    # as the "area" the rows' own aspects fit
    aspect: Optional[str] = setting(
        None,
        rule=Rule(problem=checks.aspect_problem, hint=checks.aspect_hint),
        pixels=pixels(
            key="area", value=area, when=lambda s: s.aspect is not None or s.megapixels is not None
        ),
    )
    # null: the area of width x height; 1 = 1024x1024 pixels
    megapixels: Optional[float] = setting(None, rule=Rule(problem=checks.positive_problem))
    max_sequence_length: int = setting(rule=Rule(minimum=1), pixels=pixels())
    # how an input image is fitted to its item's output size before the VAE encodes it; in the
    # fingerprint when not crop, so text-only runs keep theirs
    input_fit: InputFit = setting(
        InputFit.crop, pixels=pixels(value=lambda s: plain(s.input_fit), when=lambda s: s.input_fit != "crop")
    )

    def check_negative(self, guided: bool) -> None:
        """A negative prompt needs the guidance that takes it: true CFG (FLUX.1), or guidance
        above 1 for a family whose guidance is classifier-free (`guided`: Chroma, [klein] base)."""
        if not self.negative_prompt.strip():
            return
        if guided and self.guidance <= 1:
            raise ConfigError(
                f"sampler.negative_prompt has no effect with sampler.guidance={self.guidance:g}: this "
                "model's classifier-free guidance takes it above 1 (e.g. 4)"
            )
        if not guided and self.true_cfg <= 1:
            raise ConfigError(
                "sampler.negative_prompt has no effect with sampler.true_cfg=1: set sampler.true_cfg "
                "above 1 (e.g. 4) to render with it"
            )


@dataclass
class CacheConfig(Section):
    """Step caching (render/step_cache.py): the renderer's options. Each method reads its own
    knobs, and only those enter the fingerprint and the manifest."""

    KEY: ClassVar[str] = "cache"
    CHOOSER: ClassVar[str] = "method"

    # absent from the fingerprint without caching: runs made before caching keep theirs
    method: CacheMethod = setting(CacheMethod.none, pixels=pixels(when=lambda c: c.method != "none"))
    # fbcache: relative change of the first block's residual under which the rest is reused
    threshold: float = setting(
        0.08,
        rule=Rule(problem=checks.guidance_problem, if_read=True),
        pixels=pixels(value=lambda c: float(c.threshold)),
        read_by=("fbcache",),
    )
    # taylorseer: a full step every `interval` steps after the warm-up
    interval: int = setting(2, rule=Rule(minimum=1, if_read=True), pixels=pixels(), read_by=("taylorseer",))
    # taylorseer: steps computed in full before the first prediction
    warmup: int = setting(3, rule=Rule(minimum=1, if_read=True), pixels=pixels(), read_by=("taylorseer",))
    # taylorseer: order of the Taylor expansion
    order: int = setting(1, rule=Rule(minimum=1, if_read=True), pixels=pixels(), read_by=("taylorseer",))


@dataclass
class LoraConfig(Section):
    """One entry of `lora`; FluxBatchConfig checks it, naming its index (lora.0.scale)."""

    path: str = MISSING  # local .safetensors file or `hub_id/file.safetensors`
    scale: float = setting(1.0, rule=Rule(problem=checks.finite_problem))


@dataclass
class DatasetConfig(Section):
    """A prompt file: .jsonl, .csv, .tsv, .txt, .parquet or .arrow, or a folder of Parquet files
    or one datasets' save_to_disk wrote (or set format). Relative paths are read from the
    current directory; prompts/example.jsonl falls back to the copy shipped with flux-batch."""

    KEY: ClassVar[str] = "dataset"

    path: str = MISSING
    format: str = setting("auto", rule=Rule(problem=checks.dataset_format_problem))
    prompt_field: str = "prompt"
    id_field: str = "id"
    image_field: str = "image"  # a row's input image(s): a path relative to the file's folder, or a list
    # a folder of images instead of a prompt file: one row per image, sorted by name, each
    # with `instruction` as its prompt
    images: Optional[str] = None
    instruction: str = ""
    # a prompt template instead of a prompt file: "a {style} photo of a {object}", each {slot}
    # filled from `slots`, each {a|b|c} an anonymous slot (plan/template.py)
    template: Optional[str] = None
    # slot name -> a list of values, or the path of a text file of one value per line
    slots: Dict[str, Any] = field(default_factory=dict)
    mode: TemplateMode = TemplateMode.product  # every combination, or `count` drawn by the seed
    count: Optional[int] = setting(None, rule=Rule(minimum=1))  # mode=sample: how many are drawn

    def check(self) -> None:
        super().check()
        if self.template is not None and self.images is not None:
            raise ConfigError("dataset.template and dataset.images: set one of them, not both")
        if self.images is not None and not self.instruction.strip():
            raise ConfigError(
                "dataset.instruction: empty; dataset.images needs the instruction each image gets"
            )
        if self.mode == TemplateMode.sample and self.count is None:
            raise ConfigError("dataset.mode=sample: set dataset.count, the number of combinations drawn")


@dataclass
class OutputConfig(Section):
    """Where the images go. The layout's part of the fingerprint: fingerprint.layout_settings."""

    KEY: ClassVar[str] = "output"
    CHOOSER: ClassVar[str] = "layout"

    # null: outputs/<dataset>-<model>-<quant>-<fingerprint>, resumed by the same command
    dir: Optional[str] = None
    format: ImageFormat = setting(ImageFormat.png, pixels=pixels(group="image"))
    quality: int = setting(
        95,
        rule=Rule(problem=checks.quality_problem),
        pixels=pixels(  # jpg / webp
            group="image", when=lambda o: o.format != "png"
        ),
    )
    # flat: images/<id>.png | sharded: images/00000/<id>.png | webdataset: shards/000000.tar
    layout: Layout = Layout.flat
    # images per folder (null: 10,000) or samples per tar shard (null: 1,000)
    shard_size: Optional[int] = setting(
        None,
        rule=Rule(minimum=1),
        read_by=tuple(name for name, layout in LAYOUTS.items() if layout.default_size is not None),
    )
    captions: bool = False  # write the prompt as <id>.txt beside each image (LoRA trainers read these)

    def check(self) -> None:
        problem = make_layout(plain(self.layout), self.shard_size, self.captions).problem()
        if problem is not None:
            raise ConfigError(problem)


@dataclass
class RuntimeConfig(Section):
    KEY: ClassVar[str] = "runtime"

    # auto | cpu | cuda | cuda:N | mps
    device: str = setting("auto", rule=Rule(problem=checks.device_problem))
    offload: Offload = setting(Offload.auto, rule=Rule(problem=checks.offload_problem))
    # GGUF weights dequantized once when they fit: faster, same pixels
    dequantize: Dequantize = Dequantize.auto
    dtype: DType = setting(DType.auto, pixels=pixels(group=""))
    # cpu: FLUX.2 [dev]'s 48 GB encoder off a 24 or 48 GB GPU; embeddings move to the device
    encoder_device: EncoderDevice = EncoderDevice.auto
    progress: bool = True  # progress bar (shown on a terminal only)
    schedule: Schedule = Schedule.auto
    # phased: items whose prompts are encoded, then denoised, then decoded together
    chunk_size: int = setting(32, rule=Rule(minimum=1))
    # a folder: prompt embeddings kept between runs (safetensors)
    embed_cache: Optional[str] = setting(None, rule=Rule(problem=checks.folder_problem))
    compile: bool = False  # torch.compile the transformer (pays a compile on the first batches)
    # threads encoding and writing images while the next batch renders (0: on the render path)
    writers: int = setting(2, rule=Rule(minimum=0))
    write_queue: int = setting(8, rule=Rule(minimum=1))  # images rendered and not yet written, at most
    # with num_shards > 1: this job renders items shard, shard + num_shards, ... (scale/ranks.py)
    shard: int = 0
    num_shards: int = 1  # independent jobs (a Slurm array) sharing one run directory
    dry_run: bool = False  # print each rank's (slice's) share of the pending items and its device

    def check(self) -> None:
        if self.encoder_device == EncoderDevice.cpu and self.offload == Offload.model:
            raise ConfigError(
                "runtime.encoder_device=cpu: runtime.offload=model would move the text encoders "
                "to the GPU at each prompt; use runtime.offload=auto or none with it"
            )


@dataclass
class EngineConfig(Section):
    """Where the items render: `local` (this process, or a launch's ranks) or `ray` (an actor
    pool on a Ray cluster, scale/ray_engine.py). Never in the fingerprint: the same items give
    the same pixels on either."""

    KEY: ClassVar[str] = "engine"
    CHOOSER: ClassVar[str] = "name"

    name: Engine = Engine.local
    # null: a Ray started inside this process; auto: the cluster RAY_ADDRESS names, or the one
    # running here; host:port: that cluster's head
    address: Optional[str] = setting(
        None, rule=Rule(problem=checks.ray_address_problem, if_read=True), read_by=("ray",)
    )
    # render actors: a number, or [min, max] for a pool Ray grows and shrinks
    workers: Any = setting(1, rule=Rule(problem=checks.workers_problem, if_read=True), read_by=("ray",))
    # null: one GPU per worker when the cluster has GPUs, else none
    gpus_per_worker: Optional[float] = setting(
        None, rule=Rule(problem=checks.resources_problem, if_read=True), read_by=("ray",)
    )
    cpus_per_worker: float = setting(
        1.0, rule=Rule(problem=checks.resources_problem, if_read=True), read_by=("ray",)
    )
    # seconds without a finished item after which the run ends (a rerun resumes)
    stall_timeout: float = setting(
        1800.0, rule=Rule(problem=checks.positive_problem, if_read=True), read_by=("ray",)
    )


@dataclass
class FluxBatchConfig(Section):
    KEY: ClassVar[str] = ""

    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    # LoRAs on top of the transformer; in the fingerprint by their hash (model/lora.py)
    lora: List[LoraConfig] = field(
        default_factory=list,
        metadata={
            "pixels": pixels(group="", value=lambda c: lora_identity(c.lora), when=lambda c: bool(c.lora))
        },
    )
    # base seed; an item's seed is derived from it, its id and k
    seed: int = setting(0, rule=Rule(minimum=0), pixels=pixels())
    num_images: int = setting(1, rule=Rule(minimum=1))  # images per prompt (a row may set its own)
    # items per forward pass, or auto (the most that fit in memory)
    batch_size: Any = setting(1, rule=Rule(problem=checks.batch_size_problem))
    limit: Optional[int] = setting(None, rule=Rule(minimum=0))  # render only the first N items
    max_errors: int = setting(3, rule=Rule(minimum=0))  # failed items tolerated before the run stops

    def check(self) -> None:
        for i, entry in enumerate(self.lora):
            check_rules(entry, f"lora.{i}.")
        # what the family lacks (a cache method, LoRA, true CFG) is refused in one line
        family = families.get(self.model.family)
        family.check_features(plain(self.cache.method), bool(self.lora), self.sampler.true_cfg)
        self.sampler.check_negative(family.guided_negatives(self.model.variant))
        if self.engine.name == Engine.ray and plain(self.output.layout) == Layout.webdataset.value:
            raise ConfigError(
                "engine=ray writes output.layout=flat or sharded; its workers do not write tar shards "
                "(flux-batch-export webdataset turns a finished run into them)"
            )


# The sections of the config, by key.
SECTIONS = {
    "model": ModelConfig,
    "quant": QuantConfig,
    "sampler": SamplerConfig,
    "cache": CacheConfig,
    "dataset": DatasetConfig,
    "output": OutputConfig,
    "runtime": RuntimeConfig,
    "engine": EngineConfig,
}

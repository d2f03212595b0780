"""Model files and pipeline loading: GGUF transformer through `from_single_file`, the rest
through `FluxPipeline.from_pretrained`, exactly as the reference script does.

Only GGUF and safetensors weights are read: nothing is unpickled and no remote code runs.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from .config import value_of
from .errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)
HUB_FILE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)/(?P<file>[^/].*\.gguf)$")


@dataclass(frozen=True)
class ModelFiles:
    base: str  # local folder or hub id
    transformer: str  # local GGUF path or URL
    loras: tuple = ()  # lora.LoraFile, in config order


def model_identity(cfg: DictConfig) -> dict:
    """What identifies the model's weights for the run fingerprint, without reading them.

    The embedded model's own files by its builder version; other local files by name and
    size; hub ids and URLs by name.
    """
    m = cfg.model
    transformer = os.path.expanduser(str(m.transformer))
    if m.builder == "tiny":
        from . import tiny

        if Path(transformer).parent == tiny.base_dir(m.variant):
            return {"builder": tiny.VERSION, "transformer": os.path.basename(transformer)}
    if m.builder == "demo":
        from . import demo

        if demo.is_demo_file(transformer) and Path(str(m.base)) == demo.model_dir():
            return {"builder": demo.VERSION, "transformer": os.path.basename(transformer)}
    identity: dict = {"name": os.path.basename(transformer)}
    if os.path.isfile(transformer):
        identity["size"] = os.path.getsize(transformer)
    return {"base": os.path.basename(str(m.base).rstrip("/")), "transformer": identity}


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={setting}: CUDA is not available on this machine")
    return setting


def resolve_dtype(setting: str, device: str):
    import torch

    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, setting)


def resolve_files(cfg: DictConfig) -> ModelFiles:
    """Local paths of the pipeline folder and GGUF file, building or downloading as needed."""
    m = cfg.model
    if m.builder == "tiny":
        from . import tiny

        _check_writable(cfg, "tiny")
        tiny.ensure_built(cfg.quant.gguf_type, m.variant)  # an overridden path is used as given
    elif m.builder == "demo":
        _ensure_demo(cfg)
    from . import lora

    return ModelFiles(_resolve_base(m), _resolve_transformer(m), lora.resolve(cfg))


def _ensure_demo(cfg: DictConfig) -> None:
    """The shipped Q8_0 file, or another type quantized into the cache from the shipped weights."""
    from . import demo

    if not demo.is_demo_file(os.path.expanduser(str(cfg.model.transformer))):
        return  # an overridden path is used as given
    _check_writable(cfg, "demo")
    demo.ensure_built(cfg.quant.gguf_type)


def _check_writable(cfg: DictConfig, model: str) -> None:
    """The embedded models are quantized here, by the gguf package, which writes few types."""
    from .gguf_io import WRITABLE_TYPES

    if cfg.quant.gguf_type not in WRITABLE_TYPES:
        raise ConfigError(
            f"quant={cfg.quant.name}: the {model} model is quantized here with the gguf package, "
            f"which cannot write {cfg.quant.gguf_type}; use quant=q8_0, q4_0, bf16 or f32"
        )


def _missing(what: str, path: str, how: str) -> ModelFileError:
    hint = f" {how}" if how else ""
    return ModelFileError(f"{what} not found: {path}.{hint}")


HUB_ID = re.compile(r"^[\w-][\w.-]*/[\w.-]+$")
BASE_FILES = [
    "model_index.json", "scheduler/*", "text_encoder/*", "text_encoder_2/*", "tokenizer/*",
    "tokenizer_2/*", "vae/*", "transformer/config.json",
]


def _resolve_base(m: DictConfig) -> str:
    base = os.path.expanduser(str(m.base))
    if os.path.isdir(base):
        if not os.path.isfile(os.path.join(base, "model_index.json")):
            raise ModelFileError(
                f"model.base={base}: not a diffusers pipeline folder (no model_index.json)"
            )
        return base
    if not HUB_ID.match(base):
        raise _missing("model.base folder", base, m.how_to_get)
    try:  # a hub id: fetch configs, encoders and VAE (not the 24 GB transformer) into the HF cache
        from huggingface_hub import snapshot_download

        return snapshot_download(base, allow_patterns=BASE_FILES,
                                 ignore_patterns=["*.bin", "*.pt", "*.ckpt", "*.pth"])
    except Exception as e:  # offline, gated, or unknown id
        raise ModelFileError(
            f"model.base={base}: cannot fetch it from the Hugging Face hub "
            f"({type(e).__name__}). {m.how_to_get}"
        ) from None


def fetch_hub_file(key: str, spec: str, pattern: re.Pattern, hint: str = "") -> str | None:
    """The local copy, through huggingface_hub's cache, of a `owner/repo/file` spec that
    `pattern` matches; None when the spec is not of that form."""
    match = pattern.match(spec)
    if match is None or spec.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(match["repo"], match["file"])
    except Exception as e:  # offline, gated, or no such file
        raise ModelFileError(
            f"{key}={spec}: cannot fetch it from the Hugging Face hub ({type(e).__name__})."
            + (f" {hint}" if hint else "")
        ) from None


def _resolve_transformer(m: DictConfig) -> str:
    spec = os.path.expanduser(str(m.transformer))
    if spec.startswith(("http://", "https://")) or os.path.exists(spec):
        local = spec
    else:
        local = fetch_hub_file("model.transformer", spec, HUB_FILE, m.how_to_get)
        if local is None:
            raise _missing("model.transformer file", spec, m.how_to_get)
    if not spec.startswith(("http://", "https://")):
        check_weights_file(local, "model.transformer")
        _check_gguf_variant(m, local)
    return local


GUIDANCE_TENSORS = ("guidance_in.", "time_text_embed.guidance_embedder.")  # BFL, diffusers names


def _check_gguf_variant(m: DictConfig, path: str) -> None:
    """A dev GGUF has a guidance embedding, a schnell one has none: refuse the wrong one
    before loading anything, so a dev file is never run with schnell's settings."""
    from gguf import GGUFReader

    names = (tensor.name for tensor in GGUFReader(path).tensors)
    has_guidance = any(name.startswith(GUIDANCE_TENSORS) for name in names)
    if has_guidance != (m.variant == "dev"):
        found = "FLUX.1-dev-style (it has a guidance embedding)" if has_guidance else \
            "FLUX.1-schnell-style (it has no guidance embedding)"
        wanted = "a dev" if m.variant == "dev" else "a schnell"
        other = ("tiny" if has_guidance else "tiny-schnell") if m.builder in ("tiny", "demo") else \
            ("flux-dev" if has_guidance else "flux-schnell")
        raise ModelFileError(
            f"model.transformer={path}: this GGUF is {found}, but model={m.name} needs {wanted} "
            f"file; use model={other} with it, or a matching GGUF"
        )


def check_weights_file(path: str, key: str) -> None:
    if not path.endswith(".gguf"):
        raise ModelFileError(
            f"{key}={path}: only GGUF transformer files are read (pickled .ckpt/.pt/.bin files "
            "are never loaded)"
        )
    from .gguf_io import check_gguf_file

    try:
        check_gguf_file(path)
    except ValueError as e:
        raise ModelFileError(f"{key}={e}") from None
    except OSError as e:
        raise ModelFileError(f"{key}={path}: cannot read it ({e.strerror or e})") from None
    from .gguf_inspect import loading_problem

    problem = loading_problem(path)
    if problem:
        raise ModelFileError(f"{key}={path}: {problem}")


def load_pipeline(cfg: DictConfig, device: str, files: ModelFiles | None = None):
    """The FluxPipeline with its GGUF-quantized transformer, placed on `device`."""
    import diffusers
    import transformers
    from diffusers import FluxPipeline

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    files = files or resolve_files(cfg)
    dtype = resolve_dtype(value_of(cfg.runtime.dtype), device)
    log.info("loading transformer %s (%s, compute %s)", files.transformer, cfg.quant.name, dtype)
    transformer = load_transformer(files.transformer, files.base, dtype)
    _check_variant(cfg, transformer)
    try:  # use_safetensors: a folder holding only pickled .bin weights is refused, not unpickled
        pipe = FluxPipeline.from_pretrained(files.base, transformer=transformer, dtype=dtype,
                                            use_safetensors=True)
    except (ValueError, OSError) as e:
        raise ModelFileError(
            f"model.base={files.base}: cannot be loaded as a FLUX pipeline with safetensors "
            f"weights ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    from . import lora

    lora.apply(pipe, files.loras)  # adapters before placement, so offload hooks see them
    _place(pipe, cfg, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_transformer(transformer: str, base: str, dtype, lean: bool = True):
    """The GGUF transformer through diffusers' GGUF layers. `lean`: read a local file through
    its memory mapping (gguf_mmap) instead of diffusers' reader, which copies every tensor;
    the same tensors either way. A URL is left to diffusers, which downloads it."""
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    try:
        source = transformer
        if lean and not transformer.startswith(("http://", "https://")):
            from . import gguf_mmap

            source = gguf_mmap.state_dict(transformer)
        return FluxTransformer2DModel.from_single_file(
            source,
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            config=base,
            subfolder="transformer",
            dtype=dtype,
        )
    except (ValueError, OSError, KeyError) as e:
        raise ModelFileError(
            f"model.transformer={transformer}: cannot be loaded as a FLUX transformer "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def _check_variant(cfg: DictConfig, transformer) -> None:
    has_guidance = bool(transformer.config.guidance_embeds)
    if has_guidance != (cfg.model.variant == "dev"):
        kind = "dev (guidance embedding)" if has_guidance else "schnell (no guidance embedding)"
        raise ModelFileError(
            f"model.transformer={cfg.model.transformer}: this is a {kind} transformer, but "
            f"model={cfg.model.name} expects {cfg.model.variant}"
        )


def _place(pipe, cfg: DictConfig, device: str) -> None:
    offload = value_of(cfg.runtime.offload)
    if offload == "auto":
        offload = "model" if device.startswith("cuda") and not _fits(pipe, device) else "none"
    if offload == "model":
        if not device.startswith("cuda"):
            raise ConfigError("runtime.offload=model needs a CUDA device")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)


def _fits(pipe, device: str) -> bool:
    """Whether every component fits on the GPU at once, with room for activations."""
    import torch

    needed = sum(
        sum(p.numel() * p.element_size() for p in component.parameters())
        for component in pipe.components.values() if isinstance(component, torch.nn.Module)
    )
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return needed * 1.2 + 4 * 2**30 < free

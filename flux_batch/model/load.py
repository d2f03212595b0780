"""Loading the pipeline: the GGUF transformer through `from_single_file`, the rest through the
family's pipeline class's `from_pretrained`, exactly as the reference script does; then LoRAs
and placement.

Only GGUF and safetensors weights are read: nothing is unpickled and no remote code runs.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

from flux_batch import families
from flux_batch.errors import ConfigError, ModelFileError
from flux_batch.families import Family
from flux_batch.gguf import mmap as gguf_mmap
from flux_batch.model import dequantize, lora
from flux_batch.model.device import resolve_dtype
from flux_batch.model.files import ModelFiles

log = logging.getLogger("flux_batch.model")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model's files: the settings that make two pipelines different objects."""

    model: str  # the model's config name, for messages
    variant: str  # one of the family's: dev (guidance embedding) or schnell for flux1
    quant: str  # the quant's config name, for the log
    dtype: str  # auto, float32, bfloat16 or float16
    offload: str  # none, model or auto
    dequantize: str = "never"  # never, once or auto (model/dequantize.py)
    family: str = families.DEFAULT  # model.family
    encoder_device: str = "auto"  # auto or cpu: where the text encoders run


def load_pipeline(files: ModelFiles, options: LoadOptions, device: str):
    """The family's pipeline with its GGUF-quantized transformer (and LoRAs), placed on `device`."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    family = families.get(options.family)
    dtype = resolve_dtype(options.dtype, device)
    log.info("loading transformer %s (%s, compute %s)", files.transformer, options.quant, dtype)
    transformer = load_transformer(files.transformer, files.base, dtype, family=family)
    family.check_transformer(transformer, files.transformer, options.model, options.variant)
    try:  # use_safetensors: a folder holding only pickled .bin weights is refused, not unpickled
        pipe = family.pipeline_class().from_pretrained(
            files.base, transformer=transformer, dtype=dtype, use_safetensors=True
        )
    except (ValueError, OSError) as e:
        raise ModelFileError(
            f"model.base={files.base}: cannot be loaded as a FLUX pipeline with safetensors "
            f"weights ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    pipe.flux_batch_family = family.name  # families.of_pipeline reads it
    family.adapt(pipe)
    lora.apply(pipe, files.loras)  # adapters before placement, so offload hooks see them
    offloaded = _place(pipe, options.offload, device, options.encoder_device == "cpu")
    if dequantize.wanted(options.dequantize, pipe.transformer, device, offloaded):
        log.info(
            "dequantized %d GGUF layers once (runtime.dequantize=%s)",
            dequantize.dequantize(pipe.transformer),
            options.dequantize,
        )
    # text encoders kept on the CPU would make diffusers answer their device (the first
    # component's): the transformer's is where the pipeline runs
    encoders_apart = getattr(pipe, "flux_batch_encoder_device", None) is not None
    pin_execution_device(pipe, pipe.transformer.device if encoders_apart else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_transformer(transformer: str, base: str, dtype, lean: bool = True, family: Family | None = None):
    """The GGUF transformer through diffusers' GGUF layers. `lean`: read a local file through
    its memory mapping (gguf_mmap) instead of diffusers' reader, which copies every tensor;
    the same tensors either way. A URL is left to diffusers, which downloads it."""
    from diffusers import GGUFQuantizationConfig

    family = family or families.get(families.DEFAULT)
    try:
        source = transformer
        if lean and not transformer.startswith(("http://", "https://")):
            source = gguf_mmap.state_dict(transformer)
        return family.transformer_class().from_single_file(
            source,
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            config=base,
            subfolder="transformer",
            dtype=dtype,
        )
    except (
        ValueError,
        OSError,
        KeyError,
        RuntimeError,
    ) as e:  # RuntimeError: a shape diffusers' reader cannot place
        raise ModelFileError(
            f"model.transformer={transformer}: cannot be loaded as a FLUX transformer "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def _place(pipe, offload: str, device: str, encoders_on_cpu: bool = False) -> bool:
    """Move the pipeline to `device`, or offload it; whether it is offloaded. With
    `encoders_on_cpu` the text encoders stay in host memory (runtime.encoder_device=cpu)."""
    encoders = families.of_pipeline(pipe).text_encoders(pipe) if encoders_on_cpu else []
    if offload == "auto":
        offload = "model" if device.startswith("cuda") and not _fits(pipe, device, encoders) else "none"
    if offload == "model":
        if not device.startswith("cuda"):
            raise ConfigError("runtime.offload=model needs a CUDA device")
        pipe.enable_model_cpu_offload(device=device)
        return True
    pipe.to(device)
    if encoders:
        for encoder in encoders:
            encoder.to("cpu")
        pipe.flux_batch_encoder_device = "cpu"
    return False


_PINNED: dict[type, type] = {}


def pin_execution_device(pipe, device=None) -> None:
    """Answer `pipe._execution_device` from a value computed once, after placement.

    diffusers computes it at every read by walking every module of every component: 2 to 3 ms
    on the tiny model's CPU, read three times per batch (the pipeline call reads it twice when
    handed prompt embeddings, the prompt encoder once), which made batch size 1 slower than a
    plain `pipe(prompt)` loop. Placement never changes after loading (under model offload the
    execution device is the offload hooks' device), so the value cannot go stale. The pipeline
    keeps its class name: only the property is replaced, in a subclass made once per class."""
    device = device if device is not None else pipe._execution_device
    cls = type(pipe)
    if cls not in _PINNED.values():
        if cls not in _PINNED:
            _PINNED[cls] = type(
                cls.__name__,
                (cls,),
                {
                    "__module__": cls.__module__,
                    "__doc__": cls.__doc__,
                    "_execution_device": property(lambda self: self.__dict__["_flux_batch_device"]),
                },
            )
        pipe.__class__ = _PINNED[cls]
    pipe.__dict__["_flux_batch_device"] = device


@contextmanager
def on_encoder_device(pipe):
    """Inside, the pipeline's execution device is its text encoders' (runtime.encoder_device=cpu),
    so its prompt encoder puts the token ids where the encoders are; outside, the pinned one."""
    device = getattr(pipe, "flux_batch_encoder_device", None)
    if device is None:
        yield
        return
    import torch

    pinned = pipe.__dict__["_flux_batch_device"]
    pipe.__dict__["_flux_batch_device"] = torch.device(device)
    try:
        yield
    finally:
        pipe.__dict__["_flux_batch_device"] = pinned


def _fits(pipe, device: str, elsewhere=()) -> bool:
    """Whether every component (but those kept `elsewhere`) fits on the GPU at once, with room
    for activations."""
    import torch

    needed = sum(
        sum(p.numel() * p.element_size() for p in component.parameters())
        for component in pipe.components.values()
        if isinstance(component, torch.nn.Module) and not any(component is m for m in elsewhere)
    )
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return needed * 1.2 + 4 * 2**30 < free

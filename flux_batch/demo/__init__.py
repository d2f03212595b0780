"""The demo model: a tiny FLUX.1-dev-style pipeline trained to draw coloured shapes.

Its files ship inside the package (`model/`): a diffusers pipeline folder (encoders,
tokenizers, VAE, scheduler, the transformer in float32 safetensors) and the transformer as
Q8_0 GGUF. Other quant types are written on first use into the cache from the float32
weights, by the same GGUF code as `flux-batch-gguf quantize`.
"""

from __future__ import annotations

import os
from pathlib import Path

VERSION = "demo-v2"  # bump when the shipped weights change: it enters the run fingerprint
SHIPPED_TYPE = "Q8_0"
HOW_TO_GET = (
    "The demo model ships inside the flux-batch package; reinstall flux-batch, or "
    "retrain it with `python -m flux_batch.demo.train flux_batch/demo/model`"
)


def model_dir() -> Path:
    return Path(__file__).resolve().parent / "model"


def transformer_path(gguf_type: str) -> Path:
    if gguf_type == SHIPPED_TYPE:
        return model_dir() / f"transformer-{gguf_type}.gguf"
    from flux_batch.demo.tiny import cache_root

    return cache_root() / VERSION / f"transformer-{gguf_type}.gguf"


def ensure_built(gguf_type: str) -> Path:
    """The GGUF file for `gguf_type`, quantized from the shipped weights if not shipped."""
    out = transformer_path(gguf_type)
    if out.exists():
        return out
    from flux_batch.errors import ModelFileError
    from flux_batch.gguf.quantize import quantize_checkpoint

    source = model_dir() / "transformer"
    if not (source / "diffusion_pytorch_model.safetensors").exists():
        raise ModelFileError(f"demo model weights not found: {source}. {HOW_TO_GET}")
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_checkpoint(source, out, gguf_type, layout="diffusers", name=f"flux-batch {VERSION}")
    return out


def is_demo_file(path: str | os.PathLike) -> bool:
    """Whether `path` is one of the demo model's own transformer files."""
    path = Path(path)
    return path.name.startswith("transformer-") and path.parent in (
        model_dir(),
        transformer_path("F32").parent,
    )

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
# the edit variant's (model=demo-edit), likewise; it runs on the demo's VAE and encoders and
# starts from its transformer, so a new demo VERSION means retraining it and a new one here
EDIT_VERSION = "demo-edit-v1"
HOW_TO_GET = (
    "The demo model ships inside the flux-batch package; reinstall flux-batch, or "
    "retrain it with `python -m flux_batch.demo.train flux_batch/demo/model`"
)


HOW_TO_GET_EDIT = (
    "The demo edit model ships inside the flux-batch package; reinstall flux-batch, or "
    "retrain it with `python -m flux_batch.demo.train_edit flux_batch/demo/edit`"
)


def model_dir() -> Path:
    return Path(__file__).resolve().parent / "model"


def edit_dir() -> Path:
    """The edit variant's own files: its transformer (the rest of its pipeline is model_dir()'s)."""
    return Path(__file__).resolve().parent / "edit"


def transformer_path(gguf_type: str, variant: str = "") -> Path:
    """The demo's transformer file of `gguf_type`; `variant="edit"`: the edit variant's."""
    if variant not in ("", "edit"):
        raise ValueError(f"no demo variant {variant!r} (there are the demo and 'edit')")
    if gguf_type == SHIPPED_TYPE:
        return (edit_dir() if variant else model_dir()) / f"transformer-{gguf_type}.gguf"
    from flux_batch.demo.tiny import cache_root

    return cache_root() / (EDIT_VERSION if variant else VERSION) / f"transformer-{gguf_type}.gguf"


def variant_of(path: str | os.PathLike) -> str:
    """`edit` for the edit variant's transformer files, "" for the demo's."""
    parent = Path(path).parent
    return "edit" if parent in (edit_dir(), transformer_path("F32", "edit").parent) else ""


def version_of(path: str | os.PathLike) -> str:
    """The version of the shipped weights a demo transformer file is made from."""
    return EDIT_VERSION if variant_of(path) else VERSION


def ensure_built(gguf_type: str, variant: str = "") -> Path:
    """The GGUF file for `gguf_type`, quantized from the shipped weights if not shipped: the
    demo's float32 safetensors, or the edit variant's Q8_0 file (it ships nothing else, to keep
    the package small: its other types are made from the Q8_0 weights, dequantized)."""
    out = transformer_path(gguf_type, variant)
    if out.exists():
        return out
    from flux_batch.errors import ModelFileError
    from flux_batch.gguf.quantize import quantize_checkpoint

    if variant:
        shipped = transformer_path(SHIPPED_TYPE, variant)
        if not shipped.exists():
            raise ModelFileError(f"demo edit model weights not found: {shipped}. {HOW_TO_GET_EDIT}")
        out.parent.mkdir(parents=True, exist_ok=True)
        _requantize(shipped, out, gguf_type)
        return out
    source = model_dir() / "transformer"
    if not (source / "diffusion_pytorch_model.safetensors").exists():
        raise ModelFileError(f"demo model weights not found: {source}. {HOW_TO_GET}")
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_checkpoint(source, out, gguf_type, layout="diffusers", name=f"flux-batch {VERSION}")
    return out


def _requantize(shipped: Path, out: Path, gguf_type: str) -> None:
    """`out` as `gguf_type`, from the float32 values of the shipped Q8_0 file; written in a
    scratch folder beside `out` and renamed into place, so a crash or a concurrent run never
    leaves half a file."""
    import tempfile

    import gguf
    import torch
    from safetensors.torch import save_file

    from flux_batch.gguf.quantize import quantize_checkpoint

    reader = gguf.GGUFReader(shipped)
    weights = {
        t.name: torch.from_numpy(
            gguf.quants.dequantize(t.data, t.tensor_type)
            .astype("float32")
            .reshape(tuple(int(d) for d in reversed(t.shape)))
        )
        for t in reader.tensors
    }
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        save_file(weights, str(Path(scratch) / "diffusion_pytorch_model.safetensors"))
        partial = Path(scratch) / out.name
        quantize_checkpoint(
            scratch, partial, gguf_type, layout="diffusers", name=f"flux-batch {EDIT_VERSION}"
        )
        partial.replace(out)


def is_demo_file(path: str | os.PathLike) -> bool:
    """Whether `path` is one of the demo model's (or its edit variant's) own transformer files."""
    path = Path(path)
    return path.name.startswith("transformer-") and path.parent in (
        model_dir(),
        transformer_path("F32").parent,
        edit_dir(),
        transformer_path("F32", "edit").parent,
    )

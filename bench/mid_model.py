"""A mid-size random FLUX pipeline for CPU benchmarks: the embedded tiny model's text
encoders, tokenizers, VAE and scheduler around a wider transformer (hidden 512, 2 double and
2 single blocks, 27 M parameters), where the transformer's arithmetic dominates a 128x128 image.

    build(folder) -> folder with transformer/ (config + float32 safetensors) and
                     transformer-Q8_0.gguf, transformer-BF16.gguf
"""

from __future__ import annotations

import shutil
from pathlib import Path

HIDDEN_HEADS, HEAD_DIM = 8, 64  # hidden size 512
DOUBLE_BLOCKS, SINGLE_BLOCKS = 2, 2
TYPES = ("Q8_0", "BF16")


def build(folder: Path) -> Path:
    folder = Path(folder)
    if (folder / "transformer-Q8_0.gguf").exists():
        return folder
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.numpy import load_file

    from flux_batch.demo import tiny
    from flux_batch.gguf.file import write_gguf

    tiny_base, _ = tiny.ensure_built("Q8_0")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tiny_base, folder, ignore=shutil.ignore_patterns("*.gguf", "transformer"))
    torch.manual_seed(0)
    FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=DOUBLE_BLOCKS,
        num_single_layers=SINGLE_BLOCKS,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=HIDDEN_HEADS,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(8, 28, 28),
    ).save_pretrained(folder / "transformer")
    weights = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    for qtype in TYPES:
        write_gguf(
            folder / f"transformer-{qtype}.gguf",
            weights,
            qtype,
            metadata={"general.name": "flux-batch bench mid-size"},
        )
    return folder


def parameters(folder: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(Path(folder) / "transformer" / "diffusion_pytorch_model.safetensors", "np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())

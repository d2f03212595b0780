"""A mid-size random pipeline of any family for CPU benchmarks: the family's embedded tiny
model's text encoders, tokenizers, VAE and scheduler around a wider transformer (hidden 512,
2 double and 2 single blocks; 27 M parameters for FLUX.1), where the transformer's arithmetic
dominates a 128x128 image.

    build(folder, family="flux1", variant="dev") -> folder with transformer/ (config + float32
        safetensors) and transformer-Q8_0.gguf, transformer-BF16.gguf

The transformer is the tiny one's config with more heads of a wider head dimension (its
rotary axes widened to match), made by the family's transformer class with seed 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HIDDEN_HEADS, HEAD_DIM = 8, 64  # hidden size 512
DOUBLE_BLOCKS, SINGLE_BLOCKS = 2, 2
TYPES = ("Q8_0", "BF16")


def rope_axes(axes: list[int], head_dim: int) -> list[int]:
    """Rotary axes summing to `head_dim`, in the tiny model's proportions (FLUX.1's 4, 6, 6 ->
    8, 28, 28 as the real 16, 56, 56 over 128); every axis even."""
    if len(axes) == 3:
        first = head_dim // 8
        rest = (head_dim - first) // 2
        return [first, rest, head_dim - first - rest]
    return [head_dim // len(axes)] * len(axes)


def build(folder: Path, family: str = "flux1", variant: str = "dev") -> Path:
    folder = Path(folder)
    if (folder / "transformer-Q8_0.gguf").exists():
        return folder
    import torch
    from safetensors.numpy import load_file

    from flux_batch import families
    from flux_batch.demo import tiny
    from flux_batch.gguf.file import write_gguf

    tiny_base, _ = tiny.ensure_built("Q8_0", variant, family)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tiny_base, folder, ignore=shutil.ignore_patterns("*.gguf", "transformer"))
    config = json.loads((tiny_base / "transformer" / "config.json").read_text())
    config.update(
        num_layers=DOUBLE_BLOCKS,
        num_single_layers=SINGLE_BLOCKS,
        num_attention_heads=HIDDEN_HEADS,
        attention_head_dim=HEAD_DIM,
        axes_dims_rope=rope_axes(config["axes_dims_rope"], HEAD_DIM),
    )
    torch.manual_seed(0)
    families.get(family).transformer_class().from_config(config).save_pretrained(folder / "transformer")
    weights = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    for qtype in TYPES:
        write_gguf(
            folder / f"transformer-{qtype}.gguf",
            weights,
            qtype,
            metadata={"general.name": f"flux-batch bench mid-size {family}"},
        )
    return folder


def parameters(folder: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(Path(folder) / "transformer" / "diffusion_pytorch_model.safetensors", "np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())

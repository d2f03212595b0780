"""Chroma transformer tensor names: the BFL layout (Chroma's own checkpoints and the community's
GGUF files, e.g. silveroxides/Chroma-GGUF, with or without `model.diffusion_model.`) and the
diffusers layout of `ChromaTransformer2DModel` (the family's GGUF key table; the interface is
in families/tensor_names.py).

Chroma is FLUX.1-schnell's architecture with its modulation pruned: no per-block `img_mod`,
`txt_mod` or `modulation` layers, no final-layer modulation and no time/text/guidance
embedders. One `distilled_guidance_layer` (an MLP approximator: in_proj, residual
`layers.<i>` of in_layer/out_layer each after an RMS norm `norms.<i>`, out_proj) computes
every block's modulation instead. The blocks fuse as FLUX.1's do: qkv in double blocks, q, k,
v and the MLP input in `linear1` of single blocks. Read from diffusers'
`convert_chroma_transformer_checkpoint_to_diffusers`, whose split of `linear1` assumes the
full width (3072); this table splits by the file's own width.
"""

from __future__ import annotations

from flux_batch.families.flux1.keys import double_block, single_block
from flux_batch.families.tensor_names import (
    BFL_PREFIX,
    Fused,
    TableBuilder,
    bfl_or_diffusers,
    block_counts,
    count_blocks,
    split_sizes,
    swap_halves,
    unprefixed,
)

__all__ = [
    "BFL_PREFIX",
    "VARIANT",
    "Fused",
    "block_counts",
    "identifies",
    "layout_of",
    "split_sizes",
    "swap_halves",
    "table",
    "unprefixed",
    "variant_of",
]

VARIANT = "chroma"  # one architecture (Chroma1-HD, -Base, -Flash and the v-series share it)
APPROXIMATOR = "distilled_guidance_layer"  # the same name in both layouts
MARKERS = (f"{APPROXIMATOR}.in_proj.weight",)


def identifies(names) -> bool:
    """Chroma's tensors, in either layout: only Chroma has the approximator (FLUX.1's blocks
    carry their own modulation, FLUX.2 shares one per stream)."""
    names = set(names)
    return any(marker in names for marker in MARKERS) and layout_of(names) is not None


def layout_of(names) -> str | None:
    """'bfl' or 'diffusers' from a set of tensor names, or None when neither."""
    return bfl_or_diffusers(names)


def variant_of(names) -> str:
    return VARIANT


def approximator_layers(names) -> int:
    """The approximator's residual layers (5 in Chroma1)."""
    return count_blocks(names, f"{APPROXIMATOR}.layers")


def table(names, layout: str) -> list[Fused]:
    return fusions(*block_counts(names, layout), approximator_layers(names))


def fusions(n_double: int, n_single: int, n_approximator: int) -> list[Fused]:
    """Every tensor of a Chroma transformer, as BFL name <- diffusers parts, in BFL file order."""
    t = TableBuilder()
    linear, scale = t.linear, t.scale
    linear(f"{APPROXIMATOR}.in_proj", f"{APPROXIMATOR}.in_proj")
    for i in range(n_approximator):
        layer = f"{APPROXIMATOR}.layers.{i}"
        linear(f"{layer}.in_layer", f"{layer}.linear_1")
        linear(f"{layer}.out_layer", f"{layer}.linear_2")
    for i in range(n_approximator):
        scale(f"{APPROXIMATOR}.norms.{i}", f"{APPROXIMATOR}.norms.{i}")
    linear(f"{APPROXIMATOR}.out_proj", f"{APPROXIMATOR}.out_proj")
    linear("img_in", "x_embedder")
    linear("txt_in", "context_embedder")
    for i in range(n_double):  # FLUX.1's blocks, their modulation pruned
        double_block(t, i)
    for i in range(n_single):
        single_block(t, i)
    linear("final_layer.linear", "proj_out")
    return t.entries

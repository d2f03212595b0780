"""FLUX.1 transformer tensor names: the Black Forest Labs layout and the diffusers layout (the
family's GGUF key table, read by the GGUF tools through `families`; the interface is in
families/tensor_names.py).

One table says how each BFL tensor is made of diffusers tensors: concatenated along the first
dimension (the fused qkv of double blocks; q, k, v and the MLP input in `linear1` of single
blocks), or with its two halves swapped (the final norm's modulation is shift, scale in BFL and
scale, shift in diffusers). Converting either way reads that table, so the two directions are
each other's inverse by construction; diffusers'
`convert_flux_transformer_checkpoint_to_diffusers` is the other half of that pair.
"""

from __future__ import annotations

from flux_batch.families.tensor_names import (
    BFL_PREFIX,
    Fused,
    TableBuilder,
    bfl_or_diffusers,
    block_counts,
    split_sizes,
    swap_halves,
    unprefixed,
)

__all__ = [
    "BFL_PREFIX",
    "Fused",
    "block_counts",
    "has_guidance",
    "identifies",
    "layout_of",
    "split_sizes",
    "swap_halves",
    "table",
    "unprefixed",
    "variant_of",
]

# per-block modulation: FLUX.1's blocks have their own (FLUX.2 shares one, Chroma has none)
MARKERS = ("double_blocks.0.img_mod.lin.weight", "transformer_blocks.0.norm1.linear.weight")


def identifies(names) -> bool:
    names = set(names)
    return any(marker in names for marker in MARKERS)


def layout_of(names) -> str | None:
    """'bfl' or 'diffusers' from a set of tensor names, or None when neither."""
    return bfl_or_diffusers(names)


def has_guidance(names) -> bool:
    return any(n.startswith(("guidance_in.", "time_text_embed.guidance_embedder.")) for n in names)


def variant_of(names) -> str:
    """dev: a guidance embedding (FLUX.1-dev, Krea, Kontext); schnell: none."""
    return "dev" if has_guidance(names) else "schnell"


def table(names, layout: str) -> list[Fused]:
    return fusions(*block_counts(names, layout), has_guidance(names))


def fusions(n_double: int, n_single: int, guidance: bool) -> list[Fused]:
    """Every tensor of a FLUX.1 transformer, as BFL name <- diffusers parts, in BFL file order."""
    t = TableBuilder()
    linear = t.linear
    embedders = [("time_in", "timestep_embedder"), ("vector_in", "text_embedder")]
    if guidance:
        embedders.append(("guidance_in", "guidance_embedder"))
    for bfl, diffusers in embedders:
        linear(f"{bfl}.in_layer", f"time_text_embed.{diffusers}.linear_1")
        linear(f"{bfl}.out_layer", f"time_text_embed.{diffusers}.linear_2")
    linear("txt_in", "context_embedder")
    linear("img_in", "x_embedder")
    for i in range(n_double):
        linear(f"double_blocks.{i}.img_mod.lin", f"transformer_blocks.{i}.norm1.linear")
        linear(f"double_blocks.{i}.txt_mod.lin", f"transformer_blocks.{i}.norm1_context.linear")
        double_block(t, i)
    for i in range(n_single):
        linear(f"single_blocks.{i}.modulation.lin", f"single_transformer_blocks.{i}.norm.linear")
        single_block(t, i)
    linear("final_layer.linear", "proj_out")
    linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)
    return t.entries


def double_block(t: TableBuilder, i: int) -> None:
    """A double block's attention and MLPs, without its modulation (Chroma's blocks are these)."""
    linear, scale = t.linear, t.scale
    b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
    linear(f"{b}.img_attn.qkv", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v")
    linear(f"{b}.txt_attn.qkv", f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
    scale(f"{b}.img_attn.norm.query_norm", f"{d}.attn.norm_q")
    scale(f"{b}.img_attn.norm.key_norm", f"{d}.attn.norm_k")
    scale(f"{b}.txt_attn.norm.query_norm", f"{d}.attn.norm_added_q")
    scale(f"{b}.txt_attn.norm.key_norm", f"{d}.attn.norm_added_k")
    linear(f"{b}.img_attn.proj", f"{d}.attn.to_out.0")
    linear(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
    linear(f"{b}.img_mlp.0", f"{d}.ff.net.0.proj")
    linear(f"{b}.img_mlp.2", f"{d}.ff.net.2")
    linear(f"{b}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
    linear(f"{b}.txt_mlp.2", f"{d}.ff_context.net.2")


def single_block(t: TableBuilder, i: int) -> None:
    """A single block's fused attention + MLP input, norms and output, without its modulation."""
    b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
    t.linear(f"{b}.linear1", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp")
    t.scale(f"{b}.norm.query_norm", f"{d}.attn.norm_q")
    t.scale(f"{b}.norm.key_norm", f"{d}.attn.norm_k")
    t.linear(f"{b}.linear2", f"{d}.proj_out")

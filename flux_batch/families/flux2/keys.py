"""FLUX.2 transformer tensor names: the Black Forest Labs layout (as the community GGUF files of
FLUX.2 [dev] and [klein] lay them out) and diffusers' `Flux2Transformer2DModel` layout (the
family's GGUF key table; the interface is in families/tensor_names.py).

What differs from FLUX.1 (families/flux1/keys.py): no biases anywhere; one modulation shared
by all double blocks (`double_stream_modulation_img`/`_txt`) and one by all single blocks
(`single_stream_modulation`) instead of one per block; the MLPs are SwiGLU (`linear_in`,
`linear_out`); a single block's `linear1` stays fused in diffusers too (`to_qkv_mlp_proj`), so
only the double blocks' qkv split, in equal thirds. The final norm's modulation has its halves
swapped, as in FLUX.1. [klein] has no guidance embedding. diffusers'
`convert_flux2_transformer_checkpoint_to_diffusers` is the other half of this table.
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

# the shared single-block modulation: FLUX.2's alone (FLUX.1 modulates per block, Chroma not at all)
MARKERS = ("single_stream_modulation.lin.weight", "single_stream_modulation.linear.weight")
GUIDANCE_PREFIXES = ("guidance_in.", "time_guidance_embed.guidance_embedder.")  # BFL, diffusers


def identifies(names) -> bool:
    names = set(names)
    return any(marker in names for marker in MARKERS)


def layout_of(names) -> str | None:
    """'bfl' or 'diffusers' from a set of tensor names, or None when neither."""
    return bfl_or_diffusers(names)


def has_guidance(names) -> bool:
    return any(n.startswith(GUIDANCE_PREFIXES) for n in names)


def variant_of(names) -> str:
    """dev: a guidance embedding (FLUX.2 [dev]); klein: none (FLUX.2 [klein], distilled or
    base alike: the tensors cannot tell them apart)."""
    return "dev" if has_guidance(names) else "klein"


def table(names, layout: str) -> list[Fused]:
    return fusions(*block_counts(names, layout), has_guidance(names))


def fusions(n_double: int, n_single: int, guidance: bool) -> list[Fused]:
    """Every tensor of a FLUX.2 transformer, as BFL name <- diffusers parts, in BFL file order."""
    t = TableBuilder(bias=False)
    linear, scale = t.linear, t.scale
    linear("img_in", "x_embedder")
    linear("txt_in", "context_embedder")
    embedders = [("time_in", "timestep_embedder")]
    if guidance:
        embedders.append(("guidance_in", "guidance_embedder"))
    for bfl, diffusers in embedders:
        linear(f"{bfl}.in_layer", f"time_guidance_embed.{diffusers}.linear_1")
        linear(f"{bfl}.out_layer", f"time_guidance_embed.{diffusers}.linear_2")
    for shared in (
        "double_stream_modulation_img",
        "double_stream_modulation_txt",
        "single_stream_modulation",
    ):
        linear(f"{shared}.lin", f"{shared}.linear")
    for i in range(n_double):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        linear(f"{b}.img_attn.qkv", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v")
        scale(f"{b}.img_attn.norm.query_norm", f"{d}.attn.norm_q")
        scale(f"{b}.img_attn.norm.key_norm", f"{d}.attn.norm_k")
        linear(f"{b}.img_attn.proj", f"{d}.attn.to_out.0")
        linear(f"{b}.img_mlp.0", f"{d}.ff.linear_in")
        linear(f"{b}.img_mlp.2", f"{d}.ff.linear_out")
        linear(f"{b}.txt_attn.qkv", f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
        scale(f"{b}.txt_attn.norm.query_norm", f"{d}.attn.norm_added_q")
        scale(f"{b}.txt_attn.norm.key_norm", f"{d}.attn.norm_added_k")
        linear(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
        linear(f"{b}.txt_mlp.0", f"{d}.ff_context.linear_in")
        linear(f"{b}.txt_mlp.2", f"{d}.ff_context.linear_out")
    for i in range(n_single):
        b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        linear(f"{b}.linear1", f"{d}.attn.to_qkv_mlp_proj")
        scale(f"{b}.norm.query_norm", f"{d}.attn.norm_q")
        scale(f"{b}.norm.key_norm", f"{d}.attn.norm_k")
        linear(f"{b}.linear2", f"{d}.attn.to_out")
    linear("final_layer.linear", "proj_out")
    linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)
    return t.entries

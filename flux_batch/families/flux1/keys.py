"""FLUX.1 transformer tensor names: the Black Forest Labs layout and the diffusers layout (the
family's GGUF key table, read by the GGUF tools through `families`).

One table, `fusions`, says how each BFL tensor is made of diffusers tensors: concatenated
along the first dimension (the fused qkv of double blocks; q, k, v and the MLP input in
`linear1` of single blocks), or with its two halves swapped (the final norm's modulation is
shift, scale in BFL and scale, shift in diffusers). Converting either way reads that table,
so the two directions are each other's inverse by construction; diffusers'
`convert_flux_transformer_checkpoint_to_diffusers` is the other half of that pair.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BFL_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class Fused:
    bfl: str
    parts: tuple[str, ...]  # diffusers names, concatenated along dim 0 in this order
    swap: bool = False  # the two halves along dim 0 are swapped between layouts


def unprefixed(names) -> list[str]:
    """Tensor names without the `model.diffusion_model.` prefix of full checkpoints, which some
    converters (stable-diffusion.cpp's) keep in a transformer-only GGUF."""
    return [name.removeprefix(BFL_PREFIX) for name in names]


def layout_of(names) -> str | None:
    """'bfl' or 'diffusers' from a set of tensor names, or None when neither."""
    names = set(names)
    if "img_in.weight" in names or any(n.startswith("double_blocks.") for n in names):
        return "bfl"
    if "x_embedder.weight" in names or any(n.startswith("transformer_blocks.") for n in names):
        return "diffusers"
    return None


def block_counts(names, layout: str) -> tuple[int, int]:
    """(double blocks, single blocks) from the numbered names."""
    double, single = (
        ("double_blocks", "single_blocks")
        if layout == "bfl"
        else ("transformer_blocks", "single_transformer_blocks")
    )

    def count(prefix: str) -> int:
        pattern = re.compile(rf"^{prefix}\.(\d+)\.")
        found = {int(m[1]) for n in names if (m := pattern.match(n))}
        return max(found) + 1 if found else 0

    return count(double), count(single)


def has_guidance(names) -> bool:
    return any(n.startswith(("guidance_in.", "time_text_embed.guidance_embedder.")) for n in names)


def fusions(n_double: int, n_single: int, guidance: bool) -> list[Fused]:
    """Every tensor of a FLUX transformer, as BFL name <- diffusers parts, in BFL file order."""
    table: list[Fused] = []

    def linear(bfl: str, *parts: str, swap: bool = False) -> None:
        for kind in ("weight", "bias"):
            table.append(Fused(f"{bfl}.{kind}", tuple(f"{p}.{kind}" for p in parts), swap))

    def scale(bfl: str, part: str) -> None:
        table.append(Fused(f"{bfl}.scale", (f"{part}.weight",)))

    embedders = [("time_in", "timestep_embedder"), ("vector_in", "text_embedder")]
    if guidance:
        embedders.append(("guidance_in", "guidance_embedder"))
    for bfl, diffusers in embedders:
        linear(f"{bfl}.in_layer", f"time_text_embed.{diffusers}.linear_1")
        linear(f"{bfl}.out_layer", f"time_text_embed.{diffusers}.linear_2")
    linear("txt_in", "context_embedder")
    linear("img_in", "x_embedder")
    for i in range(n_double):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        linear(f"{b}.img_mod.lin", f"{d}.norm1.linear")
        linear(f"{b}.txt_mod.lin", f"{d}.norm1_context.linear")
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
    for i in range(n_single):
        b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        linear(f"{b}.modulation.lin", f"{d}.norm.linear")
        linear(f"{b}.linear1", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp")
        scale(f"{b}.norm.query_norm", f"{d}.attn.norm_q")
        scale(f"{b}.norm.key_norm", f"{d}.attn.norm_k")
        linear(f"{b}.linear2", f"{d}.proj_out")
    linear("final_layer.linear", "proj_out")
    linear("final_layer.adaLN_modulation.1", "norm_out.linear", swap=True)
    return table


def split_sizes(fused: Fused, rows: int, hidden: int) -> list[int]:
    """Rows of each diffusers part of a BFL tensor with `rows` rows: q, k and v are `hidden`
    each; what is left is the last part (the MLP input of single blocks)."""
    n = len(fused.parts)
    if n == 1:
        return [rows]
    if fused.bfl.endswith(("qkv.weight", "qkv.bias")):
        return [rows // n] * n
    return [hidden] * (n - 1) + [rows - hidden * (n - 1)]


def swap_halves(tensor):
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)

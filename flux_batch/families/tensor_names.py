"""What every family's GGUF key table shares: the `Fused` entry (one BFL tensor made of
diffusers tensors), the `model.diffusion_model.` prefix, block counting, row splits and the
half swap of final norms.

A family's key table (its `keys` module: families/flux1/keys.py, families/flux2/keys.py,
families/chroma/keys.py) offers, on tensor names without the prefix:
- `identifies(names)`: whether these are this family's tensors, in either layout;
- `layout_of(names)`: 'bfl', 'diffusers' or None;
- `block_counts(names, layout)`: (double blocks, single blocks);
- `variant_of(names)`: the variant the tensors show (FLUX.1: dev or schnell);
- `table(names, layout)`: every tensor as BFL name <- diffusers parts, in BFL file order;
plus `BFL_PREFIX`, `unprefixed`, `split_sizes` and `swap_halves` from here.
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


def count_blocks(names, prefix: str) -> int:
    """How many numbered blocks `prefix.<i>.` the names hold."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    found = {int(m[1]) for n in names if (m := pattern.match(n))}
    return max(found) + 1 if found else 0


def block_counts(names, layout: str) -> tuple[int, int]:
    """(double blocks, single blocks) from the numbered names (the same block names in every
    FLUX family)."""
    if layout == "bfl":
        return count_blocks(names, "double_blocks"), count_blocks(names, "single_blocks")
    return count_blocks(names, "transformer_blocks"), count_blocks(names, "single_transformer_blocks")


def bfl_or_diffusers(names) -> str | None:
    """The layout of FLUX-style names: BFL's img_in/double_blocks or diffusers' x_embedder/
    transformer_blocks, or None."""
    names = set(names)
    if "img_in.weight" in names or any(n.startswith("double_blocks.") for n in names):
        return "bfl"
    if "x_embedder.weight" in names or any(n.startswith("transformer_blocks.") for n in names):
        return "diffusers"
    return None


class TableBuilder:
    """Collects `Fused` entries: `linear` for a weight (and bias), `scale` for a norm."""

    def __init__(self, bias: bool = True):
        self.entries: list[Fused] = []
        self.kinds = ("weight", "bias") if bias else ("weight",)

    def linear(self, bfl: str, *parts: str, swap: bool = False, bias: bool | None = None) -> None:
        kinds = self.kinds if bias is None else (("weight", "bias") if bias else ("weight",))
        for kind in kinds:
            self.entries.append(Fused(f"{bfl}.{kind}", tuple(f"{p}.{kind}" for p in parts), swap))

    def scale(self, bfl: str, part: str) -> None:
        self.entries.append(Fused(f"{bfl}.scale", (f"{part}.weight",)))


def split_sizes(fused: Fused, rows: int, hidden: int) -> list[int]:
    """Rows of each diffusers part of a BFL tensor with `rows` rows: a fused qkv splits in
    equal thirds; otherwise each part but the last is `hidden` rows (q, k, v) and the last
    takes what is left (the MLP input of FLUX.1 and Chroma single blocks)."""
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

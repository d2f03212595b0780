"""Small LoRA files for the tiny model, written in the layouts real LoRAs come in: diffusers'
PEFT layout (`transformer.<module>.lora_A.weight`) and Kohya's sd-scripts layout over BFL
block names (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

RANK = 4


def layer_shapes(model_cache: Path) -> dict[str, tuple[int, int]]:
    """(out, in) of every linear layer of the tiny transformer, by diffusers module name."""
    weights = load_file(model_cache / "tiny-v1" / "transformer" / "diffusion_pytorch_model.safetensors")
    return {
        key.removesuffix(".weight"): value.shape
        for key, value in weights.items()
        if key.endswith(".weight") and value.ndim == 2
    }


def low_rank_pairs(model_cache: Path, seed: int, magnitude: float = 0.25) -> dict[str, tuple]:
    """Random (down, up) matrices for the attention layers of the double blocks."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    for name, (out_dim, in_dim) in sorted(layer_shapes(model_cache).items()):
        if name.startswith("transformer_blocks.") and name.endswith(
            (".attn.to_q", ".attn.to_k", ".attn.to_v", ".attn.to_out.0")
        ):
            down = torch.randn(RANK, in_dim, generator=generator) * magnitude
            up = torch.randn(out_dim, RANK, generator=generator) * magnitude
            pairs[name] = (down, up)
    return pairs


def write_diffusers_lora(path: Path, pairs: dict[str, tuple]) -> Path:
    state = {}
    for name, (down, up) in pairs.items():
        state[f"transformer.{name}.lora_A.weight"] = down.clone()
        state[f"transformer.{name}.lora_B.weight"] = up.contiguous()
    save_file(state, str(path))
    return path


def write_kohya_lora(path: Path, pairs: dict[str, tuple]) -> Path:
    """The same low-rank update in Kohya's layout: q, k, v fused into one `qkv` layer, as in
    the BFL checkpoint (its down matrix shared, its up matrices stacked), alpha = rank."""
    state = {}
    blocks = sorted({int(name.split(".")[1]) for name in pairs})
    for block in blocks:
        prefix = f"transformer_blocks.{block}.attn"
        q, k, v = (pairs[f"{prefix}.{part}"] for part in ("to_q", "to_k", "to_v"))
        assert torch.equal(q[0], k[0]) and torch.equal(q[0], v[0]), "qkv shares its down matrix"
        kohya = f"lora_unet_double_blocks_{block}_img_attn"
        state[f"{kohya}_qkv.lora_down.weight"] = q[0].contiguous()
        state[f"{kohya}_qkv.lora_up.weight"] = torch.cat([q[1], k[1], v[1]]).contiguous()
        state[f"{kohya}_qkv.alpha"] = torch.tensor(float(RANK))
        down, up = pairs[f"{prefix}.to_out.0"]
        state[f"{kohya}_proj.lora_down.weight"] = down.contiguous()
        state[f"{kohya}_proj.lora_up.weight"] = up.contiguous()
        state[f"{kohya}_proj.alpha"] = torch.tensor(float(RANK))
    save_file(state, str(path))
    return path


def shared_qkv_down(pairs: dict[str, tuple]) -> dict[str, tuple]:
    """`pairs` with k and v using q's down matrix, the form a fused qkv LoRA takes."""
    shared = dict(pairs)
    for name, (_down, up) in pairs.items():
        if name.endswith((".to_k", ".to_v")):
            q_name = name.rsplit(".", 1)[0] + ".to_q"
            shared[name] = (pairs[q_name][0], up)
    return shared

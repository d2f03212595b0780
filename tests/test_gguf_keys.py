"""The BFL <-> diffusers key conversion is the exact inverse of diffusers' own converter,
checked at FLUX's real width (3072) with thin matrices, so it costs kilobytes."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from flux_batch.gguf.checkpoint import open_checkpoint, plan
from flux_wide import WIDE_CONFIG


def thin_state_dict(**overrides) -> dict[str, torch.Tensor]:
    """Random tensors with the names and first dimensions of a full-width FLUX transformer."""
    from flux_batch import families

    FluxTransformer2DModel = families.get("flux1").transformer_class()

    with torch.device("meta"):
        model = FluxTransformer2DModel(**{**WIDE_CONFIG, **overrides})
    g = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(p.shape[0], *([3] if p.dim() == 2 else []), generator=g)
        for name, p in model.state_dict().items()
    }


def test_diffusers_to_bfl_is_undone_by_diffusers_converter(tmp_path):
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    for overrides in ({"num_layers": 2, "num_single_layers": 3}, {"guidance_embeds": False}):
        original = thin_state_dict(**overrides)
        save_file(original, tmp_path / "diffusers.safetensors")
        bfl = {t.name: t.load() for t in plan(open_checkpoint(tmp_path / "diffusers.safetensors"), "bfl")}
        assert ("guidance_in.in_layer.weight" in bfl) == overrides.get("guidance_embeds", True)
        assert bfl["double_blocks.0.img_attn.qkv.weight"].shape == (3 * 3072, 3)
        assert bfl["single_blocks.0.linear1.weight"].shape == (3 * 3072 + 4 * 3072, 3)
        back = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
        assert back.keys() == original.keys()
        assert all(torch.equal(back[k], original[k]) for k in original)

        # and the other direction: a BFL file (with the full-checkpoint prefix) to diffusers names
        save_file(
            {f"model.diffusion_model.{k}": v.contiguous() for k, v in bfl.items()},
            tmp_path / "bfl.safetensors",
        )
        again = {t.name: t.load() for t in plan(open_checkpoint(tmp_path / "bfl.safetensors"), "diffusers")}
        assert again.keys() == original.keys()
        assert all(torch.equal(again[k], original[k]) for k in original)


def test_planned_shapes_match_the_tensors_they_load(tmp_path):
    save_file(thin_state_dict(), tmp_path / "d.safetensors")
    for layout in ("bfl", "diffusers"):
        for t in plan(open_checkpoint(tmp_path / "d.safetensors"), layout):
            assert tuple(t.load().shape) == t.shape, t.name

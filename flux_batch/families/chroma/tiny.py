"""The pieces of Chroma's embedded `tiny-chroma` model (demo/tiny.py builds and caches it): a
random ChromaPipeline folder with FLUX.1's tiny T5 encoder, tokenizer and VAE, a small
transformer (approximator included) and Chroma's scheduler, written by diffusers' own
`save_pretrained` (model_index.json as diffusers writes it)."""

from __future__ import annotations

from pathlib import Path


def save_components(folder: Path) -> None:
    """The pipeline folder, seeded: the same files at every build."""
    import torch
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    from flux_batch.families.flux1 import tiny as flux1_tiny

    tokenizer = flux1_tiny.t5_tokenizer(folder / "tokenizer")
    torch.manual_seed(0)
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=2,
    )
    # Chroma1-HD's schedule: FLUX.1-dev's, shifted by resolution
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    ChromaPipeline(
        scheduler=scheduler,
        vae=flux1_tiny.vae(),
        text_encoder=flux1_tiny.t5_encoder(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    ).save_pretrained(folder)

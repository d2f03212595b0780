"""A random FLUX.1-dev transformer at the real width (hidden size 3072, 24 heads of 128, T5
width 4096, CLIP width 768) with one double and one single block: 545.5 M parameters, 1.1 GB
in bf16. Big enough that diffusers' BFL-layout GGUF conversion applies to it as to the real
model; small enough for a CPU. Shared by the round-trip tests and the quality benchmark."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

WIDE_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
HIDDEN = 3072


def build_transformer(folder: Path) -> Path:
    """Save the random transformer as a diffusers folder (bf16 safetensors); return it."""
    from diffusers import FluxTransformer2DModel

    folder = Path(folder)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialize in bf16: no 2.2 GB float32 copy
    try:
        torch.manual_seed(0)
        model = FluxTransformer2DModel(**WIDE_CONFIG)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder)
    del model
    return folder


def build_pipeline(folder: Path, tiny_base: Path, transformer: Path) -> Path:
    """A pipeline folder for the wide transformer: the tiny pipeline's tokenizers, VAE and
    scheduler, text encoders as wide as FLUX's, and the wide transformer's config."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    folder = Path(folder)
    for part in ("tokenizer", "tokenizer_2", "vae", "scheduler", "model_index.json"):
        src = tiny_base / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / part)
    (folder / "transformer").mkdir()
    shutil.copy(transformer / "config.json", folder / "transformer" / "config.json")
    clip = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    t5 = T5TokenizerFast.from_pretrained(folder / "tokenizer_2")
    torch.manual_seed(0)
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip),
            hidden_size=768,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=1,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=clip.bos_token_id,
            eos_token_id=clip.eos_token_id,
            pad_token_id=clip.pad_token_id,
        )
    ).save_pretrained(folder / "text_encoder")
    torch.manual_seed(0)
    T5EncoderModel(
        T5Config(
            vocab_size=len(t5),
            d_model=4096,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=t5.pad_token_id,
            eos_token_id=t5.eos_token_id,
        )
    ).save_pretrained(folder / "text_encoder_2")
    return folder


def forward(model) -> torch.Tensor:
    """One forward pass on fixed random inputs: 16 image tokens, 8 text tokens."""
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 16, 64, generator=g)
    text = torch.randn(1, 8, 4096, generator=g)
    pooled = torch.randn(1, 768, generator=g)
    img_ids = torch.stack(
        torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1
    ).reshape(16, 3)
    with torch.no_grad():
        return model(
            hidden_states=image,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=torch.tensor([0.5]),
            guidance=torch.tensor([3.5]),
            img_ids=img_ids,
            txt_ids=torch.zeros(8, 3),
            return_dict=False,
        )[0].float()


def relative_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def load_reference(folder: Path):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(folder, dtype=torch.float32)


def load_gguf(path: Path, pipeline: Path):
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    return FluxTransformer2DModel.from_single_file(
        str(path),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(pipeline),
        subfolder="transformer",
        dtype=torch.float32,
    )

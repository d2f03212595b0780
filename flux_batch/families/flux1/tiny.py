"""The pieces of FLUX.1's embedded `tiny` model (demo/tiny.py builds and caches it): a random
FluxPipeline folder (CLIP and T5 encoders with tokenizers made by the `tokenizers` package,
VAE, FlowMatchEuler scheduler, transformer config and weights)."""

from __future__ import annotations

import json
import string
from pathlib import Path

TOKEN_BUDGET = 77  # CLIP's context, as in FLUX

# model_index.json of a FluxPipeline folder (the tiny and demo pipelines)
MODEL_INDEX = {
    "_class_name": "FluxPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def save_components(folder: Path, variant: str = "dev") -> None:
    """CLIP and T5 with their tokenizers, VAE, transformer and scheduler, seeded: the same
    files at every build."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    clip_tok = clip_tokenizer(folder / "tokenizer")
    t5_tok = t5_tokenizer(folder / "tokenizer_2")

    torch.manual_seed(0)
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=TOKEN_BUDGET,
            projection_dim=32,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    ).save_pretrained(folder / "text_encoder")

    t5_encoder(t5_tok).save_pretrained(folder / "text_encoder_2")
    vae().save_pretrained(folder / "vae")

    torch.manual_seed(0)
    FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=variant == "dev",
        axes_dims_rope=(4, 6, 6),
    ).save_pretrained(folder / "transformer")

    # dev shifts its schedule by resolution; schnell's is unshifted, as in the real configs
    FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0 if variant == "dev" else 1.0,
        use_dynamic_shifting=variant == "dev",
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    ).save_pretrained(folder / "scheduler")

    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))


def t5_encoder(tokenizer):
    """A seeded two-layer T5 encoder for `tokenizer` (t5_tokenizer's); Chroma's tiny model
    uses it too."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


def vae():
    """A seeded VAE of FLUX.1's latent shape (16 channels, 8x down) with its shift and scale;
    Chroma's tiny model uses it too."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )


def clip_tokenizer(folder: Path):
    """Byte-level BPE with no merges: every byte is a token, as a word piece or a word end."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=TOKEN_BUDGET
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def t5_tokenizer(folder: Path):
    """A unigram vocabulary of word-initial letters and single characters."""
    from transformers import T5TokenizerFast

    letters = string.ascii_lowercase
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -3.0) for c in letters]
    vocab += [(c, -4.0) for c in letters + string.ascii_uppercase + string.digits + string.punctuation]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(folder)
    return tokenizer

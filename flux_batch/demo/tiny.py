"""The embedded `tiny` model: a random FLUX pipeline small enough to render on any CPU.

Built deterministically on first use into the cache folder: a complete diffusers pipeline
folder (CLIP and T5 encoders with tokenizers made by the `tokenizers` package, VAE,
FlowMatchEuler scheduler, transformer config and weights), plus one GGUF file per quant type,
written by the same GGUF code as real quantizations and loaded through the same
`from_single_file` path as real FLUX files. It proves the plumbing; it draws noise.
"""
from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path

VERSION = "tiny-v1"  # bump when the architecture or build changes: it names the cache folder
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


def cache_root() -> Path:
    return Path(os.environ.get("FLUX_BATCH_CACHE") or Path.home() / ".cache" / "flux-batch")


def base_dir(variant: str = "dev") -> Path:
    """dev: with a guidance embedding, like FLUX.1-dev; schnell: without, like FLUX.1-schnell."""
    return cache_root() / (VERSION if variant == "dev" else f"{VERSION}-{variant}")


def transformer_path(gguf_type: str, variant: str = "dev") -> Path:
    return base_dir(variant) / f"transformer-{gguf_type}.gguf"


def ensure_built(gguf_type: str, variant: str = "dev") -> tuple[Path, Path]:
    """Build the pipeline folder and the GGUF file for `gguf_type` if missing; return both."""
    base = base_dir(variant)
    if not (base / "model_index.json").exists():
        _build_base(base, variant)
    gguf_file = transformer_path(gguf_type, variant)
    if not gguf_file.exists():
        _write_transformer_gguf(base, gguf_file, gguf_type)
    return base, gguf_file


def _build_base(base: Path, variant: str) -> None:
    # Build beside the target and rename, so a crash or a concurrent builder never leaves
    # a half-built folder in place.
    tmp = base.with_name(f".{base.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_components(tmp, variant)
    try:
        os.rename(tmp, base)
    except OSError:  # another process finished first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)


def _save_components(folder: Path, variant: str = "dev") -> None:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tokenizer = _clip_tokenizer(folder / "tokenizer")
    t5_tokenizer = _t5_tokenizer(folder / "tokenizer_2")

    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=32, intermediate_size=64,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=TOKEN_BUDGET,
        projection_dim=32, bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id, pad_token_id=clip_tokenizer.pad_token_id,
    )).save_pretrained(folder / "text_encoder")

    torch.manual_seed(0)
    T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=t5_tokenizer.pad_token_id,
        eos_token_id=t5_tokenizer.eos_token_id,
    )).save_pretrained(folder / "text_encoder_2")

    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), norm_num_groups=4, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=0.3611, shift_factor=0.1159,
    ).save_pretrained(folder / "vae")

    torch.manual_seed(0)
    FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=variant == "dev", axes_dims_rope=(4, 6, 6),
    ).save_pretrained(folder / "transformer")

    # dev shifts its schedule by resolution; schnell's is unshifted, as in the real configs
    FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0 if variant == "dev" else 1.0,
        use_dynamic_shifting=variant == "dev", base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    ).save_pretrained(folder / "scheduler")

    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))


def _clip_tokenizer(folder: Path):
    """Byte-level BPE with no merges: every byte is a token, as a word piece or a word end."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=TOKEN_BUDGET)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _t5_tokenizer(folder: Path):
    """A unigram vocabulary of word-initial letters and single characters."""
    from transformers import T5TokenizerFast

    letters = string.ascii_lowercase
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -3.0) for c in letters]
    vocab += [(c, -4.0) for c in letters + string.ascii_uppercase + string.digits + string.punctuation]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _write_transformer_gguf(base: Path, out: Path, gguf_type: str) -> None:
    from safetensors.numpy import load_file

    from flux_batch.gguf.file import write_gguf

    weights = load_file(base / "transformer" / "diffusion_pytorch_model.safetensors")
    write_gguf(out, weights, gguf_type, metadata={"general.name": f"flux-batch {VERSION}"})

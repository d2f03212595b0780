"""The demo model's architecture: FLUX.1-dev's components, shrunk to 64x64 pictures of shapes.

Tokenizers are made with the `tokenizers` package so that every caption word is one token
(CLIP: a byte-level BPE whose merges spell the vocabulary; T5: a unigram vocabulary holding
each word). The encoders are random and stay frozen; the VAE (64x64 -> 16x16x4 latents) and
the transformer are trained by `flux_batch.demo.train`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from flux_batch.demo.shapes import vocabulary
from flux_batch.families.flux1.tiny import MODEL_INDEX  # noqa: F401 (the demo folder's model_index.json)

CLIP_TOKENS = 77  # CLIP's context, as in FLUX
T5_TOKENS = 12  # a caption is at most 8 tokens with its end token
TEXT_WIDTH = 64  # hidden size of both text encoders
LATENT_CHANNELS = 4
VAE_CHANNELS = (16, 32, 64)  # three levels: 64x64 -> 16x16
TRANSFORMER = dict(  # hidden size 2 x 64 = 128
    patch_size=1,
    in_channels=4 * LATENT_CHANNELS,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=64,
    num_attention_heads=2,
    joint_attention_dim=TEXT_WIDTH,
    pooled_projection_dim=TEXT_WIDTH,
    guidance_embeds=True,
    axes_dims_rope=(16, 24, 24),
)
# FLUX.1-dev's schedule, its resolution shift anchored at the 64 tokens of a 64x64 image
SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=64,
    max_image_seq_len=4096,
)


def clip_tokenizer(folder: Path):
    """Byte-level BPE: every byte is a token, and merges learnt on the vocabulary make each
    caption word one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(
        vocabulary(), trainers.BpeTrainer(vocab_size=1000, end_of_word_suffix="</w>", show_progress=False)
    )
    learnt = json.loads(bpe.to_str())["model"]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += [t for t in sorted(learnt["vocab"], key=learnt["vocab"].get) if t not in set(tokens)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in learnt["merges"]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=CLIP_TOKENS
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def t5_tokenizer(folder: Path):
    """A unigram vocabulary: each caption word whole (also capitalised, as "A red circle" starts),
    then letters and characters for the rest."""
    from transformers import T5TokenizerFast

    letters = string.ascii_lowercase
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in vocabulary()]
    vocab += [("\u2581" + c, -3.0) for c in letters if c != "a"]  # "▁a" is a word already
    vocab += [(c, -4.0) for c in letters + string.ascii_uppercase + string.digits + string.punctuation]
    vocab += [("\u2581" + w.capitalize(), -1.0) for w in vocabulary()]  # tied to "▁w" below
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(folder)
    return tokenizer


def text_encoders(clip_tok, t5_tok):
    """Random CLIP and T5 encoders (seeded), which the demo model keeps frozen."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=TEXT_WIDTH,
            intermediate_size=2 * TEXT_WIDTH,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=CLIP_TOKENS,
            projection_dim=TEXT_WIDTH,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    )
    torch.manual_seed(0)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=TEXT_WIDTH,
            d_kv=16,
            d_ff=2 * TEXT_WIDTH,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
        )
    )
    with torch.no_grad():  # T5 does not lowercase (CLIP does): "▁Red" embeds as "▁red"
        for word in vocabulary():
            upper, lower = t5_tok.convert_tokens_to_ids(["\u2581" + word.capitalize(), "\u2581" + word])
            t5.shared.weight[upper] = t5.shared.weight[lower]
    return clip.eval().requires_grad_(False), t5.eval().requires_grad_(False)


def vae(scaling_factor: float = 1.0, shift_factor: float = 0.0):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS,
        norm_num_groups=8,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def transformer():
    from flux_batch import families

    return families.get("flux1").transformer_class()(**TRANSFORMER)


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER)

"""The pieces of FLUX.2's embedded tiny models (demo/tiny.py builds and caches them): a random
Flux2Pipeline folder ([dev]: a Mistral3 encoder and a Pixtral processor) or Flux2KleinPipeline
folder ([klein]: a Qwen3 encoder and a Qwen2 tokenizer), with the AutoencoderKLFlux2, the
FlowMatchEuler scheduler as the published configs set it, and the transformer. Tokenizers are
byte-level BPE without merges, made by the `tokenizers` package, with a chat template: nothing
comes from the hub."""

from __future__ import annotations

import json
from pathlib import Path

# the published encoders stack these hidden states (pipelines' text_encoder_out_layers), so the
# tiny encoders keep enough layers for them
KLEIN_LAYERS = (9, 18, 27)
DEV_LAYERS = (10, 20, 30)
TEXT_WIDTH = 16  # the tiny encoders' hidden size: the transformer's text input is 3x this
LATENT_CHANNELS = 8  # the VAE's; the transformer takes them patchified 2x2 (4x the channels)

# Qwen3's chat template, reduced to what Flux2KleinPipeline asks of it (a user turn, the
# generation prompt, thinking off)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
# Mistral's, reduced: the system turn's text is left out, so that with a byte per token a
# prompt fits the tiny model's short sequences (the real system message is 500 characters)
MISTRAL_TEMPLATE = (
    "<s>{% for m in messages %}{% for c in m['content'] %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT][/SYSTEM_PROMPT]"
    "{% elif c['type'] == 'text' %}[INST]{{ c['text'] }}[/INST]{% endif %}"
    "{% endfor %}{% endfor %}"
)

# the schedule of the published FLUX.2 scheduler configs (the pipelines pass mu themselves)
SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
    time_shift_type="exponential",
)


def model_index(variant: str) -> dict:
    """model_index.json as diffusers writes it for a FLUX.2 pipeline folder."""
    common = {
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLFlux2"],
    }
    if variant == "dev":
        return {
            "_class_name": "Flux2Pipeline",
            **common,
            "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
            # the published folder's PixtralProcessor needs torchvision; the pipeline asks of it
            # only its tokenizer's chat template, which the tokenizer alone has
            "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        }
    return {
        "_class_name": "Flux2KleinPipeline",
        **common,
        "is_distilled": variant == "distilled",
        "text_encoder": ["transformers", "Qwen3ForCausalLM"],
        "tokenizer": ["transformers", "Qwen2TokenizerFast"],
    }


def save_components(folder: Path, variant: str) -> None:
    """Text encoder and tokenizer of the variant's family, VAE, transformer and scheduler,
    seeded: the same files at every build."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if variant == "dev":
        save_mistral(folder)
    else:
        save_qwen(folder)
    save_vae(folder / "vae")
    save_transformer(folder / "transformer", guidance=variant == "dev")
    FlowMatchEulerDiscreteScheduler(**SCHEDULER).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(model_index(variant), indent=2))


def save_transformer(folder: Path, guidance: bool) -> None:
    import torch
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    Flux2Transformer2DModel(
        patch_size=1,
        in_channels=LATENT_CHANNELS * 4,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_WIDTH,
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),  # sums to the head dim, as (32, 32, 32, 32) does for 128
        guidance_embeds=guidance,
    ).save_pretrained(folder)


def save_vae(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=4,
        sample_size=64,
    )
    # latent statistics away from 0 and 1, so decoding's de-normalisation is exercised
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.randn_like(vae.bn.running_mean) * 0.1)
        vae.bn.running_var.copy_(torch.rand_like(vae.bn.running_var) + 0.5)
    vae.save_pretrained(folder)


def byte_vocab(specials: list[str]) -> dict[str, int]:
    """Every byte a token (GPT-2's byte-to-character map), then the special tokens."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values()) + specials
    return {t: i for i, t in enumerate(tokens)}


def save_qwen(folder: Path) -> None:
    import torch
    from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Qwen2TokenizerFast(vocab=byte_vocab(specials), merges=[], model_max_length=512)
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    tokenizer.chat_template = QWEN_TEMPLATE
    tokenizer.save_pretrained(folder / "tokenizer")

    torch.manual_seed(0)
    Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=32,
            num_hidden_layers=max(KLEIN_LAYERS),
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).save_pretrained(folder / "text_encoder")


def save_mistral(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
        PreTrainedTokenizerFast,
    )

    specials = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]
    specials += ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    vocab = byte_vocab(specials)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=512,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[4:]})
    tokenizer.chat_template = MISTRAL_TEMPLATE
    tokenizer.save_pretrained(folder / "tokenizer")

    torch.manual_seed(0)
    Mistral3ForConditionalGeneration(
        Mistral3Config(
            text_config=MistralConfig(
                vocab_size=len(tokenizer),
                hidden_size=TEXT_WIDTH,
                intermediate_size=32,
                num_hidden_layers=max(DEV_LAYERS),
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=8,
                max_position_embeddings=512,
                pad_token_id=tokenizer.pad_token_id,
            ).to_dict(),
            vision_config=PixtralVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                head_dim=8,
                image_size=64,
                patch_size=16,
            ).to_dict(),
            image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
            spatial_merge_size=2,
        )
    ).save_pretrained(folder / "text_encoder")

"""FLUX.1 (dev and schnell, and the fine-tunes of their architecture): `FluxPipeline` with CLIP-L
(pooled) and T5-XXL (per token) text encoders, 2x2-packed latents, a VAE with shift and scale."""

from __future__ import annotations

from typing import Any

import flux_batch.families.flux1.keys as keys
from flux_batch.errors import ModelFileError
from flux_batch.families.base import Embedding, Family, Features

GUIDANCE_TENSORS = ("guidance_in.", "time_text_embed.guidance_embedder.")  # BFL, diffusers names


class Flux1(Family):
    name = "flux1"
    label = "FLUX.1"
    variants = ("dev", "schnell")  # dev: a guidance embedding; schnell: none
    features = Features(
        cache_methods=frozenset({"none", "fbcache", "taylorseer"}),
        lora=True,
        true_cfg=True,
    )
    encoder_folders = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    embedding_names = ("prompt_embeds", "pooled_prompt_embeds")
    keys = keys

    def pipeline_class(self):
        from diffusers import FluxPipeline

        return FluxPipeline

    def transformer_class(self):
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    def check_file(self, path: str, names: list[str], model) -> None:
        """A dev GGUF has a guidance embedding, a schnell one has none: refuse the wrong one
        before loading anything, so a dev file is never run with schnell's settings."""
        has_guidance = any(name.startswith(GUIDANCE_TENSORS) for name in names)
        if has_guidance == (model.variant == "dev"):
            return
        found = (
            "FLUX.1-dev-style (it has a guidance embedding)"
            if has_guidance
            else "FLUX.1-schnell-style (it has no guidance embedding)"
        )
        wanted = "a dev" if model.variant == "dev" else "a schnell"
        other = (
            ("tiny" if has_guidance else "tiny-schnell")
            if model.builder in ("tiny", "demo")
            else ("flux-dev" if has_guidance else "flux-schnell")
        )
        raise ModelFileError(
            f"model.transformer={path}: this GGUF is {found}, but model={model.name} needs {wanted} "
            f"file; use model={other} with it, or a matching GGUF"
        )

    def check_transformer(self, transformer, path: str, model_name: str, variant: str) -> None:
        has_guidance = bool(transformer.config.guidance_embeds)
        if has_guidance != (variant == "dev"):
            kind = "dev (guidance embedding)" if has_guidance else "schnell (no guidance embedding)"
            raise ModelFileError(
                f"model.transformer={path}: this is a {kind} transformer, but "
                f"model={model_name} expects {variant}"
            )

    def text_encoders(self, pipe) -> list:
        return [m for m in (pipe.text_encoder, pipe.text_encoder_2) if m is not None]

    def encode(self, pipe, prompt: str, max_sequence_length: int) -> Embedding:
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=[prompt],
            prompt_2=None,
            num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def call_args(
        self, batch, embeds: Embedding, negative: Embedding | None, max_sequence_length: int, references=None
    ) -> dict[str, Any]:
        settings = batch[0].settings
        args: dict[str, Any] = dict(embeds)
        if negative is not None:
            args.update({f"negative_{name}": tensor for name, tensor in negative.items()})
            args["true_cfg_scale"] = settings.true_cfg
        args.update(
            width=settings.width,
            height=settings.height,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            max_sequence_length=max_sequence_length,
        )
        return args

    def decode(self, pipe, latents, settings, vae_device):
        import torch

        with torch.no_grad():
            latents = pipe._unpack_latents(latents, settings.height, settings.width, pipe.vae_scale_factor)
            latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
            latents = latents.to(vae_device)
            image = pipe.vae.decode(latents, return_dict=False)[0]
            return pipe.image_processor.postprocess(image, output_type="np")

    def save_tiny_pipeline(self, folder, variant: str) -> None:
        import flux_batch.families.flux1.tiny as tiny

        tiny.save_components(folder, variant)

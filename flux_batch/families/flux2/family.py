"""FLUX.2: [dev] (`Flux2Pipeline`, a Mistral3 text encoder, embedded guidance) and [klein]
(`Flux2KleinPipeline`, a Qwen3 text encoder; distilled, or base with real classifier-free
guidance). One transformer class and one GGUF key table (keys.py) for both; the encoder's
stacked hidden states are the one embedding (`prompt_embeds`: the pipelines recompute the text
position ids from it)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flux_batch.families.flux2.keys as keys
from flux_batch.errors import ModelFileError
from flux_batch.families.base import Embedding, Family, Features

DEV_LABEL = "FLUX.2 [dev]"
KLEIN_LABEL = "FLUX.2 [klein]"


class Flux2Family(Family):
    """What [dev] and [klein] share: the transformer, the key table, the folder's layout, one
    text encoder, one embedding."""

    features = Features(
        # fbcache is left out: render/item_fbcache.py calls FLUX.1's block signatures
        cache_methods=frozenset({"none", "taylorseer"}),
        lora=True,  # PEFT-format LoRAs (diffusers' names); BFL/kohya FLUX.2 formats fail (#13484)
        true_cfg=False,
        # several reference images per row, as FLUX.2 is made for; each adds the output's
        # token count to every transformer call
        references=10,
    )
    encoder_folders = ("text_encoder", "tokenizer")
    embedding_names = ("prompt_embeds",)
    keys = keys
    guidance_embedded: bool  # [dev]'s transformer has a guidance embedding, [klein]'s none
    pipeline_name: str  # the pipeline class, as model_index.json names it

    def transformer_class(self):
        from diffusers import Flux2Transformer2DModel

        return Flux2Transformer2DModel

    def describe(self, names: list[str]) -> str:
        """[dev] or [klein], by the guidance embedding (the key table is shared, so
        families.for_tensors names the first family registered for either)."""
        return DEV_LABEL if keys.has_guidance(names) else KLEIN_LABEL

    # files

    def check_file(self, path: str, names: list[str], model) -> None:
        """A [klein] file under a [dev] preset, or the other way round, before loading."""
        if keys.has_guidance(names) == self.guidance_embedded:
            return
        raise ModelFileError(
            f"model.transformer={path}: this is a {self.describe(names)} transformer; "
            f"model={model.name} expects {self.label}; use {self.other_presets(model.builder)}"
        )

    def other_presets(self, builder) -> str:
        """The presets of the other FLUX.2 family, for messages."""
        raise NotImplementedError

    def check_folder(self, base: str, model) -> None:
        """The pipeline folder's model_index.json names this family's pipeline class."""
        index = read_model_index(base)
        found = index.get("_class_name")
        if found is not None and found != self.pipeline_name:
            raise ModelFileError(
                f"model.base={base}: a {found} folder, but model={model.name} ({self.label}) needs "
                f"a {self.pipeline_name} folder"
            )

    def check_transformer(self, transformer, path: str, model_name: str, variant: str) -> None:
        if bool(transformer.config.guidance_embeds) != self.guidance_embedded:
            found = DEV_LABEL if transformer.config.guidance_embeds else KLEIN_LABEL
            raise ModelFileError(
                f"model.transformer={path}: this is a {found} transformer, but model={model_name} "
                f"expects {self.label}"
            )

    def text_encoders(self, pipe) -> list:
        return [pipe.text_encoder] if pipe.text_encoder is not None else []

    # prompts, the call, the latents

    def encode(self, pipe, prompt: str, max_sequence_length: int) -> Embedding:
        embeds, _text_ids = pipe.encode_prompt(
            prompt=[prompt], num_images_per_prompt=1, max_sequence_length=max_sequence_length
        )
        return {"prompt_embeds": embeds}

    def call_args(
        self, batch, embeds: Embedding, negative: Embedding | None, max_sequence_length: int, references=None
    ) -> dict[str, Any]:
        settings = batch[0].settings
        args: dict[str, Any] = dict(embeds)
        if references:  # stand-ins, one per input: `calling` puts in each item's own latents
            from PIL import Image

            # of a size the pipeline's input check takes (64 pixels a side); never encoded
            size = (max(settings.width, 64), max(settings.height, 64))
            args["image"] = [Image.new("RGB", size) for _ in references[0]]
        if negative is not None:
            args["negative_prompt_embeds"] = negative["prompt_embeds"]
        args.update(
            width=settings.width,
            height=settings.height,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            max_sequence_length=max_sequence_length,
        )
        return args

    def encode_reference(self, pipe, pixels):
        """What the FLUX.2 pipelines make of a reference image: the VAE's mode, 2x2-patched and
        normalised by the VAE's batch norm."""
        import torch

        with torch.no_grad():
            return pipe._encode_vae_image(image=pixels, generator=None)

    @contextmanager
    def calling(self, pipe, references):
        """The FLUX.2 pipelines encode one set of reference images and repeat it across the
        batch; for a batch of items with different inputs, `prepare_image_latents` answers
        with each item's own latents, packed and position-coded as the pipeline does it."""
        if not references:
            yield
            return

        def per_item(images, batch_size, generator, device, dtype):
            import torch

            packed = [torch.cat([pipe._pack_latents(x).squeeze(0) for x in item]) for item in references]
            ids = pipe._prepare_image_ids(references[0]).repeat(len(references), 1, 1)
            return torch.stack(packed).to(device), ids.to(device)

        pipe.prepare_image_latents = per_item
        try:
            yield
        finally:
            del pipe.prepare_image_latents

    def decode_unpacked(self, pipe, latents, vae_device):
        """Unpatchified, de-normalised latents to (B, H, W, 3) floats, as the pipelines end."""
        import torch

        with torch.no_grad():
            image = pipe.vae.decode(latents.to(vae_device), return_dict=False)[0]
            return pipe.image_processor.postprocess(image, output_type="np")

    def save_tiny_pipeline(self, folder, variant: str) -> None:
        import flux_batch.families.flux2.tiny as tiny

        tiny.save_components(folder, variant)


class Flux2Dev(Flux2Family):
    name = "flux2"
    sets_cache_context = False  # its loop sets none: families/cache_contexts.py
    label = DEV_LABEL
    variants = ("dev",)  # a guidance embedding: guidance_scale is embedded, never CFG
    guidance_embedded = True
    pipeline_name = "Flux2Pipeline"

    def pipeline_class(self):
        from diffusers import Flux2Pipeline

        return Flux2Pipeline

    def other_presets(self, builder) -> str:
        return "model=tiny-klein" if builder in ("tiny", "demo") else "model=flux2-klein-4b or -9b"

    def negative_prompts(self, batch) -> list[str]:
        return []  # guidance-distilled: no negative prompt

    def decode(self, pipe, latents, settings, vae_device):
        """Flux2Pipeline returns its latents packed, as the denoising loop holds them: unpack
        them by their position ids, undo the VAE's batch norm and the 2x2 patches, decode."""
        import torch

        with torch.no_grad():
            side = pipe.vae_scale_factor * 2
            grid = torch.empty(latents.shape[0], 1, settings.height // side, settings.width // side)
            latent_ids = pipe._prepare_latent_ids(grid).to(latents.device)
            latents = pipe._unpack_latents_with_ids(latents, latent_ids)
            bn = pipe.vae.bn
            mean = bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
            latents = latents * std.to(latents.device, latents.dtype) + mean
            latents = pipe._unpatchify_latents(latents)
        return self.decode_unpacked(pipe, latents, vae_device)


class Flux2Klein(Flux2Family):
    name = "flux2-klein"
    label = KLEIN_LABEL
    # distilled: few steps, guidance ignored; base: real CFG when guidance > 1. The tensors
    # are the same: the pipeline folder's model_index.json says which (is_distilled)
    variants = ("distilled", "base")
    guidance_embedded = False
    pipeline_name = "Flux2KleinPipeline"

    def pipeline_class(self):
        from diffusers import Flux2KleinPipeline

        return Flux2KleinPipeline

    def other_presets(self, builder) -> str:
        return "model=tiny-flux2" if builder in ("tiny", "demo") else "model=flux2-dev"

    def check_folder(self, base: str, model) -> None:
        super().check_folder(base, model)
        distilled = read_model_index(base).get("is_distilled")
        if distilled is None or distilled == (model.variant == "distilled"):
            return
        found = "distilled" if distilled else "base"
        raise ModelFileError(
            f"model.base={base}: its model_index.json says is_distilled={str(distilled).lower()} "
            f"(FLUX.2 [klein] {found}), but model.variant={model.variant}; set "
            f"model.variant={found}, or use a {model.variant} pipeline folder"
        )

    def guided_negatives(self, variant: str) -> bool:
        return variant == "base"

    def negative_prompts(self, batch) -> list[str]:
        """Base klein's CFG takes a negative embedding whenever guidance > 1 (encoded here, once
        per prompt and cached, rather than the pipeline encoding "" at every call); the
        distilled pipeline ignores it."""
        if batch[0].settings.guidance > 1:
            return [item.negative_prompt or "" for item in batch]
        return []

    def decode(self, pipe, latents, settings, vae_device):
        """Flux2KleinPipeline returns its latents unpacked and de-normalised already."""
        return self.decode_unpacked(pipe, latents, vae_device)


def read_model_index(base: str) -> dict:
    path = Path(base) / "model_index.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable model_index.json ({e})") from None

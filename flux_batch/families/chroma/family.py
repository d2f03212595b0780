"""Chroma (Chroma1-HD and the models of its architecture): `ChromaPipeline` with one T5-XXL text
encoder (no CLIP, no pooled embedding), FLUX.1's 2x2-packed latents and VAE, and real
classifier-free guidance: whenever guidance is above 1, every step runs the transformer on the
prompt and on a negative prompt ("" by default)."""

from __future__ import annotations

from typing import Any

import flux_batch.families.chroma.keys as keys
from flux_batch.errors import ModelFileError
from flux_batch.families.base import Embedding, Family, Features


class Chroma(Family):
    name = "chroma"
    sets_cache_context = False  # its loop sets none: families/cache_contexts.py
    label = "Chroma"
    variants = (keys.VARIANT,)
    features = Features(
        cache_methods=frozenset({"none", "taylorseer"}),
        lora=True,
        true_cfg=False,  # its guidance is classifier-free guidance itself
    )
    encoder_folders = ("text_encoder", "tokenizer")
    # the pipeline's own mask: the prompt's tokens and its first padding token
    embedding_names = ("prompt_embeds", "prompt_attention_mask")
    keys = keys

    def pipeline_class(self):
        from diffusers import ChromaPipeline

        return ChromaPipeline

    def transformer_class(self):
        from diffusers import ChromaTransformer2DModel

        return ChromaTransformer2DModel

    def check_file(self, path: str, names: list[str], model) -> None:
        """A Chroma file holding tensors ChromaTransformer2DModel has no place for (another
        Chroma architecture, e.g. the pixel-space Radiance models diffusers does not run, or a
        damaged file) is refused by its first such tensor, before anything loads."""
        layout = keys.layout_of(names)
        table = keys.table(names, layout)
        known = {f.bfl for f in table} if layout == "bfl" else {p for f in table for p in f.parts}
        unknown = sorted(set(names) - known)
        missing = sorted(known - set(names))
        if unknown or missing:
            what = f"has {unknown[0]!r}" if unknown else f"lacks {missing[0]!r}"
            raise ModelFileError(
                f"model.transformer={path}: this Chroma GGUF {what}, so it is not of the Chroma1 "
                f"architecture diffusers' ChromaTransformer2DModel runs (model={model.name})"
            )

    def describe(self, names: list[str]) -> str:
        return self.label  # one variant: "this is a Chroma transformer"

    def text_encoders(self, pipe) -> list:
        return [pipe.text_encoder] if pipe.text_encoder is not None else []

    def encode(self, pipe, prompt: str, max_sequence_length: int) -> Embedding:
        """The embedding and mask of one prompt, padded to max_sequence_length as the pipeline
        pads every prompt (so a batch's rows are these, stacked)."""
        embeds, _, mask, _, _, _ = pipe.encode_prompt(
            prompt=[prompt],
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
        )
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    def guided_negatives(self, variant: str) -> bool:
        return True

    def negative_prompts(self, batch) -> list[str]:
        """Classifier-free guidance whenever guidance is above 1: a negative prompt per item,
        "" when it has none, encoded once and cached like any prompt (the pipeline would
        encode "" again at every call)."""
        if batch[0].settings.guidance > 1:
            return [item.negative_prompt or "" for item in batch]
        return []

    def call_args(
        self, batch, embeds: Embedding, negative: Embedding | None, max_sequence_length: int, references=None
    ) -> dict[str, Any]:
        settings = batch[0].settings
        args: dict[str, Any] = dict(embeds)
        if negative is not None:
            args.update({f"negative_{name}": tensor for name, tensor in negative.items()})
        args.update(
            width=settings.width,
            height=settings.height,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            max_sequence_length=max_sequence_length,
        )
        return args

    def decode(self, pipe, latents, settings, vae_device):
        """ChromaPipeline's steps after its loop are FLUX.1's pipeline's, line for line."""
        from flux_batch.families.flux1 import FAMILY as FLUX1

        return FLUX1.decode(pipe, latents, settings, vae_device)

    def save_tiny_pipeline(self, folder, variant: str) -> None:
        import flux_batch.families.chroma.tiny as tiny

        tiny.save_components(folder)

"""FLUX.1 Kontext [dev]: the FLUX.1-dev architecture (a guidance embedding; its GGUF files are
FLUX.1 files, read with FLUX.1's key table) under `FluxKontextPipeline`, the editing pipeline.

A row renders from text alone, or edits its one input image: the image's VAE latents (the
pipeline's own `_encode_vae_image`, encoded once per input and size by render/references.py)
go into the call as `image`, one per item, which the pipeline takes as they are and appends to
the noisy latents' tokens. The pipeline resizes every request to an area of `max_area`
(1024x1024 by default) at the asked aspect; the call passes the asked area, so the size
asked is the size rendered.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from flux_batch.errors import ModelFileError
from flux_batch.families.flux1.family import Flux1
from flux_batch.families.flux1.keys import has_guidance


class Kontext(Flux1):
    name = "kontext"
    sets_cache_context = False  # its loop sets none: families/cache_contexts.py
    label = "FLUX.1 Kontext"
    variants = ("dev",)
    features = replace(Flux1.features, references=1)  # the pipeline takes one image

    def pipeline_class(self):
        from diffusers import FluxKontextPipeline

        return FluxKontextPipeline

    def check_file(self, path: str, names: list[str], model) -> None:
        """Kontext [dev] is guidance-distilled: a file without a guidance embedding (a schnell
        file) is not Kontext."""
        if not has_guidance(names):
            raise ModelFileError(
                f"model.transformer={path}: this GGUF is FLUX.1-schnell-style (it has no guidance "
                f"embedding), but model={model.name} needs a FLUX.1 Kontext [dev] file"
            )

    def call_args(self, batch, embeds, negative, max_sequence_length: int, references=None) -> dict[str, Any]:
        import torch

        settings = batch[0].settings
        args = {
            **super().call_args(batch, embeds, negative, max_sequence_length),
            "max_area": settings.width * settings.height,
        }
        if references:  # latents with the VAE's channel count are used as given, one per item
            args["image"] = torch.cat([latents[0] for latents in references])
            args["_auto_resize"] = False
        return args

    def encode_reference(self, pipe, pixels):
        """What FluxKontextPipeline makes of its image: the VAE's mode, shifted and scaled."""
        import torch

        with torch.no_grad():
            return pipe._encode_vae_image(image=pixels, generator=None)

    def save_tiny_pipeline(self, folder, variant: str) -> None:
        """FLUX.1's tiny dev pieces, as a FluxKontextPipeline folder."""
        import flux_batch.families.flux1.tiny as tiny

        tiny.save_components(folder, "dev")
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = "FluxKontextPipeline"
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))


FAMILY = Kontext()

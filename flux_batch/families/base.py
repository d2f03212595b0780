"""What a model family is to flux-batch: the one interface the driver, the loader, the renderer,
the prompt encoder and the GGUF tools reach a family's specifics through.

A family (FLUX.1, FLUX.1 Kontext, FLUX.2 [dev], FLUX.2 [klein], Chroma) owns:
- its diffusers pipeline and transformer classes, and how its pipeline folder looks (which
  folders hold the text encoders, which files a hub pipeline needs);
- its variants (FLUX.1: dev with a guidance embedding, schnell without) and how a GGUF file or
  a loaded transformer is told to be of the wrong one, before anything renders;
- how one prompt becomes its embedding: a dict of named tensors, named as the pipeline call
  takes them (FLUX.1: prompt_embeds and pooled_prompt_embeds; a family with one text encoder
  and no pooled embedding has one name), which the embedding cache stores under those names;
- what the pipeline call takes, and how its packed latents become pixels;
- its GGUF key table (the BFL and diffusers tensor names, and how they fuse);
- which features it supports; a config asking for another is refused in one line.

Everything else (batching, seeds, placement, offload, dequantizing, the schedules, caches,
output) is the same for every family and stays out of here.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from flux_batch.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from flux_batch.plan.items import Item, Settings

Embedding = dict[str, "torch.Tensor"]  # one prompt's (or a batch's) tensors, by call-argument name
# a batch's encoded input images: per item, one latent tensor per input, on the call's device
References = list[list["torch.Tensor"]]


@dataclass(frozen=True)
class Features:
    """What a family's pipeline can do, beyond rendering a prompt."""

    cache_methods: frozenset[str]  # cache.method values its transformer supports (none among them)
    lora: bool  # LoRA files load into its pipeline
    true_cfg: bool  # true classifier-free guidance with negative prompts
    references: int = 0  # input images a row may name (0: the family renders from text only)


class Family:
    """A model family; subclasses set the class attributes and implement the methods."""

    name: str  # the model.family value
    label: str  # for messages: "FLUX.1"
    variants: tuple[str, ...]  # model.variant values
    features: Features
    encoder_folders: tuple[str, ...]  # pipeline-folder folders that make the embeddings
    embedding_names: tuple[str, ...]  # the tensors of one prompt's embedding, in cache-file order
    # whether the pipeline's loop wraps its transformer calls in cache contexts (FLUX.1's and
    # FLUX.2 [klein]'s do; Kontext's, FLUX.2 [dev]'s and Chroma's do not)
    sets_cache_context: bool = True
    # the GGUF key table: a module with the interface families/tensor_names.py describes
    # (identifies, layout_of, block_counts, variant_of, table, split_sizes, swap_halves)
    keys: Any

    @property
    def max_references(self) -> int:
        return self.features.references

    @property
    def pipeline_files(self) -> tuple[str, ...]:
        """What a hub pipeline folder needs: its index, scheduler, VAE, the folders that make
        the embeddings, and the transformer's config (never the transformer's weights)."""
        encoders = tuple(f"{folder}/*" for folder in self.encoder_folders)
        return ("model_index.json", "scheduler/*", *encoders, "vae/*", "transformer/config.json")

    # classes

    def pipeline_class(self):
        raise NotImplementedError

    def transformer_class(self):
        raise NotImplementedError

    # variants and files

    def check_variant(self, variant: str) -> None:
        """ConfigError when model.variant is not one of this family's."""
        if variant not in self.variants:
            raise ConfigError(f"model.variant={variant}: expected {' or '.join(self.variants)}")

    def check_file(self, path: str, names: list[str], model) -> None:
        """ModelFileError when the GGUF at `path` (its unprefixed tensor `names`) is not of the
        variant `model` (the model config) asks for; before anything loads."""

    def check_folder(self, base: str, model) -> None:
        """ModelFileError when the local pipeline folder `base` is not of the variant `model`
        asks for (FLUX.2 [klein]: distilled or base, which its tensors cannot tell); before
        anything loads."""

    def check_transformer(self, transformer, path: str, model_name: str, variant: str) -> None:
        """ModelFileError when a loaded transformer is not of `variant`."""

    def adapt(self, pipe) -> None:
        """What the family's pipeline needs once loaded, before anything renders: cache
        contexts for the transformer calls of a pipeline whose loop sets none
        (families/cache_contexts.py), which diffusers' cache hooks need."""
        if not self.sets_cache_context:
            import flux_batch.families.cache_contexts as cache_contexts

            cache_contexts.install(pipe)

    def text_encoders(self, pipe) -> list:
        """The pipeline's text encoder modules (offloaded early by the phased schedule, adapted
        by LoRAs)."""
        raise NotImplementedError

    # prompts, the call, the latents

    def encode(self, pipe, prompt: str, max_sequence_length: int) -> Embedding:
        """One prompt's embedding, as the pipeline's own encoder computes it."""
        raise NotImplementedError

    def call_args(
        self,
        batch: list[Item],
        embeds: Embedding,
        negative: Embedding | None,
        max_sequence_length: int,
        references: References | None = None,
    ) -> dict[str, Any]:
        """The pipeline call's arguments for a batch of items (one Settings), besides
        generators, output_type and the step callback; `negative` only under true CFG;
        `references`: each item's encoded input images, for a family that takes them."""
        raise NotImplementedError

    # input images

    def encode_reference(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        """One input image (1, 3, H, W in [-1, 1], on the VAE's device) as the latents the
        pipeline's own call would make of it, before they are packed."""
        raise NotImplementedError

    @contextmanager
    def calling(self, pipe, references: References | None) -> Iterator[None]:
        """Around one pipeline call: what the call needs that its arguments cannot carry
        (FLUX.2's pipelines take one set of reference images for the whole batch)."""
        yield

    def decode(self, pipe, latents, settings: Settings, vae_device) -> np.ndarray:
        """The packed latents of a pipeline call with output_type="latent" as (B, H, W, 3)
        floats: what the pipeline does after its denoising loop, step for step."""
        raise NotImplementedError

    def negative_prompts(self, batch: list[Item]) -> list[str]:
        """The negative prompts the call takes for a batch (one per item), or [] when it takes
        none: FLUX.1's true CFG only; a family guided by classifier-free guidance itself
        (Chroma, FLUX.2 [klein] base) takes one whenever its guidance is above 1."""
        if batch[0].settings.true_cfg > 1:
            return [item.negative_prompt or "" for item in batch]
        return []

    def guided_negatives(self, variant: str) -> bool:
        """Whether `sampler.guidance` above 1 is classifier-free guidance that takes a negative
        prompt (Chroma, FLUX.2 [klein] base), rather than `sampler.true_cfg` (FLUX.1)."""
        return False

    def describe(self, names: list[str]) -> str:
        """What a GGUF's unprefixed tensor `names` of this family are, for messages: "FLUX.1
        dev"."""
        return f"{self.label} {self.keys.variant_of(names)}"

    # features

    def check_features(self, cache_method: str, loras: bool, true_cfg: float) -> None:
        """ConfigError naming the key when a config asks for what this family lacks."""
        f = self.features
        if cache_method not in f.cache_methods:
            raise ConfigError(
                f"cache={cache_method}: not available for model.family={self.name} "
                f"({self.label}); it has {', '.join(sorted(f.cache_methods))}"
            )
        if loras and not f.lora:
            raise ConfigError(f"lora: model.family={self.name} ({self.label}) does not load LoRAs")
        if true_cfg > 1 and not f.true_cfg:
            raise ConfigError(
                f"sampler.true_cfg={true_cfg}: model.family={self.name} "
                f"({self.label}) has no true classifier-free guidance"
            )

    # the embedded tiny model

    def save_tiny_pipeline(self, folder, variant: str) -> None:
        """A random pipeline folder of this family, small enough for any CPU (demo/tiny.py)."""
        raise NotImplementedError

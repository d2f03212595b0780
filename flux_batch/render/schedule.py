"""When each model runs: one plain pipeline call per batch, or phased by chunks of items.

per_item: each batch is one pipeline call (encode, denoise, decode), as the reference loop
makes it; under model CPU offload every call moves the text encoders, the transformer and the
VAE onto the accelerator and off again.

phased: for a chunk of `runtime.chunk_size` items, every prompt is encoded first, the text
encoders leave the accelerator, each batch is denoised with the transformer resident (the same
pipeline call, stopped before the VAE: output_type="latent"), then each batch is decoded by the
VAE with the pipeline's own decode steps: after the chunk under model offload, at once when
every model is resident (nothing moves, and a kill loses one batch, not the chunk). Same calls
on the same batches: the same pixels, bit for bit. Peak accelerator memory is the larger of the
text encoders and the transformer with its activations, not their sum, and each model moves once
per chunk instead of once per batch.
`auto` is phased when the run has more than one batch.

A stop request ends the run after the batch being denoised (its images are dropped); batches of
the chunk already denoised are decoded and written first.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from flux_batch import families
from flux_batch.config import CacheConfig
from flux_batch.model.device import resolve_dtype
from flux_batch.plan.items import Item, Settings
from flux_batch.render import batch_size, step_cache
from flux_batch.render import compile as torch_compile
from flux_batch.render.batch_size import BatchSizer, is_out_of_memory
from flux_batch.render.embed_cache import EmbedCache
from flux_batch.render.encoder import PromptEncoder, encoders_digest, encoders_identity
from flux_batch.render.references import ReferenceEncoder
from flux_batch.render.renderer import Renderer, batches

if TYPE_CHECKING:  # numpy is imported where images are made: a finished run needs none
    import numpy as np

log = logging.getLogger("flux_batch")


@dataclass
class Rendered:
    batch: list[Item]
    images: np.ndarray | None = None  # None with no error: dropped after a stop request
    error: Exception | None = None


class Schedule:
    def __init__(self, render: Renderer, sizer: BatchSizer, phased: bool, chunk_size: int):
        self.render = render
        self.encoder = render.encode  # encoder.PromptEncoder
        self.sizer = sizer
        self.phased = phased
        self.chunk_size = chunk_size
        self.seconds = {"encode": 0.0, "denoise": 0.0, "decode": 0.0}  # per_item: denoise+decode

    @property
    def name(self) -> str:
        return "phased" if self.phased else "per_item"

    def __call__(self, items: list[Item]) -> Iterator[Rendered]:
        if self.phased:
            yield from self._phased(items)
        else:
            for batch in batches(items, self.sizer):
                if self.render.should_stop():
                    return
                yield from self._guarded(batch, self._plain)

    def timing(self) -> str:
        """Seconds in the models, for the log."""
        s = self.seconds
        if self.phased:
            parts = f"encode {s['encode']:.2f} s, denoise {s['denoise']:.2f} s, decode {s['decode']:.2f} s"
        else:  # per_item encodes inside its pipeline calls
            encode = self.encoder.seconds
            parts = f"encode {encode:.2f} s, denoise and decode {s['denoise'] - encode:.2f} s"
        refs = self.render.references
        if refs is not None and refs.items:
            parts += (
                f"; input images of {refs.items} items: {refs.encoded} VAE-encoded "
                f"({refs.seconds:.2f} s), {refs.read} read from the embedding cache"
            )
        skipped = step_cache.skipped_share(self.render.pipe.transformer)
        if skipped is not None:
            parts += f"; fbcache skipped the remaining blocks in {100 * skipped:.0f}% of item-steps"
        return f"{self.name} schedule, batch size {self.sizer.size}: {parts}"

    def model_seconds(self) -> float:
        return sum(self.seconds.values())

    # per_item

    def _plain(self, batch: list[Item], _latents=None) -> list[Rendered]:
        started = time.perf_counter()
        images = self.render(batch)
        self.seconds["denoise"] += time.perf_counter() - started
        return [Rendered(batch, images)]

    # phased

    def _phased(self, items: list[Item]) -> Iterator[Rendered]:
        pending = batches(items, self.sizer)
        while not self.render.should_stop():
            chunk, count = [], 0
            for batch in pending:
                chunk.append(batch)
                count += len(batch)
                if count >= self.chunk_size:
                    break
            if not chunk:
                return
            yield from self._chunk(chunk)

    def _chunk(self, chunk: list[list[Item]]) -> Iterator[Rendered]:
        pipe = self.render.pipe
        held, encoded = {}, []
        started = time.perf_counter()
        for batch in chunk:
            try:
                for item in batch:  # the prompts Renderer.denoise asks for
                    needed = [item.prompt] + self.render.family.negative_prompts([item])
                    for prompt in needed:
                        if prompt not in held:
                            held[prompt] = self.encoder.embedding(prompt)
                    if item.inputs:  # and its input images, kept for the denoising below
                        self.render.references.latents(item)
                encoded.append(batch)
            except Exception as e:
                log.exception("encoding a batch of %d failed", len(batch))
                yield Rendered(batch, error=e)
        self.seconds["encode"] += time.perf_counter() - started
        release(pipe, *self.render.family.text_encoders(pipe))

        def encode(prompts):
            return self.encoder.stack([held[p] for p in prompts])

        def denoise(batch, _latents=None):
            return [Rendered(batch, self.render.denoise(batch, encode))]

        # every model resident (no offload): decoding a batch at once moves nothing, and a
        # kill then loses at most the batch in progress, not the chunk
        resident = not _hooks(pipe)
        denoised = []
        with models_kept(pipe):  # the transformer stays on the accelerator between batches
            for batch in encoded:
                if self.render.should_stop():
                    break
                started = time.perf_counter()
                results = self._guarded(batch, denoise)
                self.seconds["denoise"] += time.perf_counter() - started
                for done in results:
                    if done.error is not None:
                        yield done
                    elif done.images is not None:  # None: stopped mid-batch, dropped
                        if resident:
                            yield from self._decoded(done)
                        else:
                            denoised.append(done)
        try:
            for done in denoised:
                yield from self._decoded(done)
        finally:
            free_models(pipe)

    def _decoded(self, done: Rendered) -> list[Rendered]:
        started = time.perf_counter()
        results = self._guarded(done.batch, self._decode, done.images)
        self.seconds["decode"] += time.perf_counter() - started
        return results

    def _decode(self, batch: list[Item], latents) -> list[Rendered]:
        return [Rendered(batch, self.render.decode(latents, batch[0].settings))]

    # out of memory

    def _guarded(self, batch: list[Item], step: Callable, latents=None) -> list[Rendered]:
        """step(batch, latents); after out-of-memory with batch_size=auto, the same in smaller
        batches; any other failure fails the batch's items (one bad batch must not end a run)."""
        try:
            return step(batch, latents)
        except Exception as e:
            if is_out_of_memory(e) and self.sizer.shrink(len(batch)):
                size = self.sizer.size
                return [
                    done
                    for i in range(0, len(batch), size)
                    for done in self._guarded(
                        batch[i : i + size], step, None if latents is None else latents[i : i + size]
                    )
                ]
            log.exception("batch of %d failed", len(batch))
            return [Rendered(batch, error=e)]


# Placement under diffusers' model CPU offload (nothing to do when every model is resident).


def _hooks(pipe) -> list:
    return list(getattr(pipe, "_all_hooks", None) or [])


def release(pipe, *modules) -> None:
    """Move `modules` off the accelerator now, instead of when the next model loads."""
    for hook in _hooks(pipe):
        if any(hook.model is m for m in modules):
            hook.offload()


@contextmanager
def models_kept(pipe):
    """The pipeline offloads every model at the end of each call; inside this block the models
    stay where they are, so the transformer loads once for all the batches of a chunk."""
    if not _hooks(pipe):
        yield
        return
    pipe.maybe_free_model_hooks = lambda: None
    try:
        yield
    finally:
        del pipe.maybe_free_model_hooks


def free_models(pipe) -> None:
    """Every model back off the accelerator (with offload), as after a pipeline call."""
    if _hooks(pipe):
        pipe.maybe_free_model_hooks()


@dataclass(frozen=True)
class RenderOptions:
    """How a run renders: batching, schedule, embedding cache, compile. None of it changes pixels."""

    batch_size: int | str  # an integer, or auto
    schedule: str  # auto, phased or per_item
    chunk_size: int
    dtype: str  # auto, float32, bfloat16 or float16
    max_sequence_length: int
    shift: float | None = None  # a fixed sigma shift, or None for the model's
    embed_cache: str | None = None  # folder of prompt embeddings kept between runs
    input_fit: str = "crop"  # how input images meet the output size (sampler.input_fit)
    compile: bool = False
    # step caching: the config's `cache` section; changes pixels, in the fingerprint
    cache: CacheConfig = field(default_factory=CacheConfig)


def for_run(
    pipe,
    files,
    device: str,
    groups: dict[Settings, int],
    should_stop: Callable[[], bool],
    options: RenderOptions,
    progress=None,
) -> Schedule:
    """The schedule `options` ask for, with its prompt encoder and batch size, for items of
    `groups` (how many items have each Settings); `progress` (progress.StepProgress) is told of
    each denoising step."""
    msl = options.max_sequence_length
    identity = encoders_identity(files, pipe, device, resolve_dtype(options.dtype, device))
    names = families.of_pipeline(pipe).embedding_names
    disk = EmbedCache(options.embed_cache, identity, names) if options.embed_cache else None
    encoder = PromptEncoder(pipe, identity, msl, disk)
    vae = encoders_digest(files.base, str(resolve_dtype(options.dtype, device)), device, folders=("vae",))
    latents_disk = EmbedCache(options.embed_cache, vae, ("latents",)) if options.embed_cache else None
    references = ReferenceEncoder(pipe, vae, options.input_fit, latents_disk)
    render = Renderer(pipe, msl, should_stop, encoder, options.shift, references)
    render.progress = progress
    sizer = batch_size.for_run(options.batch_size, pipe, list(groups), msl, device)
    torch_compile.apply(pipe, options.compile)
    step_cache.apply(pipe.transformer, options.cache)
    schedule = options.schedule
    if schedule == "auto":
        batch_count = sum(-(-count // sizer.size) for count in groups.values())
        schedule = "phased" if batch_count > 1 else "per_item"
    return Schedule(render, sizer, schedule == "phased", options.chunk_size)

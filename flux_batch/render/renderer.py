"""Batching and the pipeline call.

Items batch together only when their Settings agree (size, steps, guidance, true CFG,
scheduler). Each item brings its own CPU generator, so its starting noise is the same whatever
batch it lands in.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterator

from flux_batch import families, faults
from flux_batch.families import Embedding
from flux_batch.faults import crash_point
from flux_batch.plan.items import Item, Settings
from flux_batch.render import step_cache

if TYPE_CHECKING:  # numpy is imported where images are made: a finished run needs none
    import numpy as np


def batches(items: list[Item], batch_size: int | Callable[[], int]) -> Iterator[list[Item]]:
    """Batches of compatible items, in order of each group's first item. `batch_size` may be
    a function, read at each item: a batch size lowered mid-run applies to the next batches."""
    size = batch_size if callable(batch_size) else (lambda: batch_size)
    open_batches: dict[Settings, list[Item]] = {}
    for item in items:
        batch = open_batches.setdefault(item.settings, [])
        batch.append(item)
        if len(batch) >= size():
            yield open_batches.pop(item.settings)
    yield from open_batches.values()


class Renderer:
    """Runs a family's pipeline on batches of items and returns float images in [0, 1]."""

    def __init__(
        self,
        pipe,
        max_sequence_length: int,
        should_stop: Callable[[], bool],
        encode: Callable[[list[str]], Embedding],
        shift: float | None = None,
        references=None,
    ):
        self.pipe = pipe
        self.family = families.of_pipeline(pipe)  # what the call takes, how latents decode
        self.max_sequence_length = max_sequence_length
        self.should_stop = should_stop
        self.encode = encode  # prompts -> the batch's embedding (encoder.PromptEncoder)
        self.references = references  # items -> their encoded inputs (references.ReferenceEncoder)
        self.shift = shift
        # the model's own scheduler config, kept on the pipeline: a pipeline reused by a later
        # run holds the scheduler this run swapped in, not the model's
        if not hasattr(pipe, "flux_batch_scheduler_config"):
            pipe.flux_batch_scheduler_config = pipe.scheduler.config
        self.base_scheduler_config = pipe.flux_batch_scheduler_config
        self.schedulers: dict = {}
        self._vae_device = None  # where the VAE runs: asked once (diffusers walks every module)
        self.progress = None  # progress.StepProgress, told of each step
        self._step_delay = faults.step_delay()

    def _use_scheduler(self, name: str) -> None:
        from flux_batch.samplers import make_scheduler

        if name not in self.schedulers:
            self.schedulers[name] = make_scheduler(self.base_scheduler_config, name, self.shift)
        self.pipe.scheduler = self.schedulers[name]

    def __call__(self, batch: list[Item]) -> np.ndarray | None:
        """(B, H, W, 3) images, or None when a stop was requested mid-batch (results dropped):
        one plain pipeline call, which encodes, denoises and decodes."""
        return self.denoise(batch, self.encode, output_type="np")

    def denoise(
        self,
        batch: list[Item],
        encode: Callable[[list[str]], Embedding] | None = None,
        output_type: str = "latent",
    ):
        """The pipeline call for a batch; with output_type="latent" it stops before the VAE
        and returns the packed latents, which `decode` turns into the same images."""
        import torch

        encode = encode or self.encode
        s = batch[0].settings
        self._use_scheduler(s.scheduler)
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
        step_cache.reset(self.pipe.transformer)  # a batch never sees another batch's cache
        embeds = encode([item.prompt for item in batch])
        # negative prompts only where the family's call uses them (FLUX.1: true CFG, which
        # Settings keeps apart from the items without it)
        negatives = self.family.negative_prompts(batch)
        negative = encode(negatives) if negatives else None
        references = self.references.stack(batch) if s.references else None
        args = self.family.call_args(batch, embeds, negative, self.max_sequence_length, references)
        if self.progress is not None:
            self.progress.begin(len(batch), s.steps)
        try:
            with self.family.calling(self.pipe, references):
                output = self.pipe(
                    **args,
                    generator=generators,
                    output_type=output_type,
                    callback_on_step_end=self._check_stop,
                )
        finally:
            if self.progress is not None:
                self.progress.end()
        return None if self.should_stop() else output.images

    def decode(self, latents, settings: Settings) -> np.ndarray:
        """Packed latents of a batch as (B, H, W, 3) images: what the pipeline does after its
        denoising loop, step for step (the family's decode), so a phased run renders the
        pipeline's own pixels."""
        if self._vae_device is None:
            self._vae_device = _vae_device(self.pipe)
        return self.family.decode(self.pipe, latents, settings, self._vae_device)

    def _check_stop(self, pipe, step, timestep, callback_kwargs):
        crash_point("mid_denoise")
        if self._step_delay:
            time.sleep(self._step_delay)
        if self.progress is not None:
            self.progress.step(step + 1)
        if self.should_stop():
            pipe._interrupt = True  # the pipeline skips the remaining steps
        return callback_kwargs


def _vae_device(pipe):
    """Where the VAE runs: its parameters' device, or its offload hook's execution device."""
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(pipe.vae)

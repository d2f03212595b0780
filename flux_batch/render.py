"""Batching and the pipeline call.

Items batch together only when their Settings agree (size, steps, guidance, true CFG,
scheduler). Each item brings its own CPU generator, so its starting noise is the same whatever
batch it lands in.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .faults import crash_point
from .items import Item, Settings


def batches(items: list[Item], batch_size: int) -> Iterator[list[Item]]:
    """Batches of compatible items, in order of each group's first item."""
    open_batches: dict[Settings, list[Item]] = {}
    for item in items:
        batch = open_batches.setdefault(item.settings, [])
        batch.append(item)
        if len(batch) == batch_size:
            yield open_batches.pop(item.settings)
    yield from open_batches.values()


class Renderer:
    """Runs a FluxPipeline on batches of items and returns float images in [0, 1]."""

    def __init__(self, pipe, max_sequence_length: int, should_stop: Callable[[], bool],
                 encode: Callable[[list[str]], tuple], shift: float | None = None):
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        self.should_stop = should_stop
        self.encode = encode  # prompts -> (prompt_embeds, pooled_prompt_embeds)
        self.shift = shift
        # the model's own scheduler config, kept on the pipeline: a pipeline reused by a later
        # run holds the scheduler this run swapped in, not the model's
        if not hasattr(pipe, "flux_batch_scheduler_config"):
            pipe.flux_batch_scheduler_config = pipe.scheduler.config
        self.base_scheduler_config = pipe.flux_batch_scheduler_config
        self.schedulers: dict = {}

    def _use_scheduler(self, name: str) -> None:
        from .schedulers import make_scheduler

        if name not in self.schedulers:
            self.schedulers[name] = make_scheduler(self.base_scheduler_config, name, self.shift)
        self.pipe.scheduler = self.schedulers[name]

    def __call__(self, batch: list[Item]) -> np.ndarray | None:
        """(B, H, W, 3) images, or None when a stop was requested mid-batch (results dropped)."""
        import torch

        s = batch[0].settings
        self._use_scheduler(s.scheduler)
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
        prompt_embeds, pooled_prompt_embeds = self.encode([item.prompt for item in batch])
        # true CFG only where the batch has negative prompts (Settings keeps them apart)
        cfg = {}
        if s.true_cfg > 1:
            negative, negative_pooled = self.encode([item.negative_prompt for item in batch])
            cfg = {"negative_prompt_embeds": negative, "negative_pooled_prompt_embeds": negative_pooled,
                   "true_cfg_scale": s.true_cfg}
        output = self.pipe(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            **cfg,
            width=s.width,
            height=s.height,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance,
            generator=generators,
            max_sequence_length=self.max_sequence_length,
            output_type="np",
            callback_on_step_end=self._check_stop,
        )
        return None if self.should_stop() else output.images

    def _check_stop(self, pipe, step, timestep, callback_kwargs):
        crash_point("mid_denoise")
        if self.should_stop():
            pipe._interrupt = True  # FluxPipeline skips the remaining steps
        return callback_kwargs

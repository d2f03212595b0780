"""Batching and the pipeline call.

Items batch together only when their size, steps and guidance agree. Each item brings its own
CPU generator, so its starting noise is the same whatever batch it lands in.
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
                 encode: Callable[[list[str]], tuple]):
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length
        self.should_stop = should_stop
        self.encode = encode  # prompts -> (prompt_embeds, pooled_prompt_embeds)

    def __call__(self, batch: list[Item]) -> np.ndarray | None:
        """(B, H, W, 3) images, or None when a stop was requested mid-batch (results dropped)."""
        import torch

        s = batch[0].settings
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
        prompt_embeds, pooled_prompt_embeds = self.encode([item.prompt for item in batch])
        output = self.pipe(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
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

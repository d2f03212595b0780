"""What a process keeps between the runs of a sweep: the loaded pipeline and prompt embeddings.

Hydra's basic launcher runs a sweep's jobs one after another in one process, so a sweep over
sampler settings needs the model once and each prompt encoded once. Only the last pipeline is
kept (a sweep over quants or models would otherwise hold several in memory at once); put such
axes first on the command line so that jobs sharing a model run next to each other.

Prompts are always encoded one at a time, cached or not, so an item's text embedding never
depends on the batch it lands in or on what the cache held: cached and fresh runs render the
same pixels, bit for bit.
"""
from __future__ import annotations

import gc
import os
import time
from typing import Any

from omegaconf import DictConfig

from .config import value_of

PROMPT_CACHE_BYTES = 1 << 30  # embeddings kept in host memory, first come first kept

_pipeline: tuple[tuple, Any] | None = None
_load_count = 0


def load_count() -> int:
    """How many times this process has loaded a pipeline."""
    return _load_count


def _file_stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    except OSError:  # a URL
        return ()


def pipeline_key(cfg: DictConfig, device: str, files) -> tuple:
    """Everything that makes two jobs need different pipeline objects."""
    return (
        files.base, files.transformer, _file_stamp(files.transformer), cfg.quant.name,
        cfg.model.variant, value_of(cfg.runtime.dtype), value_of(cfg.runtime.offload), device,
        files.loras,  # adapters are loaded into the pipeline: other LoRAs or scales, another one
    )


def get_pipeline(cfg: DictConfig, device: str, files) -> tuple[Any, bool]:
    """(pipeline, whether it was loaded now): the kept one when its key matches, else a new one."""
    global _pipeline, _load_count
    from . import models

    key = pipeline_key(cfg, device, files)
    if _pipeline is not None and _pipeline[0] == key:
        return _pipeline[1], False
    release_pipeline()
    pipe = models.load_pipeline(cfg, device, files)
    _load_count += 1
    _pipeline = (key, pipe)
    return pipe, True


def release_pipeline() -> None:
    """Drop the kept pipeline and give its memory back before another one loads."""
    global _pipeline
    if _pipeline is None:
        return
    _pipeline = None
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PromptEncoder:
    """Text embeddings of prompts, computed one prompt at a time and kept in a process-wide
    cache keyed by the text encoders' identity, the prompt and max_sequence_length; with a
    `disk` cache (embed_cache.EmbedCache) also kept between processes."""

    _store: dict[tuple, tuple[Any, Any]] = {}
    _bytes = 0

    def __init__(self, pipe, encoder_identity: tuple, max_sequence_length: int, disk=None):
        self.pipe = pipe
        self.identity = encoder_identity
        self.max_sequence_length = max_sequence_length
        self.disk = disk
        self.hits = 0  # found in memory or on disk
        self.misses = 0  # encoded by the text encoders
        self.seconds = 0.0  # spent encoding

    def __call__(self, prompts: list[str]):
        """(prompt_embeds, pooled_prompt_embeds) for a batch, as FluxPipeline takes them."""
        return self.stack([self.embedding(p) for p in prompts])

    def stack(self, pairs: list[tuple]):
        """Per-prompt (embeds, pooled) pairs as one batch on the pipeline's device."""
        import torch

        device = self.pipe._execution_device
        embeds = torch.cat([e for e, _ in pairs]).to(device)
        pooled = torch.cat([p for _, p in pairs]).to(device)
        return embeds, pooled

    def embedding(self, prompt: str):
        """(embeds, pooled) of one prompt, on the CPU: from memory, from disk, or encoded."""
        key = (self.identity, self.max_sequence_length, prompt)
        cached = PromptEncoder._store.get(key)
        if cached is None and self.disk is not None:
            cached = self.disk.load(prompt, self.max_sequence_length)
            if cached is not None:
                self._keep(key, cached)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        started = time.perf_counter()
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=[prompt], prompt_2=None, num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        pair = (embeds.detach().cpu(), pooled.detach().cpu())  # copying is exact
        self.seconds += time.perf_counter() - started
        self._keep(key, pair)
        if self.disk is not None:
            self.disk.save(prompt, self.max_sequence_length, pair)
        return pair

    @staticmethod
    def _keep(key: tuple, pair: tuple) -> None:
        size = sum(t.numel() * t.element_size() for t in pair)
        if PromptEncoder._bytes + size <= PROMPT_CACHE_BYTES:  # full: keep the earliest ones,
            PromptEncoder._store[key] = pair  # so a sweep cycling through many prompts still hits
            PromptEncoder._bytes += size


def encoder_identity(files, device: str, dtype: str, pipe=None) -> tuple:
    """The text encoders come from the pipeline folder: same folder, dtype and device, same
    embeddings, whichever transformer or quant a job uses, unless a LoRA adapts the text
    encoders (then its file and scale count too)."""
    identity = (os.path.realpath(files.base), device, dtype)
    if files.loras and pipe is not None and adapts_text_encoders(pipe):
        identity += tuple((lora.sha256, lora.scale) for lora in files.loras)
    return identity


def adapts_text_encoders(pipe) -> bool:
    """Whether a LoRA adapter sits on a layer of CLIP or T5."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    encoders = [m for m in (pipe.text_encoder, pipe.text_encoder_2) if m is not None]
    return any(isinstance(module, BaseTunerLayer) for encoder in encoders for module in encoder.modules())

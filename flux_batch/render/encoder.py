"""Prompts to text embeddings: one prompt at a time, kept in memory and (optionally) on disk.

Prompts are always encoded one at a time, cached or not, so an item's text embedding never
depends on the batch it lands in or on what the cache held: cached and fresh runs render the
same pixels, bit for bit. A process keeps the embeddings between the runs of a sweep, keyed by
the text encoders' identity, the prompt and max_sequence_length.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any


PROMPT_CACHE_BYTES = 1 << 30  # embeddings kept in host memory, first come first kept


class PromptEncoder:
    """Text embeddings of prompts, computed one prompt at a time and kept in a process-wide
    cache keyed by the text encoders' identity, the prompt and max_sequence_length; with a
    `disk` cache (embed_cache.EmbedCache) also kept between processes."""

    _store: dict[tuple, tuple[Any, Any]] = {}
    _bytes = 0

    def __init__(self, pipe, identity: str, max_sequence_length: int, disk=None):
        self.pipe = pipe
        self.identity = identity  # encoders_identity()
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


def encoders_identity(files, pipe, device: str, dtype) -> str:
    """The text encoders as they compute embeddings: the one key of the embeddings kept in
    memory and on disk. They come from the pipeline folder: same folder, dtype and device type,
    same embeddings, whichever transformer or quant a job uses, unless a LoRA adapts the text
    encoders (then its file and scale count too)."""
    loras = ()
    if files.loras and adapts_text_encoders(pipe):
        loras = tuple((lora.sha256, lora.scale) for lora in files.loras)
    return encoders_digest(files.base, str(dtype), device, loras)


ENCODER_FOLDERS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
SMALL_FILE = 16 << 20  # files below this size are hashed by content


def encoders_digest(base: str, dtype: str, device: str, loras: tuple = ()) -> str:
    """SHA-256 naming the text encoders of a pipeline folder without reading their weights: the
    contents of their small files (configs, tokenizers), the size, modification time and
    resolved name of the large ones (in the Hugging Face cache that name is the file's content
    hash), dtype, device type, the LoRAs that adapt them, and the library versions that compute
    the embeddings."""
    h = hashlib.sha256()
    for folder in ENCODER_FOLDERS:
        root = Path(base) / folder
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if not path.is_file():
                continue
            st = path.stat()
            h.update(f"{path.relative_to(base)}\0{st.st_size}\0".encode())
            if st.st_size < SMALL_FILE:
                h.update(path.read_bytes())
            else:
                h.update(f"{os.path.basename(os.path.realpath(path))}\0{st.st_mtime_ns}".encode())
    versions = [metadata.version(p) for p in ("torch", "transformers", "diffusers")]
    device_type = device.split(":")[0]
    h.update(json.dumps([dtype, device_type, list(loras), versions]).encode())
    return h.hexdigest()


def adapts_text_encoders(pipe) -> bool:
    """Whether a LoRA adapter sits on a layer of CLIP or T5."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    encoders = [m for m in (pipe.text_encoder, pipe.text_encoder_2) if m is not None]
    return any(isinstance(module, BaseTunerLayer) for encoder in encoders for module in encoder.modules())


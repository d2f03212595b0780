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

from flux_batch import families
from flux_batch.families import Embedding
from flux_batch.model.load import on_encoder_device

PROMPT_CACHE_BYTES = 1 << 30  # embeddings kept in host memory, first come first kept


class PromptEncoder:
    """Text embeddings of prompts, computed one prompt at a time by the pipeline's family and
    kept in a process-wide cache keyed by the text encoders' identity, the prompt and
    max_sequence_length; with a `disk` cache (embed_cache.EmbedCache) also kept between
    processes. An embedding is a dict of tensors named as the pipeline call takes them."""

    _store: dict[tuple, Embedding] = {}
    _bytes = 0

    def __init__(self, pipe, identity: str, max_sequence_length: int, disk=None):
        self.pipe = pipe
        self.family = families.of_pipeline(pipe)
        self.identity = identity  # encoders_identity()
        self.max_sequence_length = max_sequence_length
        self.disk = disk
        self.hits = 0  # found in memory or on disk
        self.misses = 0  # encoded by the text encoders
        self.seconds = 0.0  # spent encoding

    def __call__(self, prompts: list[str]) -> Embedding:
        """The embeddings of a batch, as the family's pipeline call takes them."""
        return self.stack([self.embedding(p) for p in prompts])

    def stack(self, embeddings: list[Embedding]) -> Embedding:
        """Per-prompt embeddings as one batch on the pipeline's device."""
        import torch

        device = self.pipe._execution_device
        return {name: torch.cat([e[name] for e in embeddings]).to(device) for name in embeddings[0]}

    def embedding(self, prompt: str) -> Embedding:
        """One prompt's embedding, on the CPU: from memory, from disk, or encoded."""
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
        with on_encoder_device(self.pipe):
            encoded = self.family.encode(self.pipe, prompt, self.max_sequence_length)
        embedding = {name: t.detach().cpu() for name, t in encoded.items()}  # copying is exact
        self.seconds += time.perf_counter() - started
        self._keep(key, embedding)
        if self.disk is not None:
            self.disk.save(prompt, self.max_sequence_length, embedding)
        return embedding

    @staticmethod
    def _keep(key: tuple, embedding: Embedding) -> None:
        size = sum(t.numel() * t.element_size() for t in embedding.values())
        if PromptEncoder._bytes + size <= PROMPT_CACHE_BYTES:  # full: keep the earliest ones,
            PromptEncoder._store[key] = embedding  # so a sweep cycling through many prompts still hits
            PromptEncoder._bytes += size


def encoders_identity(files, pipe, device: str, dtype) -> str:
    """The text encoders as they compute embeddings: the one key of the embeddings kept in
    memory and on disk. They come from the pipeline folder: same folder, dtype and device type,
    same embeddings, whichever transformer or quant a job uses, unless a LoRA adapts the text
    encoders (then its file and scale count too)."""
    loras = ()
    if files.loras and adapts_text_encoders(pipe):
        loras = tuple((lora.sha256, lora.scale) for lora in files.loras)
    return encoders_digest(files.base, str(dtype), device, loras, families.of_pipeline(pipe).encoder_folders)


SMALL_FILE = 16 << 20  # files below this size are hashed by content


def encoders_digest(
    base: str, dtype: str, device: str, loras: tuple = (), folders: tuple[str, ...] | None = None
) -> str:
    """SHA-256 naming the text encoders of a pipeline folder without reading their weights: the
    contents of their small files (configs, tokenizers), the size, modification time and
    resolved name of the large ones (in the Hugging Face cache that name is the file's content
    hash), dtype, device type, the LoRAs that adapt them, and the library versions that compute
    the embeddings."""
    h = hashlib.sha256()
    for folder in folders or families.get(families.DEFAULT).encoder_folders:
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
    """Whether a LoRA adapter sits on a layer of a text encoder."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    encoders = families.of_pipeline(pipe).text_encoders(pipe)
    return any(isinstance(module, BaseTunerLayer) for encoder in encoders for module in encoder.modules())

"""Prompt embeddings on disk (`runtime.embed_cache=DIR`), so later runs and sweeps skip T5.

One safetensors file per (text encoders, max_sequence_length, prompt), named by the SHA-256 of
the three: `DIR/<2 hex>/<64 hex>.safetensors`, holding the tensors of the family's embedding
under their names (FLUX.1: `prompt_embeds` and `pooled_prompt_embeds`) exactly as the encoders
returned them (a cached embedding renders the same pixels as a fresh one). Files are written to
a temporary name, fsynced and renamed, so a reader sees a whole entry or none; an entry that
cannot be read is encoded again and replaced. The cache is an optimisation: when its folder
cannot be written, the run goes on without it.

The text encoders are identified by `encoder.encoders_identity`, the same key as the embeddings
kept in memory, computed without reading their weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from flux_batch.store.atomic import write_atomic

log = logging.getLogger(__name__)


class EmbedCache:
    def __init__(self, folder: str | os.PathLike, encoders: str, names: tuple[str, ...]):
        self.folder = Path(folder).expanduser()
        self.encoders = encoders
        self.names = names  # the family's embedding_names
        self.writable = True
        self.loaded = 0
        self.saved = 0

    def path(self, prompt: str, max_sequence_length: int) -> Path:
        key = json.dumps([self.encoders, max_sequence_length, prompt], ensure_ascii=False)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def load(self, prompt: str, max_sequence_length: int):
        """The embedding (a dict of tensors) on the CPU, or None when absent or unreadable."""
        from safetensors import safe_open

        path = self.path(prompt, max_sequence_length)
        if not path.exists():
            return None
        try:
            with safe_open(path, framework="pt") as f:
                if (f.metadata() or {}).get("prompt") != prompt:
                    raise ValueError("it holds another prompt")
                embedding = {name: f.get_tensor(name) for name in self.names}
        except Exception as e:  # a torn or damaged file: encode again, never fail the run
            log.warning(
                "embedding cache entry %s is unreadable (%s); encoding the prompt again",
                path,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
            return None
        self.loaded += 1
        return embedding

    def save(self, prompt: str, max_sequence_length: int, embedding) -> None:
        if not self.writable:
            return
        from safetensors.torch import save

        path = self.path(prompt, max_sequence_length)
        data = save(
            {name: embedding[name].contiguous() for name in self.names},
            metadata={
                "prompt": prompt,
                "max_sequence_length": str(max_sequence_length),
                "encoders": self.encoders,
            },
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
            self.saved += 1
        except OSError as e:
            self.writable = False
            log.warning(
                "runtime.embed_cache=%s: cannot write (%s); going on without saving embeddings",
                self.folder,
                e.strerror or e,
            )

"""Prompt embeddings on disk (`runtime.embed_cache=DIR`), so later runs and sweeps skip T5.

One safetensors file per (text encoders, max_sequence_length, prompt), named by the SHA-256 of
the three: `DIR/<2 hex>/<64 hex>.safetensors`, holding `prompt_embeds` and
`pooled_prompt_embeds` exactly as the encoders returned them (a cached embedding renders the
same pixels as a fresh one). Files are written to a temporary name, fsynced and renamed, so a
reader sees a whole entry or none; an entry that cannot be read is encoded again and replaced.
The cache is an optimisation: when its folder cannot be written, the run goes on without it.

The text encoders are identified without reading their weights: the contents of their small
files (configs, tokenizers), the size, modification time and resolved name of the large ones
(in the Hugging Face cache that name is the file's content hash), dtype, device type, the LoRAs
that adapt them, and the library versions that compute the embeddings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

ENCODER_FOLDERS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
SMALL_FILE = 16 << 20  # files below this size are hashed by content


def encoders_digest(base: str, dtype: str, device: str, loras: tuple = ()) -> str:
    """SHA-256 naming the text encoders of a pipeline folder, as they compute embeddings."""
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


class EmbedCache:
    def __init__(self, folder: str | os.PathLike, encoders: str):
        self.folder = Path(folder).expanduser()
        self.encoders = encoders
        self.writable = True
        self.loaded = 0
        self.saved = 0

    def path(self, prompt: str, max_sequence_length: int) -> Path:
        key = json.dumps([self.encoders, max_sequence_length, prompt], ensure_ascii=False)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def load(self, prompt: str, max_sequence_length: int):
        """(embeds, pooled) on the CPU, or None when absent or unreadable."""
        from safetensors import safe_open

        path = self.path(prompt, max_sequence_length)
        if not path.exists():
            return None
        try:
            with safe_open(path, framework="pt") as f:
                if (f.metadata() or {}).get("prompt") != prompt:
                    raise ValueError("it holds another prompt")
                pair = (f.get_tensor("prompt_embeds"), f.get_tensor("pooled_prompt_embeds"))
        except Exception as e:  # a torn or damaged file: encode again, never fail the run
            log.warning("embedding cache entry %s is unreadable (%s); encoding the prompt again",
                        path, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None
        self.loaded += 1
        return pair

    def save(self, prompt: str, max_sequence_length: int, pair) -> None:
        if not self.writable:
            return
        from safetensors.torch import save

        path = self.path(prompt, max_sequence_length)
        data = save({"prompt_embeds": pair[0].contiguous(), "pooled_prompt_embeds": pair[1].contiguous()},
                    metadata={"prompt": prompt, "max_sequence_length": str(max_sequence_length),
                              "encoders": self.encoders})
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            self.saved += 1
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self.writable = False
            log.warning("runtime.embed_cache=%s: cannot write (%s); going on without saving "
                        "embeddings", self.folder, e.strerror or e)

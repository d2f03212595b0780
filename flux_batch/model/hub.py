"""Files from the Hugging Face hub: `owner/repo/path/file.gguf` specs and pipeline folders by id,
fetched into huggingface_hub's own cache. Offline, gated or unknown: one line naming the key."""
from __future__ import annotations

import re

from flux_batch.errors import ModelFileError

HUB_ID = re.compile(r"^[\w-][\w.-]*/[\w.-]+$")
_HUB_FILE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)/(?P<file>[^/].*)$")
# what a pipeline folder needs besides the transformer (never the 24 GB transformer weights)
BASE_FILES = [
    "model_index.json", "scheduler/*", "text_encoder/*", "text_encoder_2/*", "tokenizer/*",
    "tokenizer_2/*", "vae/*", "transformer/config.json",
]


def is_hub_file(spec: str, suffix: str) -> bool:
    """Whether `spec` reads as `owner/repo/file<suffix>` (a relative or absolute path does not)."""
    return _HUB_FILE.match(spec) is not None and spec.endswith(suffix) and not spec.startswith((".", "/"))


def fetch_hub_file(key: str, spec: str, suffix: str, hint: str = "") -> str | None:
    """The local copy of an `owner/repo/file<suffix>` spec; None when the spec is not of that form."""
    if not is_hub_file(spec, suffix):
        return None
    match = _HUB_FILE.match(spec)
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(match["repo"], match["file"])
    except Exception as e:  # offline, gated, or no such file
        raise ModelFileError(
            f"{key}={spec}: cannot fetch it from the Hugging Face hub ({type(e).__name__})."
            + (f" {hint}" if hint else "")
        ) from None


def fetch_pipeline_folder(key: str, hub_id: str, hint: str = "") -> str:
    """Configs, text encoders, tokenizers and VAE of a hub pipeline (no pickled weights)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(hub_id, allow_patterns=BASE_FILES,
                                 ignore_patterns=["*.bin", "*.pt", "*.ckpt", "*.pth"])
    except Exception as e:  # offline, gated, or unknown id
        raise ModelFileError(
            f"{key}={hub_id}: cannot fetch it from the Hugging Face hub ({type(e).__name__}). {hint}"
        ) from None

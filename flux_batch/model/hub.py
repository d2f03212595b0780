"""Files from the Hugging Face hub: `owner/repo/path/file.gguf` specs and pipeline folders by id,
fetched into huggingface_hub's own cache. Offline, gated or unknown: one line naming the key."""

from __future__ import annotations

import re

from flux_batch.errors import ModelFileError

HUB_ID = re.compile(r"^[\w-][\w.-]*/[\w.-]+$")
_HUB_FILE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)/(?P<file>[^/].*)$")


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


def fetch_pipeline_folder(key: str, hub_id: str, patterns, hint: str = "") -> str:
    """The files of a hub pipeline that match `patterns` (its family's `pipeline_files`:
    configs, text encoders, tokenizers and VAE, never the transformer's weights), no pickles."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(
            hub_id, allow_patterns=list(patterns), ignore_patterns=["*.bin", "*.pt", "*.ckpt", "*.pth"]
        )
    except Exception as e:  # offline, gated, or unknown id
        raise ModelFileError(
            f"{key}={hub_id}: cannot fetch it from the Hugging Face hub ({type(e).__name__}). {hint}"
        ) from None

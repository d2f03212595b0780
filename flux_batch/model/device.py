"""Which device and compute dtype a run uses, from `runtime.device` and `runtime.dtype`."""

from __future__ import annotations

from flux_batch.errors import ConfigError


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={setting}: CUDA is not available on this machine")
    return setting


def resolve_dtype(setting: str, device: str):
    import torch

    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, setting)

"""The run fingerprint: every setting that changes pixels, and nothing that does not.

It names the default run directory and guards an explicit one: a run directory whose
run.json holds another fingerprint belongs to other settings and is refused.
Computing it reads no weights and imports no torch, so a finished run exits at once.
"""
from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flux_batch.config import cache_options, output_layout, value_of
from flux_batch.errors import RunDirError
from flux_batch.model.lora import identity as lora_identity
from flux_batch.model.files import model_identity
from flux_batch.plan.sizes import area, default_size

VERSIONED_PACKAGES = ("flux-batch", "torch", "diffusers", "transformers", "gguf", "hydra-core")


def pixel_settings(cfg: DictConfig) -> dict[str, Any]:
    """What changes pixels. Not limit, batch_size, offload, device or progress settings."""
    s = cfg.sampler
    image = {"format": value_of(cfg.output.format)}
    if image["format"] != "png":
        image["quality"] = cfg.output.quality
    try:
        width, height = default_size(s)
    except ValueError:  # a bad sampler.aspect: validate() names it; naming the run dir must not fail first
        width, height = str(s.aspect), None
    settings = {
        "model": {"name": cfg.model.name, "variant": cfg.model.variant, **model_identity(cfg.model)},
        "quant": cfg.quant.name,
        "sampler": {
            # the scheduler sits under "name", its key before schedulers were selectable
            "name": s.scheduler, "steps": s.steps, "guidance": float(s.guidance),
            "width": width, "height": height, "max_sequence_length": s.max_sequence_length,
            **_optional_sampler_settings(s),
        },
        "seed": cfg.seed,
        "dtype": value_of(cfg.runtime.dtype),
        "image": image,
    }
    if cfg.lora:
        settings["lora"] = lora_identity(cfg.lora)
    output = output_layout(cfg.output).fingerprint()  # the run directory's shape (store/layouts/)
    if output:  # absent for the default, so earlier runs keep theirs
        settings["output"] = output
    cache = cache_options(cfg.cache).settings()
    if cache is not None:  # absent without caching: runs made before caching keep their fingerprint
        settings["cache"] = cache
    return settings


def _optional_sampler_settings(s: DictConfig) -> dict[str, Any]:
    """Settings that enter the fingerprint only when they differ from the default, so that a
    run made before they existed keeps its fingerprint (and its directory)."""
    found: dict[str, Any] = {}
    if s.shift is not None:
        found["shift"] = float(s.shift)
    if s.true_cfg != 1:
        found["true_cfg"] = float(s.true_cfg)
    if s.negative_prompt.strip():
        found["negative_prompt"] = s.negative_prompt.strip()
    if s.aspect is not None or s.megapixels is not None:  # rows' own aspects fit this area
        found["area"] = area(s)
    return found


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def default_run_dir(cfg: DictConfig) -> str:
    """outputs/<dataset>-<model>-<quant>-<8 hex of the fingerprint>, relative to the cwd."""
    digest = fingerprint(pixel_settings(cfg))[:8]
    dataset = slug(Path(str(cfg.dataset.path)).stem)
    return f"outputs/{dataset}-{slug(cfg.model.name)}-{slug(cfg.quant.name)}-{digest}"


def run_dir_resolver(*, _root_: DictConfig) -> str:
    """`hydra.run.dir`: an explicit output.dir, else the content-addressed default."""
    explicit = _root_.output.dir
    return str(explicit) if explicit else default_run_dir(_root_)


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two settings trees."""
    if isinstance(old, dict) and new is None or old is None and isinstance(new, dict):
        old, new = old or {}, new or {}  # a group of settings absent on one side: its keys
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):  # e.g. lora.0
        return [d for i, pair in enumerate(zip(old, new)) for d in differences(*pair, f"{prefix}{i}.")]
    return [] if old == new else [f"{prefix.rstrip('.')} ({old!r} -> {new!r})"]


def check_same_run(previous: dict[str, Any] | None, settings: dict[str, Any], run_dir: Path) -> None:
    if previous is None or previous.get("fingerprint") == fingerprint(settings):
        return
    changed = differences(previous.get("settings", {}), settings)
    raise RunDirError(
        f"{run_dir} holds a run with other settings: {'; '.join(changed) or 'unknown'}. "
        "Use another output.dir, or leave output.dir unset for one named by the settings"
    )


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_info(cfg: DictConfig, settings: dict[str, Any], previous: dict[str, Any] | None,
             files: dict[str, Any] | None = None) -> dict[str, Any]:
    """run.json: `files` holds the model files' names and SHA-256s (model/files.py)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {
        "fingerprint": fingerprint(settings),
        "settings": settings,
        **({"files": files} if files is not None else {}),
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "versions": versions(),
        "created": (previous or {}).get("created", now),
        "last_started": now,
    }

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

from omegaconf import DictConfig

from flux_batch.config import FluxBatchConfig, as_dict, output_layout
from flux_batch.config.fields import pixel_entries
from flux_batch.config.schema import SECTIONS
from flux_batch.errors import RunDirError

VERSIONED_PACKAGES = ("flux-batch", "torch", "diffusers", "transformers", "gguf", "hydra-core")


def pixel_settings(cfg: FluxBatchConfig | DictConfig) -> dict[str, Any]:
    """What changes pixels: the settings whose fields declare it (config/schema.py), and the
    output layout's. Not limit, batch_size, offload, device or progress settings. `cfg`: the
    typed config, or Hydra's composed one (the run-dir resolvers name a run before it is checked)."""
    settings: dict[str, Any] = {}
    for group, key, value, spread in _entries(cfg):
        target = settings if group == "" else settings.setdefault(group, {})
        if spread:
            target.update(value)
        else:
            target[key] = value
    if output := layout_settings(cfg.output):
        settings["output"] = output
    return settings


def _entries(cfg: Any):
    yield from pixel_entries(cfg, "")
    for key in SECTIONS:
        yield from pixel_entries(getattr(cfg, key), key)


def layout_settings(output: Any) -> dict[str, Any]:
    """The run directory's shape (the layout's own part, store/layouts/); empty for the default,
    so earlier runs keep their fingerprint."""
    return output_layout(output).fingerprint()


def cache_settings(cache: Any) -> dict[str, Any] | None:
    """The step cache's knobs that change pixels, as the manifest records them; None for none."""
    found = {key: value for _, key, value, _ in pixel_entries(cache, "cache")}
    return found or None


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def default_run_dir(cfg: FluxBatchConfig | DictConfig) -> str:
    """outputs/<dataset>-<model>-<quant>-<8 hex of the fingerprint>, relative to the cwd."""
    digest = fingerprint(pixel_settings(cfg))[:8]
    return f"outputs/{dataset_name(cfg.dataset)}-{slug(cfg.model.name)}-{slug(cfg.quant.name)}-{digest}"


def dataset_name(dataset: Any) -> str:
    """A prompt file's (or image folder's) stem; for a template, template-<8 hex of its text>:
    one folder per template, which its slots' values, mode and count share (their items' ids
    tell them apart), so a value added to a slot resumes there."""
    if dataset.template is not None:
        return f"template-{hashlib.sha256(str(dataset.template).encode()).hexdigest()[:8]}"
    return slug(Path(str(dataset.images or dataset.path)).stem)


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


def run_info(
    cfg: FluxBatchConfig,
    settings: dict[str, Any],
    previous: dict[str, Any] | None,
    files: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """run.json: `files` holds the model files' names and SHA-256s (model/files.py)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {
        "fingerprint": fingerprint(settings),
        "settings": settings,
        **({"files": files} if files is not None else {}),
        "config": as_dict(cfg),
        "versions": versions(),
        "created": (previous or {}).get("created", now),
        "last_started": now,
    }

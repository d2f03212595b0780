"""The dataset card: README.md in a run directory (or an export), with the YAML header the
Hugging Face Hub reads (which files make the dataset) and a description from run.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flux_batch.store.atomic import write_atomic
from flux_batch.store.layouts import Layout
from flux_batch.store.names import README, RUN_INFO

SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
)


def size_category(count: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if count < limit), "n>10M")


def card(
    title: str,
    data_files: list[str],
    settings: dict[str, Any],
    count: int,
    layout: str,
    extra: str = "",
    files: dict | None = None,
    inputs: bool = False,
    source: str = "a prompt file",
) -> str:
    """The card's text. `data_files`: the patterns that make the train split; `files`: run.json's
    record of the model files (their SHA-256s); `inputs`: images rendered from input images
    (edits), which `extra` says where to find."""
    paths = "\n".join(f"    - {json.dumps(pattern)}" for pattern in data_files)
    model = settings.get("model", {})
    sampler = settings.get("sampler", {})
    rows = [
        ("model", f"{model.get('name', '?')} ({_family_label(model)} {model.get('variant', '?')})"),
        ("transformer", _file_identity(model) + _sha256(files)),
        ("quant", settings.get("quant", "?")),
        (
            "sampler",
            f"{sampler.get('name', '?')}, {sampler.get('steps', '?')} steps, guidance "
            f"{sampler.get('guidance', '?')}, {sampler.get('width', '?')}x{sampler.get('height', '?')}",
        ),
        ("base seed", settings.get("seed", "?")),
        ("step cache", _cache(settings.get("cache"))),
        (
            "LoRA",
            ", ".join(
                f"{lora.get('name', lora.get('path', '?'))} x{lora.get('scale', 1):g}"
                for lora in settings.get("lora", [])
            )
            or "none",
        ),
        ("images", f"{count:,}"),
        ("layout", layout),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    tasks = ("text-to-image", "image-to-image") if inputs else ("text-to-image",)
    categories = "".join(f"- {task}\n" for task in tasks)
    return f"""---
pretty_name: {json.dumps(title)}
task_categories:
{categories}tags:
- flux-batch
- synthetic
size_categories:
- {size_category(count)}
configs:
- config_name: default
  data_files:
  - split: train
    path:
{paths}
---

# {title}

Synthetic images rendered by flux-batch from {source}, one image per
(prompt id, k), each with the seed derived from its item alone. Every image's record (prompt,
seed, settings, SHA-256 of the file) is in the manifest; `run.json` holds every setting.

| | |
|---|---|
{table}
{extra}"""


def write_run_card(run_dir: Path, count: int, layout: Layout, extension: str) -> None:
    """README.md of a run directory: the files the layout makes the dataset of (imagefolder +
    metadata.jsonl, or the tar shards; the input images of edits), and how to load them."""
    try:
        info = json.loads((run_dir / RUN_INFO).read_text())
    except (OSError, ValueError):  # no run.json: nothing rendered here yet, nothing to describe
        return
    described, how = layout.card_text()
    settings = info.get("settings", {})
    data_files = layout.data_files(extension)
    inputs = layout.has_inputs(run_dir)
    if inputs:
        input_files, where = layout.inputs_text()
        data_files, how = data_files + input_files, how + where
    text = card(
        run_dir.name, data_files, settings, count, described, how, info.get("files"), inputs, source_of(info)
    )
    write_atomic(run_dir / README, text.encode("utf-8"))


def source_of(info: dict) -> str:
    """What a run's prompts came from (run.json's dataset config), as its card says it."""
    dataset = (info.get("config") or {}).get("dataset") or {}
    if dataset.get("template"):
        return "a prompt template"
    if dataset.get("images"):
        return "a folder of input images with one instruction"
    return "a prompt file"


def _file_identity(model: dict, prefix: str = "") -> str:
    """The model's file identity from run.json, flattened: `transformer.name: x.gguf, …`."""
    parts = []
    for key, value in model.items():
        if not prefix and key in ("name", "variant", "family"):
            continue
        if isinstance(value, dict):
            parts.append(_file_identity(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}: {value}")
    return ", ".join(parts) or "?"


def _family_label(model: dict) -> str:
    """The family's label; a run made before families (or of FLUX.1) names none."""
    from flux_batch import families

    name = model.get("family", families.DEFAULT)
    return families.get(name).label if name in families.names() else name


def _sha256(files: dict | None) -> str:
    sha = (((files or {}).get("transformer")) or {}).get("sha256")
    return f", sha256: {sha}" if sha else ""


def _cache(cache: dict | None) -> str:
    if not cache:
        return "none"
    return " ".join([cache["method"], *(f"{k}={v}" for k, v in cache.items() if k != "method")])

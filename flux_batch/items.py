"""Items: one per (row, k). Ids and seeds exactly as DESIGN.md's contract says.

An item's seed depends only on the base seed, its id and k, so its starting noise never
depends on batching, order, limit, resume, sharding or device.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import PromptFileError
from .prompts import Row


@dataclass(frozen=True)
class Settings:
    """The sampler settings of one item; items batch together only when these are equal."""

    width: int
    height: int
    steps: int
    guidance: float


@dataclass(frozen=True)
class Item:
    id: str
    k: int
    prompt: str
    seed: int
    settings: Settings
    file_stem: str  # <id> or <id>_<k>, the image's name without extension
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.k)


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.strip().encode("utf-8")).hexdigest()[:12]


def item_seed(base_seed: int, item_id: str, k: int) -> int:
    digest = hashlib.sha256(f"{base_seed}:{item_id}:{k}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def assign_ids(rows: Iterable[Row], path: str) -> list[str]:
    """Explicit ids as given; others from the prompt's hash, `-2`, `-3`... for repeats."""
    rows = list(rows)
    ids: list[str] = []
    seen_hash: dict[str, int] = {}
    for row in rows:
        if row.id is not None:
            ids.append(row.id)
            continue
        base = prompt_id(row.prompt)
        seen_hash[base] = seen_hash.get(base, 0) + 1
        n = seen_hash[base]
        ids.append(base if n == 1 else f"{base}-{n}")
    first_line: dict[str, int] = {}
    problems = []
    for row, item_id in zip(rows, ids):
        if item_id in first_line:
            problems.append(f"{path}:{row.line}: duplicate id {item_id!r} (first on line {first_line[item_id]})")
        else:
            first_line[item_id] = row.line
    if problems:
        raise PromptFileError(problems)
    return ids


def expand(rows: list[Row], path: str, defaults: Settings, base_seed: int, num_images: int) -> list[Item]:
    """All items of a prompt file, in file order."""
    items: list[Item] = []
    for row, item_id in zip(rows, assign_ids(rows, path)):
        o = row.overrides
        settings = Settings(
            width=o.get("width", defaults.width),
            height=o.get("height", defaults.height),
            steps=o.get("steps", defaults.steps),
            guidance=float(o.get("guidance", defaults.guidance)),
        )
        n = o.get("num_images", num_images)
        for k in range(n):
            seed = o["seed"] + k if "seed" in o else item_seed(base_seed, item_id, k)
            stem = item_id if n == 1 else f"{item_id}_{k}"
            items.append(Item(item_id, k, row.prompt, seed, settings, stem, row.line, row.extra))
    return items

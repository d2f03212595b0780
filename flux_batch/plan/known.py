"""The plan's keys kept in the run directory (`.plan.index`), so that resuming a long run finds
its pending items without parsing the prompt file again.

The keys are trusted only for the same prompt-file bytes (SHA-256; for a Parquet or Arrow
source, file or folder, each data file's name, size, mtime and first and last 64 KiB) and the
same settings that shape or check the plan (dataset fields, sampler defaults, seed,
num_images, limit, layout; a template's text, slot values, mode and count): then the file was
read and checked whole before, with this outcome. The file is parsed again
only when an item is pending. Like the manifest index it is disposable: deleting it is always
safe, and a damaged or stale one is ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Container

from flux_batch.plan import arrow_rows
from flux_batch.plan.items import Item, Plan
from flux_batch.plan.prompts import table_format

PLAN_INDEX = ".plan.index"
VERSION = 1


def plan_digest(prompt_file: Path | None, shape: dict[str, Any], fmt: str = "auto") -> str:
    """What the plan depends on: the prompt file's bytes and the settings in `shape` (a
    template's plan has no prompt file: its shape holds the template and its slots' values).
    A Parquet or Arrow source (`fmt`: dataset.format) counts by its files' identity instead:
    hashing a 10 GB folder at every start would cost a minute."""
    digest = hashlib.sha256(json.dumps({"version": VERSION, **shape}, sort_keys=True, default=str).encode())
    table = None if prompt_file is None else table_format(prompt_file, fmt)
    if table is not None:
        digest.update(arrow_rows.identity(prompt_file, table))
    elif prompt_file is not None:
        with open(prompt_file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


class KnownPlan:
    """A plan whose keys were read from `.plan.index`: as Plan, but the prompt file is parsed
    (by `parse`) only when `items` has something to return."""

    def __init__(self, keys: list[tuple[str, int]], path: str, digest: str, parse: Callable[[], Plan]):
        self._keys = keys
        self.path = path
        self.digest = digest
        self.total = len(keys)
        self._parse = parse
        self._plan: Plan | None = None

    def keys(self) -> list[tuple[str, int]]:
        return self._keys

    def items(self, skip: Container[tuple[str, int]] = ()) -> list[Item]:
        if all(key in skip for key in self._keys):
            return []
        if self._plan is None:
            self._plan = self._parse()
        return self._plan.items(skip)

    def check_free_columns(self, names: tuple[str, ...], why: str) -> None:
        """Checked when the keys were kept: the layout is part of the digest."""


def load(run_dir: Path, digest: str) -> list[tuple[str, int]] | None:
    """The plan's keys kept for `digest`, or None."""
    try:
        index = json.loads((run_dir / PLAN_INDEX).read_bytes())
        if index["digest"] != digest or index["count"] == 0:
            return None
        ids, ks = index["ids"].split("\n"), [int(k) for k in index["ks"].split("\n")]
        return list(zip(ids, ks)) if len(ids) == len(ks) == index["count"] else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def keep(run_dir: Path, plan: Plan | KnownPlan) -> None:
    """Write `.plan.index` for a plan just parsed (a known one is there already); a failure
    only means the next start parses the prompt file."""
    from flux_batch.store.atomic import write_atomic

    if isinstance(plan, KnownPlan) or getattr(plan, "digest", None) is None:
        return
    keys = plan.keys()
    index = {
        "digest": plan.digest,
        "count": len(keys),
        "ids": "\n".join(item_id for item_id, _ in keys),
        "ks": "\n".join(str(k) for _, k in keys),
    }
    try:
        write_atomic(run_dir / PLAN_INDEX, json.dumps(index).encode(), durable=False)
    except OSError:
        pass

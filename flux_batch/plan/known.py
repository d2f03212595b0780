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
from typing import Any, Callable, Container, Iterator

from flux_batch.plan import arrow_rows
from flux_batch.plan.items import Item, Pending, Plan
from flux_batch.plan.prompts import table_format

PLAN_INDEX = ".plan.index"
VERSION = 2


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
    (by `parse`) only when an item is pending."""

    def __init__(self, keys: "KeptKeys", path: str, digest: str, parse: Callable[[], Plan]):
        self._keys = keys
        self.path = path
        self.digest = digest
        self.total = keys.count
        self._parse = parse
        self._plan: Plan | None = None

    def keys(self) -> Iterator[tuple[str, int]]:
        return iter(self._keys)

    def _parsed(self) -> Plan:
        if self._plan is None:
            self._plan = self._parse()
        return self._plan

    def items(self, skip: Container[tuple[str, int]] = ()) -> Iterator[Item]:
        if self._all_in(skip):
            return iter(())
        return self._parsed().items(skip)

    def pending(self, skip: Container[tuple[str, int]] = ()) -> Pending:
        if self._all_in(skip):
            return Pending.of([])
        return self._parsed().pending(skip)

    def _all_in(self, skip: Container[tuple[str, int]]) -> bool:
        return all(map(skip.__contains__, self._keys))

    def check_free_columns(self, names: tuple[str, ...], why: str) -> None:
        """Checked when the keys were kept: the layout is part of the digest."""


class KeptKeys:
    """The keys of `.plan.index` (its ids, then its ks, each block one per line), made as they
    are iterated from the blocks a megabyte at a time: about 14 bytes per item held, not a
    million tuples, and a million keys compared in a fraction of a second."""

    def __init__(self, ids: bytes, ks: bytes, count: int):
        self._ids, self._ks, self.count = ids, ks, count

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return zip(_lines(self._ids), map(int, _lines(self._ks)))


def _lines(block: bytes, chunk: int = 1 << 20) -> Iterator[str]:
    """The lines of `block` (no newline after the last), split a chunk at a time."""
    start = 0
    while start < len(block):
        end = block.find(b"\n", start + chunk)
        end = len(block) if end < 0 else end
        yield from block[start:end].decode().split("\n")
        start = end + 1


def load(run_dir: Path, digest: str) -> KeptKeys | None:
    """The plan's keys kept for `digest`, or None."""
    try:
        data = (run_dir / PLAN_INDEX).read_bytes()
        head, _, blocks = data.partition(b"\n")
        index = json.loads(head)
        count, size = index["count"], index["ids_bytes"]
        ids, ks = blocks[:size], blocks[size + 1 :]
        if index["digest"] != digest or count == 0 or not ids.count(b"\n") == ks.count(b"\n") == count - 1:
            return None
        return KeptKeys(ids, ks, count)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def keep(run_dir: Path, plan: Plan | KnownPlan) -> None:
    """Write `.plan.index` for a plan just parsed (a known one is there already), its keys
    read from a pass of the plan; a failure only means the next start parses the file again."""
    from flux_batch.store.atomic import write_atomic

    if isinstance(plan, KnownPlan) or getattr(plan, "digest", None) is None:
        return
    ids, ks = bytearray(), bytearray()
    for item_id, k in plan.keys():
        ids += f"{item_id}\n".encode()
        ks += f"{k}\n".encode()
    ids, ks = bytes(ids[:-1]), bytes(ks[:-1])
    head = json.dumps({"digest": plan.digest, "count": plan.total, "ids_bytes": len(ids)}).encode()
    try:
        write_atomic(run_dir / PLAN_INDEX, b"\n".join([head, ids, ks]), durable=False)
    except OSError:
        pass

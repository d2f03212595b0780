"""Manifest parts of a scaled-out run, and their merge into metadata.jsonl.

Each worker (a rank, a shard, or a rank of a shard) appends its records to its own
`metadata.<part>.jsonl` and its failures to `errors.<part>.jsonl`, holding `.lock.<part>`. A part
whose lock is free has no live writer: it is merged — appended, whole lines only, to
metadata.jsonl (errors.jsonl), the file replaced atomically — and deleted. Merges happen under
`.lock.merge`, at every start (so a resume with other counts picks up every part) and at the end
of a launch or shard. A kill between the replace and the delete leaves lines twice; the manifest
keeps the later one when it is next loaded.
"""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flux_batch.errors import LockedError
from flux_batch.store.append_log import whole_lines_end
from flux_batch.store.atomic import fsync_dir, write_atomic
from flux_batch.store.lock import RunLock
from flux_batch.store.names import ERRORS, LOCK, MANIFEST

PART = re.compile(r"^(?:metadata|errors)\.((?:shard-\d+-)?rank-\d+|shard-\d+)\.jsonl$")
MERGE_LOCK = f"{LOCK}.merge"


def part_file(name: str, part: str | None) -> str:
    """metadata.jsonl -> metadata.<part>.jsonl (the name itself when there is no part)."""
    return name if part is None else name.replace(".jsonl", f".{part}.jsonl")


def part_lock(part: str) -> str:
    return f"{LOCK}.{part}"


def find_parts(run_dir: Path) -> set[str]:
    if not run_dir.is_dir():
        return set()
    return {m.group(1) for entry in os.scandir(run_dir) if (m := PART.match(entry.name))}


@contextmanager
def merge_lock(run_dir: Path) -> Iterator[None]:
    """Held while the manifest is read, merged into or rewritten: short, so waited for."""
    fd = os.open(run_dir / MERGE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _whole_lines(path: Path) -> bytes:
    """A log's whole lines (a torn tail left by a kill is not a record)."""
    if not path.exists():
        return b""
    with open(path, "rb") as f:
        end = whole_lines_end(f)
        f.seek(0)
        return f.read(end)


def merge_parts(run_dir: Path, own: str | None = None) -> int:
    """Merge every part with no live writer, and this worker's own part, into metadata.jsonl and
    errors.jsonl; delete them. The caller holds the merge lock. Returns the records merged."""
    locks, parts = [], []
    try:
        for part in sorted(find_parts(run_dir)):
            if part != own:
                lock = RunLock(run_dir, part_lock(part))
                try:
                    lock.acquire()
                except LockedError:
                    continue  # a live worker's part
                locks.append(lock)
            parts.append(part)
        if not parts:
            return 0
        merged = 0
        for name in (MANIFEST, ERRORS):
            added = b"".join(_whole_lines(run_dir / part_file(name, part)) for part in parts)
            if added:
                write_atomic(run_dir / name, _whole_lines(run_dir / name) + added)
            merged += added.count(b"\n") if name == MANIFEST else 0
        for part in parts:  # only once their lines are safely in the merged files
            for name in (MANIFEST, ERRORS):
                (run_dir / part_file(name, part)).unlink(missing_ok=True)
        fsync_dir(run_dir)
        return merged
    finally:
        for lock in locks:
            lock.release()

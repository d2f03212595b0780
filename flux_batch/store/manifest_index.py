"""A disposable index of the manifest's keys, so reopening a long run skips re-parsing it.

`.metadata.index` (in the run directory) holds the length and SHA-256 of the manifest prefix
it was made from and, for each line of that prefix, the record's id, k and file_name. It is
trusted only while that prefix of the manifest still hashes the same, so a crash, a hand edit
or a rewrite by another tool merely makes it stale: the manifest is then parsed in full and
the index written again. The manifest stays the only source of truth; deleting the index is
always safe, and a damaged one is ignored.

It also holds the manifest's size, mtime and inode when it covered the whole file: while
those are unchanged, a start trusts it without reading the manifest at all (what makes a
finished run of a million items quick to resume). The ids, ks and file_names are stored as
three newline-joined strings, which parse far faster than a million small lists.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from flux_batch.store.atomic import write_atomic

INDEX = ".metadata.index"
VERSION = 2

Entry = tuple[tuple[str, int], str]  # ((id, k), file_name) of one manifest line


def stat_key(path: Path) -> list[int]:
    """What changes when a file is written, replaced or edited: size, mtime (ns), inode."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def read_current(path: Path, manifest: Path) -> list[Entry] | None:
    """The entries of the whole manifest when the index was written for it as it is now (its
    size, mtime and inode unchanged): nothing of the manifest is read. Otherwise None."""
    index = _load(path)
    try:
        if index is None or index.get("stat") != stat_key(manifest):
            return None
    except OSError:
        return None
    return _entries(index)


def read(path: Path, manifest: bytes | memoryview) -> tuple[list[Entry], int]:
    """The entries of the manifest prefix the index covers and that prefix's length in bytes,
    or ([], 0) when there is no index or it does not match the manifest."""
    index = _load(path)
    if index is None:
        return [], 0
    length = index["bytes"]
    if not isinstance(length, int) or not 0 <= length <= len(manifest):
        return [], 0
    if hashlib.sha256(manifest[:length]).hexdigest() != index["sha256"]:
        return [], 0
    entries = _entries(index)
    return (entries, length) if entries is not None else ([], 0)


def _load(path: Path) -> dict | None:
    try:
        index = json.loads(path.read_bytes())
        return index if isinstance(index, dict) and index.get("version") == VERSION else None
    except (OSError, ValueError):
        return None


def _entries(index: dict) -> list[Entry] | None:
    try:
        count = index["count"]
        if count == 0:
            return []
        ids, files = index["ids"].split("\n"), index["files"].split("\n")
        ks = list(map(int, index["ks"].split("\n")))
        if not len(ids) == len(ks) == len(files) == count:
            return None
        return list(zip(zip(ids, ks), files))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def write(path: Path, digest: str, length: int, entries: list[Entry], manifest: Path | None = None) -> None:
    """Replace the index; a failure (a full disk) only leaves it stale or absent. No fsync:
    after a power loss a torn index fails its own parse or hash check. `manifest`: the file the
    entries cover whole, whose stat the index keeps (see read_current)."""
    ids = [item_id for (item_id, _), _ in entries]
    files = [file_name for _, file_name in entries]
    if any("\n" in text for text in ids) or any("\n" in text for text in files):
        return  # a hand-edited manifest with a newline in a name: no index, parsed each time
    index = {
        "version": VERSION,
        "bytes": length,
        "sha256": digest,
        "count": len(entries),
        "ids": "\n".join(ids),
        "ks": "\n".join(str(k) for (_, k), _ in entries),
        "files": "\n".join(files),
    }
    try:
        if manifest is not None:
            index["stat"] = stat_key(manifest)
        write_atomic(
            path, json.dumps(index, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), durable=False
        )
    except OSError:
        pass

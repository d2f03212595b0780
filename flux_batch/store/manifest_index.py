"""A disposable index of the manifest's keys, so reopening a long run skips re-parsing it.

`.metadata.index` (in the run directory) holds the length and SHA-256 of the manifest prefix
it was made from and, for each line of that prefix, the record's id, k and file_name. It is
trusted only while that prefix of the manifest still hashes the same, so a crash, a hand edit
or a rewrite by another tool merely makes it stale: the manifest is then parsed in full and
the index written again. The manifest stays the only source of truth; deleting the index is
always safe, and a damaged one is ignored.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from flux_batch.store.atomic import write_atomic

INDEX = ".metadata.index"
VERSION = 1

Entry = tuple[tuple[str, int], str]  # ((id, k), file_name) of one manifest line


def read(path: Path, manifest: bytes | memoryview) -> tuple[list[Entry], int]:
    """The entries of the manifest prefix the index covers and that prefix's length in bytes,
    or ([], 0) when there is no index or it does not match the manifest."""
    try:
        index = json.loads(path.read_bytes())
        length, lines = index["bytes"], index["lines"]
        if index["version"] != VERSION or not isinstance(length, int) or not 0 <= length <= len(manifest):
            return [], 0
        if hashlib.sha256(manifest[:length]).hexdigest() != index["sha256"]:
            return [], 0
        return [((item_id, k), file_name) for item_id, k, file_name in lines], length
    except (OSError, ValueError, KeyError, TypeError):
        return [], 0


def write(path: Path, digest: str, length: int, entries: list[Entry]) -> None:
    """Replace the index; a failure (a full disk) only leaves it stale or absent. No fsync:
    after a power loss a torn index fails its own parse or hash check."""
    lines = [[item_id, k, file_name] for (item_id, k), file_name in entries]
    data = json.dumps({"version": VERSION, "bytes": length, "sha256": digest, "lines": lines},
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    try:
        write_atomic(path, data, durable=False)
    except OSError:
        pass

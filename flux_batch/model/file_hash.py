"""SHA-256 of model files, computed once per file: remembered in the process and in
`<cache>/file-hashes.json` ($FLUX_BATCH_CACHE, default ~/.cache/flux-batch) by the file's real
path, size, mtime and inode. Hashing a 12 GB transformer takes tens of seconds; a later run
with the same file reads the hash back. A file changed in any of those is hashed again."""

from __future__ import annotations

import hashlib
import json
import os

from flux_batch.demo.tiny import cache_root

STORE = "file-hashes.json"
_known: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    real = os.path.realpath(path)
    key = (real, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key in _known:
        return _known[key]
    stored = _load()
    entry = stored.get(real)
    if isinstance(entry, list) and len(entry) == 4 and entry[:3] == list(key[1:]):
        _known[key] = entry[3]
        return entry[3]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    _known[key] = digest.hexdigest()
    stored[real] = [stat.st_size, stat.st_mtime_ns, stat.st_ino, _known[key]]
    _save(stored)
    return _known[key]


def _load() -> dict:
    try:
        stored = json.loads((cache_root() / STORE).read_text())
        return stored if isinstance(stored, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(stored: dict) -> None:
    """Best effort: another process may write it at the same time (the last one wins, and
    a lost entry is only hashed again); a read-only cache costs the next run a hash."""
    from flux_batch.store.atomic import write_atomic

    try:
        cache_root().mkdir(parents=True, exist_ok=True)
        write_atomic(cache_root() / STORE, json.dumps(stored, indent=0).encode(), durable=False)
    except OSError:
        pass

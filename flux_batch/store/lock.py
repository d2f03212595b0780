"""Locks on a run directory: flocks that die with their process, so never stale."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from flux_batch.errors import LockedError
from flux_batch.store.names import LOCK


class RunLock:
    """An flock that dies with its process, so no stale locks. `.lock` itself is the run lock:
    held exclusively by the one process (or the rank 0 of the one launch) that has the run
    directory to itself, shared by the slices of a run split into jobs (runtime.shard; the
    message still calls them shards, as users know them). A worker's part lock
    (`.lock.<part>`) is exclusive: one writer per manifest part."""

    def __init__(self, run_dir: Path, name: str = LOCK):
        self.path = run_dir / name
        self._fd: int | None = None

    def acquire(self, shared: bool = False) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise LockedError(
                f"{self.path.parent} is in use by another flux-batch process "
                f"(lock file {self.path}, held by {_holder(holder, self.path)}); wait for it or stop it"
            ) from None
        if not shared:  # shared holders are the slices; each names itself in its part lock
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _holder(pid: str, path: Path) -> str:
    if pid:
        return f"pid {pid}"
    return f"the shards of a sharded run (their pids are in {path.name}.shard-*)"

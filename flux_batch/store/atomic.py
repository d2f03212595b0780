"""Whole-file writes that a crash cannot tear: temp file, fsync, rename, fsync the folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from flux_batch import faults

TMP_SUFFIX = ".tmp"


HOST = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, fault_point: str = "", durable: bool = True) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one. `durable`:
    fsync the file and its folder, so the new file survives a power loss too (a file that can
    check itself, like the manifest index, may skip that cost)."""
    # host and pid: processes of several nodes may share the run directory
    tmp = path.with_name(f".{path.name}.{HOST}.{os.getpid()}{TMP_SUFFIX}")
    try:
        # O_NOFOLLOW: a planted symlink at the temp name cannot redirect the write
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as f:
            faults.write(f, data, fault_point)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)

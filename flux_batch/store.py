"""The run directory: lock, run.json, manifest, errors log and atomic image writes.

Crash safety rests on one order: an image is written to a temp file, fsynced and renamed into
place; only then is its manifest line appended, flushed and fsynced. So at any kill point an
item is either done (line + file) or not (no line; maybe an orphan file, replaced next run).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from . import faults, manifest_index
from .errors import LockedError, RunDirError

MANIFEST = "metadata.jsonl"
ERRORS = "errors.jsonl"
RUN_INFO = "run.json"
IMAGES = "images"
LOCK = ".lock"
TMP_SUFFIX = ".tmp"
HOST = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, fault_point: str = "") -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    # host and pid: processes of several nodes may share the run directory
    tmp = path.with_name(f".{path.name}.{HOST}.{os.getpid()}{TMP_SUFFIX}")
    try:
        # O_NOFOLLOW: a planted symlink at the temp name cannot redirect the write
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as f:
            faults.write(f, data, fault_point)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class RunLock:
    """An flock that dies with its process, so no stale locks. `.lock` itself is the run lock:
    held exclusively by the one process (or the rank 0 of the one launch) that has the run
    directory to itself, shared by the shards of a sharded run. A worker's part lock
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
        if not shared:  # shared holders are the shards; each names itself in its part lock
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


def whole_lines_end(f) -> int:
    """Offset just past the last newline of an open binary file: where a torn tail starts."""
    pos = f.seek(0, os.SEEK_END)
    while pos > 0:
        step = min(pos, 1 << 16)
        f.seek(pos - step)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            return pos - step + newline + 1
        pos -= step
    return 0


class AppendLog:
    """A JSONL file that grows one fsynced line at a time, and only by whole lines: a torn
    tail left by a crash is cut off when it is opened, and a line whose write fails (a full
    disk) is cut back off, so the next line never glues onto a partial one."""

    def __init__(self, path: Path, fault_point: str = ""):
        self.path = path
        self.fault_point = fault_point
        self._file = None
        self._end = 0  # offset just past the last whole line

    def append(self, record: dict[str, Any]) -> bytes:
        """Append one record; the line written, as bytes."""
        if self._file is None:
            self._open()
        line = json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
        try:
            if faults.write(self._file, line, self.fault_point) != len(line):
                raise OSError(errno.EIO, f"short write to {self.path}")
            os.fsync(self._file.fileno())
        except BaseException:  # an OSError, or a second Ctrl-C mid-write
            self._cut_back()
            raise
        self._end += len(line)
        return line

    def _cut_back(self) -> None:
        try:
            os.ftruncate(self._file.fileno(), self._end)
        except OSError:  # then the next append reopens the file, which cuts the partial line
            self.close()

    def _open(self) -> None:
        self._file = open(self.path, "ab", buffering=0)  # unbuffered: nothing left to flush later
        with open(self.path, "rb") as f:
            self._end = whole_lines_end(f)
        if self._end != os.fstat(self._file.fileno()).st_size:
            os.ftruncate(self._file.fileno(), self._end)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Manifest:
    """metadata.jsonl: one record per finished image, appended with fsync. What is done is
    kept as {(id, k): file_name}; the records themselves stay in the file."""

    def __init__(self, run_dir: Path, append_to: str = MANIFEST):
        self.run_dir = run_dir
        self.path = run_dir / MANIFEST
        self.index_path = run_dir / manifest_index.INDEX
        self.files: dict[tuple[str, int], str] = {}
        # a worker of a scaled-out run appends to its own part, merged into MANIFEST later
        self._log = AppendLog(run_dir / append_to, fault_point="mid_append")
        self._own_manifest = append_to == MANIFEST
        # the manifest's bytes as this process knows them: line entries, hash and length
        self._lines: list[manifest_index.Entry] = []
        self._hash = hashlib.sha256()
        self._length = 0
        self._index_stale = False

    def load(self, present: set[str] | None = None) -> None:
        """Read the manifest, cutting off a torn last line and dropping records whose image
        is gone (so the item renders again without a duplicate line). `present`: the
        file_names of the images there, when the caller has just listed them."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # bytes after the last newline: a torn append
        whole = memoryview(data)[:end]
        entries, covered = manifest_index.read(self.index_path, whole)
        parsed, blank = self._parse(whole[covered:], first_line=len(entries) + 1)
        entries += parsed
        present = self._present_files() if present is None else present
        kept = dict(entries)
        if len(kept) != len(entries) or not present.issuperset(kept.values()):
            kept = {}
            for key, file_name in entries:
                if file_name in present:
                    kept.pop(key, None)  # the later line wins
                    kept[key] = file_name
        self.files = kept
        clean = not blank and end == len(data) and len(kept) == len(entries)
        data = bytes(whole) if clean else self._rewrite(bytes(whole), present)
        self._lines = entries if clean else list(kept.items())
        self._hash, self._length = hashlib.sha256(data), len(data)
        self._index_stale = not clean or covered < end

    def _parse(self, data: memoryview, first_line: int) -> tuple[list, bool]:
        """((id, k), file_name) of each line of `data` (whole lines), and whether one was blank."""
        try:  # one decode, then str lines: a third faster than bytes lines
            lines = str(data, "utf-8").split("\n")
        except UnicodeDecodeError:  # each line on its own, to name the bad one
            lines = bytes(data).split(b"\n")
        entries, blank = [], False
        for number, line in enumerate(lines[:-1], start=first_line):
            if not line.strip():
                blank = True
                continue
            try:
                record = json.loads(line)
                entries.append(((record["id"], record["k"]), record["file_name"]))
            except (ValueError, KeyError, TypeError):
                raise RunDirError(
                    f"{self.path}:{number}: malformed manifest line; fix or remove it by hand "
                    "(flux-batch only repairs a torn last line)"
                ) from None
        return entries, blank

    def _rewrite(self, data: bytes, present: set[str]) -> bytes:
        """The manifest less blank lines, lines whose image is gone and all but the last line
        of a key, written atomically (every line was parsed once already)."""
        kept: dict[tuple[str, int], bytes] = {}
        for line in data.split(b"\n")[:-1]:
            if line.strip():
                record = json.loads(line)
                if record["file_name"] in present:
                    key = (record["id"], record["k"])
                    kept.pop(key, None)
                    kept[key] = line
        content = b"".join(line + b"\n" for line in kept.values())
        write_atomic(self.path, content)
        return content

    def _present_files(self) -> set[str]:
        images = self.run_dir / IMAGES
        if not images.is_dir():
            return set()
        return {f"{IMAGES}/{name}" for name in os.listdir(images)}

    def done(self) -> set[tuple[str, int]]:
        return set(self.files)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.files

    def append(self, record: dict[str, Any]) -> None:
        line = self._log.append(record)
        key = (record["id"], record["k"])
        self.files.pop(key, None)  # a key written again moves to the end, as in the file
        self.files[key] = record["file_name"]
        if not self._own_manifest:  # a part's lines reach the manifest (and index) by merging
            return
        self._lines.append((key, record["file_name"]))
        self._hash.update(line)
        self._length += len(line)
        self._index_stale = True

    def close(self) -> None:
        """Close the log and bring the index up to date, so the next start reads the keys
        instead of every JSON line."""
        self._log.close()
        if self._index_stale:
            manifest_index.write(self.index_path, self._hash.hexdigest(), self._length, self._lines)
            self._index_stale = False

class RunStore:
    """Owns one run directory (or, in a scaled-out run, one worker's part of it) for a run."""

    def __init__(self, run_dir: str | os.PathLike, part: str | None = None):
        from .parts import part_file, part_lock

        self.dir = Path(run_dir)
        self.images = self.dir / IMAGES
        self.part = part
        self.lock = RunLock(self.dir)
        self.part_lock = RunLock(self.dir, part_lock(part)) if part else None
        self.manifest = Manifest(self.dir, append_to=part_file(MANIFEST, part))
        self.errors = AppendLog(self.dir / part_file(ERRORS, part))

    def open(self, shared: bool = False) -> None:
        """Lock the run (exclusive, or shared by the shards of a sharded run) and this worker's
        part, merge the manifest parts no live worker writes, load the manifest."""
        from .parts import merge_lock, merge_parts

        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.lock.acquire(shared)
            if self.part_lock:
                self.part_lock.acquire()
            # temp files of live shards must stay; one listing of images/ serves both
            present = None if shared else self._remove_temp_files()
            with merge_lock(self.dir):
                if merge_parts(self.dir, own=self.part):
                    present = None  # merged lines may name images listed after
                self.manifest.load(present=present)
                self.prune_errors()
        except OSError as e:
            self.close()
            raise RunDirError(f"cannot use the run directory {self.dir}: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise

    def open_part(self) -> None:
        """A rank other than 0: its leader holds the run lock and read the manifest for it."""
        try:
            self.part_lock.acquire()
        except OSError as e:
            raise RunDirError(f"cannot use the run directory {self.dir}: {e.strerror or e}") from None

    def close_part(self) -> None:
        """Stop appending and free this worker's part for merging; keep the run lock."""
        self.manifest.close()
        self.errors.close()
        if self.part_lock:
            self.part_lock.release()

    def close(self) -> None:
        self.close_part()
        self.lock.release()

    def _remove_temp_files(self) -> set[str]:
        """Delete the temp files a crash left; the images present, as manifest file_names
        (one listing of images/ serves both)."""
        present: set[str] = set()
        for folder in (self.dir, self.images):
            if folder.is_dir():
                for name in os.listdir(folder):
                    if name.startswith(".") and name.endswith(TMP_SUFFIX):
                        os.unlink(folder / name)
                    elif folder is self.images:
                        present.add(f"{IMAGES}/{name}")
        return present

    def read_run_info(self) -> dict[str, Any] | None:
        path = self.dir / RUN_INFO
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise RunDirError(f"{path}: not valid JSON; remove it to start this run afresh") from None

    def write_run_info(self, info: dict[str, Any]) -> None:
        write_atomic(self.dir / RUN_INFO, json.dumps(info, indent=2, sort_keys=True).encode() + b"\n")

    def image_path(self, file_name: str) -> Path:
        """Where an image goes: always directly inside images/, whatever the name says."""
        path = (self.dir / file_name).resolve()
        # ids are validated when the prompt file is read; this is the last guard
        if path.parent != self.images.resolve() or self.images.is_symlink():
            raise RunDirError(f"refusing to write outside {self.images}: {file_name!r}")
        return path

    def save_image(self, file_name: str, data: bytes) -> None:
        self.images.mkdir(exist_ok=True)
        write_atomic(self.image_path(file_name), data, fault_point="mid_image_write")

    def record_error(self, record: dict[str, Any]) -> None:
        self.errors.append(record)

    def prune_errors(self) -> None:
        """Keep errors.jsonl to the items that failed and are still not done."""
        path = self.dir / ERRORS
        if not path.exists():
            return
        self.errors.close()
        lines = path.read_bytes().split(b"\n")
        kept = [line for line in lines[:-1] if self._still_failed(line)]
        if len(kept) != len(lines) - 1 or lines[-1]:
            write_atomic(path, b"".join(line + b"\n" for line in kept))

    def _still_failed(self, line: bytes) -> bool:
        try:
            record = json.loads(line)
            return (record["id"], record["k"]) not in self.manifest
        except (ValueError, KeyError, TypeError):
            return False  # a torn or damaged line of a log: dropped

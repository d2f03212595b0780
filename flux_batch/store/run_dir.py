"""The run directory: one object that opens it (locks, merged parts, manifest) and writes to it.

Crash safety rests on one order: an image is written to a temp file, fsynced and renamed into
place; only then is its manifest line appended, flushed and fsynced. So at any kill point an
item is either done (line + file) or not (no line; maybe an orphan file, replaced next run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flux_batch.errors import RunDirError, cannot_use, write_failed
from flux_batch.store.append_log import AppendLog
from flux_batch.store.atomic import TMP_SUFFIX, write_atomic
from flux_batch.store.layouts import Layout, files_on_disk
from flux_batch.store.layouts.flat import FLAT
from flux_batch.store.layouts.sharded import is_image_folder
from flux_batch.store.lock import RunLock
from flux_batch.store.manifest import Manifest
from flux_batch.store.names import ERRORS, IMAGES, MANIFEST, RUN_INFO
from flux_batch.store.parts import merge_lock, merge_parts, part_file, part_lock


class RunStore:
    """Owns one run directory (or, in a scaled-out run, one worker's part of it) for a run."""

    def __init__(self, run_dir: str | os.PathLike, part: str | None = None, layout: Layout = FLAT):
        self.dir = Path(run_dir)
        self.images = self.dir / IMAGES
        self.part = part
        self.lock = RunLock(self.dir)
        self.part_lock = RunLock(self.dir, part_lock(part)) if part else None
        self.manifest = Manifest(self.dir, append_to=part_file(MANIFEST, part))
        self.errors = AppendLog(self.dir / part_file(ERRORS, part))
        self.output = layout.open(self)  # this process's writer of the layout's files
        self.recovered = 0  # images a kill left unlisted, recovered at the start
        self.shared = False

    def open(self, shared: bool = False) -> None:
        """Lock the run (exclusive, or shared by the slices of a run split into jobs) and this worker's
        part, merge the manifest parts no live worker writes, load the manifest."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.lock.acquire(shared)
            if self.part_lock:
                self.part_lock.acquire()
            # temp files of live slices must stay; one listing of each folder serves both
            present = None if shared else self._remove_temp_files()
            self.merge_parts(present)
            self.shared = shared
        except OSError as e:
            self.close()
            raise cannot_use(self.dir, e) from None
        except BaseException:
            self.close()
            raise

    def merge_parts(self, present: set[str] | None = None, reload: bool = True) -> None:
        """The one merge sequence, under the merge lock: merge every manifest part no live worker
        writes (and this worker's own) into the run's files, then read the manifest and drop
        retried items from the errors log. `reload=False`: only when there is an errors log to
        prune (the end of a launch, whose leader needs no manifest afterwards)."""
        with merge_lock(self.dir):
            if merge_parts(self.dir, own=self.part):
                present = None  # merged lines may name images listed after
            if reload or (self.dir / ERRORS).exists():
                self.manifest.load(present=present)
                self.prune_errors()

    def repair(self) -> None:
        """Finish what a kill left and unlist what changed since (the layout's repair): after
        the run is known to be the same, before its pending items are found."""
        try:
            self.recovered = self.output.repair(self._repairs(self.shared))
        except OSError as e:
            raise cannot_use(self.dir, e) from None

    def _repairs(self, shared: bool):
        """Whose leftovers (unfinished tar shards) this process may finish: anyone's when it
        holds the run alone; in a run split into slices, its own slice's (another slice's job may
        be restarting now, and must not render items this one took over)."""
        if not shared:
            return lambda owner: True
        own = (self.part or "").split("-rank-")[0]
        return lambda owner: owner is not None and (owner == own or owner.startswith(f"{own}-rank-"))

    def open_part(self) -> None:
        """A rank other than 0: its leader holds the run lock and read the manifest for it."""
        try:
            self.part_lock.acquire()
        except OSError as e:
            raise cannot_use(self.dir, e) from None

    def close_part(self) -> None:
        """Stop appending and free this worker's part for merging; keep the run lock."""
        self.output.abandon()  # a tar still open here is left for the next start to recover
        self.manifest.close()
        self.errors.close()
        if self.part_lock:
            self.part_lock.release()

    def close(self) -> None:
        self.close_part()
        self.lock.release()

    def _remove_temp_files(self) -> set[str]:
        """Delete the temp files a crash left; the images present, as manifest file_names
        (one listing of each folder serves both)."""
        for name in os.listdir(self.dir):
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                os.unlink(self.dir / name)
        return files_on_disk(self.dir, remove_temp=True)

    def read_run_info(self) -> dict[str, Any] | None:
        path = self.dir / RUN_INFO
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise RunDirError(f"{path}: not valid JSON; remove it to start this run afresh") from None

    def write_run_info(self, info: dict[str, Any]) -> None:
        try:
            write_atomic(self.dir / RUN_INFO, json.dumps(info, indent=2, sort_keys=True).encode() + b"\n")
        except OSError as e:
            raise write_failed(self.dir, e) from None

    def image_path(self, file_name: str) -> Path:
        """Where an image (or its caption) goes: directly inside images/ or one of its
        folders (layout=sharded), whatever the name says."""
        path = (self.dir / file_name).resolve()
        images = self.images.resolve()
        # ids are validated when the prompt file is read; this is the last guard
        inside = path.parent == images or (path.parent.parent == images and is_image_folder(path.parent.name))
        if not inside or self.images.is_symlink() or path.parent.is_symlink():
            raise RunDirError(f"refusing to write outside {self.images}: {file_name!r}")
        return path

    def save_image(self, file_name: str, data: bytes) -> None:
        path = self.image_path(file_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, fault_point="mid_image_write")

    def save_caption(self, file_name: str, text: str) -> None:
        """The prompt as `<stem>.txt` beside its image (kohya-style caption files)."""
        write_atomic(self.image_path(file_name), text.encode("utf-8"))

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

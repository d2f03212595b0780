"""metadata.jsonl: the one reader and writer of the manifest.

A record is one line of JSON, appended with fsync after its image is in place (see writer.py).
`read_records` is how every other tool reads a manifest: whole lines only, so a torn last line
left by a kill (or a run still appending) is not a record, and a damaged line elsewhere names
its line number.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from flux_batch.errors import RunDirError
from flux_batch.store import manifest_index
from flux_batch.store.append_log import AppendLog
from flux_batch.store.atomic import write_atomic
from flux_batch.store.layouts import files_on_disk
from flux_batch.store.names import MANIFEST, SHARDS, container

SHARDS_PREFIX = f"{SHARDS}/"


def parse_line(path: Path, number: int, line: str | bytes) -> dict[str, Any]:
    """One whole manifest line as its record, or RunDirError naming the file and line."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if isinstance(record, dict) and {"id", "k", "file_name"} <= record.keys():
        return record
    raise RunDirError(
        f"{path}:{number}: malformed manifest line; fix or remove it by hand "
        "(flux-batch only repairs a torn last line)"
    )


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of a run's manifest, in file order: whole lines only (a torn last line is a
    run still appending, or killed mid-line), blank lines skipped. Records are as written: one
    whose image is gone, or a key written twice, is the caller's to judge."""
    path = run_dir / MANIFEST
    data = path.read_bytes()
    lines = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]
    return [parse_line(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]


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
        present = self._present_files() if present is None else present
        current = manifest_index.read_current(self.index_path, self.path)
        if current is not None and self._trust(current, present):
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # bytes after the last newline: a torn append
        whole = memoryview(data)[:end]
        entries, covered = manifest_index.read(self.index_path, whole)
        parsed, blank = self._parse(whole[covered:], first_line=len(entries) + 1)
        entries += parsed
        kept = dict(entries)
        if len(kept) != len(entries) or not self._all_present(kept, present):
            kept = {}
            for key, file_name in entries:
                if container(file_name) in present:
                    kept.pop(key, None)  # the later line wins
                    kept[key] = file_name
        self.files = kept
        clean = not blank and end == len(data) and len(kept) == len(entries)
        data = bytes(whole) if clean else self._rewrite(bytes(whole), present)
        self._lines = entries if clean else list(kept.items())
        self._hash, self._length = hashlib.sha256(data), len(data)
        self._index_stale = True  # the index did not describe this manifest: written at close

    def _trust(self, entries: list[manifest_index.Entry], present: set[str]) -> bool:
        """Take the index's entries as the manifest (unchanged since the index was written)
        when every key is there once and every image is present; else False."""
        kept = dict(entries)
        if len(kept) != len(entries) or not self._all_present(kept, present):
            return False
        self.files, self._lines = kept, entries
        self._hash = None  # the manifest was not read: hashed again only if appended to
        self._length = os.path.getsize(self.path)
        self._index_stale = False
        return True

    def _all_present(self, kept: dict, present: set[str]) -> bool:
        # a tar shard's samples are present when the shard is (a complete file, never changed)
        names = map(container, kept.values()) if self._has_tars(present) else kept.values()
        return present.issuperset(names)

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
            record = parse_line(self.path, number, line)
            entries.append(((record["id"], record["k"]), record["file_name"]))
        return entries, blank

    def _rewrite(self, data: bytes, present: set[str]) -> bytes:
        """The manifest less blank lines, lines whose image is gone and all but the last line
        of a key, written atomically (every line was parsed once already)."""
        kept: dict[tuple[str, int], bytes] = {}
        for line in data.split(b"\n")[:-1]:
            if line.strip():
                record = json.loads(line)
                if container(record["file_name"]) in present:
                    key = (record["id"], record["k"])
                    kept.pop(key, None)
                    kept[key] = line
        content = b"".join(line + b"\n" for line in kept.values())
        write_atomic(self.path, content)
        return content

    def _present_files(self) -> set[str]:
        return files_on_disk(self.run_dir)

    def _has_tars(self, present: set[str]) -> bool:
        # asked of shards/ rather than of `present`: a flat run's million image names
        try:
            names = os.listdir(self.run_dir / SHARDS)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return any(f"{SHARDS_PREFIX}{name}" in present for name in names)

    def forget(self, keys: set[tuple[str, int]], tar: str) -> None:
        """Drop the records of `keys` stored in `tar` (samples found damaged there) from the
        manifest, atomically, then read it again: they are pending, and no reader meets a record
        whose sample is gone. The caller holds the merge lock."""
        data = self.path.read_bytes()
        lines = data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]
        needle = f"{tar}/".encode()  # only lines naming the tar are parsed
        kept = [line for line in lines if needle not in line or not self._names(line, keys, tar)]
        write_atomic(self.path, b"".join(line + b"\n" for line in kept))
        self.index_path.unlink(missing_ok=True)
        self.load()

    @staticmethod
    def _names(line: bytes, keys: set[tuple[str, int]], tar: str) -> bool:
        record = json.loads(line)
        return (record["id"], record["k"]) in keys and container(record["file_name"]) == tar

    def done(self) -> set[tuple[str, int]]:
        return set(self.files)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.files

    def append(self, record: dict[str, Any]) -> None:
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> None:
        """Records in one fsynced write: a tar shard's samples, listed together."""
        lines = self._log.append_many(records)
        for record in records:
            key = (record["id"], record["k"])
            self.files.pop(key, None)  # a key written again moves to the end, as in the file
            self.files[key] = record["file_name"]
            if self._own_manifest:  # a part's lines reach the manifest (and index) by merging
                self._lines.append((key, record["file_name"]))
        if self._own_manifest:
            if self._hash is not None:
                self._hash.update(lines)
            self._length += len(lines)
            self._index_stale = True

    def close(self) -> None:
        """Close the log and bring the index up to date, so the next start reads the keys
        instead of every JSON line."""
        self._log.close()
        if self._index_stale:
            digest = self._digest()
            whole = digest is not None and os.path.getsize(self.path) == self._length
            manifest_index.write(
                self.index_path, digest, self._length, self._lines, manifest=self.path if whole else None
            )
            self._index_stale = False

    def _digest(self) -> str | None:
        """The manifest's SHA-256 as this process wrote it; read back from disk when the start
        trusted the index without reading the manifest."""
        if self._hash is not None:
            return self._hash.hexdigest()
        digest = hashlib.sha256()
        try:
            with open(self.path, "rb") as f:
                digest.update(f.read(self._length))
        except OSError:
            return None
        return digest.hexdigest()

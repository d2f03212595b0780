"""Tar shards written by the run itself: `output.layout=webdataset`.

Each process writes its own shards, named after its manifest part: `shards/000000.tar`, … for a
process alone, `shards/rank-1-000000.tar`, `shards/shard-2-000000.tar`, … for the workers of a
scale-out run; the run lock or the part's lock makes a process the only writer of its names. A
shard fills under a temporary name (`shards/.000007.tar.partial`, flock-ed by its writer). With
`shard_size` samples, at the end of the run or on a stop request it is closed (end-of-archive
blocks), fsynced and renamed into place; then its samples are listed in the manifest (one
fsynced append), then its Parquet index `index/000007.parquet` is written. So, as in the other
layouts, a listed item is always in a complete file.

A sample is three members, in this order: `<key>.<png|webp|jpg>` (the image as encoded),
`<key>.json` (its manifest record) and `<key>.txt` (its prompt); key: layout.sample_key.

What a kill leaves, and what the next start does with it (`repair`):
- a temporary tar whose writer is dead: its whole samples (all three members there, the image
  matching the record's sha256) that are not done yet are copied into a new shard, which is
  closed and listed at once; only a torn last sample is rendered again. Re-rendering up to a
  shard's worth of images would cost hours on a GPU; copying them costs seconds.
- a shard renamed but not wholly listed: only the newest shard of each writer can be one (a
  writer lists a shard before it starts the next); its unlisted samples are listed.
- a shard without its index, or an index without its shard: the index is written or removed.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from flux_batch import faults
from flux_batch.faults import crash_point
from flux_batch.store.atomic import fsync_dir
from flux_batch.store.layout import INDEX, SHARDS, container, parse_tar_name, tar_name
from flux_batch.store.sample_index import row, write_index

if TYPE_CHECKING:
    from flux_batch.store.manifest import Manifest

log = logging.getLogger("flux_batch")

PARTIAL = ".partial"  # shards/.000007.tar.partial: a shard being written
IMAGE_EXTENSIONS = ("png", "webp", "jpg")
BLOCK = 512


@dataclass(frozen=True)
class Sample:
    key: str
    extension: str  # png, webp or jpg
    image: bytes  # as encoded
    record: dict  # the manifest record (file_name, shard and key are set where it is stored)
    prompt: str


def placed(record: dict, tar: str, member: str) -> dict:
    """The record of a sample stored as `member` of `tar`: file_name says where (the tar's path
    then the member's name), shard and key follow it."""
    rest = {k: v for k, v in record.items() if k not in ("file_name", "shard", "key")}
    return {"file_name": f"{tar}/{member}", "shard": tar, "key": member.split(".", 1)[0], **rest}


def member_bytes(name: str, data: bytes) -> bytes:
    """One tar member as written: a USTAR header, the data, padding to a 512-byte block. No
    clock, owner or mode from the machine: the same sample, the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict") + data + b"\0" * (-len(data) % BLOCK)


def sample_bytes(sample: Sample, record: dict) -> bytes:
    record_json = json.dumps(record, ensure_ascii=False).encode("utf-8")
    return (member_bytes(f"{sample.key}.{sample.extension}", sample.image)
            + member_bytes(f"{sample.key}.json", record_json)
            + member_bytes(f"{sample.key}.txt", sample.prompt.encode("utf-8")))


class _OpenTar:
    """One shard being written under its temporary name."""

    def __init__(self, run_dir: Path, name: str):
        self.name = name  # shards/000007.tar
        self.path = run_dir / name
        self.temp = temp_path(self.path)
        # O_EXCL: a name is never taken over; the lock tells a later start this writer is alive
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        self.file = open(fd, "wb")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.records: list[dict] = []
        self.keys: set[tuple[str, int]] = set()

    def add(self, sample: Sample) -> None:
        record = placed(sample.record, self.name, f"{sample.key}.{sample.extension}")
        faults.write(self.file, sample_bytes(sample, record), "mid_tar_write")
        self.records.append(record)
        self.keys.add((record["id"], record["k"]))

    def seal(self) -> None:
        """End-of-archive blocks, fsync, rename into place (never over a file), fsync the folder."""
        self.file.write(b"\0" * (2 * BLOCK))
        self.file.flush()
        os.fsync(self.file.fileno())
        crash_point("shard_sealed")
        if self.path.exists():  # a writer owns its names: this is a bug, not a race
            raise FileExistsError(errno.EEXIST, "tar shard already exists", str(self.path))
        os.rename(self.temp, self.path)
        self.file.close()
        fsync_dir(self.path.parent)

    def abandon(self) -> None:
        """Stop writing; the temporary file stays, for the next start to recover."""
        self.file.close()


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL}")


class TarShards:
    """This process's tar shards: one open at a time, filled in the order samples come."""

    def __init__(self, run_dir: Path, owner: str | None, shard_size: int, manifest: Manifest):
        self.run_dir = run_dir
        self.folder = run_dir / SHARDS
        self.owner = owner  # the manifest part, None for a process alone
        self.shard_size = shard_size
        self.manifest = manifest
        self.current: _OpenTar | None = None

    def add(self, sample: Sample) -> None:
        """One sample into the open shard (a new one when none is); a full shard is closed,
        renamed and listed."""
        if self.current is None:
            self.current = _OpenTar(self.run_dir, tar_name(self.owner, self._next_number()))
        self.current.add(sample)
        crash_point("sample_added")
        if len(self.current.records) >= self.shard_size:
            self.close_shard()

    def close_shard(self) -> None:
        """Close the open shard, if any: renamed into place, then listed, then indexed."""
        shard, self.current = self.current, None
        if shard is None:
            return
        try:
            shard.seal()
        except BaseException:
            shard.abandon()
            raise
        crash_point("shard_renamed")
        self._list(shard.name, shard.records)

    def abandon(self) -> None:
        """After a failure: leave the open shard's samples in its temporary file."""
        if self.current is not None:
            self.current.abandon()
            self.current = None

    def _list(self, name: str, records: list[dict], index: list[dict] | None = None) -> None:
        """List `records` of the shard `name`, then write its index (of `index`, the shard's
        every record, when only some are listed now)."""
        self.manifest.append_many(records)
        crash_point("shard_listed")
        self._write_index(name, records if index is None else index)

    def _write_index(self, name: str, records: list[dict]) -> None:
        (self.run_dir / INDEX).mkdir(exist_ok=True)
        write_index([row(r["key"], name, r) for r in records], index_path(self.run_dir, name))

    def _next_number(self) -> int:
        """One more than the highest number of this writer's shards and temporary files."""
        self.folder.mkdir(exist_ok=True)
        numbers = [parsed[1] for owner, parsed in _scan(self.folder) if owner == self.owner]
        return max(numbers, default=-1) + 1

    # --- after a kill -------------------------------------------------------------------------

    def repair(self, mine: Callable[[str | None], bool]) -> int:
        """Finish what dead writers left (see the module's text), for the writers `mine`
        accepts; the number of samples recovered from temporary files."""
        if not self.folder.is_dir():
            return 0
        shards: dict[str | None, list[int]] = {}
        temps: list[Path] = []
        for owner, (is_temp, number) in _scan(self.folder):
            if mine(owner):
                if is_temp:
                    temps.append(temp_path(self.run_dir / tar_name(owner, number)))
                else:
                    shards.setdefault(owner, []).append(number)
        self._list_newest(tar_name(owner, max(numbers)) for owner, numbers in shards.items())
        self._match_indexes({tar_name(o, n) for o, numbers in shards.items() for n in numbers}, mine)
        return sum(self._recover(temp) for temp in sorted(temps))

    def _list_newest(self, names: Iterator[str]) -> None:
        """List the samples of each writer's newest shard that the manifest lacks."""
        newest = set(names)
        if not newest:
            return
        listed: dict[str, set[str]] = {name: set() for name in newest}
        for file_name in self.manifest.files.values():
            if (tar := container(file_name)) in listed:
                listed[tar].add(file_name)
        for name in sorted(newest):
            with open(self.run_dir / name, "rb") as f:  # headers only: the common case
                images = [f"{name}/{member}" for member, _ in _members(f, data=False)
                          if member.rpartition(".")[2] in IMAGE_EXTENSIONS]
            if listed[name].issuperset(images):
                continue
            records = read_records_of(self.run_dir / name)
            missing = [r for r in records if r["file_name"] not in listed[name]]
            if missing:
                log.warning("%s: listing %d samples a kill left out of the manifest", name, len(missing))
                self._list(name, missing, index=records)

    def _match_indexes(self, shards: set[str], mine: Callable[[str | None], bool]) -> None:
        folder = self.run_dir / INDEX
        indexes = set(os.listdir(folder)) if folder.is_dir() else set()
        for name in sorted(shards):
            if index_path(self.run_dir, name).name not in indexes:
                self._write_index(name, read_records_of(self.run_dir / name))
        wanted = {index_path(self.run_dir, name).name for name in shards}
        for index in sorted(indexes - wanted):  # their shard deleted by hand: its items render again
            parsed = parse_tar_name(index.removesuffix(".parquet") + ".tar") if index.endswith(".parquet") else None
            if parsed is not None and mine(parsed[0]):
                os.unlink(folder / index)

    def _recover(self, temp: Path) -> int:
        """Copy a dead writer's whole samples, not done yet, into a shard of this writer's;
        then delete the temporary file. 0 when its writer is alive."""
        try:
            fd = os.open(temp, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return 0
        with open(fd, "rb") as f:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # its writer is alive (a shard of this run on another node)
            recovered = 0
            for sample in whole_samples(f):
                key = (sample.record["id"], sample.record["k"])
                if key not in self.manifest and key not in self.current_keys():
                    self.add(sample)
                    recovered += 1
            self.close_shard()
        os.unlink(temp)  # only now: its samples are in a listed shard
        fsync_dir(temp.parent)
        if recovered:
            log.warning("%s: recovered %d whole samples of a shard a kill left unfinished",
                        temp.name, recovered)
        return recovered

    def current_keys(self) -> set[tuple[str, int]]:
        return self.current.keys if self.current is not None else set()


def index_path(run_dir: Path, tar: str) -> Path:
    """index/000007.parquet for shards/000007.tar."""
    return run_dir / INDEX / (Path(tar).stem + ".parquet")


def _scan(folder: Path) -> Iterator[tuple[str | None, tuple[bool, int]]]:
    """(owner, (is temporary, number)) of every shard and temporary shard file in `folder`."""
    for name in os.listdir(folder):
        temp = name.startswith(".") and name.endswith(PARTIAL)
        parsed = parse_tar_name(name[1:-len(PARTIAL)] if temp else name)
        if parsed is not None:
            yield parsed[0], (temp, parsed[1])


def read_records_of(path: Path) -> list[dict]:
    """The records of a shard's whole samples (its json members)."""
    with open(path, "rb") as f:
        return [s.record for s in whole_samples(f)]


def whole_samples(f) -> Iterator[Sample]:
    """The whole samples of a tar file, complete or torn: each sample's three members there and
    its image matching its record's sha256; reading stops at the end-of-archive or the first
    torn or damaged member."""
    group: dict[str, tuple[str, bytes]] = {}  # extension -> (member name, data), one key's
    key = None
    for name, data in _members(f):
        this_key, _, extension = name.partition(".")
        if this_key != key:
            group, key = {}, this_key
        group[extension] = (name, data)
        if extension == "txt":
            sample = _sample(key, group)
            if sample is not None:
                yield sample
            group, key = {}, None


def _sample(key: str, group: dict[str, tuple[str, bytes]]) -> Sample | None:
    image = next(((ext, data) for ext, (_, data) in group.items() if ext in IMAGE_EXTENSIONS), None)
    if image is None or "json" not in group:
        return None
    try:
        record = json.loads(group["json"][1])
    except ValueError:
        return None
    if not isinstance(record, dict) or hashlib.sha256(image[1]).hexdigest() != record.get("sha256"):
        return None
    return Sample(key, image[0], image[1], record, group["txt"][1].decode("utf-8", "replace"))


def member_offsets(f) -> dict[str, tuple[int, int]]:
    """{member name: (offset of its data, size)} of a tar file, read from its headers."""
    offsets = {}
    for info in _headers(f):
        if info.isreg():
            offsets[info.name] = (f.tell(), info.size)
        f.seek(_padded(info.size), os.SEEK_CUR)
    return offsets


def _members(f, data: bool = True) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of each regular member, stopping quietly where the archive ends or tears;
    `data=False`: the names only, the data skipped over (None)."""
    for info in _headers(f):
        if not data:
            f.seek(_padded(info.size), os.SEEK_CUR)
            content = None
        else:
            content = f.read(_padded(info.size))
            if len(content) < info.size:
                return
            content = content[:info.size]
        if info.isreg():
            yield info.name, content


def _headers(f) -> Iterator[tarfile.TarInfo]:
    """Each member's header, `f` left at the start of its data (the caller reads or skips it
    before asking for the next); stops at the end-of-archive or a torn or damaged header."""
    while True:
        header = f.read(BLOCK)
        if len(header) < BLOCK or header == b"\0" * BLOCK:
            return
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
        except tarfile.HeaderError:
            return
        yield info


def _padded(size: int) -> int:
    return size + (-size % BLOCK)

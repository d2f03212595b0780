"""The WebDataset tar format, written and read by one piece of code: the run's own shards
(webdataset.py) and `flux-batch-export --to webdataset` both write with `TarWriter`.

A sample is three members, in this order: `<key>.<png|webp|jpg>` (the image as encoded),
`<key>.json` (its manifest record) and `<key>.txt` (its prompt); an image rendered from input
images has a copy of each after its image, `<key>.input.<ext>`, `<key>.input_1.<ext>`, … (as
their files hold them, named in the record's `inputs[*].copy`). Members carry no clock, owner or mode
from the machine: the same samples, the same bytes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from flux_batch import faults
from flux_batch.faults import crash_point
from flux_batch.store.atomic import fsync_dir
from flux_batch.store.input_files import COPY

PARTIAL = ".partial"  # shards/.000007.tar.partial: a tar being written
IMAGE_EXTENSIONS = ("png", "webp", "jpg")
BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


@dataclass(frozen=True)
class Sample:
    key: str  # the members' common stem: no dot (WebDataset splits a name at its first one)
    extension: str  # png, webp or jpg
    image: bytes  # as encoded
    record: dict  # the manifest record
    prompt: str
    inputs: tuple[tuple[str, bytes], ...] = ()  # (member name after the key: input.png, bytes)


def member_bytes(name: str, data: bytes) -> bytes:
    """One tar member as written: a USTAR header, the data, padding to a 512-byte block."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict") + data + b"\0" * (-len(data) % BLOCK)


def sample_bytes(sample: Sample, record: dict) -> bytes:
    """The sample's members, `record` as its json."""
    record_json = json.dumps(record, ensure_ascii=False).encode("utf-8")
    return (
        member_bytes(f"{sample.key}.{sample.extension}", sample.image)
        + b"".join(member_bytes(f"{sample.key}.{name}", data) for name, data in sample.inputs)
        + member_bytes(f"{sample.key}.json", record_json)
        + member_bytes(f"{sample.key}.txt", sample.prompt.encode("utf-8"))
    )


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL}")


class TarWriter:
    """One tar file filled under its temporary name (flock-ed while it is written, so a later
    start can tell a live writer from a dead one), then sealed: end-of-archive blocks, fsync,
    renamed into place, the folder fsynced. A reader never sees a tar half-written."""

    def __init__(self, path: Path):
        self.path = path
        self.temp = temp_path(path)
        # O_EXCL: a name is never taken over; the lock tells a later start this writer is alive
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        self.file = open(fd, "wb")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.count = 0

    def add(self, sample: Sample, record: dict) -> None:
        faults.write(self.file, sample_bytes(sample, record), "mid_tar_write")
        self.count += 1

    def seal(self, replace: bool = False) -> None:
        """Complete the tar and give it its name; `replace`: over a damaged one of that name
        (otherwise a file there is a bug: each writer owns its names)."""
        try:
            self.file.write(END_OF_ARCHIVE)
            self.file.flush()
            os.fsync(self.file.fileno())
            crash_point("shard_sealed")
            if not replace and self.path.exists():
                raise FileExistsError(errno.EEXIST, "tar shard already exists", str(self.path))
            os.replace(self.temp, self.path)
        finally:
            self.file.close()
        fsync_dir(self.path.parent)

    def abandon(self) -> None:
        """Stop writing; the temporary file stays (the next start recovers its samples)."""
        self.file.close()


# --- reading --------------------------------------------------------------------------------


def whole_samples(f: BinaryIO) -> Iterator[Sample]:
    """The whole samples of a tar file, complete or torn: each sample's members there and its
    image and inputs matching their record's sha256s; reading stops at the end-of-archive or the first
    torn or damaged header."""
    group: dict[str, tuple[str, bytes]] = {}  # extension -> (member name, data), one key's
    key = None
    for name, data in members(f):
        this_key, _, extension = name.partition(".")
        if this_key != key:
            group, key = {}, this_key
        group[extension] = (name, data)
        if extension == "txt":
            sample = _sample(key, group)
            if sample is not None:
                yield sample
            group, key = {}, None


def read_records_of(path: Path) -> list[dict]:
    """The records of a tar's whole samples (its json members)."""
    with open(path, "rb") as f:
        return [s.record for s in whole_samples(f)]


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
    inputs = _inputs(group, record)
    if inputs is None:
        return None
    return Sample(key, image[0], image[1], record, group["txt"][1].decode("utf-8", "replace"), inputs)


def input_member(file_name: str) -> str:
    """`input.png` of an input's copy `shards/000007.tar/000000123.input.png`."""
    return file_name.rpartition("/")[2].partition(".")[2]


def _inputs(group: dict[str, tuple[str, bytes]], record: dict) -> tuple | None:
    """The input members the record names, each matching its sha256; None when one is
    missing or damaged (the sample is then not whole)."""
    found = []
    for entry in record.get("inputs") or ():
        if not isinstance(entry, dict) or COPY not in entry:
            continue  # a record of a run that kept no copies
        name = input_member(entry[COPY])
        member = group.get(name)
        if member is None or hashlib.sha256(member[1]).hexdigest() != entry.get("sha256"):
            return None
        found.append((name, member[1]))
    return tuple(found)


def member_offsets(f: BinaryIO) -> dict[str, tuple[int, int]]:
    """{member name: (offset of its data, size)} of a tar file, read from its headers."""
    offsets = {}
    for info in _headers(f):
        if info.isreg():
            offsets[info.name] = (f.tell(), info.size)
        f.seek(_padded(info.size), os.SEEK_CUR)
    return offsets


def members(f: BinaryIO, data: bool = True) -> Iterator[tuple[str, bytes | None]]:
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
            content = content[: info.size]
        if info.isreg():
            yield info.name, content


def _headers(f: BinaryIO) -> Iterator[tarfile.TarInfo]:
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

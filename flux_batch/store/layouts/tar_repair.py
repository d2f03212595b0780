"""What a kill or a later change leaves in a webdataset run, and what the next start does with
it, for the writers `mine` accepts:

- a temporary tar whose writer is dead: its whole samples (all their members there, the image
  and each input matching the record's sha256s) that are not done yet are copied into a new
  shard (their inputs' copies named there too), which is sealed and listed at once; only a
  torn last sample is rendered again. Re-rendering up to a shard's worth of images would cost
  hours on a GPU; copying them costs seconds.
- a shard renamed but not wholly listed: only the newest shard of each writer can be one (a
  writer lists a shard before it starts the next); its unlisted samples are listed.
- a shard without its index, or an index without its shard: the index is written or removed.
- a complete shard that changed since it was listed (tar_check.py): it is rewritten with its
  whole samples; the records of the others leave the manifest, so they render again and no
  reader meets a record whose sample is gone.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from flux_batch.store.atomic import fsync_dir
from flux_batch.store.layouts.base import Mine
from flux_batch.store.layouts.tar_check import compare
from flux_batch.store.layouts.tar_names import index_path, parse_tar_name, scan, tar_name
from flux_batch.store.layouts.tars import (
    BLOCK,
    END_OF_ARCHIVE,
    IMAGE_EXTENSIONS,
    TarWriter,
    members,
    read_records_of,
    sample_bytes,
    temp_path,
    whole_samples,
)
from flux_batch.store.names import INDEX, container
from flux_batch.store.parts import merge_lock

if TYPE_CHECKING:
    from flux_batch.store.layouts.webdataset import TarShards

log = logging.getLogger("flux_batch")


def repair(tars: TarShards, mine: Mine) -> int:
    """Finish what dead writers left and rewrite what changed (see the module's text); the
    number of samples recovered from temporary files."""
    if not tars.folder.is_dir():
        return 0
    shards: dict[str | None, list[int]] = {}
    temps: list[Path] = []
    for owner, (is_temp, number) in scan(tars.folder):
        if mine(owner):
            if is_temp:
                temps.append(temp_path(tars.run_dir / tar_name(owner, number)))
            else:
                shards.setdefault(owner, []).append(number)
    names = sorted(tar_name(o, n) for o, numbers in shards.items() for n in numbers)
    _list_newest(tars, (tar_name(owner, max(numbers)) for owner, numbers in shards.items()))
    _match_indexes(tars, set(names), mine)
    recovered = sum(_recover(tars, temp) for temp in sorted(temps))
    changed, unstamped = compare(tars.run_dir, [Path(n).name for n in names], tars.folder)
    if changed or unstamped:
        listed = _listed_by_tar(tars)
        prefix = f"{tars.folder.name}/"
        for name in changed + [n for n in unstamped if not _looks_whole(tars, prefix + n, listed)]:
            _check(tars, prefix + name, listed.get(prefix + name, {}))
    return recovered


def _listed_by_tar(tars: TarShards) -> dict[str, dict[str, tuple[str, int]]]:
    """{tar: {file_name: key}} of the manifest's samples."""
    listed: dict[str, dict[str, tuple[str, int]]] = {}
    for key, file_name in tars.manifest.files.items():
        listed.setdefault(container(file_name), {})[file_name] = key
    return listed


def _list_newest(tars: TarShards, names: Iterator[str]) -> None:
    """List the samples of each writer's newest shard that the manifest lacks."""
    newest = set(names)
    if not newest:
        return
    listed: dict[str, set[str]] = {name: set() for name in newest}
    for file_name in tars.manifest.files.values():
        if (tar := container(file_name)) in listed:
            listed[tar].add(file_name)
    for name in sorted(newest):
        with open(tars.run_dir / name, "rb") as f:  # headers only: the common case
            images = [
                f"{name}/{member}"
                for member, _ in members(f, data=False)
                if member.partition(".")[2] in IMAGE_EXTENSIONS  # `<key>.png`, not its inputs
            ]
        if listed[name].issuperset(images):
            continue
        records = read_records_of(tars.run_dir / name)
        missing = [r for r in records if r["file_name"] not in listed[name]]
        if missing:
            log.warning("%s: listing %d samples a kill left out of the manifest", name, len(missing))
            tars.list_tar(name, missing, index=records)


def _match_indexes(tars: TarShards, shards: set[str], mine: Mine) -> None:
    folder = tars.run_dir / INDEX
    indexes = set(os.listdir(folder)) if folder.is_dir() else set()
    for name in sorted(shards):
        if index_path(tars.run_dir, name).name not in indexes:
            tars.write_index(name, read_records_of(tars.run_dir / name))
    wanted = {index_path(tars.run_dir, name).name for name in shards}
    for index in sorted(indexes - wanted):  # their shard deleted by hand: its items render again
        parsed = (
            parse_tar_name(index.removesuffix(".parquet") + ".tar") if index.endswith(".parquet") else None
        )
        if parsed is not None and mine(parsed[0]):
            os.unlink(folder / index)


def _recover(tars: TarShards, temp: Path) -> int:
    """Copy a dead writer's whole samples, not done yet, into a shard of this writer's; then
    delete the temporary file. 0 when its writer is alive."""
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
            if key not in tars.manifest and key not in tars.current_keys():
                tars.add(sample)
                recovered += 1
        tars.close_shard()
    os.unlink(temp)  # only now: its samples are in a listed shard
    fsync_dir(temp.parent)
    if recovered:
        log.warning("%s: recovered %d whole samples of a shard a kill left unfinished", temp.name, recovered)
    return recovered


def _check(tars: TarShards, name: str, listed: dict[str, tuple[str, int]]) -> None:
    """A tar that matches none of its stamps: read it whole; if it lost samples (or holds
    anything but whole ones), rewrite it with its whole samples and unlist the others."""
    path = tars.run_dir / name
    records, size = [], len(END_OF_ARCHIVE)  # a pass that keeps no image: tars are large
    with open(path, "rb") as f:
        for sample in whole_samples(f):
            records.append(sample.record)
            size += len(sample_bytes(sample, sample.record))
    kept = {record["file_name"] for record in records}
    lost = {key for file_name, key in listed.items() if file_name not in kept}
    if lost or size != os.path.getsize(path):
        writer = TarWriter(path)
        try:
            with open(path, "rb") as f:
                for sample in whole_samples(f):
                    writer.add(sample, sample.record)
            if lost:  # before the tar is replaced: a kill between the two only leaves them unlisted
                log.warning(
                    "%s changed after it was written: %d of its samples are gone or damaged and render again",
                    name,
                    len(lost),
                )
                with merge_lock(tars.run_dir):  # no other worker merges into the manifest meanwhile
                    tars.manifest.forget(lost, name)
        except BaseException:
            writer.abandon()  # its temporary file: recovered (nothing new in it) next start
            raise
        writer.seal(replace=True)
        tars.write_index(name, records)
    tars.stamps.add(path)


def _looks_whole(tars: TarShards, name: str, listed: dict[str, dict]) -> bool:
    """A tar never stamped, by its headers: complete and holding every member listed in it
    (then stamped as it is), or not."""
    path = tars.run_dir / name
    with open(path, "rb") as f:
        found = {f"{name}/{member}" for member, _ in members(f, data=False)}
        complete = f.tell() + BLOCK == os.path.getsize(path)  # stopped at the end-of-archive
    if complete and found.issuperset(listed.get(name, ())):
        tars.stamps.add(path)
        return True
    return False

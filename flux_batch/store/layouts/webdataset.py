"""layout=webdataset: the run writes tar shards itself (tars.py's format: the image, a copy of
each input image it was rendered from, its record and prompt), each with its Parquet index.

Each process writes its own shards, named after its manifest part: `shards/000000.tar`, … for a
process alone, `shards/rank-1-000000.tar`, `shards/shard-2-000000.tar`, … for the workers of a
scale-out run; the run lock or the part's lock makes a process the only writer of its names. A
shard fills under a temporary name (`shards/.000007.tar.partial`, flock-ed by its writer). With
`size` samples, at the end of the run or on a stop request it is sealed (end-of-archive
blocks, fsynced, renamed into place); then its samples are listed in the manifest (one fsynced
append), then its Parquet index `index/000007.parquet` is written, then its stamp (size and
mtime, tar_check.py). So, as in the other layouts, a listed item is always in a complete file.
What a kill or a later change leaves, and how the next start repairs it: tar_repair.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from flux_batch.faults import crash_point
from flux_batch.store.input_files import COPY, input_name
from flux_batch.store.layouts.base import Layout, Mine, Output
from flux_batch.store.layouts.tar_check import Stamps
from flux_batch.store.layouts.tar_names import index_path, placed, sample_key, scan, tar_name
from flux_batch.store.layouts.tar_repair import repair
from flux_batch.store.layouts.tars import Sample, TarWriter, input_member
from flux_batch.store.names import INDEX, MANIFEST, SHARDS
from flux_batch.store.sample_index import row, write_index

if TYPE_CHECKING:
    from flux_batch.store.manifest import Manifest
    from flux_batch.store.run_dir import RunStore


class WebDataset(Layout):
    name = "webdataset"
    default_size = 1_000
    placed_fields = ("shard", "key")

    def problem(self) -> str | None:
        if self.captions:
            return (
                "output.captions=true: output.layout=webdataset stores each prompt as its "
                "sample's .txt already; drop output.captions"
            )
        return None

    def file_name(self, index: int, stem: str, extension: str) -> str:
        """The sample's member name; placed in its shard (`shards/…tar/<member>`) when added."""
        return f"{sample_key(index)}{extension}"

    def input_file_names(self, index: int, inputs: tuple) -> list[str]:
        """The sample's input members, `<key>.input.png`, `<key>.input_1.jpg`, …: placed with it."""
        key = sample_key(index)
        return [f"{key}.{input_name(n)}{image.extension}" for n, image in enumerate(inputs)]

    def data_files(self, extension: str) -> list[str]:
        return [f"{SHARDS}/*.tar"]

    def card_text(self) -> tuple[str, str]:
        return (
            f"{self.name}, {self.size:,} samples per tar",
            "\nEach sample is `<key>.png` (or .webp/.jpg), `<key>.json` (its record) and `<key>.txt` "
            '(its prompt). Load it with `datasets.load_dataset("webdataset", data_files=...)` or '
            "`webdataset.WebDataset(...)`; `index/*.parquet` lists every sample with its record.\n",
        )

    def has_inputs(self, run_dir: Path) -> bool:
        """Whether a record names inputs: the manifest read in blocks, up to the first that does."""
        try:
            with open(run_dir / MANIFEST, "rb") as f:
                tail = b""
                while block := f.read(1 << 20):
                    if INPUTS_MARK in tail + block:
                        return True
                    tail = block[-len(INPUTS_MARK) :]
        except FileNotFoundError:
            pass
        return False

    def inputs_text(self) -> tuple[list[str], str]:
        return [], INPUTS_TEXT

    @staticmethod
    def on_disk(run_dir: Path, remove_temp: bool) -> set[str]:
        """`shards/000007.tar`, … : the complete tar shards (a temporary one is repair's)."""
        try:
            names = os.listdir(run_dir / SHARDS)
        except (FileNotFoundError, NotADirectoryError):
            return set()
        return {f"{SHARDS}/{name}" for name in names if name.endswith(".tar") and not name.startswith(".")}

    def open(self, store: RunStore) -> Output:
        return TarShards(store.dir, store.part, self.size, store.manifest)


INPUTS_MARK = b'"input_file_name": '  # as json.dumps writes the field (record.FIELDS)
INPUTS_TEXT = (
    "\nA sample rendered from input images (an edit) holds a copy of each after its image, "
    "`<key>.input.png` (the first; its own format's extension), `<key>.input_1.png`, …, which "
    "`datasets` loads as image columns; its record's `inputs` names them.\n"
)


class _OpenTar:
    """One shard being written: its tar and the records of its samples, placed."""

    def __init__(self, run_dir: Path, name: str):
        self.name = name  # shards/000007.tar
        self.tar = TarWriter(run_dir / name)
        self.records: list[dict] = []
        self.keys: set[tuple[str, int]] = set()

    def add(self, sample: Sample) -> None:
        record = placed(sample.record, self.name, f"{sample.key}.{sample.extension}")
        self.tar.add(sample, record)
        self.records.append(record)
        self.keys.add((record["id"], record["k"]))


class TarShards(Output):
    """This process's tar shards: one open at a time, filled in the order samples come."""

    def __init__(self, run_dir: Path, owner: str | None, size: int, manifest: Manifest):
        self.run_dir = run_dir
        self.folder = run_dir / SHARDS
        self.owner = owner  # the manifest part, None for a process alone
        self.size = size
        self.manifest = manifest
        self.stamps = Stamps(run_dir, owner)
        self.current: _OpenTar | None = None

    def save(self, record: dict, data: bytes, prompt: str, inputs: tuple = ()) -> Sample:
        """Nothing is written on the pool thread (the inputs are read there): samples enter the
        tar in order, in `list`."""
        key, _, extension = record["file_name"].partition(".")
        members = tuple(
            (input_member(entry[COPY]), image.checked_bytes())
            for entry, image in zip(record.get("inputs", ()), inputs)
        )
        return Sample(key, extension, data, record, prompt, members)

    def list(self, record: dict, saved: Sample) -> None:
        self.add(saved)

    def flush(self) -> None:
        self.close_shard()

    def add(self, sample: Sample) -> None:
        """One sample into the open shard (a new one when none is); a full shard is sealed,
        listed and indexed."""
        if self.current is None:
            self.current = _OpenTar(self.run_dir, tar_name(self.owner, self._next_number()))
        self.current.add(sample)
        crash_point("sample_added")
        if len(self.current.records) >= self.size:
            self.close_shard()

    def close_shard(self) -> None:
        """Close the open shard, if any: renamed into place, then listed, then indexed."""
        shard, self.current = self.current, None
        if shard is None:
            return
        try:
            shard.tar.seal()
        except BaseException:
            shard.tar.abandon()
            raise
        crash_point("shard_renamed")
        self.list_tar(shard.name, shard.records)

    def abandon(self) -> None:
        """After a failure: leave the open shard's samples in its temporary file."""
        if self.current is not None:
            self.current.tar.abandon()
            self.current = None

    def list_tar(self, name: str, records: list[dict], index: list[dict] | None = None) -> None:
        """List `records` of the shard `name`, then write its index (of `index`, the shard's
        every record, when only some are listed now), then stamp it as checked."""
        self.manifest.append_many(records)
        crash_point("shard_listed")
        self.write_index(name, records if index is None else index)
        self.stamps.add(self.run_dir / name)

    def write_index(self, name: str, records: list[dict]) -> None:
        (self.run_dir / INDEX).mkdir(exist_ok=True)
        write_index([row(r["key"], name, r) for r in records], index_path(self.run_dir, name))

    def _next_number(self) -> int:
        """One more than the highest number of this writer's shards and temporary files."""
        self.folder.mkdir(exist_ok=True)
        numbers = [parsed[1] for owner, parsed in scan(self.folder) if owner == self.owner]
        return max(numbers, default=-1) + 1

    def current_keys(self) -> set[tuple[str, int]]:
        return self.current.keys if self.current is not None else set()

    def repair(self, mine: Mine) -> int:
        return repair(self, mine)

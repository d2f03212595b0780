"""The names of the files in a run directory (see docs/run-directory.md)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "metadata.jsonl"  # one record per finished image
ERRORS = "errors.jsonl"  # items that failed and are still not done
RUN_INFO = "run.json"  # the fingerprint and settings of the run
IMAGES = "images"  # the images, each named in its manifest record
LOCK = ".lock"  # the run lock; part locks are .lock.<part>, the merge lock .lock.merge
README = "README.md"  # the dataset card
SHARDS = "shards"  # webdataset: the tar shards
INDEX = "index"  # webdataset: one Parquet index per tar shard

LAYOUTS = ("flat", "sharded", "webdataset")
DEFAULT_SHARD_SIZE = {"sharded": 10_000, "webdataset": 1_000}
_SHARD_FOLDER = re.compile(r"^\d{5,}$")
# shards/000007.tar (a process alone), shards/rank-1-000007.tar, shards/shard-2-rank-1-000007.tar
_TAR = re.compile(r"^(?:((?:shard-\d+-)?rank-\d+|shard-\d+)-)?(\d{6,})\.tar$")


@dataclass(frozen=True)
class Layout:
    """Where a run puts its images: `name` flat, sharded or webdataset; `shard_size` images per
    folder or samples per tar (0 for flat); `captions`: the prompt as <stem>.txt beside each image."""

    name: str = "flat"
    shard_size: int = 0
    captions: bool = False

    @property
    def tars(self) -> bool:
        return self.name == "webdataset"


def image_name(layout: str, shard_size: int, index: int, stem: str, extension: str) -> str:
    """An image's file_name: `images/<stem>.png`, or in the sharded layout
    `images/<index // shard_size, 5 digits>/<stem>.png` (index: the item's place in the plan)."""
    if layout == "sharded":
        return f"{IMAGES}/{index // shard_size:05d}/{stem}{extension}"
    return f"{IMAGES}/{stem}{extension}"


def sample_key(index: int) -> str:
    """A webdataset sample's key: the item's plan position in 9 digits (ids may hold dots;
    WebDataset splits a member's name at its first dot)."""
    return f"{index:09d}"


def tar_name(owner: str | None, number: int) -> str:
    """`shards/000007.tar`, or `shards/<owner>-000007.tar` for a scale-out run's worker: each
    writer numbers its own tars, so no two processes ever write one."""
    return f"{SHARDS}/{owner + '-' if owner else ''}{number:06d}.tar"


def parse_tar_name(name: str) -> tuple[str | None, int] | None:
    """(owner, number) of a tar shard's file name (`000007.tar`), or None."""
    m = _TAR.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def container(file_name: str) -> str:
    """The file that holds an image: `shards/000007.tar` for `shards/000007.tar/000000123.png`,
    the image's own file otherwise."""
    head, sep, _ = file_name.partition(".tar/")
    return head + ".tar" if sep else file_name


def is_shard_folder(name: str) -> bool:
    return bool(_SHARD_FOLDER.match(name))


def image_folders(run_dir: Path) -> list[Path]:
    """images/ and its shard folders, those that exist."""
    images = run_dir / IMAGES
    if not images.is_dir():
        return []
    return [images] + sorted(images / name for name in os.listdir(images)
                             if is_shard_folder(name) and (images / name).is_dir())


def caption_name(image_file_name: str) -> str:
    """`images/…/<stem>.txt` beside `images/…/<stem>.png`."""
    return image_file_name.rsplit(".", 1)[0] + ".txt"

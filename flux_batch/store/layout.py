"""The names of the files in a run directory (see docs/run-directory.md)."""
from __future__ import annotations

import os
import re
from pathlib import Path

MANIFEST = "metadata.jsonl"  # one record per finished image
ERRORS = "errors.jsonl"  # items that failed and are still not done
RUN_INFO = "run.json"  # the fingerprint and settings of the run
IMAGES = "images"  # the images, each named in its manifest record
LOCK = ".lock"  # the run lock; part locks are .lock.<part>, the merge lock .lock.merge
README = "README.md"  # the dataset card

LAYOUTS = ("flat", "sharded")
DEFAULT_SHARD_SIZE = {"sharded": 10_000}
_SHARD_FOLDER = re.compile(r"^\d{5,}$")


def image_name(layout: str, shard_size: int, index: int, stem: str, extension: str) -> str:
    """An image's file_name: `images/<stem>.png`, or in the sharded layout
    `images/<index // shard_size, 5 digits>/<stem>.png` (index: the item's place in the plan)."""
    if layout == "sharded":
        return f"{IMAGES}/{index // shard_size:05d}/{stem}{extension}"
    return f"{IMAGES}/{stem}{extension}"


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

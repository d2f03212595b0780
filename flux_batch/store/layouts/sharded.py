"""layout=sharded: `images/<5 digits>/<stem>.png`, at most `size` images per folder (the folder
is the item's plan position // size, so a path never changes with limit, resume or slices)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from flux_batch.store.layouts.base import Layout
from flux_batch.store.layouts.flat import LOAD_IMAGEFOLDER, Flat, list_folder
from flux_batch.store.names import IMAGES

_FOLDER = re.compile(r"^\d{5,}$")


class Sharded(Flat):
    name = "sharded"
    default_size = 10_000

    def file_name(self, index: int, stem: str, extension: str) -> str:
        return f"{IMAGES}/{index // self.size:05d}/{stem}{extension}"

    fingerprint = Layout.fingerprint  # layout and shard_size, not flat's

    def data_files(self, extension: str) -> list[str]:
        return ["metadata.jsonl", f"{IMAGES}/*/*{extension}"]

    def card_text(self) -> tuple[str, str]:
        return f"{self.name}, {self.size:,} per folder", LOAD_IMAGEFOLDER

    @staticmethod
    def on_disk(run_dir: Path, remove_temp: bool) -> set[str]:
        present: set[str] = set()
        for folder in image_folders(run_dir):
            present |= list_folder(run_dir, folder, remove_temp)
        return present


def is_image_folder(name: str) -> bool:
    """`00007`: a folder of the sharded layout inside images/."""
    return bool(_FOLDER.match(name))


def image_folders(run_dir: Path) -> list[Path]:
    """The folders of the sharded layout that exist inside images/."""
    images = run_dir / IMAGES
    try:
        names = os.listdir(images)
    except (FileNotFoundError, NotADirectoryError):
        return []
    # an image's name has a dot: tested first, as images/ of a flat run holds a million of them
    folders = (images / name for name in names if "." not in name and is_image_folder(name))
    return sorted(folder for folder in folders if folder.is_dir())

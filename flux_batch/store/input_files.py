"""The input images an item was rendered from, stored with the run: their names (one rule for
every layout and export: `input`, `input_1`, …) and their bytes, read back checked.

flat and sharded keep one copy per input, `inputs/<sha256><ext>` (content-addressed: an input
that many items share is stored once); webdataset puts a copy in each sample of its tars
(`<key>.input.png`, `<key>.input_1.png`, …), so a sample stays whole on its own.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Iterable

from flux_batch.errors import RunDirError
from flux_batch.store.atomic import write_atomic
from flux_batch.store.names import INPUTS

INPUT = "input"  # the first input's name: a tar member's middle, a Parquet and datasets column
# The key of a record's `inputs` entry naming where its copy is. Not `file_name`: datasets'
# imagefolder decodes a `file_name` inside a list too, and fails on a row without inputs.
COPY = "copy"


def input_name(position: int) -> str:
    """`input` for an item's first input, `input_1`, `input_2`, … for the next."""
    return INPUT if position == 0 else f"{INPUT}_{position}"


def copy_name(image) -> str:
    """`inputs/<sha256><ext>`: where flat and sharded runs keep the input (plan/inputs.InputImage)."""
    return f"{INPUTS}/{image.sha256}{image.extension}"


def with_copies(record: dict, names: Iterable[str]) -> dict:
    """`record` with each input's copy named: `inputs[i].copy`, and `input_file_name` (the
    first's) right after `inputs`."""
    names = list(names)
    found: dict = {}
    for field, value in record.items():
        if field == "inputs":
            value = [{**entry, COPY: name} for entry, name in zip(value, names)]
            found[field] = value
            found["input_file_name"] = names[0]
        else:
            found[field] = value
    return found


class InputCopies:
    """One process's copies of inputs into `inputs/`, each written atomically (as an image is)
    before the image of the first item that needs it: a listed item always has its inputs.
    A copy already there (an earlier start's, another worker's) is checked once, not rewritten."""

    def __init__(self, run_dir: Path):
        self.folder = run_dir / INPUTS
        self.done: set[str] = set()  # this process's checked copies
        self.lock = threading.Lock()  # the writer threads share it: one writer per copy

    def store(self, images: Iterable) -> None:
        for image in images:
            name = copy_name(image)
            with self.lock:
                if name not in self.done:
                    self._store(image, self.folder.parent / name)
                    self.done.add(name)

    def _store(self, image, path: Path) -> None:
        if self.folder.is_symlink():  # a planted link must not redirect the run's writes
            raise RunDirError(f"refusing to write through the symlink {self.folder}")
        try:
            if hashlib.sha256(path.read_bytes()).hexdigest() == image.sha256:
                return
        except FileNotFoundError:
            pass
        self.folder.mkdir(exist_ok=True)
        write_atomic(path, image.checked_bytes(), fault_point="mid_image_write")
